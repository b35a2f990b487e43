"""SIGHUP on a running `fwproxy run`, one test per config section: every changed key either
takes effect or is named in the "needs a restart" warning, and the reload line names the
keys (never a value)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import merge, tenant_config, wait_until

from .conftest import FwproxyProcess, Relay, curl, launch_fwproxy, write_config

pytestmark = pytest.mark.e2e


class Reloadable:
    """A running fwproxy and its config file, which a test edits and then SIGHUPs."""

    def __init__(self, proxy: FwproxyProcess, path: Path, config: dict[str, Any]) -> None:
        self.proxy, self.path, self.config = proxy, path, config

    async def reload(self, **sections: dict[str, Any]) -> str:
        """Write the config with `sections` changed, SIGHUP, return the reload's log line."""
        self.config = merge(self.config, sections)
        write_config(self.path, self.config)
        before = len(self.proxy.lines)
        os.kill(self.proxy.pid, signal.SIGHUP)
        try:
            await wait_until(lambda: any("reload" in line for line in self.proxy.lines[before:]),
                             "the reload line")
        except AssertionError:
            raise AssertionError(f"no reload line; log:\n{self.proxy.log_text()}") from None
        line = next(line for line in self.proxy.lines[before:] if "reload" in line)
        assert "reloaded" in line, self.proxy.log_text()
        return line


@pytest.fixture
async def start(tenant: TestServer, tmp_path: Path) -> Any:
    running: list[FwproxyProcess] = []

    async def launch(**sections: dict[str, Any]) -> Reloadable:
        config = merge(tenant_config(tenant), sections)
        path = write_config(tmp_path / "c.yaml", config)
        proxy = await launch_fwproxy(path)
        running.append(proxy)
        await curl(proxy.url("/_fwproxy/health"))  # served: the SIGHUP handler is in place
        return Reloadable(proxy, path, config)

    yield launch
    for proxy in running:
        await proxy.stop()


async def test_listen(start: Any) -> None:
    running = await start()
    line = await running.reload(listen={"port": 1, "shutdown_timeout": 7})
    assert "applied listen.shutdown_timeout" in line
    assert line.endswith("take effect only after a restart: listen.port")
    assert '"demo-app"' in (await curl(running.proxy.url("/fotoweb/me"))).text  # same port
    assert await running.proxy.stop() == 0
    assert "finishing requests in flight (up to 7s)" in running.proxy.log_text()


async def test_tenant(start: Any, tenant_relay: Relay) -> None:
    running = await start(tenant={"url": tenant_relay.url, "read_timeout": 300})
    assert '"demo-app"' in (await curl(running.proxy.url("/fotoweb/me"))).text  # a token
    line = await running.reload(tenant={"read_timeout": "300ms", "connect_timeout": 3})
    assert "applied tenant.read_timeout;" in line
    assert line.endswith("after a restart: tenant.connect_timeout")
    tenant_relay.hold()  # the tenant stops answering: 504 after the new read_timeout
    result = await curl("-o", "/dev/null", "-w", "%{http_code}", running.proxy.url("/fotoweb/me"),
                        timeout=30)
    assert result.text == "504"


async def test_auth(start: Any) -> None:
    running = await start()
    line = await running.reload(auth={"client_secret": "another-secret-value",
                                      "grant_type": "authorization_code",
                                      "redirect_uri": "http://127.0.0.1:8765/callback"})
    assert "applied auth.client_secret, auth.redirect_uri;" in line
    assert line.endswith("after a restart: auth.grant_type, auth.token_store")
    assert '"demo-app"' in (await curl(running.proxy.url("/fotoweb/me"))).text  # still the app
    assert "another-secret-value" not in running.proxy.log_text()


async def test_access(start: Any) -> None:
    running = await start()
    line = await running.reload(access={"read_only": True})
    assert line.endswith("applied access.read_only")
    result = await curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}",
                        running.proxy.url("/sim/echo"))
    assert result.text == "403"


async def test_limits(start: Any) -> None:
    running = await start()
    big = "X-Big: " + "a" * 100_000  # over the 64 KiB default of limits.max_header_bytes
    health = running.proxy.url("/_fwproxy/health")
    before = await curl("-o", "/dev/null", "-w", "%{http_code}", "-H", big, health)
    assert before.text == "431"  # refused while it arrives (connections.py)
    line = await running.reload(limits={"client_idle_timeout": "300ms",
                                        "max_header_bytes": "256KiB"})
    assert line.endswith("applied limits.max_header_bytes, limits.client_idle_timeout")
    after = await curl("-o", "/dev/null", "-w", "%{http_code}", "-H", big, health)
    assert after.text == "200"
    # a new connection that sends nothing is closed after the new idle timeout (not 75 s)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.proxy.port)
    assert await asyncio.wait_for(reader.read(), 20) == b""
    writer.close()


async def test_status(start: Any) -> None:
    running = await start()
    line = await running.reload(status={"prefix": "/_other"})
    assert line.endswith("no change applied; these changes take effect only after a restart: "
                         "status.prefix")
    result = await curl(running.proxy.url("/_fwproxy/health"))
    assert '"alive"' in result.text  # the running prefix stays until a restart


async def test_log(start: Any) -> None:
    running = await start()
    line = await running.reload(log={"format": "json", "level": "debug"})
    record = json.loads(line)  # the reload line is already in the new format
    assert record["msg"].endswith("applied log.level, log.format")
