"""Starting and stopping `fwproxy run`: a graceful SIGTERM, a port already taken."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.sim import PATTERN, TOKEN_PATH
from tests.conftest import merge, tenant_config, wait_until

from .conftest import Relay, StartProxy, curl, run_fwproxy, write_config

pytestmark = pytest.mark.e2e


async def test_sigterm_lets_the_request_in_flight_finish(
    start_proxy: StartProxy, tenant_relay: Relay, tenant: TestServer
) -> None:
    # Only the API goes through the relay; tokens come from the tenant directly.
    token_url = f"http://127.0.0.1:{tenant.port}{TOKEN_PATH}"
    proxy = await start_proxy({"tenant": {"url": tenant_relay.url},
                               "auth": {"token_url": token_url}})
    size = 5 * len(PATTERN) * 16  # 5 MiB
    tenant_relay.hold()  # the request waits at the relay until the proxy is stopping
    download = asyncio.ensure_future(curl(
        "-w", "%{stderr}%{http_code} %{size_download}", proxy.url(f"/sim/bytes/{size}")
    ))
    try:
        await wait_until(lambda: tenant_relay.arrived == 1 or download.done(),
                         "the request to reach the tenant's side")
        assert not download.done()
        proxy.process.terminate()  # SIGTERM to the PID
        await proxy.wait_for_line("shutting down")
    finally:
        tenant_relay.release()
    result = await download
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().split() == ["200", str(size)]
    assert result.stdout == PATTERN * (size // len(PATTERN))
    assert await proxy.wait_exit() == 0  # no second signal: it exits by itself
    lines = proxy.lines
    stop_at = next(i for i, line in enumerate(lines) if "shutting down" in line)
    access_at = next(i for i, line in enumerate(lines) if f'"GET /sim/bytes/{size}"' in line)
    assert access_at > stop_at  # it was answered after the signal, not cut off
    assert f" 200 in=0 out={size} " in lines[access_at]
    assert "Traceback" not in proxy.log_text()


async def test_port_already_taken_is_one_line_and_exit_1(
    start_proxy: StartProxy, tenant: TestServer, tmp_path: Path
) -> None:
    first = await start_proxy()
    config = write_config(
        tmp_path / "second.yaml", merge(tenant_config(tenant), {"listen": {"port": first.port}})
    )
    result = await run_fwproxy("run", "--config", str(config), timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fwproxy: cannot listen")
    assert str(first.port) in lines[0]
    assert "address already in use" in lines[0].lower()


async def test_the_startup_line_names_the_event_loop(start_proxy: StartProxy) -> None:
    from fwproxy import eventloop

    auto = await start_proxy()
    want = "uvloop" if eventloop.uvloop_installed() else "asyncio"
    assert any("listening on" in line and f"; {want}" in line for line in auto.lines)
    await curl_ok(auto.url("/fotoweb/me"))
    plain = await start_proxy({"listen": {"event_loop": "asyncio"}})
    assert any("listening on" in line and line.endswith("; asyncio)") for line in plain.lines)
    await curl_ok(plain.url("/fotoweb/me"))


async def curl_ok(url: str) -> None:
    result = await curl("-w", "%{stderr}%{http_code}", url)
    assert result.stderr.decode() == "200", result.stderr
