"""The request handler: one client request in, at most three tenant requests out.

Theory of operation
-------------------
1. `Guard` refuses what must never be forwarded (methods, clients, hosts, paths, sizes)
   before reading the body. The upstream URL is the configured tenant origin plus the
   client's raw target bytes: nothing in the request can change where the token goes.
2. Headers minus hop-by-hop (and minus every name in ``Connection``), the client's
   forwarding headers replaced by fwproxy's (upstream.py; the Host is guard's), then the token:
   ``Authorization: Bearer`` (or ``access_token=`` in the query once the tenant has been seen
   to strip the header). A client that brings its own credentials keeps them
   (``client_authorization: keep``) and gets no token and no replay.
3. The body streams upstream through a `BodyTee`, which keeps a bounded copy.
4. A 401 to our own token: if the tenant took that token before, first ask whether it
   still does (``GET /fotoweb/me`` with it, one request for a storm of 401s): if so, the
   401 is that path's, and the token is kept (no renewal, no probe). Otherwise drop the
   token (only if still current, so a storm of 401s renews once; and not when it was
   itself issued for a 401 moments ago). Get the current one, replay from the copy. If a
   freshly issued token is refused too and placement is ``auto``, probe once with the
   query placement: only a 2xx is passed back (else the 401), and only 2xx probes on two
   different paths switch to the query (placement.py). 403 never renews. A body too large
   to keep gets its 401 passed back.
5. The response streams back as it arrives (a 1xx as the final status is a 502): status,
   headers minus hop-by-hop, ``Location`` pointed at the proxy when it points at the
   tenant, bytes untouched (no decompression). A header or reason phrase that echoes one
   of our tokens, in any encoding and whichever placement, is dropped (upstream.py).
6. Failures become JSON ``{"error", "detail"}``: 502 unreachable, 504 timeout, 503 with
   Retry-After when no token can be had, 408 when the client stops sending the body it
   owes (``limits.client_body_timeout``). A failure after the response has started aborts
   the connection, so the client never mistakes a cut-short body for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from . import __version__
from .access import normalize_path
from .answers import error_response
from .config import Settings
from .exceptions import (
    BadPath,
    BodyTooLarge,
    ClientBodyTimeout,
    NoTokenAvailable,
    UpstreamError,
)
from .guard import Admitted, Guard
from .log import AccessLog
from .observe import Metrics
from .placement import Probe, weigh
from .replay import BodyTee
from .shares import Shares
from .token_manager import TokenManager
from .tokens import Token, Verdict, verdict_of
from .upstream import (
    add_param,
    has_param,
    map_upstream_errors,
    request_headers,
    response_headers,
    response_reason,
    translate,
    without_param,
)
from .watchdog import ClientWatch, Stall, Watchdog

access_log = AccessLog()
log = logging.getLogger("fwproxy.proxy")

STRIP_HINT = "proxy_set_header Authorization $http_authorization;"
VERIFY_PATH = "/fotoweb/me"  # what `fwproxy check` asks too: any valid token may read it
VERIFY_AGENT = f"fwproxy/{__version__} (token check after a 401)"  # for the tenant's log


class Proxy:
    """Forwards requests to the tenant with the token; holds the learned token placement."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        tokens: TokenManager,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._session = session
        self._tokens = tokens
        self._tenant = settings.tenant.url
        self._watchdog = Watchdog(settings.tenant.read_timeout)
        self._body_watch = ClientWatch(0)  # limits.client_body_timeout, in reconfigure
        self._send_watch = ClientWatch(0)  # limits.client_send_timeout
        self.replays = 0
        self.placement = "query" if settings.auth.token_placement == "query" else "header"
        self._evidence: tuple[Probe, ...] = ()  # probes that proved the query, one a path
        self._query_took: Token | None = None  # the last token a probe saw accepted
        self._slots: asyncio.Semaphore | None = None
        self._slot_limit: int | None = None
        self._shares = Shares()  # limits.max_concurrent_per_client
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take up new settings (on start and on SIGHUP); a learned placement is kept."""
        guard = Guard(settings)  # the one part that can fail (the keys file): first
        self._settings = settings
        self._replace_auth = settings.auth.client_authorization == "replace"
        self._replay_max = settings.auth.replay_max_body
        self._probe_query = settings.auth.token_placement == "auto"
        if settings.auth.token_placement != "auto":
            self.placement = settings.auth.token_placement
        self.guard = guard
        self._watchdog.configure(settings.tenant.read_timeout)
        limit = settings.limits.max_concurrent
        if limit != self._slot_limit:
            self._slot_limit = limit
            self._slots = asyncio.Semaphore(limit) if limit else None
        self._queue_timeout = settings.limits.queue_timeout
        self._shares.share = settings.limits.max_concurrent_per_client
        self._body_watch.configure(settings.limits.client_body_timeout)
        self._send_watch.configure(settings.limits.client_send_timeout)

    @property
    def settings(self) -> Settings:
        """The settings in effect (the latest reload's)."""
        return self._settings

    def close(self) -> None:
        self._watchdog.close()
        self._body_watch.close()
        self._send_watch.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler for every path the proxy serves."""
        started = time.monotonic()
        record = RequestRecord()
        self._metrics.in_flight += 1
        try:
            response = await self._handle(request, record)
        except asyncio.CancelledError:
            record.status = 499  # client went away; its upstream request was cancelled with it
            raise
        finally:
            self._metrics.in_flight -= 1
            self._account(request, record, started)
        return response

    async def _handle(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        admitted = self.guard.admit(request)
        if not isinstance(admitted, Admitted):  # (Admitted is a tuple: a cheap check)
            return record.answer(admitted)
        if not self._shares.share:
            return await self._slotted(request, admitted, record)
        client = admitted.key.name if admitted.key is not None else request.remote or ""
        with self._shares.hold(client) as held:
            if not held:
                return record.answer(self._busy("limits.max_concurrent_per_client requests "
                                                "of this client are in flight; try again"))
            return await self._slotted(request, admitted, record)

    async def _slotted(self, request: web.Request, admitted: Admitted, record: RequestRecord
                       ) -> web.StreamResponse:
        slots = self._slots  # the one acquired is the one released, even across a reload
        if slots is None:
            return await self._forward(request, admitted, record)
        if slots.locked() and self._queue_timeout <= 0:
            return record.answer(self._busy())
        try:
            await asyncio.wait_for(slots.acquire(), self._queue_timeout or None)
        except asyncio.TimeoutError:
            return record.answer(self._busy())
        try:
            return await self._forward(request, admitted, record)
        finally:
            slots.release()

    def _busy(self, detail: str = "limits.max_concurrent requests are in flight; try again"
              ) -> web.Response:
        return error_response(503, "busy", detail, headers={"Retry-After": "1"})

    async def _forward(
        self, request: web.Request, admitted: Admitted, record: RequestRecord
    ) -> web.StreamResponse:
        path, query = admitted.path, admitted.query
        headers = request_headers(
            request.headers,
            drop_authorization=self._replace_auth,
            client_ip=request.remote,
            proxy_host=admitted.host,  # validated: never aiohttp's request.host (see guard)
            trusted=admitted.trusted,
        )
        if self._replace_auth:
            query = without_param(query, "access_token")
        own_token = "Authorization" not in headers and not has_param(query, "access_token")

        body = None
        if request.body_exists:
            body = BodyTee(
                request.content,
                self._replay_max if own_token else 0,
                expected=request.content_length,
                limit=self._settings.limits.max_body,
            )
            body.client = self._body_watch.watch(_stalled(body, self._body_watch.timeout))
        stall = self._watchdog.start()
        try:
            try:
                out = Outgoing(request.method, path, query, headers, body, stall)
                upstream = await self._exchange(out, record, own_token)
            except NoTokenAvailable as exc:
                return record.answer(error_response(
                    exc.status, exc.error, str(exc),
                    headers={"Retry-After": str(exc.retry_after)},
                ), reason=exc.reason)
            except UpstreamError as exc:
                if body is not None and body.timed_out:
                    return await _answer_and_close(request, record, error_response(
                        ClientBodyTimeout.status, ClientBodyTimeout.error,
                        f"no byte of the request body arrived for "
                        f"limits.client_body_timeout ({self._body_watch.timeout:g}s)",
                    ))
                if body is not None and body.too_large:
                    return record.answer(error_response(
                        BodyTooLarge.status, BodyTooLarge.error,
                        f"the body exceeds limits.max_body ({body.limit} bytes)",
                    ))
                return record.answer(error_response(exc.status, exc.error, str(exc)))
            finally:
                if body is not None:
                    self._body_watch.unwatch(body.client)
                    record.bytes_in = body.size
                    body.close()
            transport = request.transport
            owed = None
            if transport is not None:  # (None: the client is gone already)
                owed = self._send_watch.watch(_cut(transport, record),
                                              transport.get_write_buffer_size)
            try:
                return await self._stream_back(request, upstream, record, stall, admitted.host)
            finally:
                self._send_watch.unwatch(owed)
                upstream.release()
        finally:
            self._watchdog.stop(stall)

    async def _exchange(self, out: Outgoing, record: RequestRecord, own_token: bool
                        ) -> aiohttp.ClientResponse:
        """Send, and on a 401 to our own token renew and replay (theory, step 4)."""
        if not own_token:
            return await self._send(out, None, "header")
        token = await self._tokens.get()  # no wait (nor any further call) while fresh
        placement = self.placement
        record.query_token = token if placement == "query" else None
        sent = time.monotonic()
        resp = await self._send(out, token, placement)
        record.upstream_seconds = time.monotonic() - sent
        if resp.status != 401:
            self._tokens.accepted(token)
            return resp
        await self._tokens.refused(token, self._verify)  # dropped, or good elsewhere: kept
        if not out.replayable:
            return resp  # too large to replay: the client sees the 401
        fresh = await self._tokens.get()
        resp.release()
        record.replays += 1
        self.replays += 1
        record.query_token = fresh if placement == "query" else None
        resp = await self._send(out, fresh, placement)
        if resp.status != 401:
            self._tokens.accepted(fresh)
        if resp.status != 401 or not self._probe_query or placement == "query":
            return resp
        if fresh is token and fresh is not self._query_took:
            return resp  # kept by should_drop: a flaky 401, not a header-stripping proxy
        if not out.replayable:
            return resp
        return await self._probe(out, record, fresh, resp)

    async def _probe(self, out: Outgoing, record: RequestRecord, token: Token,
                     refused: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
        """Try `token`, refused in the header, as the access_token query parameter. Only a
        2xx is an answer the client gets (with the token scrubbed from its headers); any
        other is dropped unread, a login redirect carrying the token in its ``ReturnUrl``
        for one, and the client gets the tenant's 401 to the header (`refused`)."""
        record.replays += 1
        try:
            probe = await self._send(out, token, "query")
        except BaseException:
            refused.release()
            raise
        seen = Probe(_path_key(out.path), refused.status, probe.status)
        self._evidence, proven = weigh(self._evidence, seen)
        if proven:
            self._learn_query_placement(self._evidence)
        if not seen.proves:
            probe.release()
            return refused
        refused.release()
        self._query_took = token  # a later header 401 to it is the header's fault: probe
        record.query_token = token
        return probe

    async def _verify(self, token: Token) -> Verdict:
        """Whether the tenant still takes `token`: ``GET /fotoweb/me`` with it, placed as
        requests place it now (`TokenManager.refused` calls this, once for a storm)."""
        query, headers = "", {"Accept": "application/json", "User-Agent": VERIFY_AGENT}
        if self.placement == "query":
            query = add_param("", "access_token", token.value)
        else:
            headers["Authorization"] = f"Bearer {token.value}"
        url = URL.build(scheme=self._tenant.scheme, host=self._tenant.raw_host or "",
                        port=self._tenant.explicit_port, path=VERIFY_PATH,
                        query_string=query, encoded=True)
        timeout = aiohttp.ClientTimeout(total=self._watchdog.timeout or None)
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False,
                                         timeout=timeout) as resp:
                status: int | None = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("verifying the token after a 401 failed: %s", translate(exc))
            status = None
        verdict = verdict_of(status)
        log.info("a 401 to a token the tenant took before: GET %s with it answered %s (%s)",
                 VERIFY_PATH, status or "nothing", verdict.value)
        return verdict

    async def _send(self, out: Outgoing, token: Token | None, placement: str
                    ) -> aiohttp.ClientResponse:
        # aiohttp copies the headers it is given: the same dict serves every attempt, its
        # Authorization set (or removed) afresh for each
        query, headers = out.query, out.headers
        if token is not None and placement == "query":
            query = add_param(without_param(query, "access_token"), "access_token", token.value)
            headers.popall("Authorization", None)
        elif token is not None:
            headers["Authorization"] = f"Bearer {token.value}"
        url = URL.build(
            scheme=self._tenant.scheme,
            host=self._tenant.raw_host or "",
            port=self._tenant.explicit_port,
            path=out.path,
            query_string=query,
            encoded=True,
        )
        stall, body = out.stall, out.body

        def what() -> str:
            if body is not None and not body.sent:
                return (f"the tenant took no request body for {self._watchdog.timeout:g}s "
                        "and did not answer")
            return "the tenant did not answer within the configured timeout"

        # with a body, its writer says when the tenant is the one being waited for
        with stall.timed(waiting=body is None, what=what) as attempt, map_upstream_errors():
            return await self._session.request(
                out.method,
                url,
                headers=headers,
                data=body.chunks(stall, attempt) if body is not None else None,
                allow_redirects=False,
            )

    async def _stream_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse, record: RequestRecord,
        stall: Stall, host: str,
    ) -> web.StreamResponse:
        if upstream.status < 200:  # 101 (or another 1xx as final): nothing HTTP can relay
            upstream.close()  # its connection is no longer HTTP: never back to the pool
            return record.answer(error_response(
                502, "upstream_protocol_error",
                f"the tenant answered {upstream.status}, an interim status, as its final one",
            ))
        query_token = None if record.query_token is None else record.query_token.value
        echo = self._tokens.echo  # our tokens in any encoding, whichever placement
        reason = response_reason(upstream.reason, echo)
        out = web.StreamResponse(status=upstream.status, reason=reason)
        out.headers.extend(response_headers(
            upstream.headers, self._tenant, lambda: proxy_origin(host), query_token, echo
        ))
        try:
            await out.prepare(request)
        except (ValueError, UnicodeError):  # a status line aiohttp cannot send
            return record.answer(error_response(
                502, "upstream_protocol_error", "the tenant sent a response that cannot be relayed"
            ))
        record.status = upstream.status
        content = upstream.content
        last = b""
        try:
            while chunk := await _read_upstream(upstream, stall):
                if content.at_eof():  # the tenant is done: this chunk goes with the end
                    last = chunk
                    break
                await out.write(chunk)  # a client gone mid-way: ConnectionError, below
                record.bytes_out += len(chunk)
        except UpstreamError as exc:
            # Headers are gone: the only honest signal left is to cut the connection
            # without the final chunk, so the client sees an incomplete transfer.
            record.error, record.detail = exc.error, str(exc)
            log.warning("%s %s: %s; response aborted", request.method, request.raw_path, exc)
            if request.transport is not None:
                request.transport.close()
            return out
        except ConnectionError:
            record.error = record.error or "client_disconnected"  # or cut: client_send_timeout
            return out
        try:
            await out.write_eof(last)  # a small answer: headers, body and end in one write
        except ConnectionError:
            record.error = record.error or "client_disconnected"
            return out
        record.bytes_out += len(last)
        return out

    def _learn_query_placement(self, evidence: tuple[Probe, ...]) -> None:
        if self.placement == "query":
            return
        self.placement = "query"
        log.warning(
            "the tenant refused a fresh token in the Authorization header but accepted it as "
            "the access_token query parameter, on %d paths (%s): a reverse proxy in front of "
            "the tenant strips Authorization. fwproxy now sends the token in the query. Fix "
            "the reverse proxy (nginx: %s) and restart fwproxy.",
            len(evidence), "; ".join(map(str, evidence)), STRIP_HINT,
        )

    def _account(self, request: web.Request, record: RequestRecord, started: float) -> None:
        """The access log line, the request metrics, and the error remembered for the page
        (without the path and query: the page is no place for another client's request)."""
        self._metrics.observe(request.method, record.status, record.bytes_in, record.bytes_out,
                              record.upstream_seconds)
        if record.status >= 500 or record.error:
            self._metrics.error(request.method, record.error or str(record.status), record.detail)
        access_log.info(
            f'{request.remote or "-"} "{request.method} {request.raw_path}" {record.status} '
            f"in={record.bytes_in} out={record.bytes_out} "
            f"{(time.monotonic() - started) * 1000:.1f}ms replays={record.replays}"
            + (f" error={record.error}" if record.error else "")
        )


@dataclass(frozen=True)
class Outgoing:
    """The request as it goes upstream, before the token is added."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: BodyTee | None
    stall: Stall  # waiting for the tenant, for `tenant.read_timeout` (watchdog.py)

    @property
    def replayable(self) -> bool:
        return self.body is None or self.body.replayable


class RequestRecord:
    """What the access log line says about one request."""

    __slots__ = ("bytes_in", "bytes_out", "detail", "error", "query_token", "replays",
                 "status", "upstream_seconds")

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
        self.error = ""

    def answer(self, response: web.Response, reason: str = "") -> web.Response:
        self.status = response.status
        self.bytes_out = response.content_length or 0
        self.error = reason
        if response.status >= 500 and isinstance(response.body, bytes):
            self.detail = response.body.decode("utf-8", "replace")
        return response


async def _read_upstream(upstream: aiohttp.ClientResponse, stall: Stall) -> bytes:
    """The next chunk of the tenant's body (b"" at the end); its faults become
    `UpstreamError`, and only its faults: a client's are not the tenant's."""
    with stall.timed(waiting=True, what=_stopped), map_upstream_errors():
        return await upstream.content.readany()


def _stopped() -> str:
    return "the tenant stopped sending the response body"


def _stalled(body: BodyTee, timeout: float) -> Callable[[], None]:
    """What `limits.client_body_timeout` does to an upload: its read fails (so does the
    upload to the tenant, whose connection is closed); the handler then answers 408."""
    return lambda: body.stalled(timeout)


def _cut(transport: asyncio.Transport, record: RequestRecord) -> Callable[[], None]:
    """What `limits.client_send_timeout` does to a client that takes no byte of the
    response: its connection is aborted (a close would wait for it to read); the handler is
    cancelled or its write fails, and the slot and the tenant's connection are released."""

    def cut() -> None:
        record.error = "client_send_timeout"
        transport.abort()

    return cut


async def _answer_and_close(request: web.Request, record: RequestRecord, response: web.Response
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



def _path_key(path: str) -> str:
    """The path as the tenant (IIS) reads it: ``/a``, ``/A/`` and ``/%61`` are one path."""
    try:
        return normalize_path(path).lower()
    except BadPath:  # admitted paths are normalizable; the raw bytes otherwise
        return path


def proxy_origin(host: str) -> URL:
    """Where the client reached us (the validated ``host[:port]``, never aiohttp's
    `request.host`, which an absolute-form target sets): the origin Location headers are
    rewritten to."""
    try:
        return URL.build(scheme="http", authority=host, encoded=True)
    except ValueError:
        return URL("http://127.0.0.1")
