"""`fwproxy run` as a service: systemd notify and socket activation, SIGHUP reload,
environment-only config, a Unix socket, `fwproxy health`, and the status page in Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState
from tests.conftest import merge, tenant_config, wait_until

from .conftest import (
    FwproxyProcess,
    curl,
    launch_fwproxy,
    run_fwproxy,
    write_config,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def processes() -> AsyncIterator[list[FwproxyProcess]]:
    """Processes a test launched itself; each is stopped by its PID at the end."""
    running: list[FwproxyProcess] = []
    yield running
    for process in reversed(running):
        await process.stop()


class Datagrams:
    """A $NOTIFY_SOCKET: a real AF_UNIX datagram socket, read without blocking the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def next(self, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return data.decode()

    async def until(self, wanted: str) -> list[str]:
        seen = []
        while True:
            message = await self.next()
            seen.append(message)
            if wanted in message.split("\n"):
                return seen


@pytest.fixture
def notify_dir() -> Iterator[Path]:
    # AF_UNIX paths are short: pytest's tmp_path can be too long for one
    with tempfile.TemporaryDirectory(prefix="fwp") as name:
        yield Path(name)


async def test_notify_ready_watchdog_and_stopping(
    tenant: TestServer, tmp_path: Path, notify_dir: Path, processes: list[FwproxyProcess]
) -> None:
    notify = Datagrams(notify_dir / "notify")
    config = write_config(tmp_path / "c.yaml", tenant_config(tenant))
    proxy = await launch_fwproxy(config, env={"NOTIFY_SOCKET": str(notify.path),
                                              "WATCHDOG_USEC": "200000"})
    processes.append(proxy)
    seen = await notify.until("READY=1")
    assert "STATUS=serving" in seen[-1]
    assert await notify.until("WATCHDOG=1")  # fed every 100 ms
    result = await curl(proxy.url("/fotoweb/me"))
    assert '"demo-app"' in result.text
    os.kill(proxy.pid, signal.SIGTERM)
    assert await notify.until("STOPPING=1")
    assert await proxy.wait_exit() == 0
    notify.sock.close()


async def test_socket_activation(
    tenant: TestServer, tmp_path: Path, processes: list[FwproxyProcess]
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    # what systemd does: the socket as fd 3, LISTEN_PID set to the service's own pid
    wrapper = [sys.executable, "-c",
               "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); "
               "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
               "os.execv(sys.argv[2], sys.argv[2:])", str(listener.fileno())]
    config = merge(tenant_config(tenant), {"listen": {"port": 1}})  # not bound: inherited
    path = write_config(tmp_path / "c.yaml", config)
    proxy = await launch_fwproxy(path, wrapper=wrapper, pass_fds=[listener.fileno()])
    processes.append(proxy)
    listener.close()
    assert proxy.port == port
    result = await curl(f"http://127.0.0.1:{port}/fotoweb/me")
    assert '"demo-app"' in result.text


async def test_sighup_rotates_the_secret_without_dropping_the_token(
    tenant: TestServer, tenant_state: TenantState, tmp_path: Path,
    processes: list[FwproxyProcess],
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(DEMO_CLIENT_SECRET)
    secret.chmod(0o600)
    config = merge(tenant_config(tenant), {"auth": {"client_secret": None,
                                                    "client_secret_file": str(secret)}})
    config["auth"].pop("client_secret")
    path = write_config(tmp_path / "c.yaml", config)
    proxy = await launch_fwproxy(path)
    processes.append(proxy)
    assert (await curl(proxy.url("/fotoweb/me"))).text.count("demo-app") == 1
    tokens_before = tenant_state.token_requests

    tenant_state.clients[DEMO_CLIENT_ID] = "rotated-secret"  # rotated in FotoWeb ...
    secret.write_text("rotated-secret")  # ... and on disk
    os.kill(proxy.pid, signal.SIGHUP)
    line = await proxy.wait_for_line("reloaded")
    assert line.string.endswith(": applied auth.client_secret")  # the key, not its value
    assert "demo-app" in (await curl(proxy.url("/fotoweb/me"))).text
    assert tenant_state.token_requests == tokens_before  # the token survived the reload
    tenant_state.revoke_all()
    assert "demo-app" in (await curl(proxy.url("/fotoweb/me"))).text
    assert tenant_state.token_forms[-1]["client_secret"] == "rotated-secret"

    path.write_text("tenant: {urll: typo}\n")  # a broken edit
    os.kill(proxy.pid, signal.SIGHUP)
    await proxy.wait_for_line("reload refused")
    assert "demo-app" in (await curl(proxy.url("/fotoweb/me"))).text  # the old config stays
    assert await proxy.stop() == 0
    assert "rotated-secret" not in proxy.log_text()


async def test_environment_only_configuration(
    tenant: TestServer, tmp_path: Path, processes: list[FwproxyProcess]
) -> None:
    secret = tmp_path / "docker-secret"
    secret.write_text(DEMO_CLIENT_SECRET)
    secret.chmod(0o400)
    env = {
        "FWPROXY_TENANT_URL": f"http://127.0.0.1:{tenant.port}",
        "FWPROXY_TENANT_ALLOW_INSECURE_HTTP": "true",
        "FWPROXY_AUTH_CLIENT_ID": DEMO_CLIENT_ID,
        "FWPROXY_CLIENT_SECRET_FILE": str(secret),
        "FWPROXY_LISTEN_PORT": "0",
        "FWPROXY_LOG_FORMAT": "json",
    }
    proxy = await launch_fwproxy(None, env=env, cwd=tmp_path)  # no file anywhere
    processes.append(proxy)
    assert "demo-app" in (await curl(proxy.url("/fotoweb/me"))).text
    assert proxy.lines[0].startswith("{")  # log.format from the environment
    check = await run_fwproxy("check", env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "tenant.url: http://127.0.0.1" in check.stdout
    assert "auth.client_secret: Secret('********')" in check.stdout
    assert DEMO_CLIENT_SECRET not in check.stdout


async def test_unix_socket_and_health_command(
    tenant: TestServer, tmp_path: Path, notify_dir: Path, processes: list[FwproxyProcess]
) -> None:
    sock_path = notify_dir / "fwproxy.sock"
    config = merge(tenant_config(tenant), {"listen": {"unix_socket": str(sock_path)}})
    path = write_config(tmp_path / "c.yaml", config)
    proxy = await launch_fwproxy(path)
    processes.append(proxy)
    await wait_until(sock_path.exists, "the unix socket")
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
    result = await curl("--unix-socket", str(sock_path), "http://localhost/fotoweb/me")
    assert "demo-app" in result.text
    # `fwproxy health` reads the port from the config: point it at the running one
    config["listen"]["port"] = proxy.port
    write_config(path, config)
    healthy = await run_fwproxy("health", "--config", str(path))
    assert healthy.returncode == 0, healthy.stderr
    await proxy.stop()
    unhealthy = await run_fwproxy("health", "--config", str(path))
    assert unhealthy.returncode == 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
async def test_status_page_in_headless_chromium(
    tenant: TestServer, tmp_path: Path, processes: list[FwproxyProcess]
) -> None:
    path = write_config(tmp_path / "c.yaml", tenant_config(tenant))
    proxy = await launch_fwproxy(path)
    processes.append(proxy)
    await curl(proxy.url("/fotoweb/me"))
    profile = tmp_path / "chromium-profile"
    browser = await asyncio.create_subprocess_exec(
        "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
        "--dump-dom", proxy.url("/_fwproxy/"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        dom, _ = await asyncio.wait_for(browser.communicate(), 60)
    finally:
        if browser.returncode is None:
            browser.kill()
            await browser.wait()
    page = dom.decode()
    assert "fwproxy" in page
    assert f"127.0.0.1:{tenant.port}" in page
    assert 'data-ticking="yes"' in page  # the countdown script ran in the browser
    assert DEMO_CLIENT_SECRET not in page
