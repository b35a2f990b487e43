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

An idle keep-alive connection keeps only what aiohttp needs to read the next request:
aiohttp's connection loop holds on to the last request and response until the next
request arrives, so `Connection` hands it a stand-in for the response and empties the
request (`forget`): 1.6 KiB less per idle connection.

``limits.client_idle_timeout`` closes a connection that waits for its next request, for
the rest of a head, or for its first, on one timer for all (`IdleSweep`) where aiohttp
arms one on every connection.

`Connections` caps the open client connections at ``limits.max_connections``: a new one
beyond it closes the connection that has been idle the longest (no request being
handled: keep-alive, or a head that never finishes); when every connection is busy, the
new one gets a 503 and is closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .answers import raw_error_response
from .app import MAX_REQUEST_LINE, dispatcher
from .config import LimitsConfig
from .watchdog import Sweep

log = logging.getLogger("fwproxy")

_ENDS = (b"\r\n\r\n", b"\n\n")
LINGER = 2.0  # seconds a refused connection is read (and dropped) before it is closed


class _Answered:
    """What aiohttp's connection loop (`RequestHandler.start`) keeps of an answered request
    while it waits for the next one: whether to keep the connection alive."""

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive


_KEEP_ALIVE, _CLOSE = _Answered(True), _Answered(False)


def forget(request: BaseRequest) -> None:
    """Drop what an answered request holds beyond its parsed head (its cached properties,
    what handlers stored in it, the match info): aiohttp's connection loop keeps the request
    object until the next request arrives, on every idle keep-alive connection."""
    request._cache.clear()
    if request._state:  # (a new dict: a clone shares its original's)
        request._state = {}
    if isinstance(request, web.Request):
        request._match_info = None


def head_end(carry: bytes, data: bytes) -> int:
    """How many bytes of `data` belong to a request head that `carry` (the last bytes of
    the head so far) began: up to and including the blank line; -1 if it does not end."""
    joined = carry + data
    ends = [i + len(end) for end in _ENDS if (i := joined.find(end)) >= 0]
    return max(0, min(ends) - len(carry)) if ends else -1


class _Messages(list):  # type: ignore[type-arg]
    """The parsed requests waiting for the handler: aiohttp's ``deque`` costs 624 bytes even
    empty, on every connection; this (a list, `popleft` all aiohttp asks more) 56, and a
    queue holds one request, or a few pipelined ones (the handler takes them in order)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class _Swept:
    """Stands where aiohttp keeps a connection's keep-alive timer (a loop timer on every
    connection): `Connections` closes idle connections with one sweep for all of them."""

    __slots__ = ()

    def cancel(self) -> None:
        return None


_SWEPT = _Swept()


class Connection(RequestHandler):
    """aiohttp's server protocol, with the request head counted before it is parsed."""

    __slots__ = ("_body", "_carry", "_head", "_refused", "idle_timeout")

    def __init__(self, manager: Connections, *, keepalive_timeout: float = 3630,
                 **kwargs: Any) -> None:
        # aiohttp would arm a timer for every connection (keepalive_timeout); the server's
        # sweep closes idle ones instead (`IdleSweep`), after this connection's own timeout
        super().__init__(manager, keepalive_timeout=0, **kwargs)
        self.idle_timeout = keepalive_timeout
        self._keepalive_handle = _SWEPT  # type: ignore[assignment]  # never a timer
        self._messages = _Messages()  # type: ignore[assignment]
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

    async def _handle_request(self, request: BaseRequest, *args: Any, **kwargs: Any) -> Any:
        manager = self._manager
        if isinstance(manager, Connections):
            manager.busy(self)
        try:
            resp, reset = await super()._handle_request(request, *args, **kwargs)
        finally:
            if isinstance(manager, Connections):
                manager.idle(self)
        forget(request)
        return (_KEEP_ALIVE if resp.keep_alive else _CLOSE), reset


class IdleSweep(Sweep):
    """``limits.client_idle_timeout`` for every connection, on one timer (aiohttp arms one
    on each): a connection waiting for its next request (or for the rest of a head, or
    for its first) longer than its timeout is closed, between that and a tick later. The
    idle table is in the order connections went idle, so a sweep looks only at the few
    that have waited longest. `timeout` is the shortest any open connection has (a reload
    gives new connections a new one; open ones keep theirs)."""

    def __init__(self, idle: OrderedDict[RequestHandler, float]) -> None:
        self._idle = idle
        super().__init__(math.inf)

    def shorten(self, timeout: float) -> None:
        if 0 < timeout < self.timeout:
            self.configure(timeout)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self.timeout < math.inf:
            self._arm(loop)

    def _fire_late(self) -> bool:
        if not self._idle:
            return False
        now = time.monotonic()
        late = []
        for handler, since in self._idle.items():
            if now - since < self.timeout:
                break  # every later one went idle later still
            if (isinstance(handler, Connection) and now - since >= handler.idle_timeout > 0
                    and handler._waiter is not None and not handler._waiter.done()):
                late.append(handler)
        for handler in late:
            del self._idle[handler]
            handler.force_close()
        return True


class Connections(web.Server):
    """The server's connections: each a `Connection`, at most `max_connections` open,
    closed after ``limits.client_idle_timeout`` idle (`IdleSweep`)."""

    def __init__(self, *args: Any, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # longest idle first: each connection with the time it went idle
        self._idle: OrderedDict[RequestHandler, float] = OrderedDict()
        self.sweep = IdleSweep(self._idle)
        self.evicted = 0
        self.refused = 0
        self.configure(limits)

    def configure(self, limits: LimitsConfig) -> None:
        """Take up new limits (on start and on SIGHUP)."""
        self.sweep.shorten(limits.client_idle_timeout)
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
        self._idle[handler] = time.monotonic()
        self.sweep.watch(self._loop)

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
        # closed (the client left mid-request): aiohttp keeps it in `_connections` until
        # its task ends, but connection_lost has taken it out of the idle table for good
        if handler.transport is not None and handler in self._connections:
            self._idle[handler] = time.monotonic()  # to the end: the most recently idle
            self.sweep.watch(self._loop)

    async def shutdown(self, timeout: float | None = None) -> None:
        self.sweep.close()
        await super().shutdown(timeout)


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
