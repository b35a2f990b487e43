"""The read-timeout watchdog on its own: one timer, cancellation turned into a timeout."""

from __future__ import annotations

import asyncio

import pytest

from fwproxy.exceptions import UpstreamTimeout
from fwproxy.watchdog import Watchdog


async def wait_for_tenant(dog: Watchdog, forever: asyncio.Event, waiting: bool = True) -> str:
    """What an exchange does: wait (for the tenant, or not), converting a timeout."""
    stall = dog.start()
    if waiting:
        stall.waiting()
    try:
        await forever.wait()
    except asyncio.CancelledError:
        timeout = stall.timed_out("the tenant did not answer")
        if timeout is None:
            raise
        raise timeout from None
    finally:
        stall.idle()
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
