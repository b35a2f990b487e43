"""The tenant budget (fwproxy/budget.py): GCRA as a table; the fair line on a fake clock.

No wall-clock timing: the budget's clock and timer are a `FakeTime` the test advances, and
the loop is only run until the tasks have nothing left to do (`settle`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fwproxy.budget import Budget, Gcra, Lease, LocalBudget, TenantBusy, gcra


@pytest.mark.parametrize(("now", "tat", "rate", "burst", "expected"), [
    # idle: allowed, and the bucket holds one more interval
    (100.0, 0.0, 2.0, 1.0, Gcra(True, 100.5, 0.0)),
    # rate 2/s, burst 1: the next one waits half a second
    (100.0, 100.5, 2.0, 1.0, Gcra(False, 100.5, 0.5)),
    (100.5, 100.5, 2.0, 1.0, Gcra(True, 101.0, 0.0)),
    # burst 3: three at once, the fourth waits one interval
    (10.0, 10.0, 1.0, 3.0, Gcra(True, 11.0, 0.0)),
    (10.0, 11.0, 1.0, 3.0, Gcra(True, 12.0, 0.0)),
    (10.0, 12.0, 1.0, 3.0, Gcra(True, 13.0, 0.0)),
    (10.0, 13.0, 1.0, 3.0, Gcra(False, 13.0, 1.0)),
    (10.25, 13.0, 1.0, 3.0, Gcra(False, 13.0, 0.75)),
    # a quiet spell refills at most `burst`: tat in the past counts from now
    (1000.0, 13.0, 1.0, 3.0, Gcra(True, 1001.0, 0.0)),
    # a fractional rate with no burst set still lets one through (burst at least 1)
    (0.0, 0.0, 0.5, 0.5, Gcra(True, 2.0, 0.0)),
    (1.0, 2.0, 0.5, 0.5, Gcra(False, 2.0, 1.0)),
    # rate raised from 1/s (burst 100, all spent: tat = now + 100) to 1000/s burst 1:
    # the new rate holds within one interval, not after the old backlog of 100 s
    (0.0, 100.0, 1000.0, 1.0, Gcra(False, 0.001, 0.001)),
    # rate lowered to 1/s while 0.5 s of debt is owed (tat = now + 0.5): the debt counts
    # against the new bucket, in time
    (0.0, 0.5, 1.0, 1.0, Gcra(False, 0.5, 0.5)),
    (0.0, 0.5, 1.0, 2.0, Gcra(True, 1.5, 0.0)),
    # more debt than the new bucket holds: an empty bucket, not more
    (0.0, 7.5, 1.0, 1.0, Gcra(False, 1.0, 1.0)),
])
def test_gcra(now: float, tat: float, rate: float, burst: float, expected: Gcra) -> None:
    got = gcra(now, tat, rate, burst)
    assert got.allowed == expected.allowed
    assert got.tat == pytest.approx(expected.tat)
    assert got.wait == pytest.approx(expected.wait)


def test_gcra_long_run_holds_the_rate() -> None:
    tat, starts, now = 0.0, list[float](), 0.0
    while now < 10.0:  # ask every millisecond for 10 s at 5/s, burst 2
        step = gcra(now, tat, 5.0, 2.0)
        if step.allowed:
            starts.append(now)
        tat = step.tat
        now = round(now + 0.001, 6)
    assert len(starts) == 2 + 49  # the burst, then one every 0.2 s from 0.2 to 9.8
    assert starts[:2] == [0.0, 0.001]
    gaps = [b - a for a, b in itertools.pairwise(starts[2:])]
    assert all(g == pytest.approx(0.2, abs=0.0011) for g in gaps)


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTime:
    """The budget's clock and timer: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        return sum(not t.cancelled for _, _, t in self._timers)

    async def advance(self, seconds: float) -> None:
        """Move the clock, firing each timer at its time, letting tasks run after each."""
        end = self.now + seconds
        await settle()
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = max(self.now, when)
                timer.callback()
                await settle()
        self.now = end
        await settle()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def budget(fake: FakeTime, **caps: Any) -> LocalBudget:
    caps.setdefault("queue_timeout", 30.0)
    return LocalBudget(**caps, clock=fake.clock, schedule=fake.schedule)


class Client:
    """A task taking a lease and holding it until told to let go."""

    def __init__(self, line: LocalBudget, name: str, log: list[str] | None = None,
                 priority: bool = False) -> None:
        self.name, self.lease, self.error = name, None, None
        self._log = log
        self._line = line
        self._done = asyncio.Event()
        self.task = asyncio.create_task(self._run(priority))

    lease: Lease | None
    error: BaseException | None

    async def _run(self, priority: bool) -> None:
        try:
            self.lease = await self._line.acquire(self.name.split("#")[0], priority)
        except TenantBusy as exc:
            self.error = exc
            return
        if self._log is not None:
            self._log.append(self.name)
        try:
            await self._done.wait()
        finally:
            self.lease.release()

    def finish(self) -> None:
        self._done.set()


async def test_no_cap_is_not_configured_and_grants_at_once() -> None:
    line: Budget = LocalBudget()  # (mypy: the local budget is a `Budget`)
    assert not line.configured
    lease = await line.acquire("a")
    assert isinstance(line, LocalBudget)
    assert (line.in_flight, lease.waited) == (1, 0.0)
    lease.release()
    lease.release()  # twice: nothing more
    assert line.in_flight == 0


async def test_a_bulk_client_delays_a_one_off_request_by_one_turn() -> None:
    fake, log = FakeTime(), list[str]()
    line = budget(fake, max_in_flight=1)
    assert line.configured
    first = Client(line, "bulk#0", log)
    await settle()
    bulk = [Client(line, f"bulk#{i}", log) for i in range(1, 501)]
    await settle()
    curl = Client(line, "curl", log)
    await settle()
    assert line.queue_length == 501
    first.finish()
    await settle()
    bulk[0].finish()  # one bulk request had the turn before curl came
    await settle()
    assert log == ["bulk#0", "bulk#1", "curl"]
    assert line.in_flight == 1
    curl.finish()
    for client in bulk[1:]:
        await settle()
        client.finish()
    await settle()
    assert log[3:] == [f"bulk#{i}" for i in range(2, 501)]  # FIFO within one client
    assert (line.in_flight, line.queue_length) == (0, 0)


async def test_clients_take_turns() -> None:
    fake, log = FakeTime(), list[str]()
    line = budget(fake, max_in_flight=1)
    holder = Client(line, "x", log)
    await settle()
    clients = [Client(line, name, log) for name in
               ("a#1", "a#2", "a#3", "b#1", "b#2", "c#1")]
    await settle()
    holder.finish()
    for client in clients:
        await settle()
        client.finish()
    await settle()
    assert log == ["x", "a#1", "b#1", "c#1", "a#2", "b#2", "a#3"]


async def test_the_priority_lane_goes_first() -> None:
    fake, log = FakeTime(), list[str]()
    line = budget(fake, max_in_flight=1)
    holder = Client(line, "x", log)
    await settle()
    waiting = [Client(line, f"bulk#{i}", log) for i in range(5)]
    await settle()
    token = Client(line, "token", log, priority=True)
    await settle()
    holder.finish()
    await settle()
    assert log == ["x", "token"]
    token.finish()
    for client in waiting:
        await settle()
        client.finish()
    await settle()
    assert line.in_flight == 0


async def test_the_priority_lane_does_not_wait_behind_a_blocked_line_when_a_slot_is_free(
) -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=1.0, max_in_flight=5)  # rate: the line waits for a token
    Client(line, "a#0")
    Client(line, "a#1")
    await settle()
    assert line.queue_length == 1
    token = Client(line, "token", priority=True)
    await settle()
    assert token.lease is None  # a token, too, needs a rate token: it waits first in line
    await fake.advance(1.0)
    assert token.lease is not None
    assert line.queue_length == 1


async def test_rate_spacing_on_the_fake_clock() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=2.0, max_burst=1.0)
    clients = [Client(line, f"c{i}") for i in range(5)]
    await settle()
    for client in clients:
        client.finish()  # slots are not capped: only the rate holds them
    await fake.advance(10.0)
    waited = [c.lease.waited for c in clients if c.lease is not None]
    assert waited == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert fake.pending == 0  # no timer left once the line is empty


async def test_the_burst_is_the_rate_unless_set() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=2.0)
    clients = [Client(line, f"c{i}") for i in range(4)]
    await fake.advance(5.0)
    waited = [c.lease.waited for c in clients if c.lease is not None]
    assert waited == pytest.approx([0.0, 0.0, 0.5, 1.0])


async def test_burst_then_rate() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=1.0, max_burst=3.0)
    clients = [Client(line, f"c{i}") for i in range(5)]
    await fake.advance(5.0)
    waited = [c.lease.waited for c in clients if c.lease is not None]
    assert waited == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0])


async def test_a_waiter_needs_both_a_slot_and_a_token() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=1.0, max_in_flight=1)
    first, second = Client(line, "a"), Client(line, "b")
    await fake.advance(2.0)  # a token is ready at 1 s, but the slot is taken
    assert second.lease is None
    first.finish()
    await settle()
    assert second.lease is not None
    assert second.lease.waited == 2.0
    third = Client(line, "c")
    second.finish()  # a slot, at 2 s, but the next token comes at 3 s
    await settle()
    assert third.lease is None
    await fake.advance(1.0)
    assert third.lease is not None
    assert third.lease.waited == 1.0


async def test_queue_timeout_raises_busy_and_leaves_nothing_behind() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1, queue_timeout=5.0)
    holder, late = Client(line, "a"), Client(line, "b")
    await fake.advance(4.9)
    assert late.error is None
    await fake.advance(0.1)
    assert isinstance(late.error, TenantBusy)
    assert (late.error.status, late.error.error, late.error.retry_after) == (503, "busy", "1")
    assert "tenant.queue_timeout (5s)" in str(late.error)
    assert (line.queue_length, line.refused, line.in_flight) == (0, 1, 1)
    holder.finish()
    await settle()
    assert line.in_flight == 0
    assert fake.pending == 0


async def test_retry_after_estimates_how_long_the_rate_needs_for_the_line() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=2.0, queue_timeout=1.0)
    clients = [Client(line, f"c{i}") for i in range(20)]
    await fake.advance(1.0)
    errors = [c.error for c in clients if isinstance(c.error, TenantBusy)]
    assert errors
    assert errors[0].retry_after == str(-(-(len(errors) - 1) // 2))  # the rest, 2 a second


async def test_zero_queue_timeout_refuses_at_once() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1, queue_timeout=0.0)
    Client(line, "a")
    second = Client(line, "b")
    await settle()
    assert isinstance(second.error, TenantBusy)
    assert "queue_timeout" not in str(second.error)
    assert line.queue_length == 0


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1)
    holder, waiter, after = Client(line, "a"), Client(line, "b"), Client(line, "c")
    await settle()
    waiter.task.cancel()
    await settle()
    assert line.queue_length == 1
    holder.finish()
    await settle()
    assert after.lease is not None
    assert line.in_flight == 1


async def test_a_slot_released_while_its_waiter_is_being_cancelled_goes_to_the_next() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1)
    holder = Client(line, "a")
    await settle()
    doomed, next_one = Client(line, "b"), Client(line, "c")
    await settle()
    doomed.task.cancel()  # its future is cancelled, but its task has not run yet
    assert holder.lease is not None
    holder.lease.release()  # the slot must skip it
    await settle()
    assert next_one.lease is not None
    assert line.in_flight == 1
    assert doomed.task.cancelled()


async def test_a_waiter_cancelled_just_after_its_grant_passes_the_slot_on() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1)
    holder = Client(line, "a")
    await settle()
    granted, next_one = Client(line, "b"), Client(line, "c")
    await settle()
    assert holder.lease is not None
    holder.lease.release()  # the lease is set on "b"'s future ...
    granted.task.cancel()  # ... and "b" is cancelled before it could run
    await settle()
    assert granted.task.cancelled()
    assert granted.lease is None
    assert next_one.lease is not None
    assert line.in_flight == 1


async def test_reconfigure_judges_the_waiters_by_the_new_caps() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1)
    clients = [Client(line, f"c{i}") for i in range(4)]
    await settle()
    line.configure(3, 0, 0, 30.0)
    await settle()
    assert sum(c.lease is not None for c in clients) == 3
    line.configure(0, 0, 0, 30.0)  # no cap at all: everyone goes, the handler skips it
    await settle()
    assert all(c.lease is not None for c in clients)
    assert not line.configured


async def test_reconfigure_raising_the_rate_frees_the_line_at_once() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=0.1)  # one every 10 s
    clients = [Client(line, f"c{i}") for i in range(3)]
    await settle()
    line.configure(0, 1000.0, 0, 30.0)
    await fake.advance(0.01)
    assert all(c.lease is not None for c in clients)


async def test_reconfigure_shortens_the_queue_timeout_of_those_waiting() -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1, queue_timeout=30.0)
    Client(line, "a")
    waiter = Client(line, "b")
    await fake.advance(3.0)
    line.configure(1, 0, 0, 5.0)
    await fake.advance(1.9)
    assert waiter.error is None
    await fake.advance(0.1)  # 5 s after it began to wait
    assert isinstance(waiter.error, TenantBusy)


async def test_wait_histogram() -> None:
    fake = FakeTime()
    line = budget(fake, max_rate=1.0)
    Client(line, "a")
    Client(line, "b")
    await fake.advance(2.0)
    assert line.granted == 2
    assert line.wait_sum == 1.0
    assert sum(line.wait_counts) == 2
    assert line.wait_counts[0] == 1  # the one that went at once


# A random program of requests, cancellations, releases, reloads and time passing: no
# slot is ever leaked or double-counted, and the line never stalls with room to grant.
ACQUIRE = st.tuples(st.just("acquire"), st.sampled_from("abc"), st.booleans())
OPS = st.lists(st.one_of(
    ACQUIRE, ACQUIRE, ACQUIRE,  # (a line to cancel and release in, most of the time)
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("release_then_cancel"), st.integers(0, 3), st.integers(-1, 2)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.3, 1.0, 6.0])),
    st.tuples(st.just("configure"), st.integers(0, 3), st.sampled_from([0.0, 0.5, 4.0])),
), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0.0, 2.0]), OPS)
@example(0.0, [("acquire", "a", False), ("acquire", "b", False),
               ("release_then_cancel", 0, -1)])  # granted and cancelled in one turn
@example(2.0, [("acquire", "a", False), ("acquire", "b", True), ("acquire", "c", False),
               ("cancel", 1), ("advance", 1.0), ("finish", 0)])
def test_random_programs_leak_nothing(rate: float, ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(_program(rate, ops))


async def _program(rate: float, ops: list[tuple[Any, ...]]) -> None:
    fake = FakeTime()
    line = budget(fake, max_in_flight=1, max_rate=rate, queue_timeout=5.0)
    clients: list[Client] = []

    def check() -> None:
        held = sum(c.lease is not None and not c.lease.released for c in clients)
        assert line.in_flight == held
        waiting = sum(c.lease is None and c.error is None and not c.task.done()
                      for c in clients)
        assert line.queue_length == waiting
        if waiting and line.configured:
            blocked_by_slots = line.max_in_flight and line.in_flight >= line.max_in_flight
            assert blocked_by_slots or line._rate_timer is not None, "the line stalled"
        if not line.configured:
            assert waiting == 0

    for op in ops:
        if op[0] == "acquire":
            clients.append(Client(line, op[1], priority=op[2]))
        elif op[0] == "cancel" and clients:
            clients[op[1] % len(clients)].task.cancel()
        elif op[0] == "finish" and clients:
            clients[op[1] % len(clients)].finish()
        elif op[0] == "release_then_cancel" and clients:
            # in one loop turn: a slot is freed (and granted), then a waiter is cancelled,
            # often the very one just granted (the earliest waiting ones are at the heads)
            holders = [c.lease for c in clients if c.lease is not None and not c.lease.released]
            if holders:
                holders[op[1] % len(holders)].release()
            waiting = [c for c in clients if c.lease is None and not c.task.done()]
            for client in waiting if op[2] < 0 else waiting[op[2]:op[2] + 1]:
                client.task.cancel()  # (-1: all of them, so the one granted for sure)
        elif op[0] == "advance":
            await fake.advance(op[1])
        elif op[0] == "configure":
            line.configure(op[1], op[2], 0, 5.0)
        await settle()
        check()
    for client in clients:
        client.task.cancel()
    await settle()
    assert (line.in_flight, line.queue_length) == (0, 0)
    await fake.advance(10.0)
    assert fake.pending == 0
