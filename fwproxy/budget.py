"""The tenant budget: a fair line in front of the tenant, for in-flight slots and a rate.

Theory of operation
-------------------
A request that may go to the tenant first takes a `Lease` from the budget
(``tenant.max_in_flight`` slots, ``tenant.max_rate`` starts a second with bursts of
``tenant.max_burst``) and gives it back when the tenant's answer is fully read. When it
cannot start at once it waits in line, for at most ``tenant.queue_timeout``; then
`TenantBusy` (503 ``busy`` with Retry-After). With no cap configured, `configured` is
False and the handler skips the budget altogether: no cost.

A waiter needs both a slot and a rate token; it gets them in this order::

    priority lane (the token endpoint's requests), FIFO      first
    then one waiter per client in turn (round robin across clients, FIFO within one)

so a bulk tool with 500 requests in line delays a one-off request by one turn, not 500.
Each waiter's state::

    QUEUED ──slot and token──> GRANTED (a Lease; `release` frees the slot, once)
       │  ──queue_timeout────> TenantBusy
       └──cancelled──────────> gone (never holds a slot)

The line moves (`_pump`) whenever something changes: a lease released, a waiter added,
the rate timer firing (one timer, armed only while the head of the line waits for a rate
token), a reload (`configure`: new caps apply to the waiters at once). Cancellation is
safe both ways: a waiter cancelled while queued leaves the line, and one granted a lease in
the same loop turn as its cancellation hands the lease straight on to the next.

The rate is GCRA (`gcra`), a pure function of ``(now, tat, rate, burst)``: a theoretical
arrival time ``tat`` is the whole state, so a Redis script mirrors it line for line
(fleetbudget.py: the fleet-wide budget, this line with its slots and rate in Redis, which
overrides `_take` and `_new_lease`). The clock and the timer are injected (tests run the
line on a fake clock).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .exceptions import TenantBusy as TenantBusy  # (its home: exceptions)

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class Gcra:
    """One GCRA step: whether a request may start now, the state to keep, and (when not)
    how long until it may."""

    allowed: bool
    tat: float
    wait: float


def gcra(now: float, tat: float, rate: float, burst: float) -> Gcra:
    """`rate` starts a second, `burst` of them at once after a quiet spell.

    ``T = 1 / rate``; ``tat`` (theoretical arrival time) starts at 0. First clamp ``tat``
    into ``[now, now + burst * T]`` (the lower bound forgets idle time beyond a full
    bucket; the upper one only matters after a rate change, so a raised rate takes effect
    within one interval). A request is allowed when ``tat + T - burst * T <= now``, and
    then ``tat += T``. Keep the returned ``tat`` either way (a clamp must stick, or a
    lowered bound would slide with ``now``). As a script: the same lines, ``tat`` stored
    with a TTL of ``burst * T``.
    """
    interval = 1.0 / rate
    tolerance = max(1.0, burst) * interval
    tat = min(max(tat, now), now + tolerance)
    allow_at = tat + interval - tolerance
    if allow_at > now:
        return Gcra(False, tat, allow_at - now)
    return Gcra(True, tat + interval, 0.0)


class Lease:
    """A slot at the tenant (and the rate token spent to start). Release it once done;
    releasing again does nothing. `waited`: seconds spent in line."""

    __slots__ = ("_budget", "released", "waited")

    def __init__(self, budget: LocalBudget, waited: float) -> None:
        self._budget: LocalBudget = budget
        self.waited = waited
        self.released = False

    def release(self) -> None:
        self._budget.release(self)


class Budget(Protocol):
    """What the handler needs from a budget (local now; fleet-wide through Redis later)."""

    @property
    def configured(self) -> bool: ...

    async def acquire(self, client: str, priority: bool = False) -> Lease: ...

    def release(self, lease: Lease) -> None: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Timer]


def _call_later(delay: float, callback: Callable[[], None]) -> Timer:
    return asyncio.get_running_loop().call_later(delay, callback)


class _Waiter:
    __slots__ = ("client", "future", "priority", "since", "timer")

    def __init__(self, client: str, priority: bool, since: float) -> None:
        self.client = client
        self.priority = priority
        self.since = since
        self.future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self.timer: Timer | None = None


class LocalBudget:
    """The budget of one process (the module docstring)."""

    def __init__(self, max_in_flight: int = 0, max_rate: float = 0, max_burst: float = 0,
                 queue_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 schedule: Schedule = _call_later) -> None:
        self._clock = clock
        self._schedule = schedule
        self._lines: dict[str, deque[_Waiter]] = {}  # per client, FIFO
        self._turns: deque[str] = deque()  # clients with someone in line, in turn order
        self._priority: deque[_Waiter] = deque()
        self._queued = 0
        self._tat = 0.0
        self._rate_timer: Timer | None = None
        self.in_flight = 0
        self.granted = 0
        self.refused = 0  # answered TenantBusy (timed out in line, or queue_timeout 0)
        self.wait_counts = [0] * (len(WAIT_BUCKETS) + 1)  # the last one: +Inf
        self.wait_sum = 0.0
        self.max_in_flight, self.max_rate, self.burst, self.queue_timeout = 0, 0.0, 0.0, 0.0
        self.configure(max_in_flight, max_rate, max_burst, queue_timeout)

    def configure(self, max_in_flight: int, max_rate: float, max_burst: float,
                  queue_timeout: float) -> None:
        """New caps (at start and on a reload); the waiters in line are judged by them at
        once, and their timeouts count from when each began to wait."""
        self.max_in_flight = max_in_flight
        self.max_rate = max_rate
        self.burst = max_burst or max_rate  # 0: the same as max_rate
        changed, self.queue_timeout = queue_timeout != self.queue_timeout, queue_timeout
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        if changed and self._queued:
            now = self._clock()
            for waiter in [*self._priority, *(w for line in self._lines.values() for w in line)]:
                self._arm_timeout(waiter, now)
        self._pump()

    @property
    def configured(self) -> bool:
        """Whether any cap is set: if not, the handler need not ask."""
        return self.max_in_flight > 0 or self.max_rate > 0

    @property
    def queue_length(self) -> int:
        return self._queued

    @property
    def fallback(self) -> bool:
        """Whether a fleet-wide budget fell back to this instance's share (never, here)."""
        return False

    def view(self) -> dict[str, object]:
        """The caps in force, for the status page."""
        return {"scope": "instance", "max_in_flight": self.max_in_flight,
                "max_rate": self.max_rate}

    async def acquire(self, client: str, priority: bool = False) -> Lease:
        """A slot for `client` (an API key's name, else the client's address); `priority`
        for the token endpoint's requests. Raises `TenantBusy` after queue_timeout."""
        now = self._clock()
        if not (self._priority if priority else self._queued) and self._take(now):
            return self._lease(now, now)
        if self.queue_timeout <= 0:
            self.refused += 1
            raise TenantBusy(0, self._retry_after())
        waiter = _Waiter(client, priority, now)
        if priority:
            self._priority.append(waiter)
        else:
            line = self._lines.get(client)
            if line is None:
                line = self._lines[client] = deque()
                self._turns.append(client)
            line.append(waiter)
        self._queued += 1
        self._arm_timeout(waiter, now)
        self._pump()
        try:
            return await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # granted as it was cancelled: pass it on
            else:
                self._remove(waiter)
            raise

    def release(self, lease: Lease) -> None:
        """Give a slot back (idempotent); the next in line may start."""
        if lease.released:
            return
        lease.released = True
        self.in_flight -= 1
        if self._queued:
            self._pump()

    def _take(self, now: float) -> bool:
        """Take a slot and a rate token if both are free now."""
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return False
        if self.max_rate > 0:
            step = gcra(now, self._tat, self.max_rate, self.burst)
            self._tat = step.tat  # (even refused: a clamp after a rate change must stick)
            if not step.allowed:
                if self._rate_timer is None and self._queued:
                    self._rate_timer = self._schedule(step.wait, self._on_rate_timer)
                return False
        return True

    def _lease(self, now: float, since: float) -> Lease:
        self.in_flight += 1
        self.granted += 1
        waited = now - since
        self.wait_counts[bisect.bisect_left(WAIT_BUCKETS, waited)] += 1
        self.wait_sum += waited
        return self._new_lease(waited)

    def _new_lease(self, waited: float) -> Lease:
        return Lease(self, waited)

    def _pump(self) -> None:
        """Grant the line, in its order, as long as there are slots and tokens."""
        now = self._clock()
        while (waiter := self._head()) is not None and self._take(now):
            self._pop(waiter)
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiter.future.set_result(self._lease(now, waiter.since))

    def _head(self) -> _Waiter | None:
        """The next live waiter (one whose task was cancelled but has not yet run to leave
        the line is dropped here, so the slot goes to the next)."""
        while self._priority:
            if not self._priority[0].future.done():
                return self._priority[0]
            self._pop(self._priority[0])
        while self._turns:
            waiter = self._lines[self._turns[0]][0]
            if not waiter.future.done():
                return waiter
            self._pop(waiter, turn=False)  # (its client keeps its turn)
        return None

    def _pop(self, waiter: _Waiter, turn: bool = True) -> None:
        """Take the head `waiter` out of the line; with `turn`, its client's turn passes."""
        self._queued -= 1
        if waiter.priority:
            self._priority.popleft()
            return
        client = self._turns[0]
        line = self._lines[client]
        line.popleft()
        if not line:
            del self._lines[client]
            self._turns.popleft()
        elif turn:
            self._turns.rotate(-1)

    def _remove(self, waiter: _Waiter) -> None:
        """Take `waiter` out wherever it is in line (cancelled, or timed out)."""
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        line = self._priority if waiter.priority else self._lines.get(waiter.client)
        if line is None or waiter not in line:
            return  # (already out: granted, or dropped by `_head`)
        line.remove(waiter)
        self._queued -= 1
        if not line and not waiter.priority:
            del self._lines[waiter.client]
            self._turns.remove(waiter.client)
        if not self._queued and self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None

    def _arm_timeout(self, waiter: _Waiter, now: float) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        left = max(0.0, waiter.since + self.queue_timeout - now)
        waiter.timer = self._schedule(left, lambda: self._expire(waiter))

    def _expire(self, waiter: _Waiter) -> None:
        waiter.timer = None
        if waiter.future.done():
            return
        self._remove(waiter)
        self.refused += 1
        waiter.future.set_exception(TenantBusy(self.queue_timeout, self._retry_after()))

    def _on_rate_timer(self) -> None:
        self._rate_timer = None
        self._pump()

    def _retry_after(self) -> int:
        """A guess for a refused client: the time the rate needs to serve the line, 1 to
        60 s (1 when only in-flight slots are capped)."""
        if self.max_rate <= 0:
            return 1
        return min(60, max(1, math.ceil(self._queued / self.max_rate)))
