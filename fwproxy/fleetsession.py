"""The user session shared by a fleet: user context (``grant_type: authorization_code``)
with ``state.backend: redis``.

Theory of operation
-------------------
FotoWeb rotates refresh tokens: the first instance to refresh kills the refresh token every
other instance holds. So the fleet keeps one session (refresh token, access token, expiry,
user, lifetime: a `store.StoredSession`) in Redis, as the sealed, versioned record
``session`` guarded by ``FleetLock(state, "session")`` (fleetlock.py), and every refresh
happens under that lock. `FleetSessions` is the `store.SessionStore` that
`oauth.RefreshTokenGrant` refreshes through::

    hold:  write back what this instance holds if Redis lost it (`write_back`: Redis may
           restart empty between two PINGs, unseen), then acquire the fleet lock (wait up
           to store.LOCK_TIMEOUT; its lease is extended while held, since a token request
           may outlast state.lease_time)
    load:  read the record: another instance may have refreshed while we waited; the
           grant uses its access token if usable and not the one we already handed out
    save:  put_locked the rotated session at the lock's fence, BEFORE the grant hands out
           the new access token; then release

So a refresh token is spent once, and a rotation is never lost:

- the lock was lost during the refresh (this instance paused past its lease): the result
  is written only if nothing newer is stored (`put_if_newer`: our rotation is then the
  only live one, since the tenant refuses a spent refresh token); else the newer session
  is used (a new login) or the refresh fails;
- Redis went away during the refresh: the rotated session lives in this instance's memory
  and is written back when Redis returns (below); nobody else can refresh meanwhile.

Redis unreachable: `hold` fails at once (`SharedStateUnavailable`), so nobody refreshes
without the lock; the TokenManager keeps the current access token until it expires, then
answers 503 ``shared_state_unavailable`` with Retry-After (its NoTokenAvailable path).
When Redis is back (`SharedState.on_recovery`), `write_back` writes the newest session
this instance read or wrote with `put_if_newer` at its own version: Redis that comes back
empty loses nothing, and a rotated refresh token is never replaced by an older one.

`fwproxy login` writes the session under the lock with a new version (`save_login`), no
lower than Redis's clock in microseconds (`FleetLock.acquire(clock=True)`): above anything
an instance holds even when Redis restarted empty unseen, so no write-back undoes it;
`fwproxy logout` (`logout`) writes a "logged out" marker at such a version rather than
deleting the record, so no instance's write-back can bring the session back. The status
page's "acting as" is the user of the last session this instance read (`acting_as`): no
Redis call. Nothing here logs a token; key names are fixed words (fleet.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable

from .config import Settings
from .exceptions import ConfigError, SealBroken, SharedStateUnavailable, TokenStoreBusy
from .fleet import SharedState, shared_state
from .fleetlock import FleetLock, Held, Record
from .store import LOCK_TIMEOUT, SessionHold, StoredSession, session_from_json, session_json

log = logging.getLogger("fwproxy.fleet")

RECORD = "session"
LOGGED_OUT = b""  # the record's value after `fwproxy logout`
PROBE_EVERY = 1.0  # seconds between reads of the record after a refusal (`changed`)


class FleetSessions:
    """`store.SessionStore` on the fleet's Redis (the module docstring)."""

    def __init__(self, state: SharedState,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.lock = FleetLock(state, RECORD)
        self._clock = clock
        self._newest: tuple[int, bytes] | None = None  # what this instance holds: write-back
        self._session: StoredSession | None = None  # the record as last read or written
        self._read_once = False
        self._probe: asyncio.Task[None] | None = None
        self._probed_at = -math.inf
        self._said_broken = False
        state.on_recovery(self.write_back)

    def __repr__(self) -> str:
        return f"FleetSessions(prefix={self.state.prefix!r})"

    # --- store.SessionStore ----------------------------------------------------------

    def peek(self) -> StoredSession | None:
        return self._session

    def mark(self) -> object:
        return (self._version(), self.state.recoveries)

    def changed(self, mark: object) -> bool:
        """Whether the record's version (a login, a logout) or Redis (back) changed since
        `mark`; reads the record in the background, at most every PROBE_EVERY seconds."""
        now = self._clock()
        if (self.state.available and now - self._probed_at >= PROBE_EVERY
                and (self._probe is None or self._probe.done())):
            self._probed_at = now
            self._probe = asyncio.get_running_loop().create_task(self._probe_once())
        return mark != self.mark()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[SessionHold]:
        # Redis may have restarted empty without this instance seeing it DOWN (faster than
        # a PING, redis-py reconnecting quietly): no recovery write-back ran. So put back
        # what we hold first (newest wins; a no-op when Redis has it or newer), and before
        # the lock, so the fence we get is above the version written back.
        await self.write_back()
        async with self.lock.holding(LOCK_TIMEOUT) as held:
            yield _Holding(self, _or_busy(held))

    # --- what the rest reads -----------------------------------------------------------

    def acting_as(self) -> str:
        """Who the fleet acts as, for the status page: from the last read, no Redis call."""
        if not self._read_once:
            return "not known yet (the fleet's shared session has not been read)"
        if self._session is None:
            return "nobody yet: run fwproxy login"
        return f"{self._session.user or 'an unknown user'} (fwproxy login, shared by the fleet)"

    async def write_back(self) -> None:
        """Redis is back: store the newest session this instance holds, unless Redis holds
        it or a newer one (newest wins by version)."""
        newest = self._newest
        if newest is not None and await self.lock.put_if_newer(newest[0], newest[1], None):
            log.warning("shared state: wrote the user session (version %d) back to Redis",
                        newest[0])

    async def aclose(self) -> None:
        """Shutting down: stop a background read of the record (`changed`), which may be
        waiting on a Redis that does not answer, before the client is closed."""
        probe = self._probe
        if probe is not None and not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    # --- inside -----------------------------------------------------------------------

    def _version(self) -> int:
        return self._newest[0] if self._newest is not None else 0

    async def _probe_once(self) -> None:
        with contextlib.suppress(SharedStateUnavailable, ConfigError):
            await self.read()

    async def read(self) -> StoredSession | None:
        """The record's session (None: absent, logged out, or unreadable), remembered."""
        try:
            record = await self.lock.read()
        except SealBroken:
            if not self._said_broken:
                self._said_broken = True
                log.warning("shared state: the fleet's session record cannot be opened "
                            "(another key?); treating it as absent: run fwproxy login")
            record = None
        self._read_once = True
        if record is None:
            self._session = None
            return None
        if self._newest is not None and record.version < self._newest[0]:
            # Redis holds an older version than this instance has seen (a sealed record
            # copied and put back, or a stale write-back): newest wins here too; `hold`
            # writes ours back before the next refresh.
            record = Record(*self._newest)
        return self._remember(record)

    def _remember(self, record: Record) -> StoredSession | None:
        if record.version >= self._version():
            self._newest = (record.version, record.value)
        if record.value == LOGGED_OUT:
            self._session = None
            return None
        try:
            self._session = session_from_json(record.value)
        except ValueError:
            self._session = None
            raise ConfigError("state.backend", "the fleet's shared session record is "
                                               "damaged; run fwproxy login") from None
        return self._session


class _Holding:
    """The fleet's session while its lock is held (`store.SessionHold`)."""

    def __init__(self, sessions: FleetSessions, held: Held) -> None:
        self._sessions = sessions
        self._held = held

    async def load(self) -> StoredSession | None:
        return await self._sessions.read()

    async def save(self, session: StoredSession) -> StoredSession | None:
        sessions, held = self._sessions, self._held
        lock = sessions.lock
        value = session_json(session).encode()
        try:
            written = (await lock.put_locked(held, value, None)
                       or await lock.put_if_newer(held.fence, value, None))
        except SharedStateUnavailable as exc:
            # The tenant has taken the old refresh token: ours is the only live one. Keep
            # it and write it back when Redis returns; nobody can refresh before that.
            log.warning("shared state: could not store the rotated user session (%s); "
                        "keeping it to write back when Redis returns", exc.why)
            sessions._remember(Record(held.fence, value))
            return session
        if written:
            sessions._remember(Record(held.fence, value))
            return session
        log.warning("shared state: the fleet's session lock was lost during a refresh and "
                    "a newer session is stored; using that one")
        return await sessions.read()


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[FleetSessions]:
    """The fleet's sessions for a command (`fwproxy login`, `logout`, `token`, `check`)."""
    state = shared_state(settings, announce=False)  # the command says it
    assert state is not None
    try:
        yield FleetSessions(state)
    finally:
        await state.aclose()


async def save_login(settings: Settings, session: StoredSession) -> None:
    """`fwproxy login`: the new session, under the lock, at a new version. Raises
    SharedStateUnavailable (Redis away) or TokenStoreBusy: the login is then not stored."""
    async with opened(settings) as sessions, sessions.lock.holding(
            LOCK_TIMEOUT, clock=True) as held:
        if not await sessions.lock.put_locked(_or_busy(held), session_json(session).encode(),
                                              None):
            raise TokenStoreBusy("the fleet's session changed during the login; run it again")


async def logout(settings: Settings) -> bool:
    """`fwproxy logout`: mark the fleet's session logged out (a new version). Whether there
    was a session."""
    async with opened(settings) as sessions, sessions.lock.holding(
            LOCK_TIMEOUT, clock=True) as held:
        held = _or_busy(held)
        try:
            there = await sessions.read() is not None
        except ConfigError:
            there = True
        if not await sessions.lock.put_locked(held, LOGGED_OUT, None):
            raise TokenStoreBusy("the fleet's session changed during the logout; run it again")
        return there


def _or_busy(held: Held | None) -> Held:
    if held is None:
        raise TokenStoreBusy(f"the fleet's session lock was held by another instance for "
                             f"over {LOCK_TIMEOUT:g}s")
    return held
