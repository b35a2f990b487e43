"""The fleet lock and the versioned records it guards, in Redis (`fleet.SharedState`).

Theory of operation
-------------------
A record (the access token, the user session) is a Redis hash ``{v: version, s: sealed}``:
`sealing.seal` of its value, with its name and version as associated data. Versions only
grow: every write carries one, and Redis refuses (in the same script) a write whose
version is not above the stored one. So "newest wins" holds even across a Redis restart
without persistence: instances write back what they hold (`put_if_newer`), and the fence
counter is raised to the highest version seen, so no later write gets a smaller one.

The lock is ``SET lock <random id> NX PX lease`` plus, in the same script, the next fencing
number (INCR of ``fence``, raised above the guarded record's version)::

    FREE ──acquire (SET NX PX)──> HELD(id, fence) ──release (delete if still id)──> FREE
                                     └──lease runs out (the holder died: kill -9)──> FREE

A holder writes its result with `put_locked`: the script checks that the lock still holds
its id, so a holder whose lease ran out (paused, partitioned) can never overwrite what the
next holder wrote. A holder whose work may outlast the lease (a token request may take
longer than ``state.lease_time``) holds the lock through `holding`: a keeper task extends
the lease (``PEXPIRE`` if the lock is still ours) every third of it, and stops when the lock
is no longer ours; `put_locked` refuses from then on (the holder learns its lock was lost).
Waiters do not spin: they subscribe to the lock's channel, try once, and then wait for a
"released" message or the lease's end, whichever is first, bounded by their own deadline
(`acquire(wait=...)` returns None when it passes).

`delete_if_version`: a 401 drops the shared token only if it is still the one that failed
(compare-and-delete on its version).

Key names are fixed words under the fleet's prefix (`SharedState.key`): never a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .exceptions import SealBroken, SharedStateUnavailable
from .fleet import SharedState
from .sealing import open_sealed, seal

# A stored version or fence as the scripts count on it: plain digits a Lua number holds
# exactly (below 2**53), else 0; as `_version` reads it. Someone's "1e300" or a fence INCR
# cannot raise must not lock the fleet out: the next write replaces it.
_VERSION = """
local function version(raw)
  if type(raw) ~= 'string' or #raw > 16 or not string.match(raw, '^[0-9]+$') then return 0 end
  local n = tonumber(raw)
  if n > 9007199254740991 then return 0 end
  return n
end
"""
# KEYS: lock, fence, record; ARGV: id, lease ms, "1" to take at least Redis's clock (in
# microseconds) as the fence. The fence number, or 0 when held. (The number is SET as %d
# digits, not left to how a Lua number turns into text: Lua's tostring gives 1.765e+15,
# which INCR would refuse.)
_ACQUIRE = _VERSION + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- held; without an expiry it is none of ours (a stray write): give it one lease
  if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 0
end
local counted = redis.call('GET', KEYS[2])
if counted and version(counted) == 0 then redis.call('DEL', KEYS[2]) end
local fence = redis.call('INCR', KEYS[2])
local floor = version(redis.call('HGET', KEYS[3], 'v'))
if ARGV[3] == '1' then
  local now = redis.call('TIME')
  floor = math.max(floor, tonumber(now[1]) * 1000000 + tonumber(now[2]))
end
if fence <= floor then
  fence = floor + 1
  redis.call('SET', KEYS[2], string.format('%d', fence))
end
return fence
"""
# KEYS: lock, channel-less; ARGV: id. 1 when released.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lock; ARGV: id, lease ms. 1 extended, 0 the lock is not ours (any more).
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, record; ARGV: id, version, sealed, ttl ms (0: none). 1 written, 0 not held,
# -1 an equal or newer version is stored.
_PUT_LOCKED = _VERSION + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local stored = version(redis.call('HGET', KEYS[2], 'v'))
if tonumber(ARGV[2]) <= stored then return -1 end
redis.call('HSET', KEYS[2], 'v', ARGV[2], 's', ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4])
else redis.call('PERSIST', KEYS[2]) end
return 1
"""
# KEYS: record, fence; ARGV: version, sealed, ttl ms. 1 written, 0 an equal or newer is there.
_PUT_IF_NEWER = _VERSION + """
local stored = version(redis.call('HGET', KEYS[1], 'v'))
local fence = version(redis.call('GET', KEYS[2]))
if fence < tonumber(ARGV[1]) then redis.call('SET', KEYS[2], ARGV[1]) end
if tonumber(ARGV[1]) <= stored then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
# KEYS: record; ARGV: version. 1 deleted.
_DELETE_IF_VERSION = """
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Held:
    """A held lock: its random id (the lock's value) and its fencing number, which is the
    version of whatever the holder writes."""

    id: str
    fence: int


@dataclass(frozen=True)
class Record:
    """A record's opened value and its version."""

    version: int
    value: bytes

    def __repr__(self) -> str:
        return f"Record(version={self.version})"


class FleetLock:
    """One named lock guarding one record (`name` is a fixed word: ``token``, ``session``)."""

    def __init__(self, state: SharedState, name: str) -> None:
        self.state = state
        self.name = name
        self.lock_key = state.key(f"{name}:lock")
        self.fence_key = state.key(f"{name}:fence")
        self.record_key = state.key(name)
        self.channel = state.key(f"{name}:released")
        self.lease_ms = int(state.config.lease_time * 1000)

    async def acquire(self, wait: float, *, clock: bool = False) -> Held | None:
        """The lock, or None when `wait` seconds pass while others hold it. Raises
        SharedStateUnavailable when Redis cannot be asked. `clock`: the fence is at least
        Redis's clock in microseconds, so what is written under it is newer than anything
        an instance may hold even if Redis lost its fence (restarted empty, unseen): for
        a login or a logout, which no write-back may undo."""
        state = self.state
        lock_id = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        pubsub = state.redis.pubsub()
        try:
            await state.call(lambda r: pubsub.subscribe(self.channel))
            while True:
                fence = await state.call(lambda r: r.eval(
                    _ACQUIRE, 3, self.lock_key, self.fence_key, self.record_key, lock_id,
                    self.lease_ms, "1" if clock else "0"))
                if _number(fence) > 0:
                    return Held(lock_id, _number(fence))
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ttl = await state.call(lambda r: r.pttl(self.lock_key))
                ms = _number(ttl)
                pause = min(left, max(0.01, ms / 1000) if ms > 0 else 0.01)
                await self._released(pubsub, pause)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _released(self, pubsub: object, timeout: float) -> None:
        """Wait for a "released" message on the channel, at most `timeout` seconds."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            message = await self.state.call(
                lambda r: pubsub.get_message(  # type: ignore[attr-defined]
                    ignore_subscribe_messages=True, timeout=left), waits=left)
            if message is not None:
                return

    @contextlib.asynccontextmanager
    async def holding(self, wait: float, *, clock: bool = False
                      ) -> AsyncIterator[Held | None]:
        """`acquire(wait)`, with the lease extended while the body runs, and released after
        it (a release that cannot reach Redis is left to the lease). Yields None when the
        lock could not be had within `wait`."""
        held = await self.acquire(wait, clock=clock)
        if held is None:
            yield None
            return
        keeper = asyncio.get_running_loop().create_task(self._keep(held))
        try:
            yield held
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            with contextlib.suppress(SharedStateUnavailable):
                await self.release(held)

    async def _keep(self, held: Held) -> None:
        """Extend `held`'s lease every third of it, until it is no longer ours."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self.extend(held):
                    return  # lost: put_locked refuses from now on
            except SharedStateUnavailable:
                continue  # Redis away: the lease runs out there, or we extend it next time

    async def extend(self, held: Held) -> bool:
        """Renew `held`'s lease (a full `lease_time` from now) if the lock is still ours."""
        done = await self.state.call(lambda r: r.eval(
            _EXTEND, 1, self.lock_key, held.id, self.lease_ms))
        return _number(done) == 1

    async def release(self, held: Held) -> None:
        """Free the lock if it is still ours, and wake the waiters."""
        state = self.state
        await state.call(lambda r: r.eval(_RELEASE, 1, self.lock_key, held.id))
        await state.call(lambda r: r.publish(self.channel, b"1"))

    async def read(self) -> Record | None:
        """The record, opened; None when there is none, or it cannot be opened (another
        key, changed: `SealBroken` is the caller's to report via `broken`)."""
        state = self.state
        raw = await state.call(lambda r: r.hmget(self.record_key, "v", "s"))
        if not isinstance(raw, list) or len(raw) != 2:
            raise _unexpected()
        version, sealed = raw
        if version is None or not isinstance(sealed, bytes):
            return None
        number = _version(version)
        return Record(number, open_sealed(state.sealing, sealed, self.record_key, number))

    async def put_locked(self, held: Held, value: bytes, ttl: float | None) -> bool:
        """Write `value` at version `held.fence` while the lock is still ours; False when
        it is not (the lease ran out) or a newer version is stored."""
        state = self.state
        sealed = seal(state.sealing, value, self.record_key, held.fence)
        done = await state.call(lambda r: r.eval(
            _PUT_LOCKED, 2, self.lock_key, self.record_key, held.id, held.fence, sealed,
            _ms(ttl)))
        return _number(done) == 1

    async def put_if_newer(self, version: int, value: bytes, ttl: float | None) -> bool:
        """Write back what this instance holds, unless Redis has it or something newer
        (after Redis came back empty); raises the fence to `version` either way."""
        state = self.state
        sealed = seal(state.sealing, value, self.record_key, version)
        done = await state.call(lambda r: r.eval(
            _PUT_IF_NEWER, 2, self.record_key, self.fence_key, version, sealed, _ms(ttl)))
        return _number(done) == 1

    async def delete_if_version(self, version: int) -> bool:
        """Drop the record if it is still at `version` (a 401 for that token)."""
        done = await self.state.call(lambda r: r.eval(
            _DELETE_IF_VERSION, 1, self.record_key, version))
        return _number(done) == 1


def _number(reply: object) -> int:
    """An integer reply, as the scripts and PTTL give; anything else (a broken proxy in
    front of Redis, someone on the network without TLS) is Redis unavailable, not a
    TypeError in the caller."""
    if isinstance(reply, int) and not isinstance(reply, bool):
        return reply
    raise _unexpected()


def _unexpected() -> SharedStateUnavailable:
    return SharedStateUnavailable("error", "Redis answered something unexpected")


MAX_VERSION = 2**53 - 1  # what a Lua number (the scripts) holds exactly


def _version(raw: object) -> int:
    """A record's version as Redis holds it: plain decimal digits in one spelling only, as
    written (the scripts compare it as text, `_DELETE_IF_VERSION`, and as a Lua number), in
    range; anything else (someone wrote it, or a broken Redis) is a broken record."""
    if not isinstance(raw, bytes) or not raw.isdigit() or len(raw) > 16:
        raise SealBroken("the record's version is not a number")
    number = int(raw)
    if number > MAX_VERSION or str(number).encode() != raw:
        raise SealBroken("the record's version is not a number")
    return number


def _ms(ttl: float | None) -> int:
    return 0 if ttl is None else max(1, int(ttl * 1000))

