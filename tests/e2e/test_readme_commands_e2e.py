"""README's "Commands" table, row by row, against the demo and the config it writes.

Every exit code the table names is reached here as a user reaches it: the demo running, a
second `run` on its port, a key added twice and removed twice, and the commands once the
demo has stopped.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fwproxy import __version__

from .conftest import LISTENING, FwproxyProcess, clean_env, run_fwproxy

pytestmark = pytest.mark.e2e


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[FwproxyProcess]:
    """`python -m fwproxy demo --write-config tmp/demo.yaml` on free ports; stopped after."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fwproxy", "demo", "--port", "0", "--tenant-port", "0",
        "--write-config", str(tmp_path / "demo.yaml"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )
    running = FwproxyProcess(process, None)
    try:
        running.port = int((await running.wait_for_line(LISTENING)).group(1))
        await running.wait_for_line("token obtained")
        yield running
    finally:
        await running.stop()


async def test_every_command_of_the_table_exits_as_documented_against_the_demo(
    demo: FwproxyProcess, tmp_path: Path
) -> None:
    config = str(tmp_path / "demo.yaml")

    # `fwproxy run`: 1 if it cannot listen (the demo holds the port), one line
    run = await run_fwproxy("run", "--config", config)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("fwproxy: cannot listen: ")
    assert f"('127.0.0.1', {demo.port})" in run.stderr
    assert run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr

    # `fwproxy token`: one valid token on stdout, nothing else, also with --log-level debug
    token = await run_fwproxy("token", "--config", config, "--log-level", "debug")
    assert token.returncode == 0, token.stderr
    assert token.stdout.count("\n") == 1
    assert " " not in token.stdout.strip()
    assert token.stdout.strip() not in token.stderr  # the debug log masks it

    # `fwproxy check` and `fwproxy health` while it runs
    check = await run_fwproxy("check", "--config", config, "--log-level", "warning")
    assert check.returncode == 0, check.stderr
    health = await run_fwproxy("health", "--config", config)
    assert health.returncode == 0, health.stderr

    # `fwproxy key add NAME [--read-only]`, `key list`, `key remove NAME`; 1 as the table says
    add = await run_fwproxy("key", "add", "laptop", "--config", config)
    assert add.returncode == 0, add.stderr
    assert "token URL" in add.stderr  # what to put in an OAuth-aware tool
    again = await run_fwproxy("key", "add", "laptop", "--config", config)
    assert again.returncode == 1
    assert again.stdout == ""
    reader = await run_fwproxy("key", "add", "reader", "--read-only", "--config", config)
    assert reader.returncode == 0, reader.stderr
    listed = await run_fwproxy("key", "list", "--config", config)
    assert listed.returncode == 0
    assert "laptop" in listed.stdout
    assert "reader" in listed.stdout
    removed = await run_fwproxy("key", "remove", "laptop", "--config", config)
    assert removed.returncode == 0, removed.stderr
    gone = await run_fwproxy("key", "remove", "laptop", "--config", config)
    assert gone.returncode == 1
    assert "laptop" not in (await run_fwproxy("key", "list", "--config", config)).stdout

    # `fwproxy logout` with the demo's client-credentials config: nothing to log out of, 0;
    # `fwproxy login` there is a configuration error: 2, one line naming the key
    logout = await run_fwproxy("logout", "--config", config)
    assert logout.returncode == 0
    assert "nothing to log out of" in logout.stdout
    login = await run_fwproxy("login", "--no-browser", "--config", config)
    assert login.returncode == 2
    assert login.stderr.startswith("fwproxy: configuration error: auth.grant_type:")
    assert login.stderr.count("\n") == 1

    # `fwproxy --version`: 0
    version = await run_fwproxy("--version")
    assert version.returncode == 0
    assert __version__ in version.stdout

    # the demo stopped: health, token and check fail with 1
    assert await demo.stop() == 0
    for command in ("health", "token", "check"):
        failed = await run_fwproxy(command, "--config", config, timeout=90)
        assert failed.returncode == 1, (command, failed.stdout, failed.stderr)
        assert "Traceback" not in failed.stderr, command
