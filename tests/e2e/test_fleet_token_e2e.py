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
from tests.support.procfs import connection_owner
from tests.support.redis import RedisServer, everything_in

from .conftest import StartFleet, curl_many, established_connections

pytestmark = pytest.mark.e2e

# longer than start_fleet's 4 s: on a loaded machine the three processes may start seconds
# apart, and the first one's lease must not run out before the test kills it
LEASE = {"state": {"lease_time": "10s"}}
LEASE_MS = 10_000


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
    fleet = await start_fleet(3, LEASE)  # each fetches its first token at once: one asks
    await wait_until(lambda: len(tenant_state.token_arrivals) == 1,
                     "one token request reached the (hanging) endpoint")
    pid = connection_owner(tenant_state.token_arrivals[0], [proxy.pid for proxy in fleet])
    holder = next(proxy for proxy in fleet if proxy.pid == pid)
    others = [proxy for proxy in fleet if proxy is not holder]
    locks = await redis_client.keys("*:token:lock")
    assert len(locks) == 1  # the one that asks holds the fleet's token lock

    async def both_wait() -> bool:
        channels = await redis_client.pubsub_channels("*:token:released")
        if len(channels) != 1:
            return False
        counts = await redis_client.pubsub_numsub(*channels)
        return int(counts[0][1]) == 2

    await wait_until(both_wait, "the two others wait on the fleet lock")
    their_urls = [proxy.url("/fotoweb/me") for proxy in others for _ in range(10)]
    rest = asyncio.ensure_future(curl_many(their_urls, 20))  # clients wait with them
    await wait_until(lambda: sum(established_connections(proxy.port) for proxy in others)
                     == 20, "the 20 requests reached the two others")
    assert len(tenant_state.token_arrivals) == 1  # they wait for the holder, not the tenant

    lease_left = await redis_client.pttl(locks[0])
    assert 0 < lease_left <= LEASE_MS  # the holder's hold ends by itself
    killed_at = time.monotonic()
    holder.kill()  # kill -9 while it holds the lock, its token request unanswered
    await holder.wait_exit()
    tenant_state.token_endpoint_gate = None  # the endpoint answers again (the dead one's never)
    assert await rest == ["200"] * 20  # the others go on once its lease ran out
    went_on_after = time.monotonic() - killed_at
    assert tenant_state.token_requests == 1  # and share the one token they got
    held_gate.set()  # let the dead instance's request go, for the tenant's teardown
    print(f"the others went on {went_on_after:.1f}s after the holder was killed "
          f"({lease_left} ms of its lease left)")
