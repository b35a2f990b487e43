"""fleettoken.py: the fleet's one client-credentials token. The record's format as pure
functions (tables); `FleetGrant` with inline fake inner grants, several "instances" (each
its own SharedState) on one real redis-server in this process."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fwproxy.app import create_app
from fwproxy.config import StateConfig
from fwproxy.exceptions import NoTokenAvailable, TokenEndpointUnreachable
from fwproxy.fleet import SharedState
from fwproxy.fleetlock import FleetLock
from fwproxy.fleettoken import FleetGrant, SharedToken, parse_record, record_of, token_of
from fwproxy.sim import TenantState
from fwproxy.token_manager import TokenManager
from fwproxy.tokens import Token, make_token
from tests.conftest import SettingsFactory, wait_until
from tests.support.grants import GrantStub
from tests.support.redis import RedisServer, everything_in

MARGIN = 60.0
LIFETIME = 3600.0
WALL = 1_800_000_000.0  # a wall-clock instant for the tables
SECRET_PART = "tok-"  # every fake token's value starts so: searched for in Redis


# --- the record, pure ----------------------------------------------------------------------


def test_a_record_round_trips_onto_another_instances_clock() -> None:
    token = make_token("abc", LIFETIME, now=100.0, refresh_margin=MARGIN)
    value, ttl = record_of(token, WALL + 10, now=110.0)  # written 10 s after it was obtained
    assert ttl == LIFETIME - 10
    shared = parse_record(value)
    assert shared == SharedToken("abc", WALL + LIFETIME, LIFETIME)
    # read 5 s later by an instance whose monotonic clock says 7.0
    theirs = token_of(shared, WALL + 15, now=7.0, refresh_margin=MARGIN)
    assert theirs is not None
    assert theirs.value == "abc"
    assert theirs.expires_at == 7.0 + LIFETIME - 15
    assert theirs.renew_at == theirs.expires_at - 2 * MARGIN  # the writer's timetable
    assert theirs.stale_at == theirs.expires_at - MARGIN


@pytest.mark.parametrize(("wall_now", "usable"), [
    (WALL + LIFETIME - MARGIN - 1, True),  # before its last margin
    (WALL + LIFETIME - MARGIN, False),  # within it: renew, do not take
    (WALL + LIFETIME + 5, False),  # expired
])
def test_a_record_within_its_margin_is_not_taken(wall_now: float, usable: bool) -> None:
    shared = SharedToken("abc", WALL + LIFETIME, LIFETIME)
    assert (token_of(shared, wall_now, 0.0, MARGIN) is not None) is usable


def test_an_expiry_further_than_its_lifetime_is_a_lifetime_from_now() -> None:
    shared = SharedToken("abc", WALL + 10 * LIFETIME, LIFETIME)  # the writer's clock runs ahead
    theirs = token_of(shared, WALL, 0.0, MARGIN)
    assert theirs is not None
    assert theirs.expires_at == LIFETIME


@pytest.mark.parametrize("value", [
    b"", b"not json", b"\xff\xfe", b"[]", b"null", b"42", b'"tok"', b"[" * 100_000,
    b'{"expires_at": 1, "lifetime": 60}',
    b'{"access_token": 5, "expires_at": 1, "lifetime": 60}',
    b'{"access_token": "", "expires_at": 1, "lifetime": 60}',
    b'{"access_token": "a b", "expires_at": 1, "lifetime": 60}',
    b'{"access_token": "a\\nb", "expires_at": 1, "lifetime": 60}',
    b'{"access_token": "ab", "expires_at": "1", "lifetime": 60}',
    b'{"access_token": "ab", "expires_at": true, "lifetime": 60}',
    b'{"access_token": "ab", "expires_at": NaN, "lifetime": 60}',
    b'{"access_token": "ab", "expires_at": Infinity, "lifetime": 60}',
    b'{"access_token": "ab", "expires_at": 1' + b"0" * 400 + b', "lifetime": 60}',
    b'{"access_token": "ab", "expires_at": 1, "lifetime": 0}',
    b'{"access_token": "ab", "expires_at": 1, "lifetime": -5}',
    b'{"access_token": "ab", "expires_at": 1, "lifetime": 1e9}',
    b'{"access_token": "ab", "expires_at": 1}',
])
def test_a_record_that_holds_no_token_is_none(value: bytes) -> None:
    assert parse_record(value) is None


def test_a_shared_tokens_repr_shows_no_token() -> None:
    assert "secret-value" not in repr(SharedToken("secret-value", WALL, LIFETIME))


# --- FleetGrant on a real Redis -------------------------------------------------------------


class FakeTenant:
    """The token endpoint the fake grants share: counts requests, may hold them (`gate`)."""

    def __init__(self) -> None:
        self.requests = 0  # answered
        self.asked = 0  # arrived (a held one too)
        self.gate: asyncio.Event | None = None
        self.down = False  # answers nothing
        self.lifetime = LIFETIME
        self.numbers = itertools.count(1)


class FakeGrant(GrantStub):
    """An inner grant (client credentials) of one instance."""

    name = "client_credentials"

    def __init__(self, tenant: FakeTenant) -> None:
        self.tenant = tenant
        self.key: Hashable = ("https://tenant.example/token", "client")

    @property
    def cache_key(self) -> Hashable:
        return self.key

    async def fetch(self) -> Token:
        tenant = self.tenant
        tenant.asked += 1
        if tenant.gate is not None:
            await tenant.gate.wait()
        if tenant.down:
            raise TokenEndpointUnreachable("the fake tenant is down")
        tenant.requests += 1
        value = f"{SECRET_PART}{next(tenant.numbers)}-{'x' * 24}"
        return make_token(value, tenant.lifetime, time.monotonic(), MARGIN)


Instance = tuple[FleetGrant, SharedState]
MakeInstance = Callable[..., Instance]


@pytest.fixture
def fake_tenant() -> FakeTenant:
    return FakeTenant()


@pytest.fixture
async def instance(redis_server: RedisServer, fake_tenant: FakeTenant
                   ) -> AsyncIterator[MakeInstance]:
    """`instance()`: one fleet member's FleetGrant and SharedState (lease 1 s) on the
    test's Redis, in front of `fake_tenant`."""
    made: list[SharedState] = []
    config = StateConfig(backend="redis", redis_url=redis_server.url, lease_time=1.0)

    def make(wall: Callable[[], float] = time.time) -> Instance:
        state = SharedState(config, "scope", "m" * 40)
        made.append(state)
        return FleetGrant(FakeGrant(fake_tenant), state, MARGIN, wall=wall), state

    yield make
    for state in made:
        await state.aclose()


async def waiters(state: SharedState) -> int:
    """How many instances wait for the token lock (subscribed to its release channel)."""
    channel = FleetLock(state, "token").channel
    counts = await state.call(lambda r: r.pubsub_numsub(channel))
    return int(counts[0][1])


async def test_concurrent_fetches_across_the_fleet_make_one_token_request(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, sa), (b, _), (c, _) = instance(), instance(), instance()
    fake_tenant.gate = asyncio.Event()  # the first request is held at the "tenant"
    fetches = [asyncio.ensure_future(grant.fetch()) for grant in (a, b, c)]
    await wait_until(lambda: fake_tenant.asked == 1, "one token request arrived")

    async def two_wait() -> bool:
        return await waiters(sa) == 2

    await wait_until(two_wait, "the two others wait on the fleet lock")
    assert fake_tenant.asked == 1  # they wait, they do not ask
    fake_tenant.gate.set()
    tokens = await asyncio.wait_for(asyncio.gather(*fetches), 10)
    assert fake_tenant.requests == 1
    assert len({token.value for token in tokens}) == 1
    assert a.shared + b.shared + c.shared == 1
    assert a.taken + b.taken + c.taken == 2
    assert a.alone + b.alone + c.alone == 0
    # the record is sealed: no token value, in a key name or a value
    everything = await everything_in(sa.redis)
    assert b":token" in everything  # (the record is there)
    assert SECRET_PART.encode() not in everything
    assert tokens[0].value.encode() not in everything


async def test_renewal_is_one_request_for_the_fleet(instance: MakeInstance,
                                                    fake_tenant: FakeTenant) -> None:
    (a, _), (b, _) = instance(), instance()
    first = await a.fetch()
    assert (await b.fetch()).value == first.value  # taken, not fetched
    assert fake_tenant.requests == 1
    # both come to renew the token they hold (each TokenManager's timer): one request
    renewed = await asyncio.wait_for(asyncio.gather(a.fetch(), b.fetch()), 10)
    assert fake_tenant.requests == 2
    assert renewed[0].value == renewed[1].value != first.value
    # a late instance takes the renewed token
    (c, _) = instance()
    assert (await c.fetch()).value == renewed[0].value
    assert fake_tenant.requests == 2


async def test_a_token_within_its_margin_is_renewed_not_taken(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, _) = instance()
    first = await a.fetch()
    late = time.time() + LIFETIME - MARGIN / 2  # an instance that reads it in its margin
    (b, _) = instance(wall=lambda: late)
    renewed = await b.fetch()
    assert renewed.value != first.value
    assert fake_tenant.requests == 2


async def test_a_401_drops_the_shared_token_only_if_it_is_still_the_one_that_failed(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, sa), (b, _), (c, _) = instance(), instance(), instance()
    first = await a.fetch()
    assert (await b.fetch()).value == first.value
    second = await a.fetch()  # A renewed meanwhile
    # a late 401 at B for the first token: B's compare-and-delete leaves A's renewal
    b.dropped(first)
    assert (await b.fetch()).value == second.value
    assert fake_tenant.requests == 2
    assert await FleetLock(sa, "token").read() is not None
    # a 401 for the token the record still holds: it goes, even if no new one comes
    b.dropped(second)
    fake_tenant.down = True
    with pytest.raises(TokenEndpointUnreachable):
        await b.fetch()
    assert await FleetLock(sa, "token").read() is None  # not handed to the fleet again
    fake_tenant.down = False
    third = await c.fetch()
    assert third.value not in (first.value, second.value)
    assert fake_tenant.requests == 3
    assert (await b.fetch()).value == third.value  # and the fleet shares the new one


async def test_the_token_manager_tells_the_grant_what_a_401_dropped(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, _), (b, _) = instance(), instance()
    manager_a, manager_b = TokenManager(a), TokenManager(b)
    token = await manager_a.get()
    at_b = await manager_b.get()
    assert at_b.value == token.value
    assert manager_b.invalidate(at_b)  # a 401 at B: the shared token goes
    fake_tenant.down = True  # (and no new one comes yet)
    with pytest.raises(NoTokenAvailable):
        await manager_b.get()
    fake_tenant.down = False
    (c, _) = instance()
    renewed = await c.fetch()  # a new instance is not handed the refused token
    assert renewed.value != token.value
    assert fake_tenant.requests == 2
    # A, when its own 401 comes, takes the renewal instead of asking again
    assert manager_a.invalidate(token)
    assert (await manager_a.get()).value == renewed.value
    assert fake_tenant.requests == 2


async def test_without_redis_each_instance_uses_its_own_token(
        instance: MakeInstance, fake_tenant: FakeTenant, redis_server: RedisServer) -> None:
    (a, sa), (b, _) = instance(), instance()
    await a.fetch()
    redis_server.stop()
    own = await asyncio.wait_for(b.fetch(), 10)  # no error, no hang: its own token
    renewed = await asyncio.wait_for(a.fetch(), 10)
    assert own.value != renewed.value
    assert fake_tenant.requests == 3
    assert (a.alone, b.alone) == (1, 1)
    assert not sa.available


async def test_redis_back_empty_gets_the_newest_token_written_back(
        instance: MakeInstance, fake_tenant: FakeTenant, redis_server: RedisServer) -> None:
    (a, sa), (b, sb) = instance(), instance()
    older = await a.fetch()
    assert (await b.fetch()).value == older.value
    redis_server.stop()
    newer = await b.fetch()  # B fetched its own while Redis was away: the newest
    await sa.start()  # A notices the outage too
    assert not sa.available
    assert not sb.available
    redis_server.start()  # empty: no persistence
    record = FleetLock(sa, "token")

    async def written_back() -> bool:
        if sa.recoveries < 1 or sb.recoveries < 1:
            return False
        got = await record.read()
        return got is not None and got.version == 2  # B's: newer than A's (1)

    await wait_until(written_back, "both instances saw Redis come back and wrote back")
    (c, _) = instance()  # a new instance takes the newest, without a request
    assert (await c.fetch()).value == newer.value
    assert fake_tenant.requests == 2


async def test_a_waiter_outlasts_a_dead_holder_and_the_request_of_the_next(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (b, sb), (c, _) = instance(), instance()
    dead = await FleetLock(sb, "token").acquire(wait=0)  # never released: kill -9
    assert dead is not None
    fake_tenant.gate = asyncio.Event()  # the next holder's token request takes a while
    began = time.monotonic()
    fetches = [asyncio.ensure_future(grant.fetch()) for grant in (b, c)]
    await wait_until(lambda: fake_tenant.asked == 1, "one took over when the lease ran out")
    await wait_until(lambda: time.monotonic() > began + 1.25,  # the condition is the time
                     "more than a lease (1 s) since the other began to wait")
    fake_tenant.gate.set()
    tokens = await asyncio.wait_for(asyncio.gather(*fetches), 10)
    assert tokens[0].value == tokens[1].value  # the other still waited, and took it
    assert fake_tenant.requests == 1


async def test_a_holder_slower_than_a_lease_keeps_the_lock_and_the_fleet_one_request(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    """The tenant's budget line or a slow endpoint may hold a renewal past a lease (1 s):
    the holder extends its lease, the others wait and take its token."""
    (a, _), (b, _) = instance(), instance()
    fake_tenant.gate = asyncio.Event()
    slow = asyncio.ensure_future(a.fetch())
    await wait_until(lambda: fake_tenant.asked == 1, "A asks the tenant, under the lock")
    later = asyncio.ensure_future(b.fetch())
    began = time.monotonic()
    await wait_until(lambda: time.monotonic() > began + 2.5,  # the condition is the time
                     "over two leases since B began to wait")
    assert fake_tenant.asked == 1  # B still waits: A's lease lives
    assert not later.done()
    fake_tenant.gate.set()
    a_token, b_token = await asyncio.wait_for(asyncio.gather(slow, later), 10)
    assert a_token.value == b_token.value
    assert fake_tenant.requests == 1


async def test_a_holder_that_lost_its_lock_keeps_its_token_and_never_overwrites_the_next(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, sa), (b, _) = instance(), instance()
    fake_tenant.gate = asyncio.Event()
    slow = asyncio.ensure_future(a.fetch())
    await wait_until(lambda: fake_tenant.asked == 1, "A asks the tenant, under the lock")
    lock = FleetLock(sa, "token")
    await sa.call(lambda r: r.delete(lock.lock_key))  # A paused, or cut off: its lock went
    later = asyncio.ensure_future(b.fetch())
    await wait_until(lambda: fake_tenant.asked == 2, "B got the lock A lost")
    fake_tenant.gate.set()
    a_token, b_token = await asyncio.wait_for(asyncio.gather(slow, later), 10)
    assert a_token.value != b_token.value  # A keeps its own: a good token all the same
    record = await lock.read()
    assert record is not None
    assert json.loads(record.value)["access_token"] == b_token.value
    a.dropped(a_token)  # a 401 for A's own token leaves the fleet's alone
    assert (await a.fetch()).value == b_token.value
    assert fake_tenant.requests == 2


async def test_a_hostile_record_is_never_used_nor_fatal(
        instance: MakeInstance, fake_tenant: FakeTenant,
        caplog: pytest.LogCaptureFixture) -> None:
    (a, sa), (b, _) = instance(), instance()
    key = FleetLock(sa, "token").record_key
    caplog.set_level(logging.WARNING, "fwproxy.fleettoken")
    # garbage in the record's fields: treated as absent, replaced by the next holder
    await sa.call(lambda r: r.hset(key, mapping={"v": "x", "s": "tok-hostile-garbage"}))
    first = await a.fetch()
    assert "hostile" not in first.value
    assert (await b.fetch()).value == first.value  # the fleet shares again
    # a plausible version with a seal of another key
    await sa.call(lambda r: r.hset(key, mapping={"v": "999", "s": b"\x00" * 60}))
    second = await a.fetch()
    assert (await b.fetch()).value == second.value
    # sealed with the fleet's key, but no token in it
    assert await FleetLock(sa, "token").put_if_newer(5000, b'{"access_token": 1}', None)
    third = await b.fetch()
    assert third.value not in (first.value, second.value)
    # the record of the wrong type: each instance goes on with its own token
    await sa.call(lambda r: r.delete(key))
    await sa.call(lambda r: r.set(key, "tok-hostile-string"))
    own = await a.fetch()
    assert "hostile" not in own.value
    assert "hostile" not in (await a.fetch()).value
    assert sa.available  # Redis answered: no outage
    # a lock that never expires (not one of ours): two leases' wait, then its own token
    await sa.call(lambda r: r.delete(key))
    lock_key = FleetLock(sa, "token").lock_key
    await sa.call(lambda r: r.hset(lock_key, "tok-hostile-lock", "x"))
    assert "hostile" not in (await asyncio.wait_for(b.fetch(), 10)).value
    assert fake_tenant.requests == 6
    text = caplog.text
    assert "hostile" not in text
    assert "tok-" not in text
    assert text.count("cannot be opened") == 1  # A met it in four reads: logged once
    assert text.count("cannot be read from Redis") == 1


async def test_after_a_reload_to_other_credentials_the_fleets_token_is_not_taken(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, _), (b, sb) = instance(), instance()
    fleet_token = await a.fetch()
    inner = b._inner
    assert isinstance(inner, FakeGrant)
    inner.key = ("https://tenant.example/token", "another-client")
    own = await b.fetch()
    assert own.value != fleet_token.value
    assert b.alone == 1
    record = await FleetLock(sb, "token").read()  # and it is not shared with the fleet
    assert record is not None
    assert json.loads(record.value)["access_token"] == fleet_token.value
    assert "tok-" not in repr(b)


async def test_a_dead_holder_stops_the_fleet_for_no_longer_than_its_lease(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (a, sa) = instance()
    dead = await FleetLock(sa, "token").acquire(wait=0)  # never released: kill -9
    assert dead is not None
    token = await asyncio.wait_for(a.fetch(), 10)  # lease 1 s
    assert (a.shared, a.alone) == (1, 0)  # it got the lock, and shared what it fetched
    record = await FleetLock(sa, "token").read()
    assert record is not None
    assert record.version > dead.fence
    assert json.loads(record.value)["access_token"] == token.value


# --- in the app ---------------------------------------------------------------------------


async def test_apps_on_one_redis_share_the_token_through_it_even_as_workers(
        aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
        make_settings: SettingsFactory, redis_server: RedisServer,
        tenant_state: TenantState, tmp_path: Path) -> None:
    settings = make_settings(state={"backend": "redis", "redis_url": redis_server.url})
    workers = tmp_path / "workers"  # listen.workers' private directory, for its token file
    workers.mkdir(mode=0o700)
    shared_file = workers / "token.json"
    clients = [await aiohttp_client(create_app(settings, shared_token=shared_file))
               for _ in range(2)]
    for client in clients:
        resp = await client.get("/fotoweb/me")
        assert resp.status == 200
    assert tenant_state.token_requests == 1
    assert not shared_file.exists()  # each worker is simply an instance of the fleet


async def test_a_token_taken_from_the_fleet_is_not_counted_as_a_token_request(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    """fwproxy_token_requests_total counts the requests this process made; a token another
    instance fetched is fwproxy_token_taken_total (and its log line says so)."""
    (a, _), (b, _) = instance(), instance()
    manager_a, manager_b = TokenManager(a), TokenManager(b)
    await manager_a.get()
    await manager_b.get()
    assert fake_tenant.requests == 1
    assert (manager_a.requests, manager_a.taken) == (1, 0)
    assert (manager_b.requests, manager_b.taken) == (0, 1)


async def test_a_token_of_other_credentials_is_never_written_back_as_the_fleets(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    # reloaded to other credentials, the instance fetched alone; reloaded back before its
    # next fetch, a recovery wrote that token (another client's identity) to the fleet
    (b, sb) = instance()
    inner = b._inner
    assert isinstance(inner, FakeGrant)
    original = inner.key
    inner.key = ("https://tenant.example/token", "another-client")
    await b.fetch()  # alone, with the other credentials
    inner.key = original  # a reload back; Redis comes back before the next fetch
    await b.write_back()
    assert await FleetLock(sb, "token").read() is None


async def test_a_reload_to_other_credentials_during_the_fleets_request_keeps_it_out(
        instance: MakeInstance, fake_tenant: FakeTenant) -> None:
    (b, sb) = instance()
    inner = b._inner
    assert isinstance(inner, FakeGrant)
    fake_tenant.gate = asyncio.Event()
    fetching = asyncio.ensure_future(b.fetch())  # under the fleet's lock
    await wait_until(lambda: fake_tenant.asked == 1, "the token request on its way")
    inner.key = ("https://tenant.example/token", "another-client")  # the reload
    fake_tenant.gate.set()
    await fetching
    assert await FleetLock(sb, "token").read() is None
    await b.write_back()
    assert await FleetLock(sb, "token").read() is None
