"""The attempts at the tenant for one client request: the budget's line, the breaker, safe
retries (issue 15, README "Protecting the tenant").

Theory of operation
-------------------
`Protection` holds what all requests share: the budget (budget.py, a fair line in front of
the tenant), the breaker (breaker.py), the retry budget and counters (retry.py), and the
number of attempts at the tenant now. `Tries` is one request's part: who it is for the
line (API key name, else client address), its attempts, retries and waits, and the lease
it holds. Every time the handler sends (`Proxy._send`: the first attempt, the 401 replay,
the query probe) it goes through `Protection.send`::

    breaker refuses?  -> TenantUnavailable (503 tenant_unavailable, Retry-After), at once
    budget configured -> wait in its line for a lease (TenantBusy after queue_timeout)
    send one attempt (`send_once`)
    the outcome (a `Failure`, or the status) -> breaker.record
    429/502/503/504 or a failure -> retry_decision: RetryAfter -> the lease goes back, sleep,
                                    the next attempt from the BodyTee's copy; else the
                                    answer is passed back, or the failure raised (502/504)

The lease is held while the tenant works on the request: until its answer is fully read
(`Tries.finish`, called by the handler), or at once for a 401, whose body is nothing to
protect the tenant from and whose renewal must not wait for a slot the request holds (the
token request itself takes the budget's priority lane: `BudgetedGrant`). Sleeping between
attempts holds no slot: the retry joins the line again, fairly. Retries are counted over
the whole request (the 401 replay and the probe are not retries, and share its count), so a
request makes at most ``retries + 1`` attempts besides those two. Nothing here runs after a
response byte reached the client: `send` returns before the handler streams anything.
aiohttp's own silent re-send of an idempotent request is switched off (upstream.py), so
every attempt the tenant sees is one of these. With no budget configured the line is
skipped altogether; with ``breaker_failures: 0`` the breaker is.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from . import __version__
from .breaker import ALLOWED, Allowed, Breaker, is_failure
from .budget import Lease, LocalBudget
from .config import AuthConfig, TenantConfig
from .direct import send_bodyless
from .exceptions import TenantBusy, TenantUnavailable, TokenEndpointUnreachable, UpstreamError
from .replay import BodyTee
from .retry import (
    RETRY_STATUSES,
    Fail,
    Outcome,
    PassBack,
    RetryBudget,
    RetryCounters,
    RetryPolicy,
    retry_decision,
)
from .token_manager import Grant, Sharing, WrappedGrant
from .tokens import Token, Verdict, verdict_of
from .upstream import add_param, failure_of, map_upstream_errors, translate, without_param
from .watchdog import Stall, Watchdog

TOKEN_CLIENT = "token endpoint"  # the budget's name for fwproxy's own token requests


class Outgoing(NamedTuple):
    """The request as it goes upstream, before the token is added. (A tuple: one is made
    for every request, and a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``.)"""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: BodyTee | None
    stall: Stall  # waiting for the tenant, for `tenant.read_timeout` (watchdog.py)
    tries: Tries

    @property
    def replayable(self) -> bool:
        return self.body is None or self.body.replayable


class Tries:
    """One request's attempts: `retries` made, `waited` seconds (in the budget's line and
    between attempts), `slept` (between attempts only: what retry_max_wait bounds)."""

    __slots__ = ("_at_tenant", "_lease", "_protection", "attempts", "client", "retries",
                 "slept", "waited")

    def __init__(self, protection: Protection, client: str) -> None:
        self._protection = protection
        self.client = client
        self.attempts = 0
        self.retries = 0
        self.waited = 0.0
        self.slept = 0.0
        self._lease: Lease | None = None
        self._at_tenant = False

    def finish(self) -> None:
        """The tenant is done with the current attempt: its slot goes back (idempotent)."""
        if self._at_tenant:
            self._at_tenant = False
            self._protection.in_flight -= 1
        if self._lease is not None:
            self._lease.release()
            self._lease = None


class Protection:
    """What every request shares (the module docstring)."""

    def __init__(self, tenant: TenantConfig, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 budget: LocalBudget | None = None) -> None:
        """`budget`: the fleet's (fleetbudget.py) with state.backend redis; else local."""
        self._clock = clock
        self._sleep = sleep
        self.budget = budget if budget is not None else LocalBudget(clock=clock)
        self.breaker = Breaker(0, tenant.breaker_cooldown)
        self.retry_budget = RetryBudget(tenant.retry_budget)
        self.counters = RetryCounters()
        self.in_flight = 0  # attempts at the tenant now
        self.policy = RetryPolicy()
        self.configure(tenant)

    def configure(self, tenant: TenantConfig) -> None:
        """At start and on a reload: every key applies at once (to the line's waiters too)."""
        self.budget.configure(tenant.max_in_flight, tenant.max_rate, tenant.max_burst,
                              tenant.queue_timeout)
        self.breaker.configure(tenant.breaker_failures, tenant.breaker_cooldown)
        self.retry_budget.ratio = tenant.retry_budget
        self.policy = RetryPolicy.of(tenant.retries, tenant.retry_methods,
                                     tenant.retry_max_wait)

    def start(self, client: str) -> Tries:
        """A client request begins (`client`: its API key's name, else its address)."""
        self.retry_budget.record_request(self._clock())
        return Tries(self, client)

    async def send(self, out: Outgoing,
                   attempt: Callable[[], Awaitable[aiohttp.ClientResponse]]
                   ) -> aiohttp.ClientResponse:
        """`attempt` until it gives an answer to pass back (the module docstring)."""
        tries = out.tries
        while True:
            tries.finish()  # the previous attempt's answer is dropped (a 401's, a retry's)
            ticket = self._admit()
            budget = self.budget
            if budget.configured:
                try:
                    lease = await budget.acquire(tries.client)
                except BaseException:
                    self._record(ticket, None)
                    raise
                tries._lease = lease
                tries.waited += lease.waited
            tries.attempts += 1
            tries._at_tenant = True
            self.in_flight += 1
            resp: aiohttp.ClientResponse | None = None
            try:
                resp = await attempt()
            except UpstreamError as exc:
                tries.finish()
                outcome: Outcome | None = failure_of(exc)
                body = out.body
                if body is not None and (body.fault is not None or body.timed_out):
                    self._record(ticket, None)  # the client's fault, not the tenant's
                    raise
                self._record(ticket, False if outcome is None else _alive(outcome))
                if outcome is None:  # a malformed answer: not one to ask for again
                    raise
                error: UpstreamError | None = exc
            except BaseException:
                tries.finish()
                self._record(ticket, None)
                raise
            else:
                outcome, error = resp.status, None
                self._record(ticket, _alive(outcome))
                if outcome not in RETRY_STATUSES:  # the usual case: no decision to make
                    if outcome == 401:
                        tries.finish()
                    return resp
            wait = self._decide(out, outcome, resp)
            if wait is None:
                if error is not None:
                    raise error
                assert resp is not None
                return resp
            if resp is not None:
                resp.release()
            tries.finish()
            tries.retries += 1
            tries.slept += wait
            tries.waited += wait
            await self._sleep(wait)

    def _admit(self) -> Allowed:
        breaker = self.breaker
        if not breaker.enabled:
            return ALLOWED
        verdict = breaker.allow(self._clock())
        if not isinstance(verdict, Allowed):
            raise TenantUnavailable(verdict)
        return verdict

    def _record(self, ticket: Allowed, ok: bool | None) -> None:
        if self.breaker.enabled or ticket.probe:
            self.breaker.record(self._clock(), ticket, ok)

    def _decide(self, out: Outgoing, outcome: Outcome, resp: aiohttp.ClientResponse | None
                ) -> float | None:
        """Seconds to wait before the next attempt, or None: no retry."""
        tries, body, now = out.tries, out.body, self._clock()
        decision = retry_decision(
            self.policy, out.method, outcome, tries.retries + 1, tries.slept,
            None if resp is None else resp.headers.get("Retry-After"),
            # a body not yet read from the client at all can be sent again as well
            replayable=body is None or body.replayable or body.size == 0,
            response_started=False,
            budget_allows=self.retry_budget.can_retry(now),
            rand=random.random(),
            wall_now=time.time(),
        )
        self.counters.count(decision)
        if isinstance(decision, (PassBack, Fail)):
            return None
        self.retry_budget.record_retry(now)
        return decision.seconds

    def view(self) -> dict[str, object]:
        """For the status page."""
        return {"breaker": self.breaker.view(self._clock()), "queued": self.budget.queue_length,
                "in_flight": self.in_flight, "retries": sum(self.counters.retries.values()),
                "budget_refused": self.counters.budget_refused, "budget": self.budget.view()}


def _alive(outcome: Outcome) -> bool | None:
    failed = is_failure(outcome)
    return None if failed is None else not failed


class Sender:
    """One attempt: the URL, the token, the body from its tee, `tenant.read_timeout`."""

    def __init__(self, session: aiohttp.ClientSession, watchdog: Watchdog) -> None:
        self._session = session
        self._watchdog = watchdog
        self._loop: asyncio.AbstractEventLoop | None = None  # the session's, at the first send

    async def send_once(self, tenant: URL, out: Outgoing, token: Token | None, placement: str
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
            scheme=tenant.scheme,
            host=tenant.raw_host or "",
            port=tenant.explicit_port,
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
            if body is None:  # the usual case: the short way (direct.py)
                loop = self._loop or asyncio.get_running_loop()
                self._loop = loop
                return await send_bodyless(self._session, loop, out.method, url, headers)
            return await self._session.request(
                out.method,
                url,
                headers=headers,
                data=body.chunks(stall, attempt),
                allow_redirects=False,
            )


async def read_upstream(upstream: aiohttp.ClientResponse, stall: Stall) -> bytes:
    """The next chunk of the tenant's body (b"" at the end); its faults become
    `UpstreamError`, and only its faults: a client's are not the tenant's."""
    with stall.timed(waiting=True, what=_stopped), map_upstream_errors():
        return await upstream.content.readany()


def _stopped() -> str:
    return "the tenant stopped sending the response body"


class BudgetedGrant(WrappedGrant):
    """fwproxy's own token requests through the tenant's budget, in its priority lane,
    when the token endpoint is the tenant's (a token is what every waiting request needs
    next). Without a budget configured it only passes the fetch on."""

    def __init__(self, inner: Grant, protection: Protection, tenant: URL, auth: AuthConfig
                 ) -> None:
        super().__init__(inner)
        self._protection = protection
        self._tenant = tenant
        self._on_tenant = auth.token_url.origin() == tenant

    @property
    def from_peer(self) -> bool:
        inner = self._inner
        return isinstance(inner, Sharing) and inner.from_peer

    def update(self, auth: AuthConfig) -> None:
        self._on_tenant = auth.token_url.origin() == self._tenant
        super().update(auth)

    def __repr__(self) -> str:
        return repr(self._inner)

    async def fetch(self) -> Token:
        budget = self._protection.budget
        if not (budget.configured and self._on_tenant):
            return await self._inner.fetch()
        try:
            lease = await budget.acquire(TOKEN_CLIENT, priority=True)
        except TenantBusy:
            raise TokenEndpointUnreachable(
                "no slot at the tenant for the token request within tenant.queue_timeout"
            ) from None
        try:
            return await self._inner.fetch()
        finally:
            lease.release()


log = logging.getLogger("fwproxy.attempts")
VERIFY_PATH = "/fotoweb/me"  # what `fwproxy check` asks too: any valid token may read it
VERIFY_AGENT = f"fwproxy/{__version__} (token check after a 401)"  # for the tenant's log


async def verify_token(session: aiohttp.ClientSession, tenant: URL, placement: str,
                       token: Token, timeout: float) -> Verdict:
    """Whether the tenant still takes `token`: ``GET /fotoweb/me`` with it, placed as
    requests place it now (after a 401 to a token the tenant took before, tokens.py)."""
    query, headers = "", {"Accept": "application/json", "User-Agent": VERIFY_AGENT}
    if placement == "query":
        query = add_param("", "access_token", token.value)
    else:
        headers["Authorization"] = f"Bearer {token.value}"
    url = URL.build(scheme=tenant.scheme, host=tenant.raw_host or "",
                    port=tenant.explicit_port, path=VERIFY_PATH, query_string=query,
                    encoded=True)
    try:
        async with session.get(url, headers=headers, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout or None)) as resp:
            status: int | None = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("verifying the token after a 401 failed: %s", translate(exc))
        status = None
    verdict = verdict_of(status)
    log.info("a 401 to a token the tenant took before: GET %s with it answered %s (%s)",
             VERIFY_PATH, status or "nothing", verdict.value)
    return verdict
