"""The tenant budget fleet-wide: ``tenant.max_in_flight`` and ``tenant.max_rate`` shared by
every instance through Redis (``state.backend: redis``; issue 16, point 3). Longer than 400
lines because the three Lua scripts live here, next to the Python they mirror, and the
line's four small tasks (asker, flusher, renewer, listener) belong together.

Theory of operation
-------------------
`FleetBudget` is budget.py's fair line (priority lane, round robin across clients, FIFO
within one, ``tenant.queue_timeout`` -> `TenantBusy`) with one change: a waiter at the head
takes a grant *from Redis* instead of from the process's own counters. Fairness holds per
instance, in the local line; Redis holds the fleet's totals::

    request ──> local fair line ──head──> grant in hand? ──yes──> Lease (granted)
                                              │ no
                                              v
                      the asker (one task per instance): ONE script call asks for as many
                      grants as there are waiters without one (a batch: at most one round
                      trip per request, fewer under load); grants go to the line in its order
                      └─ fewer than asked: wait for the script's hint (rate), or for a
                         release (pub/sub from any instance, or our own), at most SLOT_POLL
                         (slots): never a busy loop

The script (`_ACQUIRE`) is `grant` line for line: the in-flight slots are a sorted set of
lease ids scored by their expiry (Redis's own clock: `TIME`); it drops expired members,
counts, and adds the granted ids; the rate is GCRA (budget.py `gcra`) over ``tat``, stored
with a TTL of ``burst * T``. A lease's id goes back (ZREM) never on the request path:
`release` queues it; the next ask carries the queue (given back first, in the same call),
or one flusher task sends it (`_RELEASE`): at once when the last ask saw someone in the
fleet waiting for a slot (the script's marker), else once RELEASE_DELAY passes without
an ask (asks keep coming under load and carry them: fewer round trips; a waiter elsewhere
that came since waits about that much longer at most). A
failed release is counted, kept and sent again when Redis is back; until then the slot is
bounded by its lease. One renewer task per instance extends all held leases every
``lease_time / 3`` (`_RENEW`, one call), writing back those Redis lost without an outage
anyone noticed (restarted empty within a probe interval, failed over); so a crashed
instance's slots (``kill -9``) come back within ``state.lease_time``.

No cap configured: `configured` is False and the handler never asks (no Redis call at all;
the tasks start only when needed). Redis unreachable (`SharedState.available` False) or
refusing our script: the line falls back to the local budget with this instance's share
(`share`: ``max_in_flight / state.fleet_size`` rounded up, at least 1; the rate and burst
divided likewise; the whole without a fleet size), logged once, shown as `fallback`
(``fwproxy_tenant_budget_fallback``, the status page). When Redis is back
(`SharedState.on_recovery`) the leases granted meanwhile are written to Redis (and those
held before, should Redis have come back empty), failed releases are sent, and the line
asks Redis again. A reload (`configure`) applies at once: the next ask carries the new caps.

Pure parts (`grant`, `share`, `rate_share`) are tested as tables (tests/test_fleetbudget.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from .budget import Lease, LocalBudget, Schedule, _call_later, gcra
from .exceptions import SharedStateUnavailable, TenantBusy
from .fleet import SharedState

log = logging.getLogger("fwproxy.fleetbudget")

MAX_BATCH = 64  # grants asked for in one call; ids released or renewed in one call: 8x that
SLOT_POLL = 0.2  # seconds a waiter for a slot sleeps at most without hearing of a release
RELEASE_DELAY = 0.05  # seconds a release waits for an ask to carry it, then goes alone,
# while nobody in the fleet waits for a slot (else it goes at once)
MIN_PAUSE = 0.001  # the shortest pause after a refusal (a rate hint rounds up to this)
ERROR_PAUSE = 1.0  # seconds on the local share after Redis refused our script (`error`)

# KEYS: slots (sorted set: lease id -> expiry ms), tat, waiting (a marker: someone waits
# for a slot, so releases publish). ARGV: want, max_in_flight, rate, burst, lease ms,
# channel, n, then n ids released (given back first, as `_RELEASE`), then the ids to
# grant (want of them when max_in_flight > 0). Returns {granted, wait us, whether someone
# in the fleet waits for a slot}. After the
# releases this is `grant` line for line, with `gcra` inlined in the loop. What no instance
# writes is dropped: a slot expiring beyond now + MAX_LEASE (state.lease_time's bound; a
# member scored +inf held a slot for good), a tat that is NaN (it granted everything).
# The ids to grant are removed first: redis-py sends a call again when its reply was lost
# (a reset, a socket timeout), and the second run must not count the first one's grants.
_ACQUIRE = """
local MAX_LEASE = 3600
local released = tonumber(ARGV[7])
if released > 0 then
  local gone = redis.call('ZREM', KEYS[1], unpack(ARGV, 8, 7 + released))
  if gone > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('PUBLISH', ARGV[6], gone)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local want = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local free = want
if cap > 0 then
  if want > 0 then  -- this very call sent again (its reply was lost): its ids count once
    redis.call('ZREM', KEYS[1], unpack(ARGV, 8 + released, 7 + released + want))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now * 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + MAX_LEASE) * 1000, '+inf')
  free = math.max(0, math.min(want, cap - redis.call('ZCARD', KEYS[1])))
end
local granted, wait = free, 0
if rate > 0 and free > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if tat ~= tat then tat = 0 end  -- NaN ("nan" reads as one): every comparison is false
  local interval = 1 / rate
  local tolerance = math.max(1, burst) * interval
  granted = 0
  while granted < free do
    tat = math.min(math.max(tat, now), now + tolerance)
    local allow_at = tat + interval - tolerance
    if allow_at > now then
      wait = allow_at - now
      break
    end
    tat = tat + interval
    granted = granted + 1
  end
  redis.call('SET', KEYS[2], string.format('%.17g', tat), 'PX',
             math.max(1, math.ceil(tolerance * 1000)))
end
if cap > 0 then
  if granted > 0 then
    local expiry, members = now * 1000 + lease_ms, {}
    for i = 1, granted do
      members[2 * i - 1] = expiry
      members[2 * i] = ARGV[7 + released + i]
    end
    redis.call('ZADD', KEYS[1], unpack(members))
  end
  redis.call('PEXPIRE', KEYS[1], lease_ms)
  if free < want then redis.call('SET', KEYS[3], '1', 'PX', lease_ms) end
end
return {granted, math.ceil(wait * 1000000), redis.call('EXISTS', KEYS[3])}
"""
# KEYS: slots, waiting. ARGV: channel, ids. Removes the ids; publishes when someone waits.
_RELEASE = """
local gone = redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
if gone > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[1], gone)
end
return gone
"""
# KEYS: slots. ARGV: lease ms, ids. Extends the ids' leases, adding those missing (Redis
# lost them: restarted empty, failed over); returns how many were missing.
_RENEW = """
local t = redis.call('TIME')
local expiry = (tonumber(t[1]) + tonumber(t[2]) / 1000000) * 1000 + tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return added
"""


@dataclass(frozen=True)
class Grant:
    """One ask: how many may start now, the rate's state to keep, and (when fewer than
    asked) how long until the rate allows the next (0: the slots are what is short)."""

    granted: int
    tat: float
    wait: float


def grant(now: float, want: int, in_use: int, cap: int, tat: float, rate: float,
          burst: float) -> Grant:
    """What `_ACQUIRE` decides, for `want` waiters, `in_use` of `cap` slots taken (cap 0:
    no slot cap), the rate's `tat` (rate 0: no rate cap): slots first (a waiter without a
    slot spends no rate token), then one `gcra` step per start."""
    free = want if cap <= 0 else max(0, min(want, cap - in_use))
    if rate <= 0 or free <= 0:
        return Grant(free, tat, 0.0)
    granted = 0
    while granted < free:
        step = gcra(now, tat, rate, burst)
        tat = step.tat
        if not step.allowed:
            return Grant(granted, tat, step.wait)
        granted += 1
    return Grant(granted, tat, 0.0)


def share(total: int, fleet_size: int) -> int:
    """This instance's in-flight slots while Redis is away: ``total / fleet_size`` rounded
    up, at least 1; the whole without a fleet size; 0 (no cap) stays 0."""
    if total <= 0 or fleet_size <= 0:
        return total
    return max(1, math.ceil(total / fleet_size))


def rate_share(total: float, fleet_size: int) -> float:
    """This instance's rate (or burst) while Redis is away: ``total / fleet_size``."""
    if total <= 0 or fleet_size <= 0:
        return total
    return total / fleet_size


class FleetLease(Lease):
    """A lease with its id in Redis ("" when only the rate is capped: nothing to give
    back; None: granted from the local share, known only here)."""

    __slots__ = ("id",)

    def __init__(self, budget: LocalBudget, waited: float, lease_id: str | None) -> None:
        super().__init__(budget, waited)
        self.id = lease_id


class FleetBudget(LocalBudget):
    """The tenant budget shared through Redis (the module docstring)."""

    def __init__(self, state: SharedState, fleet_size: int = 0, *,
                 clock: Callable[[], float] = time.monotonic,
                 schedule: Schedule = _call_later) -> None:
        self.state = state
        self.fleet_size = fleet_size
        self.fleet_in_flight, self.fleet_rate, self.fleet_burst = 0, 0.0, 0.0
        self.slots_key = state.key("budget:slots")
        self.tat_key = state.key("budget:tat")
        self.waiting_key = state.key("budget:waiting")
        self.channel = state.key("budget:released")
        self.lease_ms = max(1, int(state.config.lease_time * 1000))
        self.renew_every = state.config.lease_time / 3
        self._acquire = state.redis.register_script(_ACQUIRE)
        self._release = state.redis.register_script(_RELEASE)
        self._renew = state.redis.register_script(_RENEW)
        self._instance = secrets.token_hex(6)  # lease ids: "<instance>:<n>", nothing secret
        self._numbers = itertools.count(1)
        self._in_hand: deque[str] = deque()  # grants from Redis not yet given to a waiter
        self._taking: str | None = None  # the grant `_take` gave to the lease being made
        self._held: set[str] = set()  # lease ids in Redis held by a lease (renewed)
        self._local: set[str] = set()  # ids of leases from the local share (written back)
        self._releasing: list[str] = []  # released, to be sent
        self._unreleased: set[str] = set()  # a send failed: sent again on recovery
        self._wake = asyncio.Event()  # a slot was released somewhere, or the caps changed
        self._asker: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._error_until = 0.0
        self._fleet_waits = True  # someone in the fleet waits for a slot (the last ask saw)
        self._sharing = True
        self._closed = False
        self.asks = 0  # script calls asking for grants
        self.fallbacks = 0  # times this instance fell back to its share
        self.release_failures = 0  # lease ids whose release could not be sent at once
        self.written_back = 0  # held lease ids the renewer found missing in Redis
        super().__init__(clock=clock, schedule=schedule)
        state.on_recovery(self._recovered)

    def __repr__(self) -> str:
        return (f"FleetBudget(max_in_flight={self.fleet_in_flight}, "
                f"max_rate={self.fleet_rate}, fallback={self.fallback})")

    def configure(self, max_in_flight: int, max_rate: float, max_burst: float,
                  queue_timeout: float) -> None:
        """The fleet's caps (the next ask carries them); the local line keeps this
        instance's share, in force only while Redis is away."""
        self.fleet_in_flight, self.fleet_rate = max_in_flight, max_rate
        self.fleet_burst = max_burst or max_rate
        super().configure(share(max_in_flight, self.fleet_size),
                          rate_share(max_rate, self.fleet_size),
                          rate_share(max_burst, self.fleet_size), queue_timeout)
        self._wake.set()

    @property
    def fallback(self) -> bool:
        """Whether this instance runs on its own share now (Redis away, or refusing)."""
        return self.configured and not self._shared()

    def view(self) -> dict[str, object]:
        if self.fallback:
            return {"scope": "instance share (Redis away)", "max_in_flight": self.max_in_flight,
                    "max_rate": self.max_rate}
        return {"scope": "fleet", "max_in_flight": self.fleet_in_flight,
                "max_rate": self.fleet_rate}

    async def acquire(self, client: str, priority: bool = False) -> Lease:
        """As `LocalBudget.acquire`; with ``queue_timeout: 0`` (no line) one ask decides."""
        if self.queue_timeout <= 0 and not self._in_hand and self._shared_now():
            now = self._clock()
            try:
                got, _ = await self._ask(1)
            except SharedStateUnavailable:
                got = None  # the local share decides
            if got is not None:
                if not got:
                    self.refused += 1
                    raise TenantBusy(0, self._retry_after())
                self._taking = got[0]
                return self._lease(now, now)
        return await super().acquire(client, priority)

    # --- the line's hooks (budget.py) -----------------------------------------------------

    def _take(self, now: float) -> bool:
        if self._in_hand:
            self._taking = self._in_hand.popleft()
            return True
        if not self._shared_now():
            self._taking = None
            return super()._take(now)
        if self._asker is None and not self._closed:
            self._asker = asyncio.get_running_loop().create_task(self._ask_loop())
        return False

    def _new_lease(self, waited: float) -> Lease:
        lease_id, self._taking = self._taking, None
        if lease_id is None:  # from the local share: known to Redis only on recovery
            if self.fleet_in_flight > 0:
                lease_id = self._next_id()
                self._local.add(lease_id)
        elif lease_id:
            self._held.add(lease_id)
        return FleetLease(self, waited, lease_id)

    def release(self, lease: Lease) -> None:
        """Give a slot back: the local line moves at once, Redis hears of it in the next
        batch (the request does not wait for it)."""
        if lease.released:
            return
        lease_id = lease.id if isinstance(lease, FleetLease) else None
        if lease_id:
            if lease_id in self._held:
                self._held.discard(lease_id)
                self._send_release([lease_id])
            else:
                self._local.discard(lease_id)
        super().release(lease)

    # --- Redis ----------------------------------------------------------------------------

    def _shared(self) -> bool:
        return self.state.available and self._clock() >= self._error_until

    def _shared_now(self) -> bool:
        """`_shared`, logging each change (once per outage)."""
        shared = self._shared()
        if shared != self._sharing:
            self._sharing = shared
            if shared:
                log.warning("tenant budget: fleet-wide again (max_in_flight %s, max_rate %g)",
                            self.fleet_in_flight, self.fleet_rate)
            else:
                self.fallbacks += 1
                log.warning("tenant budget: Redis is away; this instance takes its share: "
                            "max_in_flight %s, max_rate %g (state.fleet_size %s)",
                            self.max_in_flight, self.max_rate, self.fleet_size or "not set")
        return shared

    def _next_id(self) -> str:
        return f"{self._instance}:{next(self._numbers)}"

    async def _ask_loop(self) -> None:
        """Ask Redis for the waiters without a grant, until none is left (the module
        docstring); on a failure the line goes on with the local share."""
        try:
            while not self._closed:
                need = self._queued - len(self._in_hand)
                if need <= 0 or not self._shared_now():
                    break
                self._wake.clear()
                want = min(need, MAX_BATCH)
                try:
                    got, wait = await self._ask(want)
                except SharedStateUnavailable as exc:
                    if self.state.available:  # it answered, but refused the script
                        self._error_until = self._clock() + ERROR_PAUSE
                        log.warning("tenant budget: Redis refused the budget's script (%s); "
                                    "this instance takes its share for %gs", exc,
                                    ERROR_PAUSE)
                    break
                self._in_hand.extend(got)
                self._pump()
                if self._in_hand:
                    break  # more than the line still wants: its waiters left meanwhile
                if len(got) < want:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(),
                                               max(MIN_PAUSE, wait) if wait else SLOT_POLL)
        finally:
            self._asker = None
        if not self._closed:
            self._pump()  # the local share, if that is what ended the loop
            if self._in_hand and not self._queued:  # their waiters left meanwhile
                surplus = [each for each in self._in_hand if each]
                self._in_hand.clear()
                self._send_release(surplus)

    async def _ask(self, want: int) -> tuple[list[str], float]:
        """One script call for `want` grants: the ids granted ("" each when only the rate
        is capped) and the rate's hint."""
        ids = [self._next_id() for _ in range(want)] if self.fleet_in_flight > 0 else []
        released = self._releasing[:MAX_BATCH * 8]
        del self._releasing[:len(released)]
        args: list[str | int | float] = [want, self.fleet_in_flight, self.fleet_rate,
                                         self.fleet_burst, self.lease_ms, self.channel,
                                         len(released), *released, *ids]
        try:
            answer = await self._run(self._acquire, [self.slots_key, self.tat_key,
                                                     self.waiting_key], args)
        except SharedStateUnavailable:
            self._not_released(released)
            raise
        except BaseException:  # cancelled mid-call (the client went; closing): whether the
            self._send_release([*released, *ids])  # script ran is unknown; ZREM is safe
            raise
        self.asks += 1
        if self._unreleased:  # refused with Redis up: no recovery sends them; this one
            unsent = [*self._unreleased]  # answered, so they go now
            self._unreleased.clear()
            self._send_release(unsent)
        granted, wait_us = int(answer[0]), int(answer[1])
        self._fleet_waits = bool(int(answer[2]))
        if granted and ids:
            self._ensure_renewer()
        if granted < want and ids and not wait_us:
            self._ensure_listener()  # slots are short: hear of releases
        return (ids[:granted] if ids else [""] * granted), wait_us / 1e6

    def _send_release(self, ids: list[str]) -> None:
        """Queue `ids` for Redis; our own line may ask again at once (carrying them)."""
        if not ids:
            return
        self._releasing.extend(ids)
        self._wake.set()
        if self._flusher is None:
            with contextlib.suppress(RuntimeError):  # (no loop: closing)
                self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send the released ids, in batches, until none is left."""
        try:
            while self._releasing and not self._closed and not self._fleet_waits:
                asks = self.asks
                await asyncio.sleep(RELEASE_DELAY)  # (asks may carry them meanwhile)
                if self.asks == asks:
                    break  # no ask came: they go alone
            while self._releasing:
                batch = self._releasing[:MAX_BATCH * 8]
                del self._releasing[:len(batch)]
                try:
                    await self._run(self._release, [self.slots_key, self.waiting_key],
                                    [self.channel, *batch])
                except SharedStateUnavailable:
                    self._not_released(batch)
        finally:
            self._flusher = None

    def _not_released(self, ids: list[str]) -> None:
        """Sending `ids` failed: counted, kept for the recovery; bounded by the lease."""
        self.release_failures += len(ids)
        self._unreleased.update(ids)

    def _ensure_renewer(self) -> None:
        if self._renewer is None and not self._closed:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        """Every lease_time / 3, while leases are held: extend them all (one call)."""
        try:
            while not self._closed:
                await asyncio.sleep(self.renew_every)
                ids = [*self._held, *(each for each in self._in_hand if each)]
                if not ids:
                    break
                with contextlib.suppress(SharedStateUnavailable):  # recovery writes back
                    missing = await self._renewed(ids)
                    if missing:
                        self.written_back += missing
                        log.warning("tenant budget: %d lease(s) held here were missing in "
                                    "Redis (it lost them: restarted empty, failed over, or "
                                    "changed); written back", missing)
        finally:
            self._renewer = None

    async def _renewed(self, ids: list[str]) -> int:
        """Extend `ids`' leases, writing back those Redis lost (a restart no call noticed
        as an outage: no recovery writes back); how many were missing. An id released
        while the call was on its way is released again after it: the release may have
        reached Redis first (another connection), and must not be undone for a lease."""
        added = 0
        try:
            for start in range(0, len(ids), MAX_BATCH * 8):
                added += int(await self._run(
                    self._renew, [self.slots_key],
                    [self.lease_ms, *ids[start:start + MAX_BATCH * 8]]))
        finally:
            self._send_release([each for each in ids if each not in self._held
                                and each not in self._local and each not in self._in_hand])
        return added

    async def _run(self, script: AsyncScript, keys: list[str],
                   args: list[str | int | float]) -> Any:
        """One script call through `SharedState.call` (EVALSHA; the script is loaded
        again by redis-py after a Redis restart)."""
        return await self.state.call(lambda r: script(keys=keys, args=args, client=r))

    def _ensure_listener(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Wake the asker on every release in the fleet (pub/sub); after a failure, try
        again every probe interval."""
        while not self._closed:
            with contextlib.suppress(SharedStateUnavailable):
                await self._subscribed(self.state.redis.pubsub())
            await asyncio.sleep(self.state.probe_interval)

    async def _subscribed(self, pubsub: PubSub) -> None:
        state = self.state
        try:
            await state.call(lambda r: pubsub.subscribe(self.channel))
            while True:
                message = await state.call(lambda r: pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0), waits=1.0)
                if message is not None:
                    self._wake.set()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _recovered(self) -> None:
        """Redis is back: write back the leases held (those from the local share, and all,
        should Redis have come back empty), send the releases that failed, ask again."""
        if self.fleet_in_flight > 0 and (self._held or self._local):
            ids = [*self._held, *self._local]
            await self._renewed(ids)
            self._held.update(self._local)
            self._local.clear()
            self._ensure_renewer()
        if self._unreleased:
            ids = list(self._unreleased)
            self._unreleased.clear()
            self._send_release(ids)
        self._wake.set()
        if self._queued:
            self._pump()

    async def aclose(self) -> None:
        """Stop the tasks; give back what is held (what cannot be sent runs out with its
        lease)."""
        self._closed = True
        for task in (self._asker, self._renewer, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._send_release([*self._held, *(each for each in self._in_hand if each)])
        self._held.clear()
        self._in_hand.clear()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), self.state.timeout * 2)
