"""The fleet's one access token (client credentials), shared through Redis.

Theory of operation
-------------------
`FleetGrant` wraps the instance's grant the way `oauth.SharedGrant` does for worker
processes, with the fleet's record ``token`` (`fleetlock.FleetLock`) instead of a file. The
record's value is JSON of the token, its wall-clock expiry and its lifetime, sealed by
fleetlock and versioned by the lock's fence; it expires from Redis with the token.

The `TokenManager` above keeps the token in memory and asks `fetch` only when it has no
good one (cold start, renewal, a 401): a request with a good token never touches Redis.
`fetch`::

    read the record: a token not yet within its margin, and not the one this instance
        already handed out (so another instance renewed it)            -> take it
    else take the lock (waiters are woken by the release; bounded, see below),
    read again (someone renewed while we waited)                       -> take it
    else fetch from the inner grant, write it (`put_locked`), release  -> ours

So the whole fleet makes one token request on a cold start and one at each renewal. The
holder extends its lease while its token request runs (`FleetLock.holding`), however slow
(the tenant budget's line, a slow endpoint); a holder that dies stops extending it, and the
lock is free within a lease. A waiter waits for the larger of two lease times (what is left
of a dead holder's lease, then the whole lease of the waiter that takes over) and the
longest a token request may take (store.LOCK_TIMEOUT); after that it fetches its own.

A 401: the manager drops the token and tells the grant (`dropped`); the next `fetch` first
deletes the record only if it still holds that token's version (`delete_if_version`), so a
late 401 never throws away the token another instance renewed meanwhile.

Redis is a dependency, not a single point of failure. When it cannot be asked
(`SharedStateUnavailable`, or `SharedState.available` is False) the instance fetches its
own token from the inner grant: clients see no error (fleet.py logs the outage once).
When Redis comes back (`SharedState.on_recovery`) the instance writes back the token it
holds (`put_if_newer`): the newest version wins, so after an empty restart the fleet
shares again. A token fetched alone carries the next version after the highest this
instance has seen. A record that cannot be opened (another key, changed: `SealBroken`) or
holds no token is treated as absent (and replaced by the next holder), logged once
without its content.

After a reload to other credentials (`auth.client_id`, `auth.token_url`) the record's key
names (a hash of the credentials at start) are not theirs: the instance fetches alone until
a restart.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import AuthConfig
from .exceptions import SealBroken, SharedStateUnavailable
from .fleet import SharedState
from .fleetlock import FleetLock, Held
from .store import LOCK_TIMEOUT, StoredSession
from .token_manager import Grant, WrappedGrant
from .tokens import MAX_LIFETIME, Token, stored_token

log = logging.getLogger("fwproxy.fleettoken")

RECORD = "token"  # the record's name (fleetlock.FleetLock): a fixed word, never a value
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # what tokens.parse_token_response accepts


@dataclass(frozen=True)
class SharedToken:
    """A token as the fleet's record holds it: its expiry on the wall clock."""

    value: str
    expires_at: float  # wall clock (epoch seconds): instances share no monotonic clock
    lifetime: float

    def __repr__(self) -> str:
        return f"SharedToken(expires_at={self.expires_at}, lifetime={self.lifetime})"


def record_of(token: Token, wall_now: float, now: float) -> tuple[bytes, float]:
    """The record's value for `token` (obtained on this instance's monotonic clock `now`)
    and its time to live in Redis: the token's remaining life."""
    left = token.expires_at - now
    value = json.dumps({"access_token": token.value, "expires_at": wall_now + left,
                        "lifetime": token.lifetime}).encode()
    return value, left


def parse_record(value: bytes) -> SharedToken | None:
    """The token in a record's value; None for anything that is not one."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    if not isinstance(data, dict):
        return None
    access = data.get("access_token")
    if not isinstance(access, str) or not _TOKEN_CHARS.fullmatch(access):
        return None
    expires_at, lifetime = _number(data.get("expires_at")), _number(data.get("lifetime"))
    if expires_at is None or lifetime is None or not 0 < lifetime <= MAX_LIFETIME:
        return None
    return SharedToken(access, expires_at, lifetime)


def token_of(shared: SharedToken, wall_now: float, now: float, refresh_margin: float
             ) -> Token | None:
    """`shared` on this instance's monotonic clock (`tokens.stored_token`'s timetable), if
    it is not yet within its margin. An expiry further away than its lifetime (another
    instance's wall clock runs ahead) is taken as a whole lifetime from now."""
    expires_at = min(shared.expires_at, wall_now + shared.lifetime)
    saved = StoredSession(refresh_token="", access_token=shared.value,
                          expires_at=expires_at, lifetime=shared.lifetime)
    return stored_token(saved, wall_now, now, refresh_margin)


def _number(value: object) -> float | None:
    """A finite JSON number as a float (not a boolean, not a string of digits)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float
        return None
    return number if math.isfinite(number) else None


class FleetGrant(WrappedGrant):
    """One token for the fleet (the module docstring)."""

    def __init__(
        self,
        inner: Grant,
        state: SharedState,
        refresh_margin: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        self._state = state
        self._lock = FleetLock(state, RECORD)
        self._margin = refresh_margin
        self._clock = clock
        self._wall = wall
        # a live holder extends its lease, so waiting is bounded by a dead holder's lease
        # and by how long a token request may take (store.LOCK_TIMEOUT)
        self._wait = max(2 * state.config.lease_time, LOCK_TIMEOUT)
        self._credentials = inner.cache_key  # what the record's key names were made for
        self._handed_out: str | None = None
        self._held: tuple[int, Token] | None = None  # the version and token we hold
        self._recorded = False  # whether that token is (or was) the fleet's record
        self._seen = 0  # the highest version seen: a token fetched alone gets the next
        self._refused: int | None = None  # the version of a token the tenant refused
        self._said: set[str] = set()  # what was logged once
        self.taken = 0  # tokens taken from the fleet, for tests
        self.from_peer = False  # the last fetch took the fleet's token (no request made)
        self.shared = 0  # token requests made for the fleet (under the lock)
        self.alone = 0  # token requests made for this instance alone (Redis away)
        state.on_recovery(self.write_back)

    def __repr__(self) -> str:
        return f"FleetGrant({self._inner!r}, {self._state!r})"

    def update(self, auth: AuthConfig) -> None:
        self._margin = auth.refresh_margin
        super().update(auth)

    def stored(self) -> Token | None:
        token = self._inner.stored()
        self._handed_out = token.value if token is not None else None
        return token

    def dropped(self, token: Token) -> None:
        """The tenant refused `token` (a 401) and the manager dropped it: the next `fetch`
        deletes the record if it still holds that token (`TokenManager` calls this)."""
        held = self._held
        if held is not None and held[1].value == token.value:
            if self._recorded:
                self._refused = held[0]
            self._held = None  # nothing to write back

    async def fetch(self) -> Token:
        self.from_peer = False
        if not self._ours():
            self._once("reload", "auth changed by a reload: this instance fetches its own "
                       "token (not the fleet's) until it is restarted")
        elif self._state.available:
            token = await self._shared()
            if token is not None:
                return token
        ours = self._ours()
        token = await self._inner.fetch()
        self.alone += 1
        if ours and self._ours():
            self._hold(self._seen + 1, token, recorded=False)
        else:  # another client's token: never written back as the fleet's
            self._held, self._recorded, self._handed_out = None, False, token.value
        return token

    def _ours(self) -> bool:
        """Whether the inner grant still has the credentials the record's keys are for."""
        return self._inner.cache_key == self._credentials

    async def _shared(self) -> Token | None:
        """The fleet's token, or a new one fetched for the fleet; None when Redis cannot
        be asked (the caller fetches alone). The lock is held through the token request
        with its lease extended (`FleetLock.holding`): a renewal slower than a lease (the
        tenant budget's line, a slow token endpoint) still makes one request for the
        fleet, while a holder that dies frees it within a lease."""
        lock = self._lock
        try:
            if self._refused is not None:
                await lock.delete_if_version(self._refused)
                self._refused = None
            theirs = await self._theirs()
            if theirs is not None:
                return theirs
            async with lock.holding(self._wait) as held:
                if held is None:
                    self._once("wait", "waited for the fleet's token lock too long; this "
                               "instance fetches its own token")
                    return None
                theirs = await self._theirs()
                if theirs is not None:
                    return theirs
                token = await self._inner.fetch()
                self.shared += 1
                if not self._ours():  # a reload to other credentials while it was fetched
                    self._held, self._recorded, self._handed_out = None, False, token.value
                    return token
                self._hold(held.fence, token, recorded=False)
                self._recorded = await self._put(held, token)
                return token
        except SharedStateUnavailable as exc:
            self._unshared(exc)
            return None

    async def _theirs(self) -> Token | None:
        """The record's token, if usable and not the one this instance handed out."""
        try:
            record = await self._lock.read()
        except SealBroken:
            self._once("seal", "the fleet's token in Redis cannot be opened (another "
                       "encryption key, or changed); it is replaced")
            return None
        self._said.discard("error")  # Redis answered: a wrong record type is gone
        if record is None:
            return None
        self._seen = max(self._seen, record.version)
        shared = parse_record(record.value)
        if shared is None:
            self._once("seal", "the fleet's token record in Redis holds no token; it is "
                       "replaced")
            return None
        self._said.discard("seal")
        token = token_of(shared, self._wall(), self._clock(), self._margin)
        if token is None or token.value == self._handed_out:
            return None
        self.taken += 1
        self.from_peer = True
        self._hold(record.version, token, recorded=True)
        return token

    async def _put(self, held: Held, token: Token) -> bool:
        """Whether `token` is now the fleet's record."""
        value, ttl = record_of(token, self._wall(), self._clock())
        try:
            if await self._lock.put_locked(held, value, ttl):
                return True
        except SharedStateUnavailable as exc:
            self._unshared(exc)  # held: written back when Redis is back
            return False
        log.info("token kept by this instance, not shared: the fleet lock's lease ran out "
                 "while it was obtained, or a newer one was written back meanwhile")
        return False

    def _hold(self, version: int, token: Token, recorded: bool) -> None:
        self._held = (version, token)
        self._recorded = recorded
        self._seen = max(self._seen, version)
        self._handed_out = token.value

    async def write_back(self) -> None:
        """Redis is back: give it the token this instance holds, unless it has the same or
        a newer version (an empty restart loses nothing). Raises SharedStateUnavailable."""
        held = self._held
        if held is None or not self._ours():
            return
        version, token = held
        now = self._clock()
        if not token.usable(now):
            return
        value, ttl = record_of(token, self._wall(), now)
        if await self._lock.put_if_newer(version, value, ttl):
            if self._held is held:
                self._recorded = True
            log.info("shared state: wrote this instance's token back to Redis")

    def _unshared(self, exc: SharedStateUnavailable) -> None:
        """Redis could not be asked. An outage is logged by fleet.py; a Redis that answers
        with an error (a record of the wrong type) is logged here, once."""
        if exc.why == "error":
            self._once("error", f"the fleet's token cannot be read from Redis ({exc}); "
                       "this instance fetches its own token")

    def _once(self, topic: str, message: str) -> None:
        if topic not in self._said:
            self._said.add(topic)
            log.warning("%s", message)
