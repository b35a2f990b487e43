"""`listen.workers: 2`: two processes on one port, one token between them."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path

import pytest

from fwproxy.sim import TenantState
from tests.conftest import token_check, wait_until

from .conftest import StartProxy, curl, curl_many

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    return [int(part) for part in text.split()]


async def test_workers_share_one_token_and_survive_a_lost_worker(
    start_proxy: StartProxy, tenant_state: TenantState
) -> None:
    proxy = await start_proxy({"listen": {"workers": 2}})
    await wait_until(lambda: len(children(proxy.pid)) == 2, "two workers")
    statuses = await curl_many([proxy.url("/fotoweb/me")] * 200, 50)
    assert statuses == ["200"] * 200
    assert tenant_state.token_requests == 1  # one token for both workers

    tenant_state.revoke_all()  # a 401 storm reaches both workers
    statuses = await curl_many([proxy.url("/fotoweb/me")] * 200, 50)
    assert statuses == ["200"] * 200
    assert tenant_state.token_requests == 2  # one renewal for the whole proxy

    checks = [seen for seen in tenant_state.seen if token_check(seen)]
    assert 1 <= len(checks) <= 2  # each worker checks the old token at most once
    seen_by = {seen.headers["x-forwarded-for"][0] for seen in tenant_state.seen
               if not token_check(seen)}
    assert seen_by == {"127.0.0.1"}
    victim = children(proxy.pid)[0]
    os.kill(victim, signal.SIGKILL)  # a worker dies ...
    await proxy.wait_for_line(f"(pid {victim}) died")
    await wait_until(lambda: len(children(proxy.pid)) == 2 and victim not in
                     children(proxy.pid), "a replacement worker")
    for _ in range(20):  # ... and the port keeps answering
        assert '"demo-app"' in (await curl(proxy.url("/fotoweb/me"))).text

    os.kill(proxy.pid, signal.SIGHUP)  # reload reaches every worker
    await wait_until(lambda: proxy.log_count("reloaded") >= 2, "both workers reloaded")
    assert await asyncio.wait_for(proxy.stop(), 60) == 0
    assert "stopped" in proxy.log_text()


async def test_sigterm_while_workers_start_is_answered(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    from .conftest import launch_fwproxy, write_config

    del start_proxy
    path = write_config(tmp_path / "bad.yaml", {
        "listen": {"port": 0, "workers": 2},
        "tenant": {"url": "http://127.0.0.1:1", "allow_insecure_http": True},
        "auth": {"client_id": "a", "client_secret": "b", "token_url": "http://127.0.0.1:1/t"},
        "status": {"prefix": "/_x"},
    })
    proxy = await launch_fwproxy(path)
    os.kill(proxy.pid, signal.SIGTERM)  # answered at once, even while workers start
    assert await asyncio.wait_for(proxy.wait_exit(), 30) in (0, 1)


async def test_a_second_proxy_cannot_join_the_port(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    from .conftest import run_fwproxy, write_config

    first = await start_proxy({"listen": {"workers": 2}})
    path = write_config(tmp_path / "second.yaml", {
        "listen": {"port": first.port, "workers": 2},
        "tenant": {"url": "http://127.0.0.1:1", "allow_insecure_http": True},
        "auth": {"client_id": "a", "client_secret": "b"},
    })
    second = await run_fwproxy("run", "--config", str(path))
    assert second.returncode == 1
    assert "cannot listen" in second.stderr
    assert "Traceback" not in second.stderr


async def test_idle_workers_renew_a_short_lived_token_once_for_the_whole_proxy(
    start_proxy: StartProxy, tenant_state: TenantState
) -> None:
    """Each worker's timer comes due at the same moment; one of them fetches, the others
    take its token from the shared file (which keeps the lifetime, so a 4 s token is not
    mistaken for one inside its 60 s refresh_margin)."""
    tenant_state.token_lifetime = 4  # margin 1 s: a renewal every 2 s, nobody using it
    proxy = await start_proxy({"listen": {"workers": 2}})
    await wait_until(lambda: tenant_state.token_requests >= 4, "three renewals while idle")
    times = tenant_state.token_times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) > 0.5, gaps  # one request per renewal, not one per worker
    assert proxy.log_count("token renewed") >= 2
