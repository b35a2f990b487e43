"""The async shell around `tokens.decide` and `tokens.plan_renewal`: one cached token, at
most one request in flight, and one timer task that renews it on time (`start`).

One slot, not a cache of several: a process runs exactly one grant, and the token is for
one tenant, client and grant (`Grant.cache_key`). The slot remembers that key, so after a
reload to other credentials the token of the old ones is not used."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Protocol, runtime_checkable

from .config import AuthConfig
from .encodings import Echo, echo_pattern
from .exceptions import NoTokenAvailable, TokenEndpointError, TokenError, TokenResponseInvalid
from .log import REDACT
from .tokens import (
    After401,
    Decision,
    Token,
    Verdict,
    after_401,
    decide,
    next_backoff,
    plan_renewal,
    retry_after_seconds,
    should_drop,
)

log = logging.getLogger("fwproxy.tokens")

Verifier = Callable[[Token], Awaitable[Verdict]]  # a known-good request with a token


class Grant(Protocol):
    """Something that can ask the token endpoint for a fresh token (see `oauth.py`)."""

    @property
    def cache_key(self) -> Hashable: ...

    @property
    def name(self) -> str: ...

    def stored(self) -> Token | None:
        """A token persisted by an earlier run, to start with."""

    def has_news(self) -> bool:
        """Something changed that may fix the last failure (a new login): retry now."""

    def update(self, auth: AuthConfig) -> None:
        """New settings from a reload."""

    async def fetch(self) -> Token: ...


class WrappedGrant:
    """A grant around another (attempts.BudgetedGrant, oauth.SharedGrant,
    fleettoken.FleetGrant): its name, cache key, news, stored token and settings are the
    inner grant's, unless the wrapper says otherwise."""

    def __init__(self, inner: Grant) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def cache_key(self) -> Hashable:
        return self._inner.cache_key

    def stored(self) -> Token | None:
        return self._inner.stored()

    def has_news(self) -> bool:
        return self._inner.has_news()

    def update(self, auth: AuthConfig) -> None:
        self._inner.update(auth)


@runtime_checkable
class Sharing(Protocol):
    """A grant whose fetch may take a token another worker or instance fetched (the
    workers' file, the fleet's Redis, a shared user session): `from_peer` says whether the
    last fetch did, so that `requests` counts only the token requests really made."""

    @property
    def from_peer(self) -> bool: ...


@runtime_checkable
class DropAware(Protocol):
    """A grant that wants to know when the manager drops a token after a 401 (the fleet's
    shared token: fleettoken.py). Other grants need not have `dropped`."""

    def dropped(self, token: Token) -> None: ...


class TokenManager:
    """Hands out the current token, renewing it ahead of expiry and after a 401."""

    def __init__(
        self,
        grant: Grant,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        idle_renewal: float | None = None,
    ) -> None:
        self._grant = grant
        self._idle_renewal = idle_renewal
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._clock = clock
        self._rand = rand
        self._slot: tuple[Hashable, Token] | None = None  # (grant.cache_key, its token)
        self._task: asyncio.Task[Token] | None = None
        self._failures = 0
        self._backoff_until = 0.0
        self._rejected = False  # a 401 dropped the token; the next one is issued in answer
        self._answer_to_rejection: Token | None = None
        self._last_drop = -math.inf
        self._taken: Token | None = None  # the last token the tenant accepted
        self._verifying: tuple[Token, asyncio.Task[Verdict]] | None = None
        self.verifications = 0  # known-good requests made after a 401, for tests
        self.last_error: TokenError | None = None
        self.requests = 0  # token requests made, for tests and metrics
        self.taken = 0  # tokens another worker or instance fetched (no request made)
        self.renewals = 0
        self.failures_by_reason: collections.Counter[str] = collections.Counter()
        # The cached token while it needs no renewal: `get`'s fast path, one comparison.
        self._fresh: Token | None = None
        self._last_use = clock()  # the last `fresh`/`get`: for auth.idle_renewal
        self._values: tuple[str, ...] = ()  # the current token's value and the one before
        # finds either in any encoding (encodings.echo_pattern): for the response scrub
        self.echo: Echo | None = None
        seed = grant.stored()
        if seed is not None:
            self._keep(seed)

    def current(self) -> Token | None:
        """The cached token if it may still be injected (until its `stale_at`), and is for
        the grant's present credentials."""
        slot = self._slot
        if slot is None:
            return None
        key, token = slot
        if self._clock() < token.stale_at and key == self._grant.cache_key:
            return token
        return None

    def fresh(self) -> Token | None:
        """The cached token if it needs no renewal yet: `get`'s fast path, without a
        coroutine."""
        fresh = self._fresh
        now = self._last_use = self._clock()
        if fresh is not None and now < fresh.renew_at:
            return fresh
        return None

    async def get(self) -> Token:
        """A token to inject now; waits only when there is no usable one."""
        fresh = self.fresh()
        if fresh is not None:
            return fresh  # what `decide` says for it too, whatever else is going on
        now = self._last_use
        token = self.current()
        task = self._in_flight()
        if self._backoff_until > now and self._grant.has_news():
            self._backoff_until = 0.0  # e.g. a new `fwproxy login`: no need to wait it out
        decision = decide(token, now, task is not None, self._backoff_until)
        if decision is Decision.USE_AND_RENEW:
            self._start(renewal=True)
        if token is not None and decision in (Decision.USE, Decision.USE_AND_RENEW):
            self._fresh = token
            return token
        if decision is Decision.FAIL:
            assert self.last_error is not None
            raise NoTokenAvailable(self.last_error, retry_after_seconds(self._backoff_until, now))
        if task is None:
            task = self._start(renewal=False)
        try:
            # shield: a client that goes away must not cancel the renewal others wait for
            return await asyncio.shield(task)
        except TokenError as exc:
            retry = retry_after_seconds(self._backoff_until, self._clock())
            raise NoTokenAvailable(exc, retry) from None

    def update(self, auth: AuthConfig) -> None:
        """New settings from a reload, for the grant. A token cached for other credentials
        (another client_id or token endpoint) is not used for these."""
        self._grant.update(auth)
        self._idle_renewal = auth.idle_renewal
        self._fresh = None
        self._wake.set()

    def accepted(self, token: Token) -> None:
        """The tenant took `token`: a later 401 for it is news, not a refusal of this
        client (the cooldown of `tokens.should_drop` is only for tokens never accepted),
        and is verified before the token is dropped (`refused`)."""
        self._taken = token
        if token is self._answer_to_rejection:
            self._answer_to_rejection = None

    async def refused(self, stale: Token, verify: Verifier) -> bool:
        """After a 401 to `stale` (`tokens.after_401`): drop it, unless a newer token
        replaced it already or the tenant took it before and still does: a known-good
        request (`verify`) with it succeeds, so the 401 is about that request's path and no
        reason to renew. One verification a token at a time however many 401s come in
        meanwhile (single flight). True if it was dropped."""
        verdict = None
        while True:
            step = after_401(self.current(), stale, self._clock(), stale is self._taken,
                             stale is self._answer_to_rejection, self._last_drop, verdict)
            if step is not After401.VERIFY:
                break
            verdict = await self._verify(stale, verify)
        if step is After401.DROP:
            self._drop(stale)
        return step is After401.DROP

    async def _verify(self, stale: Token, verify: Verifier) -> Verdict:
        pending = self._verifying
        if pending is not None and pending[0] is stale and pending[1].done() and (
                pending[1].result() is Verdict.REFUSED):
            return Verdict.REFUSED  # refused stays refused (its waiters may not have run yet)
        if pending is None or pending[0] is not stale or pending[1].done():
            self.verifications += 1
            task = asyncio.get_running_loop().create_task(_verdict(verify, stale))
            self._verifying = pending = (stale, task)
        # shield: a client that goes away must not cancel the verification others wait for
        return await asyncio.shield(pending[1])

    def invalidate(self, stale: Token) -> bool:
        """Drop `stale` after a 401, unless a newer token already replaced it (see
        `tokens.should_drop`). True if it was dropped."""
        after_rejection = stale is self._answer_to_rejection
        now = self._clock()
        if not should_drop(self.current(), stale, now, after_rejection, self._last_drop):
            return False
        self._drop(stale)
        return True

    def _drop(self, stale: Token) -> None:
        if isinstance(self._grant, DropAware):
            self._grant.dropped(stale)
        self._last_drop = self._clock()
        self._slot = None
        self._fresh = None
        self._rejected = True
        self._wake.set()
        log.info("token rejected by the tenant (401); renewing")

    def start(self) -> None:
        """Renew on time from now on, in one background task (see `tokens.plan_renewal`):
        an idle proxy keeps its token fresh unless `auth.idle_renewal` says otherwise."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._renew_on_time())

    async def _renew_on_time(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            token = self.current()
            wake = plan_renewal(token, now, self._in_flight() is not None,
                                self._backoff_until, self._last_use, self._idle_renewal)
            if wake.renew:
                await asyncio.wait({self._start(renewal=token is not None)})
                continue
            timeout = None if wake.at is None else max(0.0, wake.at - now)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def aclose(self, grace: float = 35.0) -> None:
        """On shutdown: stop the renewal timer; let a renewal in flight finish (a rotated
        refresh token must be stored), up to `grace` seconds, then cancel it."""
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        task = self._in_flight()
        if task is not None:
            await asyncio.wait({task}, timeout=grace)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _fetch_mapped(self) -> Token:
        """The grant's fetch, with anything unforeseen turned into a `TokenError` (backoff)."""
        try:
            return await self._grant.fetch()
        except (TokenError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.debug("token request raised %r", exc, exc_info=True)
            raise TokenResponseInvalid(
                f"token request failed unexpectedly: {type(exc).__name__}"
            ) from None

    def _keep(self, token: Token) -> None:
        REDACT.add(token.value)  # fetched, or seeded from a store: masked wherever echoed
        if token.value not in self._values[:1]:  # and scrubbed from responses: this one
            self._values = (token.value, *self._values[:1])  # and the one before (in flight)
            self.echo = echo_pattern(self._values)
        if token.refresh_token is not None:
            REDACT.add(token.refresh_token)
        self._slot = (self._grant.cache_key, token)
        self._fresh = token

    def _in_flight(self) -> asyncio.Task[Token] | None:
        return self._task if self._task is not None and not self._task.done() else None

    def _start(self, renewal: bool) -> asyncio.Task[Token]:
        self._task = asyncio.get_running_loop().create_task(self._fetch(renewal))
        self._task.add_done_callback(_retrieve)
        return self._task

    async def _fetch(self, renewal: bool) -> Token:
        try:
            return await self._fetch_once(renewal)
        finally:
            self._wake.set()  # the timer plans anew with the outcome

    async def _fetch_once(self, renewal: bool) -> Token:
        try:
            token = await self._fetch_mapped()
        except TokenError as exc:
            self.requests += 1
            self._failures += 1
            retry_after = exc.retry_after if isinstance(exc, TokenEndpointError) else None
            delay = next_backoff(self._failures, self._rand(), retry_after)
            self._backoff_until = self._clock() + delay
            self.last_error = exc
            self.failures_by_reason[exc.reason] += 1
            log.warning(
                "token request failed (%s); next attempt in %.1fs: %s",
                exc.reason, delay, exc,
            )
            raise
        self._answer_to_rejection = token if self._rejected else None
        self._rejected = False
        self._failures = 0
        self._backoff_until = 0.0
        self.last_error = None
        self._keep(token)
        if renewal:
            self.renewals += 1
        grant = self._grant
        if isinstance(grant, Sharing) and grant.from_peer:
            self.taken += 1
            log.info("token %s: the one another worker or instance fetched (expires_in=%ds)",
                     "renewed" if renewal else "obtained", round(token.lifetime))
            return token
        self.requests += 1
        log.info(
            "token %s from %s (expires_in=%ds)",
            "renewed" if renewal else "obtained", grant.name, round(token.lifetime),
        )
        return token


async def _verdict(verify: Verifier, token: Token) -> Verdict:
    """`verify`'s verdict; one that fails unforeseen proves nothing."""
    try:
        return await verify(token)
    except Exception as exc:  # (CancelledError is not an Exception)
        log.debug("token verification raised %r", exc)
        return Verdict.UNKNOWN


def _retrieve(task: asyncio.Task[Token]) -> None:
    """Mark a finished request's failure as seen: a background renewal has no awaiter."""
    if not task.cancelled():
        task.exception()
