"""Client connections: what one may cost before it has sent a whole request, and how many.

aiohttp's request parser bounds each header line (``max_field_size``) and the number of
lines (128), but not their sum: 127 lines just under 64 KiB each made one request head of
8 MB, parsed and kept twice (the raw bytes and the decoded header map) before any handler
could look at it. `Connection` counts the bytes of each request head as they arrive,
before the parser sees them, and answers 431 and closes once a head would pass
``limits.max_header_bytes`` (plus the request line's own limit): a head costs at most
that much, however it is sliced into packets. Body bytes are not counted. A head that
begins in the same read as the end of the previous message is counted from the next
read on, so a pipelined head can take one read (at most 256 KiB) more before its
headers are refused, by `Guard`, which measures every parsed head exactly.

`Connections` caps the open client connections at ``limits.max_connections``: a new one
beyond it closes the connection that has been idle the longest (no request being
handled: keep-alive, or a head that never finishes); when every connection is busy, the
new one gets a 503 and is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from .answers import raw_error_response
from .app import MAX_REQUEST_LINE, dispatcher
from .config import LimitsConfig

log = logging.getLogger("fwproxy")

_ENDS = (b"\r\n\r\n", b"\n\n")
LINGER = 2.0  # seconds a refused connection is read (and dropped) before it is closed


def head_end(carry: bytes, data: bytes) -> int:
    """How many bytes of `data` belong to a request head that `carry` (the last bytes of
    the head so far) began: up to and including the blank line; -1 if it does not end."""
    joined = carry + data
    ends = [i + len(end) for end in _ENDS if (i := joined.find(end)) >= 0]
    return max(0, min(ends) - len(carry)) if ends else -1


class Connection(RequestHandler):
    """aiohttp's server protocol, with the request head counted before it is parsed."""

    __slots__ = ("_body", "_carry", "_head", "_refused")

    def __init__(self, manager: Connections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head = 0  # bytes of the current request head received so far
        self._carry = b""  # its last 3 bytes: a blank line split across reads
        self._body: StreamReader | None = None  # a body being received: not counted
        self._refused = False  # answered 431: what still arrives is dropped unparsed

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        manager = self._manager
        limit = manager.head_limit if isinstance(manager, Connections) else 0
        if not limit or self._upgraded or self._payload_parser is not None:
            super().data_received(data)
            return
        body = self._body
        if body is not None and body.is_eof():
            body = self._body = None  # it ended in an earlier read; a head follows
        if body is None:
            head = self._head + len(data)
            if head > limit:  # only then look for where the head ends (rarely)
                end = head_end(self._carry, data)
                if end < 0 or self._head + end > limit:
                    self._refuse_head(limit)
                    return
            self._head = head
            self._carry = data[-3:] if len(data) >= 3 else (self._carry + data)[-3:]
        count = self._request_count
        super().data_received(data)
        if self._request_count != count and self._messages:  # a head ended in this read
            payload = self._messages[-1][1]
            self._head, self._carry = 0, b""
            self._body = None if payload.is_eof() else payload
            if len(self._messages) > 1 and not self._buffer_paused:
                # pipelined requests wait in the socket, not as parsed heads in memory;
                # aiohttp reads on as soon as its handler takes the next one
                self._pause_reading_for_buffer()

    def _refuse_head(self, limit: int) -> None:
        """431 before the parser holds more than `limit` bytes of one head; the connection
        closes (where the next request would begin is unknown). Closing a socket with unread
        bytes resets it, and the reset would destroy the 431 before the client reads it: the
        proxy ends its side and drops what the client still sends, for `LINGER` seconds."""
        self._refused = True
        transport = self.transport
        if transport is None:
            return
        if self._request_in_progress or self._messages:  # an answer is due first: just cut
            self.force_close()
            return
        transport.write(raw_error_response(
            431, "Request Header Fields Too Large", "headers_too_large",
            f"the request head exceeds limits.max_header_bytes ({limit - MAX_REQUEST_LINE}"
            f" bytes, plus up to {MAX_REQUEST_LINE} for the request line)"))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, self.force_close)

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        manager = self._manager
        if isinstance(manager, Connections):
            manager.busy(self)
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            if isinstance(manager, Connections):
                manager.idle(self)


class Connections(web.Server):
    """The server's connections: each a `Connection`, at most `max_connections` open."""

    def __init__(self, *args: Any, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: OrderedDict[RequestHandler, None] = OrderedDict()  # longest idle first
        self.evicted = 0
        self.refused = 0
        self.configure(limits)

    def configure(self, limits: LimitsConfig) -> None:
        """Take up new limits (on start and on SIGHUP)."""
        self.max_connections = limits.max_connections
        self.head_limit = (limits.max_header_bytes + MAX_REQUEST_LINE
                           if limits.max_header_bytes else 0)

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        limit = self.max_connections
        if limit and len(self._connections) >= limit and not self._make_room():
            self.refused += 1
            transport.write(raw_error_response(
                503, "Service Unavailable", "busy",
                f"limits.max_connections ({limit}) connections are open and none is idle; "
                "try again", "Retry-After: 1\r\n"))
            handler.force_close()  # the 503 is sent, then the socket closed
            return  # not counted: connection_lost finds it in no table
        super().connection_made(handler, transport)
        self._idle[handler] = None

    def _make_room(self) -> bool:
        """Close the longest-idle connection; False when none is idle."""
        while self._idle:
            oldest, _ = self._idle.popitem(last=False)
            if oldest in self._connections:
                self.evicted += 1
                oldest.force_close()
                # it leaves the table in connection_lost, on the next loop iteration
                self._connections.pop(oldest, None)
                return True
        return False

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None
                        ) -> None:
        self._idle.pop(handler, None)
        super().connection_lost(handler, exc)

    def busy(self, handler: RequestHandler) -> None:
        self._idle.pop(handler, None)

    def idle(self, handler: RequestHandler) -> None:
        if handler in self._connections:
            self._idle[handler] = None  # to the end: the most recently idle


class Runner(web.AppRunner):
    """An `AppRunner` whose server is `Connections`, its handler `app.dispatcher`."""

    def __init__(self, app: web.Application, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return Connections(dispatcher(self.app), request_factory=plain.request_factory,
                           handler_cancellation=plain.handler_cancellation,
                           loop=plain._loop, limits=self._limits, **plain._kwargs)

    @property
    def connections(self) -> Connections:
        server = self.server
        assert isinstance(server, Connections)
        return server
