"""What one request did, for its access log line and metrics (proxy.py `_account`), and
the two ways the handler ends a client's request early and notes it there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from .tokens import Token


class RequestRecord:
    """What the access log line says about one request."""

    __slots__ = ("bytes_in", "bytes_out", "detail", "error", "query_token", "replays",
                 "retries", "status", "upstream_seconds", "waited")

    def __init__(self) -> None:
        # the token the final attempt carried in the query (its echo must not reach the
        # client); None when it went in the header, or no token of ours went at all
        self.query_token: Token | None = None
        self.upstream_seconds: float | None = None  # until the first response headers
        self.detail = ""
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.replays = 0
        self.retries = 0  # tenant.retries made (attempts.py)
        self.waited = 0.0  # seconds in the budget's line and between attempts
        self.error = ""

    def answer(self, response: web.Response, reason: str = "") -> web.Response:
        self.status = response.status
        self.bytes_out = response.content_length or 0
        self.error = reason
        if response.status >= 500 and isinstance(response.body, bytes):
            self.detail = response.body.decode("utf-8", "replace")
        return response


def cut(transport: asyncio.Transport, record: RequestRecord) -> Callable[[], None]:
    """What `limits.client_send_timeout` does to a client that takes no byte of the
    response: its connection is aborted (a close would wait for it to read); the handler is
    cancelled or its write fails, and the slot and the tenant's connection are released."""

    def cut() -> None:
        record.error = "client_send_timeout"
        transport.abort()

    return cut


async def answer_and_close(request: web.Request, record: RequestRecord, response: web.Response
                           ) -> web.Response:
    """Send `response`, then close the connection without reading on: the client owes a
    body it is not sending (aiohttp would otherwise wait for the rest of it)."""
    record.answer(response)
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        record.error = "client_disconnected"
    request.protocol.force_close()
    return response
