"""End-to-end harness: `fwproxy run` as a real subprocess, driven by the system curl.

The simulated tenant runs in the test's own event loop (the `tenant` fixture of
tests/conftest.py), so everything here that waits on a subprocess does it through asyncio:
a blocking call would stop the tenant from answering the proxy.

Every fwproxy process a test starts is stopped by its PID on teardown (SIGTERM, then
SIGKILL if it does not exit in time). Its stderr is drained into a list from the first
byte, so the pipe never fills and tests can assert on the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import merge, tenant_config

CURL = "/usr/bin/curl"
START_TIMEOUT = 20.0  # for a hang, not a timing assertion
STOP_TIMEOUT = 30.0
CURL_TIMEOUT = 60.0  # a hang guard for the small requests
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus anything that could redirect curl or override fwproxy's config."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in _PROXY_VARS and not name.upper().startswith("FWPROXY_")
    }
    env.update(extra or {})
    return env


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    path.chmod(0o600)  # it may hold auth.client_secret: then only its owner may read it
    return path


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class FwproxyProcess:
    """One `python -m fwproxy run` subprocess, its port and its captured stderr."""

    def __init__(self, process: asyncio.subprocess.Process, config_path: Path | None) -> None:
        self.process = process
        self.config_path = config_path
        self.lines: list[str] = []
        self.port = 0
        self.eof = False
        self._changed = asyncio.Condition()
        assert process.stderr is not None
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(process.stderr))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    # `lines` holds what was read so far: a line written just before a response can still be
    # in the pipe when the client has the response. `stop()` reads to EOF: after it, the
    # log is complete.

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def log_count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)

    def peak_rss(self) -> int:
        """VmHWM (peak resident set) of the process, in bytes."""
        return _status_kib(self.pid, "VmHWM") * 1024

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            async with self._changed:
                if not raw:
                    self.eof = True
                else:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._changed.notify_all()
            if not raw:
                return

    async def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = START_TIMEOUT
                            ) -> re.Match[str]:
        """The first log line (already seen or still to come) containing `pattern` (a plain
        string) or matching it (a compiled regex)."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self.lines:
                match = regex.search(line)
                if match:
                    found.append(match)
                    return True
            return self.eof

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(seen), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"fwproxy logged no line matching {regex.pattern!r} within {timeout}s; "
                    f"log so far:\n{self.log_text()}"
                ) from None
        if not found:
            raise AssertionError(
                f"fwproxy exited ({self.process.returncode}) before logging "
                f"{regex.pattern!r}; log:\n{self.log_text()}"
            )
        return found[0]

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own (after a signal the test sent)."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"fwproxy (pid {self.pid}) did not exit within {timeout}s"
                                 ) from None
        return await self.stop()

    async def stop(self) -> int:
        """SIGTERM by PID, wait, SIGKILL by PID if it hangs; returns the exit status."""
        if self.process.returncode is None:
            _kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                _kill(self.pid, signal.SIGKILL)
                await self.process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain_task, STOP_TIMEOUT)
        assert self.process.returncode is not None
        return self.process.returncode


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


async def launch_fwproxy(
    config_path: Path | None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    cwd: Path | None = None,
) -> FwproxyProcess:
    """Start `fwproxy run [--config PATH]` (behind `wrapper`, with `env` added) and wait for
    its "listening on" line."""
    config = ["--config", str(config_path)] if config_path is not None else []
    process = await asyncio.create_subprocess_exec(
        *wrapper, sys.executable, "-m", "fwproxy", "run", *config, *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
        cwd=cwd or (config_path.parent if config_path is not None else None),
        pass_fds=tuple(pass_fds),
    )
    proxy = FwproxyProcess(process, config_path)
    try:
        match = await proxy.wait_for_line(LISTENING)
    except BaseException:
        await proxy.stop()
        raise
    proxy.port = int(match.group(1))
    return proxy


StartProxy = Callable[..., Awaitable[FwproxyProcess]]


@pytest.fixture
async def start_proxy(tenant: TestServer, tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start fwproxy in front of the tenant; `sections` override tenant_config's.

    Depends on `tenant` so the proxies are stopped before the tenant goes away.
    """
    running: list[FwproxyProcess] = []

    async def start(
        sections: Mapping[str, dict[str, Any]] | None = None, args: Sequence[str] = ()
    ) -> FwproxyProcess:
        config = merge(tenant_config(tenant), dict(sections or {}))
        path = write_config(tmp_path / f"fwproxy-{len(running)}.yaml", config)
        proxy = await launch_fwproxy(path, args)
        running.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in reversed(running):
            await proxy.stop()


@pytest.fixture
async def fwproxy(start_proxy: StartProxy) -> FwproxyProcess:
    """fwproxy with the default configuration in front of the tenant."""
    return await start_proxy()


# --- curl ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurlResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


async def curl(*args: str, timeout: float = CURL_TIMEOUT) -> CurlResult:
    """Run /usr/bin/curl (no .curlrc, no proxy from the environment) and collect its output."""
    process = await asyncio.create_subprocess_exec(
        CURL, "-q", "--silent", "--show-error", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )
    out, err = await complete(process, timeout, f"curl {' '.join(args)}")
    assert process.returncode is not None
    return CurlResult(process.returncode, out, err)


async def complete(
    process: asyncio.subprocess.Process, timeout: float, what: str
) -> tuple[bytes, bytes]:
    """Wait for a subprocess's output; a hang is a failure, and the process is killed."""
    try:
        return await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        _kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise AssertionError(f"{what} hung for {timeout}s") from None
    except BaseException:
        _kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise


async def curl_many(urls: Iterable[str], parallel: int, *args: str) -> list[str]:
    """One curl fetching every URL concurrently (-Z); the status code of each transfer."""
    argv = ["-Z", "--parallel-immediate", "--parallel-max", str(parallel),
            "-w", "%{http_code}\\n", *args]
    for url in urls:
        argv += [url, "-o", "/dev/null"]
    result = await curl(*argv)
    assert result.returncode == 0, result.stderr
    return result.text.split()


def established_connections(port: int) -> int:
    """ESTABLISHED TCP connections accepted on local `port` (loopback, this namespace)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


# --- the other commands -----------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


async def run_fwproxy(
    *args: str,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CommandResult:
    """`python -m fwproxy ARGS` to completion (for `token`, `check`, a failing `run`)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fwproxy", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
        cwd=cwd,
    )
    out, err = await complete(process, timeout, f"fwproxy {' '.join(args)}")
    assert process.returncode is not None
    return CommandResult(process.returncode, out.decode(), err.decode())


# --- relays that can hold requests -------------------------------------------------------


class Relay:
    """An HTTP relay to the tenant (same path, method, headers, body) that can hold requests.

    While held, requests are counted as they arrive and wait; `release` lets them all go at
    once. In front of the token endpoint it keeps one token request in flight for as long as
    a test needs to pile requests up behind it; in front of the API it lets a crowd leave the
    proxy with the same token before any is answered. Whatever is relayed still reaches the
    tenant and is counted there.
    """

    _DROP = frozenset({"host", "content-length", "transfer-encoding", "connection"})

    def __init__(self, tenant: TestServer) -> None:
        self.target = f"http://127.0.0.1:{tenant.port}"
        self.arrived = 0
        self.url = ""
        self._released = asyncio.Event()
        self._released.set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        body = await request.read()
        await self._released.wait()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in self._DROP]
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, self.target + request.raw_path, headers=headers,
            data=body or None, allow_redirects=False,
        ) as resp:
            answer = await resp.read()
            keep = [(k, v) for k, v in resp.headers.items() if k.lower() not in self._DROP]
            return web.Response(status=resp.status, body=answer, headers=keep)


async def _relay(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tenant: TestServer
) -> Relay:
    relay = Relay(tenant)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    relay.url = f"http://127.0.0.1:{server.port}"
    return relay


@pytest.fixture
async def token_gate(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tenant: TestServer
) -> AsyncIterator[Relay]:
    """A relay for the token endpoint: configure ``auth.token_url: gate.url + TOKEN_PATH``."""
    relay = await _relay(aiohttp_server, tenant)
    try:
        yield relay
    finally:
        relay.release()  # nothing stays held while the servers shut down


@pytest.fixture
async def tenant_relay(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tenant: TestServer
) -> AsyncIterator[Relay]:
    """A relay for the API: configure ``tenant.url: relay.url``."""
    relay = await _relay(aiohttp_server, tenant)
    try:
        yield relay
    finally:
        relay.release()
