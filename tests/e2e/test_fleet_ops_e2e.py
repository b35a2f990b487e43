"""A fleet of three `fwproxy run` sharing one real redis-server, as operators see it: a local
token from one instance is good at the others (Redis up or not); Redis stopped mid-run and
started again empty under light load (requests go on, each instance on its own token; the
outage is logged once per instance and shows on /ready, the status page and the metrics;
the fleet shares again by itself); and the same fleet through an ACL user over TLS, with no
secret in any log, page, metric or key name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis
import trustme
from aiohttp.test_utils import TestServer

from fwproxy.keys import add_key
from fwproxy.sim import TenantState
from tests.conftest import merge, tenant_config, wait_until
from tests.support.redis import RedisServer

from .conftest import FwproxyProcess, StartFleet, StartProxy, curl

pytestmark = pytest.mark.e2e

TOKEN_PATH = "/fotoweb/oauth2/token"
WENT_AWAY = re.compile(r"shared state: Redis is (?!back)\w+")


async def local_token(proxy: FwproxyProcess, client_id: str, secret: str) -> str:
    result = await curl("-u", f"{client_id}:{secret}", "-d", "grant_type=client_credentials",
                        proxy.url(TOKEN_PATH))
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.text)
    value: str = answer["access_token"]
    assert value.startswith("fwpl_")
    return value


async def status_with(proxy: FwproxyProcess, local: str) -> str:
    result = await curl("-o", "/dev/null", "-w", "%{http_code}",
                        "-H", f"Authorization: Bearer {local}", proxy.url("/fotoweb/me"))
    return result.text


async def test_a_local_token_from_one_instance_works_at_every_other(
        start_fleet: StartFleet, redis_server: RedisServer, tmp_path: Path) -> None:
    """Three machines (each its own state directory, so no key file could be shared): the
    signing key is the fleet's, derived alike by each; verifying needs no Redis."""
    keys = tmp_path / "keys"
    secret = add_key(keys, "robot")
    common = {"local_tokens": {"enabled": True}, "access": {"api_keys_file": str(keys)}}
    fleet: list[FwproxyProcess] = []
    for n in range(3):  # one after another: start_proxy names its config by their count
        fleet += await start_fleet(1, merge(common, {"auth": {
            "token_store": str(tmp_path / f"machine-{n}" / "tokens.json")}}))
    assert len({proxy.config_path for proxy in fleet}) == 3
    a, b, c = fleet
    from_a = await local_token(a, "robot", secret)
    assert [await status_with(proxy, from_a) for proxy in (a, b, c)] == ["200"] * 3
    assert await status_with(b, from_a[:-2] + ("AA" if from_a[-2:] != "AA" else "AB")) \
        == "401"  # a changed one is still refused everywhere

    redis_server.stop()  # Redis away: tokens are still issued and verified alike
    from_b = await local_token(b, "robot", secret)
    assert [await status_with(proxy, from_b) for proxy in (a, b, c)] == ["200"] * 3
    assert [await status_with(proxy, from_a) for proxy in (a, b, c)] == ["200"] * 3
    for proxy in fleet:
        assert from_a not in proxy.log_text()
        assert from_b not in proxy.log_text()
    for n in range(3):  # the fleet keeps no signing key file
        assert not (tmp_path / f"machine-{n}" / "local-tokens.key").exists()


class Load:
    """Light load spread over the fleet: one request at a time, round robin, every status
    kept (by phase), until stopped."""

    def __init__(self, fleet: list[FwproxyProcess]) -> None:
        self.fleet = fleet
        self.phase = "before"
        self.statuses: dict[str, list[int]] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            turn = 0
            while True:
                proxy = self.fleet[turn % len(self.fleet)]
                turn += 1
                async with session.get(proxy.url("/fotoweb/me")) as resp:
                    await resp.read()
                    self.statuses.setdefault(self.phase, []).append(resp.status)
                await asyncio.sleep(0.02)  # light: pacing, not waiting for anything

    def count(self, phase: str) -> int:
        return len(self.statuses.get(phase, []))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def get_json(proxy: FwproxyProcess, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(proxy.url(path)) as resp:
        return resp.status, await resp.json()


async def get_text(proxy: FwproxyProcess, path: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(proxy.url(path)) as resp:
        assert resp.status == 200
        return await resp.text()


def sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not served")


async def shared_keys(server: RedisServer) -> list[bytes]:
    client = redis.Redis.from_url(server.url)
    try:
        return [name async for name in client.scan_iter("fwproxy:*")]
    finally:
        await client.aclose()


async def test_redis_stopped_mid_run_and_started_again_empty(
        start_fleet: StartFleet, redis_server: RedisServer,
        tenant_state: TenantState) -> None:
    """Client credentials, tokens living 6 s, three instances under light load."""
    tenant_state.token_lifetime = 6
    fleet = await start_fleet(3, {"auth": {"refresh_margin": "2s"}})

    async def all_say(up: bool) -> bool:
        for proxy in fleet:
            status, answer = await get_json(proxy, "/_fwproxy/ready")
            if status != 200 or answer["shared_state"]["up"] is not up:
                return False
        return True

    async with Load(fleet).running() as load:
        await wait_until(lambda: all_say(True), "every instance sharing", timeout=30,
                         every=0.1)
        await wait_until(lambda: load.count("before") >= 30, "load before the outage",
                         timeout=30)
        held_before = await shared_keys(redis_server)  # the shared token, when merged

        load.phase = "down"
        redis_server.stop()
        await wait_until(lambda: all_say(False), "every instance to see Redis away",
                         timeout=30, every=0.1)
        fetched = {}
        for proxy in fleet:
            fetched[proxy.port] = sample(await get_text(proxy, "/_fwproxy/metrics"),
                                         "fwproxy_token_requests_total")

        async def each_renewed_alone() -> bool:
            for proxy in fleet:
                metrics = await get_text(proxy, "/_fwproxy/metrics")
                if sample(metrics, "fwproxy_token_requests_total") <= fetched[proxy.port]:
                    return False
            return True

        # each instance goes on on a token of its own, renewed without Redis
        await wait_until(each_renewed_alone, "every instance to renew its own token",
                         timeout=30, every=0.2)
        for proxy in fleet:
            status, answer = await get_json(proxy, "/_fwproxy/ready")
            assert status == 200
            assert answer["status"] == "ready"
            assert answer["degraded"] is True
            assert answer["shared_state"]["why"] == "unreachable"
            assert answer["shared_state"]["meanwhile"] == "using its own token"
            metrics = await get_text(proxy, "/_fwproxy/metrics")
            assert sample(metrics, "fwproxy_shared_state_up") == 0
            assert sample(metrics, "fwproxy_shared_state_outages_total") == 1
            assert sample(metrics, 'fwproxy_shared_state_down{why="unreachable"}') == 1
            assert "DOWN (unreachable)" in await get_text(proxy, "/_fwproxy/")
        await wait_until(lambda: load.count("down") >= 30, "load during the outage",
                         timeout=30)

        load.phase = "back"
        redis_server.start()  # the same address, empty
        await wait_until(lambda: all_say(True), "every instance sharing again", timeout=30,
                         every=0.1)
        await wait_until(lambda: load.count("back") >= 30, "load after the outage",
                         timeout=30)
        if held_before:  # with the shared token (fleet-token): written back by itself
            async def written_back() -> bool:
                return bool(await shared_keys(redis_server))

            await wait_until(written_back, "the shared token back", timeout=30, every=0.1)

    for proxy in fleet:
        metrics = await get_text(proxy, "/_fwproxy/metrics")
        assert sample(metrics, "fwproxy_shared_state_up") == 1
        assert sample(metrics, "fwproxy_shared_state_outages_total") == 1
        assert sample(metrics, "fwproxy_shared_state_recoveries_total") == 1
        assert 'id="shared-state">up (' in await get_text(proxy, "/_fwproxy/")
        assert len(WENT_AWAY.findall(proxy.log_text())) == 1, proxy.log_text()
        assert proxy.log_count("shared state: Redis is back") == 1
    for phase in ("before", "down", "back"):
        assert set(load.statuses[phase]) == {200}, (phase, load.statuses[phase])


async def test_a_fleet_through_an_acl_user_over_tls_shows_no_secret(
        start_proxy: StartProxy, tenant: TestServer, tmp_path: Path) -> None:
    """The password from a file, an ACL user in the URL, TLS checked against a CA file; then
    every log line, the status page, readiness and the metrics, and every Redis key name,
    scanned for the Redis password, the client secret and the encryption key."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, chain, key = tmp_path / "ca.pem", tmp_path / "chain.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    password, encryption_key = "redis-pw-e2e-K3v9Qa", "enc-e2e-" + "Vb4Nx8Wq" * 5
    secrets = {}
    for name, value in (("redis-password", password), ("encryption-key", encryption_key)):
        secrets[name] = tmp_path / name
        secrets[name].write_text(value)
        secrets[name].chmod(0o600)
    client_secret = tenant_config(tenant)["auth"]["client_secret"]
    with RedisServer(tmp_path / "redis", user=("fleet", password), tls=(chain, key)) as server:
        state = {"backend": "redis", "redis_url": server.url, "lease_time": "4s",
                 "redis_password_file": str(secrets["redis-password"]),
                 "redis_ca_file": str(ca_file),
                 "encryption_key_file": str(secrets["encryption-key"])}
        fleet = list(await asyncio.gather(*(start_proxy({"state": state}) for _ in range(3))))
        for proxy in fleet:
            status, answer = await get_json(proxy, "/_fwproxy/ready")
            assert (status, answer["shared_state"]) == (200, {"up": True})
            async with aiohttp.ClientSession() as session, session.get(
                    proxy.url("/fotoweb/me")) as resp:
                assert resp.status == 200
        reader = redis.Redis.from_url(server.url, username="fleet", password=password,
                                      ssl_ca_certs=str(ca_file))
        try:
            names = [name.decode() async for name in reader.scan_iter("*")]
        finally:
            await reader.aclose()
        shown = []
        for proxy in fleet:
            shown += [await get_text(proxy, "/_fwproxy/"),
                      await get_text(proxy, "/_fwproxy/metrics"),
                      json.dumps((await get_json(proxy, "/_fwproxy/ready"))[1])]
        server.stop()  # an outage: logged, shown
        await wait_until(lambda: all(
            WENT_AWAY.search(proxy.log_text()) for proxy in fleet), "the outage logged")
        for proxy in fleet:
            shown += [await get_text(proxy, "/_fwproxy/"),
                      json.dumps((await get_json(proxy, "/_fwproxy/ready"))[1])]
    for proxy in fleet:
        await proxy.stop()
        shown.append(proxy.log_text())
    text = "\n".join(shown + names)
    for secret in (password, client_secret, encryption_key):
        assert secret not in text
    assert "DOWN (" in text
