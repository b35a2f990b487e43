"""The request handler: one client request in, its attempts at the tenant out.

Theory of operation
-------------------
1. `Guard` refuses what must never be forwarded before reading the body; `Slots` bound how
   many are served at once. The upstream URL is the tenant origin plus the raw target.
2. Headers minus hop-by-hop (and minus every name in ``Connection``), the client's
   forwarding headers replaced by fwproxy's (upstream.py; the Host is guard's), then the token:
   ``Authorization: Bearer`` (or ``access_token=`` in the query once the tenant has been seen
   to strip the header). A client that brings its own credentials keeps them
   (``client_authorization: keep``) and gets no token and no replay. A local token, verified
   by the guard (tokengate.py), is swapped here for fwproxy's token. The token and authorize
   paths never get fwproxy's token, so no renewal, replay or probe (`Admitted.own_token`).
3. The body streams upstream through a `BodyTee`, which keeps a bounded copy. Every send
   goes through attempts.py: the breaker, the budget's line, safe retries (issue 15).
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
   Retry-After when no token can be had (or the tenant is protected: ``busy`` after
   ``tenant.queue_timeout`` in line, ``tenant_unavailable`` while the breaker is open),
   408 when the client stops sending the body it owes (``limits.client_body_timeout``). A
   failure after the response has started aborts the connection, so the client never
   mistakes a cut-short body for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from .answers import error_response
from .attempts import Outgoing, Protection, Sender, verify_token
from .attempts import read_upstream as _read_upstream
from .config import Settings
from .exceptions import (
    ClientBodyTimeout,
    NoTokenAvailable,
    TenantRefused,
    UpstreamError,
)
from .guard import Admitted, Guard
from .log import AccessLog, quoted
from .observe import Metrics
from .placement import Probe, weigh
from .placement import path_key as _path_key
from .record import RequestRecord
from .record import answer_and_close as _answer_and_close
from .record import cut as _cut
from .replay import BodyTee
from .slots import Slots
from .token_manager import TokenManager
from .tokengate import fleet_signing_keys
from .tokens import Token, Verdict
from .upstream import (
    has_param,
    proxy_origin,
    request_headers,
    response_headers,
    response_reason,
    without_param,
)
from .watchdog import ClientWatch, Stall, Watchdog

access_log = AccessLog()
log = logging.getLogger("fwproxy.proxy")

STRIP_HINT = "proxy_set_header Authorization $http_authorization;"


class Proxy:
    """Forwards requests to the tenant with the token; holds the learned token placement."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        tokens: TokenManager,
        metrics: Metrics,
        protection: Protection | None = None,
    ) -> None:
        self._metrics = metrics
        self._session = session
        self._tokens = tokens
        self._tenant = settings.tenant.url
        self._watchdog = Watchdog(settings.tenant.read_timeout)
        self.protection = protection or Protection(settings.tenant)  # attempts.py
        self._sender = Sender(session, self._watchdog)
        self._body_watch = ClientWatch(0)  # limits.client_body_timeout, in reconfigure
        self._send_watch = ClientWatch(0)  # limits.client_send_timeout
        self.replays = 0
        self.placement = "query" if settings.auth.token_placement == "query" else "header"
        self._evidence: tuple[Probe, ...] = ()  # probes that proved the query, one a path
        self._query_took: Token | None = None  # the last token a probe saw accepted
        self._slots = Slots()  # limits.max_concurrent, limits.max_concurrent_per_client
        # a fleet's local token key, derived once: a reload keeps it (tokengate.signing_keys)
        self._fleet_keys = fleet_signing_keys(settings)
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take up new settings (on start and on SIGHUP); a learned placement is kept."""
        # the one part that can fail (the keys file, the signing key): first
        guard = Guard(settings, self._metrics.local_tokens, self._fleet_keys)
        self._settings = settings
        self._replay_max = settings.auth.replay_max_body
        self._probe_query = settings.auth.token_placement == "auto"
        if settings.auth.token_placement != "auto":
            self.placement = settings.auth.token_placement
        self.guard = guard
        self._watchdog.configure(settings.tenant.read_timeout)
        self.protection.configure(settings.tenant)
        self._slots.configure(settings.limits)
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
        if admitted.endpoint:
            gate = self.guard.gate
            assert gate is not None  # (only a guard with a gate admits to the endpoint)
            return record.answer(await gate.answer(
                request, admitted.query, self._body_watch.timeout))
        slots = self._slots
        if not slots.configured:
            return await self._forward(request, admitted, record)
        client = admitted.key.name if admitted.key is not None else request.remote or ""
        async with slots.hold(client) as busy:
            if busy:
                return record.answer(self._busy(busy))
            return await self._forward(request, admitted, record)

    def _busy(self, detail: str) -> web.Response:
        return error_response(503, "busy", detail, headers={"Retry-After": "1"})

    async def _forward(
        self, request: web.Request, admitted: Admitted, record: RequestRecord
    ) -> web.StreamResponse:
        path, query = admitted.path, admitted.query
        headers = request_headers(
            request.headers,
            drop_authorization=admitted.drop_authorization,
            client_ip=request.remote,
            proxy_host=admitted.host,  # validated: never aiohttp's request.host (see guard)
            trusted=admitted.trusted,
        )
        if admitted.drop_authorization:
            query = without_param(query, "access_token")
        own_token = (admitted.own_token and "Authorization" not in headers
                     and not has_param(query, "access_token"))

        body = None
        if request.body_exists:
            body = BodyTee(
                request.content,
                self._replay_max if own_token else 0,
                expected=request.content_length,
                limit=self._settings.limits.max_body, scanner=admitted.scanner,
            )
            body.client = self._body_watch.watch(_stalled(body, self._body_watch.timeout))
        stall = self._watchdog.start()
        key = admitted.key
        tries = self.protection.start(key.name if key is not None else request.remote or "-")
        try:
            try:
                out = Outgoing(request.method, path, query, headers, body, stall, tries)
                upstream = await self._exchange(out, record, own_token)
            except TenantRefused as exc:  # the tenant was not asked: the breaker, the line
                return record.answer(error_response(
                    exc.status, exc.error, str(exc), headers={"Retry-After": exc.retry_after},
                ), reason=exc.error)
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
                if body is not None and body.fault is not None:  # max_body, a form override
                    fault = body.fault
                    return record.answer(error_response(fault.status, fault.error, str(fault)))
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
            tries.finish()
            record.retries, record.waited = tries.retries, tries.waited
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
        """`TokenManager.refused` asks this once for a storm of 401s (attempts.py)."""
        return await verify_token(self._session, self._tenant, self.placement, token,
                                  self._watchdog.timeout)

    async def _send(self, out: Outgoing, token: Token | None, placement: str
                    ) -> aiohttp.ClientResponse:
        """One send of the request: breaker, budget and retries around it (attempts.py)."""
        return await self.protection.send(
            out, lambda: self._sender.send_once(self._tenant, out, token, placement))

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
            f'{request.remote or "-"} "{request.method} {quoted(request.raw_path)}" '
            f"{record.status} in={record.bytes_in} out={record.bytes_out} "
            f"{(time.monotonic() - started) * 1000:.1f}ms replays={record.replays} "
            f"retries={record.retries} waited={record.waited * 1000:.0f}ms"
            + (f" error={record.error}" if record.error else "")
        )


def _stalled(body: BodyTee, timeout: float) -> Callable[[], None]:
    """What `limits.client_body_timeout` does to an upload: its read fails (so does the
    upload to the tenant, whose connection is closed); the handler then answers 408."""
    return lambda: body.stalled(timeout)
