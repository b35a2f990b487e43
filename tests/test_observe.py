"""Health, readiness, metrics, the status page and reload (the systemd protocols: test_systemd)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from fwproxy.app import reconfigure
from fwproxy.config import parse_config
from fwproxy.sim import DEMO_CLIENT_SECRET, TenantState
from tests.conftest import ProxyFactory, SettingsFactory, wait_until

Client = TestClient[Any, Any]


async def metric(client: Client, name: str, labels: str = "") -> float:
    async with client.get("/_fwproxy/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)\n"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


async def test_health(proxy: Client, tenant_state: TenantState) -> None:
    async with proxy.get("/_fwproxy/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "alive"
    assert not tenant_state.seen  # answered by fwproxy, not forwarded


async def test_ready_fetches_a_token_when_none_is_held(
    proxy: Client, tenant_state: TenantState
) -> None:
    async with proxy.get("/_fwproxy/ready") as resp:
        assert resp.status == 200
    assert tenant_state.token_requests == 1


async def test_ready_flips_to_503_with_the_reason(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"client_secret": "wrong-secret-value"})
    async with client.get("/_fwproxy/ready") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["reason"] == "invalid_client"
    assert "wrong-secret-value" not in str(body)


async def test_ready_turns_503_when_the_token_endpoint_dies(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"refresh_margin": 0})
    tenant_state.token_lifetime = 2  # the token will expire quickly
    async with client.get("/_fwproxy/ready") as resp:
        assert resp.status == 200
    tenant_state.token_endpoint_fault = (503, "text/html", b"<h1>maintenance</h1>")
    body: dict[str, Any] = {}

    async def not_ready() -> bool:
        async with client.get("/_fwproxy/ready") as resp:
            if resp.status == 503:
                body.update(await resp.json())
            return resp.status == 503

    await wait_until(not_ready, "the short-lived token to expire", timeout=10, every=0.1)
    assert body["reason"] == "http_503"


async def test_metrics_move_when_traffic_flows(
    proxy: Client, tenant_state: TenantState
) -> None:
    assert await metric(proxy, "fwproxy_requests_total", 'method="GET",status_class="2xx"') == 0
    for _ in range(3):
        async with proxy.get("/fotoweb/me") as resp:
            assert resp.status == 200
    async with proxy.post("/sim/upload", data=b"x" * 1000) as resp:
        assert resp.status == 200
    tenant_state.revoke_all()
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    async with proxy.get("/sim/forbidden") as resp:
        assert resp.status == 403
    assert await metric(proxy, "fwproxy_requests_total", 'method="GET",status_class="2xx"') == 4
    assert await metric(proxy, "fwproxy_requests_total", 'method="POST",status_class="2xx"') == 1
    assert await metric(proxy, "fwproxy_requests_total", 'method="GET",status_class="4xx"') == 1
    assert await metric(proxy, "fwproxy_request_body_bytes_total") == 1000
    assert await metric(proxy, "fwproxy_response_body_bytes_total") > 0
    assert await metric(proxy, "fwproxy_upstream_seconds_count") == 6
    assert await metric(proxy, "fwproxy_token_requests_total") == 2
    assert await metric(proxy, "fwproxy_replays_total") == 1
    assert await metric(proxy, "fwproxy_token_seconds_to_expiry") > 3000
    assert await metric(proxy, "fwproxy_token_in_query") == 0
    assert await metric(proxy, "fwproxy_requests_in_flight") == 0


async def test_failures_are_counted_by_reason(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(auth={"client_secret": "wrong"})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 503
    assert await metric(client, "fwproxy_token_failures_total", 'reason="invalid_client"') == 1


async def test_status_page_shows_state_but_no_secret(
    proxy: Client, tenant_state: TenantState
) -> None:
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    async with proxy.get("/_fwproxy/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert "127.0.0.1" in page
    assert "client_credentials" in page
    assert 'id="left"' in page  # the expiry countdown
    for secret in [DEMO_CLIENT_SECRET, *tenant_state.tokens]:
        assert secret not in page


async def test_status_page_lists_recent_errors(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(auth={"client_secret": "wrong"})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 503
    async with client.get("/_fwproxy/") as resp:
        page = await resp.text()
    assert "no_token" in page
    assert "invalid_client" in page


async def test_status_pages_obey_allow_from_but_serve_the_machine_itself(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(access={"allow_from": ["10.0.0.0/8"]})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 403  # the proxy itself: loopback is not in allow_from
    for path in ("/_fwproxy/health", "/_fwproxy/metrics", "/_fwproxy/"):
        async with client.get(path) as resp:
            assert resp.status == 200, path  # a container HEALTHCHECK comes from loopback
        async with client.get(path, headers={"Host": "evil.example"}) as resp:
            assert resp.status == 403, path  # Host still applies


async def test_status_prefix_is_configurable(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(status={"prefix": "/-/proxy"})
    async with client.get("/-/proxy/health") as resp:
        assert resp.status == 200
    async with client.get("/_fwproxy/health") as resp:
        assert resp.status == 404  # now just a path forwarded to the tenant
    assert tenant_state.seen[-1].path_qs == "/_fwproxy/health"


async def test_reload_rotates_the_secret_and_keeps_the_token(
    proxy: Client, make_settings: SettingsFactory, tenant_state: TenantState
) -> None:
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    tenant_state.clients = {"fwproxy-demo": "rotated-secret"}  # rotated at the tenant
    assert proxy.app is not None
    plan = reconfigure(proxy.app, make_settings(auth={"client_secret": "rotated-secret"},
                                                access={"read_only": True}))
    assert plan.applied == ("auth.client_secret", "access.read_only")
    assert plan.needs_restart == ()
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert tenant_state.token_requests == 1  # the token survived the reload
    async with proxy.post("/sim/echo") as resp:
        assert resp.status == 403  # new access rules apply at once
    tenant_state.revoke_all()
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200  # renewed with the rotated secret
    assert tenant_state.token_forms[-1]["client_secret"] == "rotated-secret"


async def test_reload_to_another_client_does_not_use_the_old_clients_token(
    proxy: Client, make_settings: SettingsFactory, tenant_state: TenantState
) -> None:
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    old = tenant_state.token_forms[-1]["client_id"]
    tenant_state.clients = {**tenant_state.clients, "second-client": "second-secret"}
    assert proxy.app is not None
    reconfigure(proxy.app, make_settings(auth={"client_id": "second-client",
                                               "client_secret": "second-secret"}))
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert tenant_state.token_requests == 2
    assert (old, tenant_state.token_forms[-1]["client_id"]) == ("fwproxy-demo", "second-client")
    async with proxy.get("/_fwproxy/") as resp:
        assert "second-client" in await resp.text()  # the status page names the new client


async def test_reload_reports_what_needs_a_restart(
    proxy: Client, make_settings: SettingsFactory
) -> None:
    assert proxy.app is not None
    plan = reconfigure(proxy.app, make_settings(listen={"port": 9999}))
    assert plan.needs_restart == ("listen.port",)
    assert plan.settings.listen.port == 0  # the running value stays, reported again
    again = reconfigure(proxy.app, make_settings(listen={"port": 9999}, log={"level": "debug"}))
    assert (again.applied, again.needs_restart) == (("log.level",), ("listen.port",))


def test_settings_carry_status_and_listen_defaults() -> None:
    settings = parse_config({"tenant": {"url": "https://t.example"},
                             "auth": {"client_id": "a", "client_secret": "b"}}, environ={})
    assert settings.status.prefix == "/_fwproxy"
    assert settings.listen.shutdown_timeout == 30
    assert settings.listen.unix_socket is None


def test_request_metrics_render_as_prometheus_families() -> None:
    from prometheus_client import generate_latest

    from fwproxy.observe import Metrics

    metrics = Metrics()
    for seconds in (0.005, 0.02, 100.0):  # on a bound (le is inclusive), inside, past the last
        metrics.observe("GET", 200, 3, 5, seconds)
    metrics.observe("BREW", 0, 0, 0, None)  # an unknown method, no answer at all
    metrics.in_flight += 2
    text = generate_latest(metrics.registry).decode()
    for line in (
        'fwproxy_upstream_seconds_bucket{le="0.005"} 1.0',
        'fwproxy_upstream_seconds_bucket{le="0.01"} 1.0',
        'fwproxy_upstream_seconds_bucket{le="0.025"} 2.0',
        'fwproxy_upstream_seconds_bucket{le="60.0"} 2.0',
        'fwproxy_upstream_seconds_bucket{le="+Inf"} 3.0',
        "fwproxy_upstream_seconds_count 3.0",
        "fwproxy_upstream_seconds_sum 100.025",
        'fwproxy_requests_total{method="GET",status_class="2xx"} 3.0',
        'fwproxy_requests_total{method="other",status_class="none"} 1.0',
        "fwproxy_request_body_bytes_total 9.0",
        "fwproxy_response_body_bytes_total 15.0",
        "fwproxy_requests_in_flight 2.0",
        "# TYPE fwproxy_upstream_seconds histogram",
    ):
        assert line in text.splitlines(), line
