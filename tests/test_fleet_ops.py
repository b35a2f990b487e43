"""A fleet as operators see it: local tokens good at every instance (one signing key derived
alike everywhere, no Redis call), and Redis's state on /ready, the status page and the
metrics, noticed by the watcher even when nothing else calls Redis."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import PROXY, SHARED_STATE, reconfigure
from fwproxy.config import MIN_ENCRYPTION_KEY, Settings, StateConfig, parse_config
from fwproxy.exceptions import WHY
from fwproxy.fleet import SharedState, scope_of
from fwproxy.fleetview import meanwhile, shared_state_line, shared_state_readiness
from fwproxy.guard import Guard
from fwproxy.localtokens import (
    DERIVED_KID,
    Claims,
    Holder,
    derived_signing_keys,
    issue,
    verify,
)
from fwproxy.private import Secret
from fwproxy.sealing import derive_key
from fwproxy.tokengate import signing_keys
from tests.conftest import ProxyFactory, merge, tenant_config, wait_until
from tests.support.redis import RedisServer

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens: an instance starts without Redis


def fleet_settings(tenant: TestServer, state_dir: Path, **sections: dict[str, Any]
                   ) -> Settings:
    """One instance's settings, on a machine of its own (`state_dir`)."""
    raw = merge(tenant_config(tenant), {"local_tokens": {"enabled": True},
                                        "state": {"backend": "redis", "redis_url": NOWHERE}})
    return parse_config(merge(raw, sections), environ={"STATE_DIRECTORY": str(state_dir)})


# --- local tokens: one key for the fleet ---------------------------------------------------

def test_a_fleet_derives_one_signing_key_from_its_key_material() -> None:
    key = derived_signing_keys("m" * 40, "fwproxy:scope").current()
    assert key.kid == DERIVED_KID
    assert len(key.secret) == 32
    assert derived_signing_keys("m" * 40, "fwproxy:scope").current() == key  # every instance
    others = [derived_signing_keys("m" * 40, "fwproxy:other").current(),  # another fleet
              derived_signing_keys("n" * 40, "fwproxy:scope").current()]  # another secret
    assert all(other.secret != key.secret for other in others)
    assert key.secret != derive_key("m" * 40, "fwproxy:scope").secret  # not the sealing key
    assert "m" * 40 not in repr(key)


def test_a_local_token_from_one_instance_is_good_at_another(
        tenant: TestServer, tmp_path: Path) -> None:
    """Two machines (each its own state directory): no key file, the same derived key."""
    a = fleet_settings(tenant, tmp_path / "a")
    b = fleet_settings(tenant, tmp_path / "b")
    assert a.local_token_key is None
    assert b.local_token_key is None
    signing_a = signing_keys(a)
    assert signing_a is not None
    token = issue(signing_a.current(), Holder.open("robot"), time.time(), 60)
    gate = Guard(b).gate
    assert gate is not None
    assert isinstance(gate.check(token), Claims)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_the_fleets_key_comes_from_the_encryption_key_then_the_client_secret(
        tenant: TestServer, tmp_path: Path) -> None:
    base = fleet_settings(tenant, tmp_path)

    def keys_of(settings: Settings) -> bytes:
        found = signing_keys(settings)
        assert found is not None
        return found.current().secret

    def with_state(**changes: Any) -> Settings:
        return replace(base, state=replace(base.state, **changes))

    other_secret = parse_config(
        merge(tenant_config(tenant), {"local_tokens": {"enabled": True},
                                      "auth": {"client_secret": "another-secret"},
                                      "state": {"backend": "redis", "redis_url": NOWHERE}}),
        environ={})
    assert keys_of(other_secret) != keys_of(base)  # the client secret is the material
    with_key = with_state(encryption_key=Secret("k" * 44))
    assert keys_of(with_key) != keys_of(base)
    other_with_key = replace(other_secret, state=with_key.state)
    assert keys_of(other_with_key) == keys_of(with_key)  # the encryption key wins
    assert keys_of(with_state(key_prefix="other")) != keys_of(base)  # another fleet


def test_local_tokens_off_or_on_one_machine_keep_their_own_key(
        tenant: TestServer, tmp_path: Path) -> None:
    off = parse_config(merge(tenant_config(tenant), {
        "state": {"backend": "redis", "redis_url": NOWHERE}}), environ={})
    assert signing_keys(off) is None
    alone = parse_config(merge(tenant_config(tenant), {"local_tokens": {"enabled": True}}),
                         environ={"STATE_DIRECTORY": str(tmp_path)})
    assert alone.local_token_key == tmp_path / "local-tokens.key"
    found = signing_keys(alone)
    assert found is not None
    assert found.current().kid == 1  # the file's key
    assert (tmp_path / "local-tokens.key").exists()


async def test_a_reload_keeps_the_fleets_signing_key(
        make_proxy: ProxyFactory, tenant: TestServer, tmp_path: Path) -> None:
    """Even one that changes the client secret: the key is derived once, at start (as the
    sealing key is), so the fleet's instances keep agreeing."""
    proxy = await make_proxy(local_tokens={"enabled": True},
                             state={"backend": "redis", "redis_url": NOWHERE})
    async with proxy.post("/fotoweb/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": "robot",
            "client_secret": "anything"}) as resp:
        assert resp.status == 200
        local = (await resp.json())["access_token"]
    app = proxy.app
    assert app is not None
    running = app[PROXY].settings
    loaded = parse_config(merge(tenant_config(tenant), {
        "local_tokens": {"enabled": True}, "auth": {"client_secret": "rotated-secret"},
        "state": {"backend": "redis", "redis_url": NOWHERE}}), environ={})
    plan = reconfigure(app, loaded)
    assert "auth.client_secret" in plan.applied
    assert running.auth.client_secret != app[PROXY].settings.auth.client_secret
    gate = app[PROXY].guard.gate
    assert gate is not None
    assert isinstance(gate.check(local), Claims)


def test_verifying_a_fleet_token_needs_no_redis() -> None:
    """The derived key is all `verify` needs: no SharedState, no network."""
    keys = derived_signing_keys("m" * 40, "fwproxy:" + scope_of("https://t", "c", "g"))
    token = issue(keys.current(), Holder.open("robot"), 1000.0, 60)
    assert isinstance(verify(keys, token, 1001.0, Holder.open), Claims)


# --- what operators see: pure --------------------------------------------------------------

def view(up: bool, why: str = "") -> dict[str, object]:
    return {"backend": "redis", "up": up, "why": why, "for_seconds": 12.5, "outages": 2,
            "prefix": "fwproxy"}


@pytest.mark.parametrize(("up", "user_context", "expected"), [
    (True, False, {"up": True}),
    (False, False, {"up": False, "why": "unreachable", "for_seconds": 12.5,
                    "meanwhile": "using its own token"}),
    (False, True, {"up": False, "why": "unreachable", "for_seconds": 12.5,
                   "meanwhile": meanwhile(True)}),
])
def test_readiness_says_why_redis_is_away_and_what_the_instance_does(
        up: bool, user_context: bool, expected: dict[str, object]) -> None:
    assert shared_state_readiness(view(up, "" if up else "unreachable"), user_context) == expected


def test_what_an_instance_does_meanwhile() -> None:
    assert meanwhile(False) == "using its own token"
    assert "no refresh until Redis is back" in meanwhile(True)
    assert "shared_state_unavailable" in meanwhile(True)


@pytest.mark.parametrize(("up", "user_context", "expected"), [
    (True, False, "up (Redis, key prefix fwproxy) for 12.5 s; 2 outages so far"),
    (False, False, "DOWN (timeout) for 12.5 s: using its own token until it is back "
                   "(Redis, key prefix fwproxy); 2 outages so far"),
])
def test_the_status_pages_shared_state_line(up: bool, user_context: bool,
                                            expected: str) -> None:
    assert shared_state_line(view(up, "" if up else "timeout"), user_context) == expected


# --- against a real redis-server ------------------------------------------------------------

def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not served")


async def test_an_outage_shows_on_ready_status_and_metrics_and_so_does_the_return(
        make_proxy: ProxyFactory, redis_server: RedisServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """Nothing but the watcher calls Redis here (the token is good): the outage is seen all
    the same, readiness stays 200 (degraded: the instance uses its own token), it is logged
    once, and Redis coming back is seen by itself."""
    proxy: TestClient[Any, Any] = await make_proxy(
        state={"backend": "redis", "redis_url": redis_server.url, "lease_time": "4s"})
    caplog.set_level(logging.WARNING, "fwproxy.fleet")

    async def ready() -> dict[str, Any]:
        async with proxy.get("/_fwproxy/ready") as resp:
            assert resp.status == 200
            answer: dict[str, Any] = await resp.json()
            return answer

    async def metrics() -> str:
        async with proxy.get("/_fwproxy/metrics") as resp:
            return await resp.text()

    async def page() -> str:
        async with proxy.get("/_fwproxy/") as resp:
            return await resp.text()

    assert await ready() == {"status": "ready", "shared_state": {"up": True}}
    assert metric(await metrics(), "fwproxy_shared_state_up") == 1
    assert 'id="shared-state">up (Redis, key prefix fwproxy)' in await page()

    redis_server.stop()

    async def degraded() -> bool:
        return (await ready()).get("degraded") is True

    await wait_until(degraded, "/ready to say Redis is away", timeout=20, every=0.1)
    answer = await ready()
    assert answer["status"] == "ready"
    assert answer["shared_state"]["why"] == "unreachable"
    assert answer["shared_state"]["meanwhile"] == "using its own token"
    text = await metrics()
    assert metric(text, "fwproxy_shared_state_up") == 0
    assert metric(text, "fwproxy_shared_state_outages_total") == 1
    assert metric(text, 'fwproxy_shared_state_down{why="unreachable"}') == 1
    assert 'DOWN (unreachable)' in await page()
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200  # the proxy goes on
    app = proxy.app
    assert app is not None
    state: SharedState = app[SHARED_STATE]
    assert state.outages == 1

    redis_server.start()  # back, empty

    async def shared_again() -> bool:
        return (await ready()) == {"status": "ready", "shared_state": {"up": True}}

    await wait_until(shared_again, "/ready to say Redis is back", timeout=20, every=0.1)
    text = await metrics()
    assert metric(text, "fwproxy_shared_state_up") == 1
    assert metric(text, "fwproxy_shared_state_recoveries_total") == 1
    assert metric(text, 'fwproxy_shared_state_down{why="unreachable"}') == 0
    went = [r for r in caplog.records if "shared state: Redis is unreachable" in r.getMessage()]
    assert len(went) == 1  # once per outage, however many probes failed
    assert sum("Redis is back" in r.getMessage() for r in caplog.records) == 1


async def test_not_ready_without_a_token_says_redis_is_away_too(
        make_proxy: ProxyFactory) -> None:
    proxy: TestClient[Any, Any] = await make_proxy(
        auth={"token_url": "http://127.0.0.1:1/token"},
        state={"backend": "redis", "redis_url": NOWHERE, "lease_time": "4s"})
    async with proxy.get("/_fwproxy/ready") as resp:
        assert resp.status == 503
        answer = await resp.json()
    assert answer["reason"] == "token_endpoint_unreachable"
    assert answer["degraded"] is True
    assert answer["shared_state"]["why"] == "unreachable"


async def test_a_local_proxy_shows_no_shared_state(make_proxy: ProxyFactory) -> None:
    proxy: TestClient[Any, Any] = await make_proxy()
    async with proxy.get("/_fwproxy/ready") as resp:
        assert await resp.json() == {"status": "ready"}
    async with proxy.get("/_fwproxy/metrics") as resp:
        assert "fwproxy_shared_state" not in await resp.text()
    async with proxy.get("/_fwproxy/") as resp:
        assert "shared-state" not in await resp.text()


# --- README "Running a fleet": its numbers are the code's -----------------------------------

def test_the_running_a_fleet_numbers_are_the_codes() -> None:
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    defaults = StateConfig()
    state = SharedState(replace(defaults, backend="redis", redis_url=NOWHERE), "s", "m" * 40)
    assert "(a small expiring write at least every second," in readme
    assert state.probe_interval <= 1.0
    assert "`encryption_key_file` (32 characters or more," in readme
    assert MIN_ENCRYPTION_KEY == 32
    assert "lease_time: 15s " in readme
    assert defaults.lease_time == 15.0
    assert "key_prefix: fwproxy " in readme
    assert defaults.key_prefix == "fwproxy"
    assert "fleet_size: 0 " in readme
    assert defaults.fleet_size == 0
    assert "backend: redis # local (the default)" in readme
    assert defaults.backend == "local"
    for why in ("unreachable", "timeout", "denied", "tls", "down"):
        assert f"`{why}`" in readme
        assert why in WHY
