"""End-to-end harness: `fwproxy run` as a real subprocess, driven by the system curl.

The simulated tenant runs in the test's own event loop (the `tenant` fixture of
tests/conftest.py), so everything here that waits on a subprocess does it through asyncio:
a blocking call would stop the tenant from answering the proxy.

Every fwproxy process a test starts is stopped by its PID on teardown (SIGTERM, then
SIGKILL if it does not exit in time). Its stderr is drained into a list from the first
byte, so the pipe never fills and tests can assert on the log. The process harness and the
/proc readers live in tests/support (bench/ uses them too); this file holds the fixtures,
curl and the relays.
"""

from __future__ import annotations

import asyncio
import itertools
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
from tests.support.processes import (
    LISTENING,
    FwproxyProcess,
    clean_env,
    complete,
    launch_fwproxy,
)
from tests.support.procfs import established_connections
from tests.support.redis import RedisServer

__all__ = [  # what the e2e tests take from here (the harness lives in tests/support)
    "CURL", "LISTENING", "CommandResult", "CurlResult", "FwproxyProcess", "Relay",
    "StartFleet", "StartProxy", "clean_env", "complete", "curl", "curl_many",
    "established_connections", "launch_fwproxy", "run_fwproxy", "write_config",
]

CURL = "/usr/bin/curl"
CURL_TIMEOUT = 60.0  # a hang guard for the small requests


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    path.chmod(0o600)  # it may hold auth.client_secret: then only its owner may read it
    return path


StartProxy = Callable[..., Awaitable[FwproxyProcess]]


@pytest.fixture
async def start_proxy(tenant: TestServer, tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start fwproxy in front of the tenant; `sections` override tenant_config's.

    Depends on `tenant` so the proxies are stopped before the tenant goes away.
    """
    running: list[FwproxyProcess] = []
    numbers = itertools.count()

    async def start(
        sections: Mapping[str, dict[str, Any]] | None = None, args: Sequence[str] = ()
    ) -> FwproxyProcess:
        config = merge(tenant_config(tenant), dict(sections or {}))
        # named before the first await: starts run together (gather) get a file each
        path = write_config(tmp_path / f"fwproxy-{next(numbers)}.yaml", config)
        proxy = await launch_fwproxy(path, args)
        running.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in reversed(running):
            await proxy.stop()


StartFleet = Callable[..., Awaitable[list[FwproxyProcess]]]


@pytest.fixture
async def start_fleet(redis_server: RedisServer, start_proxy: StartProxy) -> StartFleet:
    """`start_fleet(3, sections)`: that many `fwproxy run` in front of the tenant, sharing
    state through one real redis-server (``state.backend: redis``); started together, as a
    fleet's replicas are. Redis is set up first, so it is stopped last (by its PID), after
    the proxies (start_proxy)."""

    async def start(count: int = 3, sections: Mapping[str, dict[str, Any]] | None = None
                    ) -> list[FwproxyProcess]:
        shared = merge({"state": {"backend": "redis", "redis_url": redis_server.url,
                                  "lease_time": "4s"}}, dict(sections or {}))
        return list(await asyncio.gather(*(start_proxy(shared) for _ in range(count))))

    return start


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


async def curl_many(urls: Iterable[str], parallel: int, *args: str) -> list[str]:
    """One curl fetching every URL concurrently (-Z); the status code of each transfer."""
    argv = ["-Z", "--parallel-immediate", "--parallel-max", str(parallel),
            "-w", "%{http_code}\\n", *args]
    for url in urls:
        argv += [url, "-o", "/dev/null"]
    result = await curl(*argv)
    assert result.returncode == 0, result.stderr
    return result.text.split()


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
