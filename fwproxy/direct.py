"""A request without a body to the tenant, sent the short way.

`ClientSession.request` does per call what a proxy never needs: it merges default headers
into a copy, re-parses the URL, unions the skip set, starts a total-timeout handle, runs
tracing hooks, asks the cookie jar, looks for credentials in the URL (and ``.netrc``, proxies
in the environment), follows redirects, and wraps it all in a context manager. fwproxy's
session has none of these configured (upstream.py `create_session`: a dummy cookie jar, no
total timeout, no traces, no redirects, no resend), so what is left is what this does: make
the request (`TenantRequest`), take a pooled connection (the session's connect timeout),
set up the response parser, send, and read the status and headers; the failures become
the exceptions `ClientSession` would raise. A request with a body takes the session's path
(its payload bookkeeping is aiohttp's business). tests/test_direct.py holds this to the
session's behaviour: the same bytes on the wire, the same errors.
"""

from __future__ import annotations

import asyncio
import functools

import aiohttp
from aiohttp.client_exceptions import ClientError, ClientOSError, ConnectionTimeoutError
from aiohttp.helpers import EMPTY_BODY_METHODS
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, istr
from yarl import URL

MAX_HEADER_LINE = 64 * 1024  # the session's (upstream.py `create_session`) and this path's
READ_BUFSIZE = 256 * 1024
# aiohttp would add these on its own; a transparent proxy sends only what the client sent.
SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


class TenantRequest(aiohttp.ClientRequest):
    """aiohttp's request with its two per-request header passes done in C: the given headers
    are taken whole after the Host (``extend``, not a Python loop of ``add``), and the skip
    set is made into a multidict once, not sorted and rebuilt with a copy of the headers
    every request. What goes on the wire is the same (tests/test_direct.py compares)."""

    def update_headers(self, headers: object) -> None:
        if not isinstance(headers, CIMultiDict) or "Host" in headers:
            return super().update_headers(headers)  # type: ignore[arg-type]
        out: CIMultiDict[str] = CIMultiDict()
        out["Host"] = self.url.host_port_subcomponent or ""
        out.extend(headers)
        self.headers = out

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        if not isinstance(skip_auto_headers, frozenset) or not skip_auto_headers:
            return super().update_auto_headers(skip_auto_headers)  # type: ignore[arg-type]
        skip, added = _skips(skip_auto_headers)
        self._skip_auto_headers = skip
        headers = self.headers
        for name, value in added:
            if name not in headers:
                headers[name] = value


@functools.lru_cache(maxsize=4)
def _skips(names: frozenset[str]) -> tuple[CIMultiDict[None], tuple[tuple[str, str], ...]]:
    """The skip set as aiohttp keeps it, and the automatic headers it leaves."""
    auto = [*aiohttp.ClientRequest.DEFAULT_HEADERS.items(), ("User-Agent", SERVER_SOFTWARE)]
    skip: CIMultiDict[None] = CIMultiDict((name, None) for name in sorted(names))
    return skip, tuple((name, value) for name, value in auto if name not in skip)


_SKIP = frozenset(istr(name) for name in SKIP_AUTO_HEADERS)  # as the session keeps it


async def send_bodyless(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop,
                        method: str, url: URL, headers: CIMultiDict[str]
                        ) -> aiohttp.ClientResponse:
    """`session.request(method, url, headers=headers, allow_redirects=False)` for a
    session made by `create_session`, without the steps it does not need."""
    if session.closed:
        raise RuntimeError("Session is closed")
    connector = session.connector
    assert connector is not None
    req = TenantRequest(method, url, headers=headers, skip_auto_headers=_SKIP, loop=loop,
                        session=session)
    try:
        try:
            conn = await connector.connect(req, traces=[], timeout=session.timeout)
        except asyncio.TimeoutError as exc:
            raise ConnectionTimeoutError(f"Connection timeout to host {req.url}") from exc
        protocol = conn.protocol
        assert protocol is not None
        protocol.set_response_params(
            skip_payload=req.method in EMPTY_BODY_METHODS, read_until_eof=True,
            auto_decompress=False, read_bufsize=READ_BUFSIZE, max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
        )
        try:
            resp = await req.send(conn)
            try:
                await resp.start(conn)
            except BaseException:
                resp.close()
                raise
        except BaseException:
            conn.close()
            raise
    except ClientError:
        raise
    except OSError as exc:  # as ClientSession._request turns them
        if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
            raise
        raise ClientOSError(*exc.args) from exc
    return resp
