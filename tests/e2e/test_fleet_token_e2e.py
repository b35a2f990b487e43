"""Issue 16, the fleet's one access token: three `fwproxy run` sharing a real redis-server
in front of the simulated tenant (client credentials)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from fwproxy.sim import TenantState
from tests.conftest import wait_until
from tests.support.redis import RedisServer, everything_in

from .conftest import StartFleet, curl, curl_many

pytestmark = pytest.mark.e2e

LEASE_MS = 4000  # start_fleet's state.lease_time


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    """The test's own look into the fleet's Redis."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_a_cold_fleet_makes_one_token_request_and_one_renewal_after_a_401_storm(
        start_fleet: StartFleet, tenant_state: TenantState, redis_client: redis.Redis
) -> None:
    fleet = await start_fleet(3)
    urls = [fleet[n % 3].url("/fotoweb/me") for n in range(300)]
    assert await curl_many(urls, 300) == ["200"] * 300
    assert tenant_state.token_requests == 1  # for the three of them
    first = set(tenant_state.tokens)

    tenant_state.revoke_all()  # every instance meets a 401 for the token it shares
    assert await curl_many(urls, 300) == ["200"] * 300
    assert tenant_state.token_requests == 2  # one renewal for the whole fleet
    tokens = first | set(tenant_state.tokens)
    assert len(tokens) == 2

    # Redis holds the fleet's token, but nowhere readable: not in a key, not in a value
    everything = await everything_in(redis_client)
    assert b":token" in everything
    for token in tokens:
        assert token.encode() not in everything
        for proxy in fleet:
            assert token not in proxy.log_text()


async def test_the_fleet_goes_on_when_the_lock_holder_is_killed(
        start_fleet: StartFleet, tenant_state: TenantState, redis_client: redis.Redis
) -> None:
    held_gate = tenant_state.token_endpoint_gate = asyncio.Event()  # the endpoint hangs
    # idle_renewal 0: a token only when a request comes, so A is the one that asks first
    holder, *others = await start_fleet(3, {"auth": {"idle_renewal": 0}})
    first = asyncio.ensure_future(curl(holder.url("/fotoweb/me")))
    await wait_until(lambda: tenant_state.token_arrivals == 1,
                     "A's token request reached the (hanging) endpoint")
    locks = await redis_client.keys("*:token:lock")
    assert len(locks) == 1  # A holds the fleet's token lock

    their_urls = [proxy.url("/fotoweb/me") for proxy in others for _ in range(10)]
    rest = asyncio.ensure_future(curl_many(their_urls, 20))

    async def both_wait() -> bool:
        channels = await redis_client.pubsub_channels("*:token:released")
        if len(channels) != 1:
            return False
        counts = await redis_client.pubsub_numsub(*channels)
        return int(counts[0][1]) == 2

    await wait_until(both_wait, "B and C wait on the fleet lock")
    assert tenant_state.token_arrivals == 1  # they wait for A, they do not ask

    lease_left = await redis_client.pttl(locks[0])
    assert 0 < lease_left <= LEASE_MS  # A's hold ends by itself
    killed_at = time.monotonic()
    holder.kill()  # kill -9 while it holds the lock, its token request unanswered
    await holder.wait_exit()
    tenant_state.token_endpoint_gate = None  # the endpoint answers again (A's never)
    assert await rest == ["200"] * 20  # B and C go on once A's lease ran out
    went_on_after = time.monotonic() - killed_at
    assert tenant_state.token_requests == 1  # and share the one token they got
    assert (await first).returncode != 0  # A's client saw its connection go
    held_gate.set()  # let the dead instance's request go, for the tenant's teardown
    print(f"B and C went on {went_on_after:.1f}s after A was killed "
          f"({lease_left} ms of its lease left)")
