"""Shared fixtures: the simulated tenant on a real loopback socket, settings for it, and
the one factory for an in-process proxy in front of it (`make_proxy`)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import create_app
from fwproxy.attempts import VERIFY_AGENT
from fwproxy.config import Settings, parse_config
from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState, create_tenant_app
from fwproxy.sim.state import SeenRequest
from tests.support.redis import RedisServer, redis_server_path

SettingsFactory = Callable[..., Settings]
ProxyFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Routes = Callable[[web.Application], None]  # adds inline routes to the simulated tenant
TenantFactory = Callable[..., Awaitable[TestServer]]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: `extra`'s sections update `base`'s."""
    out = {key: dict(value) for key, value in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


@pytest.fixture
def tenant_state() -> TenantState:
    return TenantState()


@pytest.fixture
def make_tenant(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tenant_state: TenantState
) -> TenantFactory:
    """The simulated tenant (its state is `tenant_state`) plus inline `routes`, listening on
    127.0.0.1; or, given `app`, that application instead of the simulator."""

    async def build(routes: Routes | None = None, app: web.Application | None = None
                    ) -> TestServer:
        if app is None:
            app = create_tenant_app(tenant_state)
        if routes is not None:
            routes(app)
        return await aiohttp_server(app, host="127.0.0.1")

    return build


@pytest.fixture
async def tenant(make_tenant: TenantFactory) -> TestServer:
    """The simulated tenant, listening on 127.0.0.1."""
    return await make_tenant()


def tenant_config(server: TestServer) -> dict[str, Any]:
    """A config mapping for a proxy in front of `server`."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "tenant": {"url": f"http://127.0.0.1:{server.port}", "allow_insecure_http": True},
        "auth": {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET},
    }


@pytest.fixture
def make_settings(tenant: TestServer) -> SettingsFactory:
    """Settings for a proxy in front of the simulated tenant; sections override."""

    def build(**sections: dict[str, Any]) -> Settings:
        return parse_config(merge(tenant_config(tenant), sections), environ={})

    return build


def proxy_settings(server: TestServer, **sections: dict[str, Any]) -> Settings:
    """Settings for a proxy in front of `server`; sections override (``tenant={"url": ...}``
    points it elsewhere, ``auth={"token_url": ...}`` takes tokens from elsewhere)."""
    return parse_config(merge(tenant_config(server), sections), environ={})


@pytest.fixture
def make_proxy(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_tenant: TenantFactory,
    tenant: TestServer,
) -> ProxyFactory:
    """An in-process proxy (real socket) in front of the simulated tenant; config sections
    override. With `routes` (a function that adds inline routes) or `app` (a whole tenant
    application instead of the simulator) the tenant is a server of its own; without, it
    is the `tenant` fixture. Either way the simulator's state is `tenant_state`."""

    async def build(routes: Routes | None = None, app: web.Application | None = None,
                    **sections: dict[str, Any]) -> TestClient[Any, Any]:
        if routes is None and app is None:
            server = tenant
        else:
            server = await make_tenant(routes, app)
        return await aiohttp_client(create_app(proxy_settings(server, **sections)))

    return build


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> TestClient[Any, Any]:
    return await make_proxy()


CLOSE = b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"  # ends a request line


async def raw_exchange(port: int | None, request: bytes) -> bytes:
    """Send exact bytes to the proxy; read until it closes the connection."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


Predicate = Callable[[], bool | Awaitable[bool]]


async def wait_until(predicate: Predicate, what: str | Callable[[], str],
                     timeout: float = 20.0, every: float = 0.01) -> None:
    """Poll a condition (a function, or a coroutine function such as one that makes a
    request) every `every` seconds with a bounded deadline: a hang guard, never a timing
    assertion. `what` names the condition, or says (when called) how far it got."""
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        result = predicate()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout}s waiting for {said}")
        await asyncio.sleep(every)


def token_check(seen: SeenRequest) -> bool:
    """Whether the tenant saw fwproxy's own check of a token after a 401 (``GET
    /fotoweb/me``, proxy.py `_verify`), not a client's request."""
    return seen.headers.get("user-agent") == [VERIFY_AGENT]


requires_redis = pytest.mark.skipif(
    redis_server_path() is None,
    reason="Debian redis-server not installed (.ci/run installs it)")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, empty, stopped by its PID."""
    if redis_server_path() is None:
        pytest.skip("Debian redis-server not installed (.ci/run installs it)")
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl), for TLS tenants."""
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key
