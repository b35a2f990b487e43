"""The read-timeout watchdog on its own: one timer, cancellation turned into a timeout."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from fwproxy.exceptions import ClientBodyTimeout, UpstreamTimeout
from fwproxy.replay import BodyTee
from fwproxy.watchdog import ClientWatch, Watchdog


class Forever(asyncio.Event):
    """An event only a test sets; `waited` is set once the exchange waits on it, so a test
    awaits that instead of counting loop turns."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.waited.set()
        return await super().wait()


def no_answer() -> str:
    return "the tenant did not answer"


async def wait_for_tenant(dog: Watchdog, forever: asyncio.Event, waiting: bool = True) -> str:
    """What an exchange does: one timed wait (for the tenant, or not)."""
    stall = dog.start()
    try:
        with stall.timed(waiting=waiting, what=no_answer):
            await forever.wait()
    finally:
        dog.stop(stall)
    return "answered"


async def test_a_long_wait_for_the_tenant_becomes_a_timeout() -> None:
    dog = Watchdog(0.05)
    with pytest.raises(UpstreamTimeout, match="did not answer"):
        await asyncio.wait_for(wait_for_tenant(dog, asyncio.Event()), timeout=10)
    assert dog.armed  # until its next sweep finds nothing in flight
    await asyncio.sleep(dog.tick * 3)
    assert not dog.armed


async def test_time_not_spent_waiting_for_the_tenant_does_not_count() -> None:
    dog = Watchdog(0.05)
    done = asyncio.Event()
    task = asyncio.create_task(wait_for_tenant(dog, done, waiting=False))
    for _ in range(20):  # many sweeps, each of which would have fired on a waiting stall
        await asyncio.sleep(dog.tick)
    done.set()
    assert await task == "answered"


async def test_someone_elses_cancellation_is_not_turned_into_a_timeout() -> None:
    dog = Watchdog(0.05)
    forever = Forever()
    task = asyncio.create_task(wait_for_tenant(dog, forever))
    await forever.waited.wait()
    task.cancel()  # e.g. shutdown, well before the timeout
    with pytest.raises(asyncio.CancelledError):
        await task


def test_tick_is_a_fraction_of_the_timeout_within_bounds() -> None:
    assert Watchdog(300).tick == 1.0
    assert Watchdog(0.4).tick == 0.05
    assert Watchdog(0.001).tick == 0.01


async def test_no_cancellation_outside_a_timed_wait() -> None:
    """A body writer can outlive its attempt (aiohttp runs it in its own task): what it says
    after the handler left the timed await must not start the clock."""
    dog = Watchdog(0.05)
    stall = dog.start()
    with stall.timed(waiting=False, what=no_answer) as attempt:
        pass  # the answer came; the handler now streams it to a slow client
    stall.waiting(attempt)  # the writer, finishing late: "the whole body is sent"
    for _ in range(20):  # time outside a timed await, however long, never fires
        await asyncio.sleep(dog.tick)
    assert not stall.fired
    dog.stop(stall)


async def test_a_writer_of_an_earlier_attempt_cannot_move_the_clock() -> None:
    dog = Watchdog(60)
    stall = dog.start()
    with stall.timed(waiting=False, what=no_answer) as first:
        pass
    with stall.timed(waiting=True, what=no_answer) as second:  # a replay, waiting
        since = stall.since
        stall.idle(first)  # the first attempt's writer, finalized late
        assert stall.since == since
        stall.idle(second)
        assert stall.since == float("inf")
    dog.stop(stall)


async def test_zero_means_no_read_timeout() -> None:
    dog = Watchdog(0)
    stall = dog.start()
    with stall.timed(waiting=True, what=no_answer):
        assert not dog.armed  # nothing is watched
    dog.stop(stall)


async def test_a_reload_changes_the_timeout_of_waits_already_watched() -> None:
    dog = Watchdog(300)
    forever = Forever()
    task = asyncio.create_task(wait_for_tenant(dog, forever))
    await forever.waited.wait()  # it waits, under the 300 s timeout
    dog.configure(0.05)  # SIGHUP: tenant.read_timeout 50ms
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(task, timeout=10)


async def test_a_reload_to_zero_stops_watching() -> None:
    dog = Watchdog(0.05)
    forever = Forever()
    task = asyncio.create_task(wait_for_tenant(dog, forever))
    await forever.waited.wait()
    dog.configure(0)  # SIGHUP: no read timeout
    assert not dog.armed
    for _ in range(10):  # many periods of the old timeout
        await asyncio.sleep(0.05)
    forever.set()
    assert await task == "answered"


# --- ClientWatch: limits.client_body_timeout and client_send_timeout ---------------------


class Trickle:
    """A client body: `chunks`, each after `gap` seconds, then (with `stall`) nothing."""

    def __init__(self, chunks: int, gap: float, stall: bool) -> None:
        self._left, self._gap, self._stall = chunks, gap, stall
        self._failed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def readany(self) -> bytes:
        if self._left == 0 and not self._stall:
            return b""
        try:  # the next byte after the gap, unless the read is failed first
            return await asyncio.wait_for(asyncio.shield(self._failed),
                                          self._gap if self._left else 3600)
        except asyncio.TimeoutError:
            self._left -= 1
            return b"x"

    def set_exception(self, exc: BaseException) -> None:
        self._failed.set_exception(exc)


async def upload(watch: ClientWatch, source: Trickle) -> tuple[BodyTee, bytes]:
    tee = BodyTee(source, max_size=0)
    tee.client = watch.watch(lambda: tee.stalled(watch.timeout))
    out = b""
    try:
        async for chunk in tee.chunks():
            out += chunk
    finally:
        watch.unwatch(tee.client)
    return tee, out


async def test_a_stalled_upload_fails_its_read() -> None:
    watch = ClientWatch(0.2)
    with pytest.raises(ClientBodyTimeout, match=r"no byte of its request body for 0\.2s"):
        await asyncio.wait_for(upload(watch, Trickle(2, 0.01, stall=True)), 10)
    watch.close()


async def test_a_slow_but_steady_upload_is_not_cut() -> None:
    """One byte each 0.2 s with a 1 s timeout, for longer than the timeout."""
    watch = ClientWatch(1.0)
    tee, out = await asyncio.wait_for(upload(watch, Trickle(8, 0.2, stall=False)), 20)
    assert out == b"x" * 8
    assert not tee.timed_out
    watch.close()


async def test_the_send_watch_fires_only_while_the_backlog_does_not_shrink() -> None:
    watch = ClientWatch(0.2)
    backlog = [100]
    fired = asyncio.Event()
    owed = watch.watch(fired.set, lambda: backlog[0])
    assert owed is not None
    for _ in range(6):  # taking a byte now and then: progress, never cut
        await asyncio.sleep(0.1)  # the client's pace
        backlog[0] -= 1
        assert not fired.is_set()
    backlog[0] = 0  # all taken: nothing owed
    await asyncio.sleep(0.5)
    assert not fired.is_set()
    backlog[0] = 50  # owed again, and never taken
    await asyncio.wait_for(fired.wait(), 10)
    assert not watch._owed  # fired once, then no longer watched
    watch.close()


def test_zero_means_no_client_timeout() -> None:
    watch = ClientWatch(0)
    assert watch.watch(lambda: None) is None
    assert not watch.armed
