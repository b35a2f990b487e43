"""Issue 15: a legacy burst (500 requests from 50 parallel curl processes) at a simulated
tenant that drops connections over 10 concurrent. Direct to the tenant, the burst fails some:
the tenant's limit is real. Through fwproxy with ``tenant.max_in_flight: 8`` it fails none,
and the tenant never holds more than 8 at once."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.sim import TenantState
from fwproxy.sim.limits import Limits

from .burst import burst
from .conftest import StartProxy, curl

pytestmark = pytest.mark.e2e

REQUESTS, PROCESSES = 500, 50
# 10 at once; each request takes the tenant 50 ms, so concurrency is real (as FotoWeb's is)
DROP_OVER_10 = Limits(max_concurrent=10, action="drop", delay=0.05)


@pytest.fixture
def tenant_state() -> TenantState:
    state = TenantState()
    state.limits.switch(DROP_OVER_10)
    return state


async def test_a_direct_burst_at_a_tenant_that_drops_over_10_concurrent_fails_some(
        tenant: TestServer, tenant_state: TenantState) -> None:
    headers = {"Authorization": f"Bearer {tenant_state.issue()[0]}"}
    url = f"http://127.0.0.1:{tenant.port}/fotoweb/me"

    result = await burst(url, REQUESTS, PROCESSES, headers)

    record = tenant_state.limits
    assert result.total == REQUESTS
    assert result.statuses["000"] > 0, result.statuses  # dropped: no answer at all
    assert set(result.statuses) <= {"200", "000"}, result.statuses
    assert result.ok == record.admitted  # every admitted request was answered
    assert record.refused["drop"] >= result.failed  # curl retries a reused connection once
    assert record.peak > 10  # the burst offered more than the limit...
    assert record.in_flight == 0

    # ...and that is why it failed: with the limit switched off (the /sim/limits hook),
    # the same burst gets every answer
    switched = await curl("-X", "POST", "-H", f"Authorization: {headers['Authorization']}",
                          "--data-binary", "{}", f"http://127.0.0.1:{tenant.port}/sim/limits")
    assert switched.returncode == 0
    assert '"max_concurrent": null' in switched.text
    again = await burst(url, REQUESTS, PROCESSES, headers)
    assert again.statuses == {"200": REQUESTS}
    assert tenant_state.limits.refused == {"drop": 0, "429": 0, "503": 0}


async def test_through_fwproxy_with_max_in_flight_8_every_request_gets_its_200(
        tenant: TestServer, tenant_state: TenantState, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"tenant": {"max_in_flight": 8}})

    result = await burst(proxy.url("/fotoweb/me"), REQUESTS, PROCESSES)

    record = tenant_state.limits
    assert result.statuses == {"200": REQUESTS}, result.statuses
    assert record.peak <= 8  # the tenant never saw more than 8 at once (the token's included)
    assert record.refused == {"drop": 0, "429": 0, "503": 0}
    metrics = await curl(proxy.url("/_fwproxy/metrics"))
    assert "fwproxy_tenant_queue_length 0.0" in metrics.text
    assert "fwproxy_tenant_in_flight 0.0" in metrics.text
