"""Issue 16, the tenant budget fleet-wide, through three `fwproxy run` sharing one real
redis-server (start_fleet) in front of the simulated tenant, whose limiter records the most
requests it held at once (fwproxy/sim/limits.py `peak`; `delay` makes each take a while).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestServer

from fwproxy.sim import TenantState
from fwproxy.sim.limits import Limits
from tests.conftest import wait_until
from tests.support.redis import RedisServer

from .conftest import StartFleet, curl_many

pytestmark = pytest.mark.e2e


async def test_the_tenant_never_sees_more_than_the_fleet_wide_cap(
        tenant: TestServer, tenant_state: TenantState, start_fleet: StartFleet) -> None:
    fleet = await start_fleet(3, {"tenant": {"max_in_flight": 8}})
    tenant_state.limits.switch(Limits(delay=0.4))  # no limit: each request takes 0.4 s
    statuses = await asyncio.gather(*(
        curl_many([proxy.url(f"/fotoweb/me?n={i}") for i in range(20)], 20)
        for proxy in fleet))  # 60 at once, 20 at each instance (each alone would send 8)
    assert [status for each in statuses for status in each] == ["200"] * 60
    assert tenant_state.limits.admitted >= 60
    assert tenant_state.limits.peak <= 8, tenant_state.limits.peak


async def slots_held(redis_server: RedisServer) -> int:
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = await client.keys("*:budget:slots")
        return int(await client.zcard(keys[0])) if keys else 0
    finally:
        await client.aclose()


async def test_a_killed_instances_slots_come_back_within_the_lease_time(
        tenant: TestServer, tenant_state: TenantState, start_fleet: StartFleet,
        redis_server: RedisServer) -> None:
    # lease_time 4 s (start_fleet); a line longer than that: leaked slots would answer busy
    fleet = await start_fleet(3, {"tenant": {"max_in_flight": 8, "queue_timeout": "20s"}})
    tenant_state.limits.switch(Limits(delay=1.5, count_oauth=False))
    for proxy in fleet:  # each has its token: none is fetched while the slots are held
        assert await curl_many([proxy.url("/fotoweb/me")], 1) == ["200"]
    doomed, *others = fleet
    holding = asyncio.ensure_future(
        curl_many([doomed.url(f"/fotoweb/me?n={i}") for i in range(8)], 8))
    await wait_until(lambda: tenant_state.limits.in_flight == 8, "all 8 slots held by one")
    doomed.kill()  # kill -9: no release, no renewal; its 8 leases stay in Redis
    with contextlib.suppress(AssertionError):  # (its curl saw the connections die)
        await holding
    assert await slots_held(redis_server) == 8
    statuses = await asyncio.gather(*(
        curl_many([proxy.url(f"/fotoweb/me?m={i}") for i in range(8)], 8)
        for proxy in others))
    assert [status for each in statuses for status in each] == ["200"] * 16
