"""`fwproxy demo` as a user runs it: ports checked before the banner, a written config that
the other commands work with, and the token renewed while nobody uses the proxy."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from fwproxy.sim import DEMO_CLIENT_ID, DEMO_PASSWORD, DEMO_REDIRECT, DEMO_USER, DEMO_WEB_CLIENT

from .conftest import LISTENING, FwproxyProcess, clean_env, curl, run_fwproxy

pytestmark = pytest.mark.e2e

StartDemo = Callable[..., Awaitable[FwproxyProcess]]


@pytest.fixture
async def start_demo() -> AsyncIterator[StartDemo]:
    """`python -m fwproxy demo ARGS`, stdout (the banner) captured; stopped on teardown."""
    running: list[FwproxyProcess] = []

    async def start(*args: str, cwd: Path | None = None) -> FwproxyProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fwproxy", "demo", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=clean_env(), cwd=cwd,
        )
        demo = FwproxyProcess(process, None)
        running.append(demo)
        demo.port = int((await demo.wait_for_line(LISTENING)).group(1))
        return demo

    try:
        yield start
    finally:
        for demo in running:
            await demo.stop()


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(("flag", "other"), [("--port", "--tenant-port"),
                                              ("--tenant-port", "--port")])
async def test_a_taken_port_is_one_line_exit_1_before_any_banner(flag: str, other: str) -> None:
    with taken_port() as sock:
        port = sock.getsockname()[1]
        result = await run_fwproxy("demo", flag, str(port), other, "0", timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""  # no banner promising a demo that is not there
    what = " for the demo tenant" if flag == "--tenant-port" else ""
    assert result.stderr == (f"fwproxy: cannot listen on 127.0.0.1:{port}{what}: Address "
                             f"already in use; choose another port with {flag} N\n")


async def test_the_written_config_serves_every_command_and_the_idle_demo_renews(
    start_demo: StartDemo, tmp_path: Path
) -> None:
    config = tmp_path / "demo.yaml"
    demo = await start_demo("--port", "0", "--tenant-port", "0", "--token-lifetime", "4",
                            "--write-config", str(config))
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # it holds the demo's secret
    keys = tmp_path / "demo.keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    written = yaml.safe_load(config.read_text())
    assert written["listen"]["port"] == demo.port
    assert written["auth"]["client_id"] == DEMO_CLIENT_ID

    # nobody uses the proxy: the log still shows the token renewed before it expires
    await demo.wait_for_line("token renewed")

    check = await run_fwproxy("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert "/fotoweb/me  ok: acting as fwproxy demo application" in check.stdout
    token = await run_fwproxy("token", "--config", str(config))
    assert token.returncode == 0, token.stderr
    assert len(token.stdout.strip()) > 20
    health = await run_fwproxy("health", "--config", str(config))
    assert health.returncode == 0, health.stderr
    add = await run_fwproxy("key", "add", "laptop", "--config", str(config))
    assert add.returncode == 0, add.stderr
    assert add.stdout.startswith("fwp_")
    listed = await run_fwproxy("key", "list", "--config", str(config))
    assert listed.stdout == "laptop\n"
    assert '"demo-app"' in (await curl(demo.url("/fotoweb/me"))).text  # the demo asks no key

    assert await demo.stop() == 0
    assert demo.process.stdout is not None
    banner = (await demo.process.stdout.read()).decode()
    assert f"config written to {config}" in banner
    assert f"fwproxy check --config {config}" in banner
    for shown in (DEMO_USER, DEMO_PASSWORD, DEMO_WEB_CLIENT, DEMO_REDIRECT):
        assert shown in banner
    base = demo.url("")
    for step in ("Use it from an OAuth-aware tool", "local_tokens: {enabled: true}",
                 "fwproxy key add robot", f"token URL {base}/fotoweb/oauth2/token"):
        assert step in banner  # README's three-line setup


async def test_without_write_config_the_banner_prints_a_ready_config(
    start_demo: StartDemo, tmp_path: Path
) -> None:
    demo = await start_demo("--port", "0", "--tenant-port", "0", cwd=tmp_path)
    await demo.wait_for_line("token obtained")  # serving, signal handlers in place
    assert await demo.stop() == 0
    assert demo.process.stdout is not None
    banner = (await demo.process.stdout.read()).decode()
    block = banner.split("writes it, 0600):\n\n", 1)[1].split("\n\n", 1)[0]
    shown = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    config = tmp_path / "copied.yaml"
    config.write_text(yaml.safe_dump(shown))
    config.chmod(0o600)
    assert shown["listen"]["port"] == demo.port
    assert shown["auth"]["client_id"] == DEMO_CLIENT_ID
    assert "client_secret" in shown["auth"]
    assert list(tmp_path.iterdir()) == [config]  # nothing written unasked


async def test_the_demo_answers_an_oauth_aware_tool(start_demo: StartDemo, tmp_path: Path
                                                    ) -> None:
    """The banner's curl line: the demo's proxy hands out a local token to any client ID and
    swaps it for its own; the private directory of its signing key goes with the demo."""
    before = set(Path(tempfile.gettempdir()).glob("fwproxy-demo-*"))
    demo = await start_demo("--port", "0", "--tenant-port", "0", cwd=tmp_path)
    await demo.wait_for_line("token obtained")
    answer = await curl("-d", "grant_type=client_credentials", "-d", "client_id=my-tool",
                        demo.url("/fotoweb/oauth2/token"))
    token = json.loads(answer.text)["access_token"]
    assert token.startswith("fwpl_")
    me = await curl("-H", f"Authorization: Bearer {token}", demo.url("/fotoweb/me"))
    assert '"demo-app"' in me.text  # the tenant saw fwproxy's token, not the local one
    forged = await curl("-o", "/dev/null", "-w", "%{http_code}", "-H",
                        f"Authorization: Bearer {token[:-2]}xx", demo.url("/fotoweb/me"))
    assert forged.text == "401"
    assert await demo.stop() == 0
    assert demo.process.stdout is not None
    banner = (await demo.process.stdout.read()).decode()
    assert (f"curl -s -d grant_type=client_credentials -d client_id=my-tool "
            f"{demo.url('/fotoweb/oauth2/token')}") in banner
    assert set(Path(tempfile.gettempdir()).glob("fwproxy-demo-*")) == before
