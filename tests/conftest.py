"""Shared fixtures: the simulated tenant on a real loopback socket, and settings for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import create_app
from fwproxy.config import Settings, parse_config
from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState, create_tenant_app

SettingsFactory = Callable[..., Settings]
ProxyFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


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
async def tenant(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tenant_state: TenantState
) -> TestServer:
    """The simulated tenant, listening on 127.0.0.1."""
    return await aiohttp_server(create_tenant_app(tenant_state), host="127.0.0.1")


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


@pytest.fixture
def make_proxy(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_settings: SettingsFactory,
) -> ProxyFactory:
    """An in-process proxy (real socket) in front of the simulated tenant."""

    async def build(**sections: dict[str, Any]) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**sections)))

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


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll a condition with a bounded deadline (a hang guard, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
