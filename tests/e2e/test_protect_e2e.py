"""Issue 15 through `fwproxy run` and curl, at a simulated tenant with switched-on limits
(fwproxy/sim/limits.py): its 429 with Retry-After is waited out and retried, and one asking
for longer than tenant.retry_max_wait reaches the client as it is."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.sim import TenantState
from fwproxy.sim.limits import Limits

from .burst import burst
from .conftest import StartProxy, curl

pytestmark = pytest.mark.e2e


async def test_a_429_with_retry_after_is_waited_out_and_retried(
        tenant: TestServer, tenant_state: TenantState, start_proxy: StartProxy) -> None:
    # two at once, each taking 0.3 s; the rest get 429 with Retry-After: 1
    tenant_state.limits.switch(Limits(max_concurrent=2, action="429", retry_after=1,
                                      delay=0.3, count_oauth=False))
    proxy = await start_proxy()

    result = await burst(proxy.url("/fotoweb/me"), 5, 5)

    assert result.statuses == {"200": 5}, result.statuses
    assert tenant_state.limits.refused["429"] > 0  # the tenant did refuse some
    await proxy.wait_for_line("retries=1")


async def test_a_retry_after_longer_than_retry_max_wait_is_passed_back(
        tenant: TestServer, tenant_state: TenantState, start_proxy: StartProxy) -> None:
    tenant_state.limits.switch(Limits(max_concurrent=1, action="429", retry_after=30,
                                      delay=3.0, count_oauth=False))  # (held 3 s)
    proxy = await start_proxy({"tenant": {"retry_max_wait": "20s"}})

    first, second = await asyncio.gather(*(
        curl("-D", "-", "-o", "/dev/null", proxy.url("/fotoweb/me")) for _ in range(2)))

    heads = sorted([first.text, second.text], key=lambda head: " 429" in head)
    assert heads[0].startswith("HTTP/1.1 200")
    assert heads[1].startswith("HTTP/1.1 429")
    assert "Retry-After: 30" in heads[1]
    assert tenant_state.limits.refused["429"] == 1  # asked once: not retried
