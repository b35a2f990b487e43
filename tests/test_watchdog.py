"""The read-timeout watchdog on its own: one timer, cancellation turned into a timeout."""

from __future__ import annotations

import asyncio

import pytest

from fwproxy.exceptions import UpstreamTimeout
from fwproxy.watchdog import Watchdog


def no_answer() -> str:
    return "the tenant did not answer"


async def wait_for_tenant(dog: Watchdog, forever: asyncio.Event, waiting: bool = True) -> str:
    """What an exchange does: one guarded wait (for the tenant, or not)."""
    stall = dog.start()
    try:
        with stall.guard(waiting=waiting, what=no_answer):
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
    task = asyncio.create_task(wait_for_tenant(dog, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()  # e.g. shutdown, well before the timeout
    with pytest.raises(asyncio.CancelledError):
        await task


def test_tick_is_a_fraction_of_the_timeout_within_bounds() -> None:
    assert Watchdog(300).tick == 1.0
    assert Watchdog(0.4).tick == 0.05
    assert Watchdog(0.001).tick == 0.01


async def test_no_cancellation_outside_a_guarded_wait() -> None:
    """A body writer can outlive its attempt (aiohttp runs it in its own task): what it says
    after the handler left the guarded await must not start the clock."""
    dog = Watchdog(0.05)
    stall = dog.start()
    with stall.guard(waiting=False, what=no_answer) as attempt:
        pass  # the answer came; the handler now streams it to a slow client
    stall.waiting(attempt)  # the writer, finishing late: "the whole body is sent"
    for _ in range(20):  # unguarded time, however long, never fires
        await asyncio.sleep(dog.tick)
    assert not stall.fired
    dog.stop(stall)


async def test_a_writer_of_an_earlier_attempt_cannot_move_the_clock() -> None:
    dog = Watchdog(60)
    stall = dog.start()
    with stall.guard(waiting=False, what=no_answer) as first:
        pass
    with stall.guard(waiting=True, what=no_answer) as second:  # a replay, waiting
        since = stall.since
        stall.idle(first)  # the first attempt's writer, finalized late
        assert stall.since == since
        stall.idle(second)
        assert stall.since == float("inf")
    dog.stop(stall)


async def test_zero_means_no_read_timeout() -> None:
    dog = Watchdog(0)
    stall = dog.start()
    with stall.guard(waiting=True, what=no_answer):
        assert not dog.armed  # nothing is watched
    dog.stop(stall)


async def test_a_reload_changes_the_timeout_of_waits_already_watched() -> None:
    dog = Watchdog(300)
    task = asyncio.create_task(wait_for_tenant(dog, asyncio.Event()))
    await asyncio.sleep(0)  # it waits, under the 300 s timeout
    dog.configure(0.05)  # SIGHUP: tenant.read_timeout 50ms
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(task, timeout=10)


async def test_a_reload_to_zero_stops_watching() -> None:
    dog = Watchdog(0.05)
    forever = asyncio.Event()
    task = asyncio.create_task(wait_for_tenant(dog, forever))
    await asyncio.sleep(0)
    dog.configure(0)  # SIGHUP: no read timeout
    assert not dog.armed
    for _ in range(10):  # many periods of the old timeout
        await asyncio.sleep(0.05)
    forever.set()
    assert await task == "answered"
