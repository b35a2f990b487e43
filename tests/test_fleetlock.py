"""fleetlock.py against a real redis-server: the lock (one holder, fencing, lease expiry,
waiters woken by the release), and the versioned sealed records it guards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from fwproxy.config import StateConfig
from fwproxy.exceptions import SealBroken, SharedStateUnavailable
from fwproxy.fleet import SharedState
from fwproxy.fleetlock import FleetLock
from tests.support.redis import RedisServer


@pytest.fixture
async def states(redis_server: RedisServer) -> AsyncIterator[list[SharedState]]:
    """Three instances' SharedState on one Redis (lease 1 s)."""
    config = StateConfig(backend="redis", redis_url=redis_server.url, lease_time=1.0)
    made = [SharedState(config, "scope", "m" * 40) for _ in range(3)]
    yield made
    for state in made:
        await state.aclose()


async def test_one_holder_and_growing_fences(states: list[SharedState]) -> None:
    a, b = FleetLock(states[0], "token"), FleetLock(states[1], "token")
    held = await a.acquire(wait=0)
    assert held is not None
    assert held.fence == 1
    assert await b.acquire(wait=0) is None
    await a.release(held)
    again = await b.acquire(wait=0)
    assert again is not None
    assert again.fence == 2


async def test_a_waiter_is_woken_by_the_release(states: list[SharedState]) -> None:
    a, b = FleetLock(states[0], "token"), FleetLock(states[1], "token")
    held = await a.acquire(wait=0)
    assert held is not None
    waiting = asyncio.ensure_future(b.acquire(wait=10))
    await asyncio.sleep(0)  # (b subscribes and finds the lock held)
    assert not waiting.done()
    await a.release(held)
    got = await asyncio.wait_for(waiting, 5)
    assert got is not None
    assert got.fence == held.fence + 1


async def test_a_dead_holders_lease_runs_out(states: list[SharedState]) -> None:
    a, b = FleetLock(states[0], "token"), FleetLock(states[1], "token")
    dead = await a.acquire(wait=0)  # never released: its holder "died"
    assert dead is not None
    got = await b.acquire(wait=5)  # within the lease (1 s), not the waiter's 5
    assert got is not None
    # the dead holder, paused past its lease, cannot overwrite the new holder's write
    assert await b.put_locked(got, b"new", ttl=None)
    assert not await a.put_locked(dead, b"stale", ttl=None)
    record = await a.read()
    assert record is not None
    assert record.value == b"new"
    assert record.version == got.fence


async def test_records_are_sealed_and_versioned(states: list[SharedState],
                                                redis_server: RedisServer) -> None:
    lock = FleetLock(states[0], "session")
    held = await lock.acquire(wait=0)
    assert held is not None
    assert await lock.put_locked(held, b"refresh-token-1", ttl=None)
    raw = await states[0].call(lambda r: r.hgetall(lock.record_key))
    assert not any("refresh-token-1" in str(value) for value in raw.values())
    # compare-and-delete
    assert not await lock.delete_if_version(held.fence + 1)
    assert await lock.delete_if_version(held.fence)
    assert await lock.read() is None
    # newest wins on write-back, and the fence is raised past what was written back
    assert await lock.put_if_newer(50, b"v50", ttl=None)
    assert not await lock.put_if_newer(49, b"v49", ttl=None)
    await lock.release(held)
    nxt = await FleetLock(states[1], "session").acquire(wait=0)
    assert nxt is not None
    assert nxt.fence == 51


async def test_a_record_moved_or_changed_in_redis_is_not_used(states: list[SharedState]) -> None:
    lock = FleetLock(states[0], "token")
    assert await lock.put_if_newer(3, b"tok", ttl=None)
    await states[0].call(lambda r: r.hset(lock.record_key, "v", 4))  # claims to be newer
    with pytest.raises(SealBroken):
        await lock.read()
    await states[0].call(lambda r: r.hset(lock.record_key, "v", "x"))
    with pytest.raises(SealBroken):
        await lock.read()


@pytest.mark.parametrize("version", [
    b"-1", b"18446744073709551616", b"99999999999999999999999999", b"+3", b" 3", b"3_0",
    b"03", b"3.0", b"0x3", b"\xd9\xa3", b"",
])
async def test_a_version_that_is_not_a_plain_number_in_range_is_a_broken_record(
    states: list[SharedState], version: bytes,
) -> None:
    """Someone who can write Redis (or a broken one) puts any bytes in a record's version:
    the record is broken (SealBroken: treated as absent), never another exception (a
    struct.error escaped to the refresh, the background probe and the CLI's traceback), and
    never a spelling Python reads as one number and the Lua scripts as another."""
    lock = FleetLock(states[0], "session")
    assert await lock.put_if_newer(3, b"tok", ttl=None)
    await states[0].call(lambda r: r.hset(lock.record_key, "v", version))
    with pytest.raises(SealBroken):
        await lock.read()


@pytest.mark.parametrize(("field", "value"), [
    ("v", b"1e300"), ("v", b"9223372036854775807"), ("v", b"0x7fffffffffffffff"),
    ("fence", b"1e300"), ("fence", b"9223372036854775807"), ("fence", b"abc"),
])
async def test_a_version_or_fence_no_script_can_count_on_heals_at_the_next_write(
    states: list[SharedState], field: str, value: bytes,
) -> None:
    """Someone who can write Redis puts a version or a fence there that Lua reads as a
    huge number (or INCR cannot count on): the record is broken (absent), and the next
    holder still gets the lock and writes; the fleet does not stay locked out until
    someone deletes the keys by hand."""
    lock = FleetLock(states[0], "session")
    assert await lock.put_if_newer(3, b"old", ttl=None)
    if field == "v":
        await states[0].call(lambda r: r.hset(lock.record_key, "v", value))
    else:
        await states[0].call(lambda r: r.set(lock.fence_key, value))
    held = await lock.acquire(wait=0)
    assert held is not None
    assert await lock.put_locked(held, b"new", ttl=None)
    await lock.release(held)
    record = await lock.read()
    assert record is not None
    assert record.value == b"new"
    again = await lock.acquire(wait=0)
    assert again is not None
    assert again.fence == held.fence + 1


async def test_a_clock_fence_is_above_redis_time_and_the_fence_counts_on_from_it(
    states: list[SharedState],
) -> None:
    """`acquire(clock=True)` (a login, a logout): the fence is at least Redis's clock in
    microseconds; every fence after it counts on from there, also when the fence counter
    is lost but the record is not (Lua must write the number as digits, not 1.7e+15)."""
    lock = FleetLock(states[0], "session")
    seconds, micros = await states[0].call(lambda r: r.time())
    held = await lock.acquire(wait=0, clock=True)
    assert held is not None
    assert held.fence > seconds * 1_000_000 + micros
    assert await lock.put_locked(held, b"login", ttl=None)
    await lock.release(held)
    await states[0].call(lambda r: r.delete(lock.fence_key))  # lost: the record's v counts
    for expected in (held.fence + 1, held.fence + 2):
        nxt = await lock.acquire(wait=0)
        assert nxt is not None
        assert nxt.fence == expected
        await lock.release(nxt)


async def test_a_lock_left_without_an_expiry_expires_after_one_lease(
    states: list[SharedState],
) -> None:
    """A lock key with no expiry is none of ours (every holder sets one): someone's write,
    or another program under the same prefix. It must not hold the fleet's lock for good
    (waiters polling it every 10 ms until their deadline): the first waiter gives it a
    lease, and it is had when that runs out."""
    a, b = FleetLock(states[0], "session"), FleetLock(states[1], "session")
    await states[0].call(lambda r: r.set(a.lock_key, b"stray"))
    got = await b.acquire(wait=10)  # lease 1 s
    assert got is not None
    assert await b.put_locked(got, b"ours", ttl=None)


async def test_redis_keys_name_no_secret(states: list[SharedState]) -> None:
    lock = FleetLock(states[0], "token")
    assert await lock.put_if_newer(1, b"the-access-token", ttl=30)
    keys = [str(key) for key in await states[0].call(lambda r: r.keys("*"))]
    assert keys
    assert all(key.startswith("b'fwproxy:scope:") for key in keys)
    assert not any("token-" in key or "m" * 10 in key for key in keys)


async def test_holding_extends_the_lease_until_released(states: list[SharedState]) -> None:
    """A holder's work may outlast the lease (a token request: up to 30 s, the lease 15 s):
    `holding` extends it while the body runs, so no one else gets the lock meanwhile, and
    the holder can still write; after the body, the lock is free at once."""
    a, b = FleetLock(states[0], "session"), FleetLock(states[1], "session")
    async with a.holding(wait=0) as held:
        assert held is not None
        # three leases' worth (1 s each) of work: the lease would have run out twice
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.acquire(wait=10), timeout=3.0)
        assert await a.put_locked(held, b"rotated", ttl=None)
    got = await b.acquire(wait=0)
    assert got is not None
    await b.release(got)


async def test_a_lost_lock_is_not_extended_and_its_holder_cannot_write(
        states: list[SharedState]) -> None:
    a, b = FleetLock(states[0], "session"), FleetLock(states[1], "session")
    async with a.holding(wait=0) as held:
        assert held is not None
        await states[2].call(lambda r: r.delete(a.lock_key))  # the lease ran out (paused)
        assert not await a.extend(held)
        got = await b.acquire(wait=0)  # someone else holds it now
        assert got is not None
        assert not await a.put_locked(held, b"late", ttl=None)  # the lost holder's result
        assert await b.put_locked(got, b"theirs", ttl=None)
    # leaving `holding` did not free the new holder's lock
    assert await b.extend(got)
    record = await a.read()
    assert record is not None
    assert record.value == b"theirs"


async def test_holding_yields_none_when_the_lock_stays_taken(states: list[SharedState]) -> None:
    a, b = FleetLock(states[0], "session"), FleetLock(states[1], "session")
    held = await a.acquire(wait=0)
    assert held is not None
    async with b.holding(wait=0) as none:
        assert none is None
    assert await a.extend(held)  # still a's


class NotRedis:
    """A server that speaks RESP but answers every command of fwproxy's with `answer` (a
    raw RESP reply): what a broken proxy in front of Redis, or someone on the network
    without TLS, can send. The connection handshake (CLIENT SETNAME, ...) gets +OK."""

    def __init__(self, answer: bytes, hello: bytes = b"%1\r\n$5\r\nproto\r\n:3\r\n") -> None:
        self.answer = answer
        self.hello = hello
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readline()
                if not head:
                    return
                words = []
                for _ in range(int(head[1:])):
                    size = int((await reader.readline())[1:])
                    words.append((await reader.readexactly(size + 2))[:-2])
                command = words[0].upper()
                if command == b"HELLO":
                    writer.write(self.hello)
                elif command in (b"CLIENT", b"SELECT", b"AUTH"):
                    writer.write(b"+OK\r\n")
                else:
                    writer.write(self.answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@pytest.mark.parametrize(("answer", "hello"), [
    (b":7\r\n", None),  # a number where a list or a string is expected
    (b"$3\r\nabc\r\n", None),  # a string where a number is expected
    (b"*3\r\n:1\r\n:2\r\n:3\r\n", None),  # a list of the wrong length
    (b"+OK\r\n", None),
    (b"_\r\n", None),  # nil
    (b"+OK\r\n", b"+OK\r\n"),  # a handshake redis-py itself trips on (AttributeError)
])
async def test_a_server_answering_garbage_is_unavailable_not_a_crash(
    answer: bytes, hello: bytes | None,
) -> None:
    """Whatever shape the answer has, every lock and record operation either works or
    raises SharedStateUnavailable (the callers' fallback), never TypeError, ValueError or
    whatever redis-py raises parsing it; and the watcher lives on."""
    server = NotRedis(answer) if hello is None else NotRedis(answer, hello)
    async with server as url:
        state = SharedState(StateConfig(backend="redis", redis_url=url, lease_time=1.0),
                            "scope", "m" * 40)
        lock = FleetLock(state, "session")
        try:
            for operation in (lambda: lock.acquire(wait=0.1), lock.read,
                              lambda: lock.put_if_newer(3, b"x", ttl=None),
                              lambda: lock.delete_if_version(3)):
                with contextlib.suppress(SharedStateUnavailable, SealBroken):
                    await operation()
            await state.start()
            watcher = state._watcher
            assert watcher is not None
            with pytest.raises(asyncio.TimeoutError):  # it probes on, it does not die
                await asyncio.wait_for(asyncio.shield(watcher), state.probe_interval * 3)
        finally:
            await state.aclose()
