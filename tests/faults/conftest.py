"""The fault-injection harness: a simulated tenant with switchable faults, a proxy in front
of it, and a check that fds, asyncio tasks and memory come back to their baseline."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import create_app
from fwproxy.config import parse_config
from fwproxy.demo import TenantState, create_tenant_app
from tests.conftest import merge, tenant_config
from tests.support.procfs import open_fds, rss

Client = TestClient[Any, Any]
Routes = Callable[[web.Application], None]
FD_SLACK = 12  # pooled keep-alive connections: both ends live in this process
RSS_SLACK = 32 * 1024 * 1024


class Baseline:
    """Resources before a scenario; `check()` waits (bounded) for them to come back."""

    def __init__(self) -> None:
        gc.collect()
        self.fds = open_fds()
        self.tasks = len(asyncio.all_tasks())
        self.rss = rss()

    async def check(self, client: Client) -> None:
        async with client.get("/fotoweb/me") as resp:  # still healthy
            assert resp.status == 200, await resp.text()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            gc.collect()
            fds, tasks = open_fds(), len(asyncio.all_tasks())
            if fds <= self.fds + FD_SLACK and tasks <= self.tasks + 2:
                break
            assert loop.time() < deadline, (
                f"not back to baseline: fds {self.fds} -> {fds}, tasks {self.tasks} -> {tasks}"
            )
            await asyncio.sleep(0.05)
        assert rss() - self.rss < RSS_SLACK, f"RSS grew by {(rss() - self.rss) >> 20} MiB"


Faulty = Callable[..., Awaitable[Client]]


@pytest.fixture
def faulty(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    tenant_state: TenantState,
) -> Faulty:
    """A proxy in front of the simulated tenant plus `routes`; config sections override."""

    async def build(routes: Routes | None = None, **sections: dict[str, Any]) -> Client:
        app = create_tenant_app(tenant_state)
        if routes is not None:
            routes(app)
        server = await aiohttp_server(app, host="127.0.0.1")
        settings = parse_config(merge(tenant_config(server), sections), environ={})
        client = await aiohttp_client(create_app(settings))
        async with client.get("/fotoweb/me") as resp:  # warm: a token, a pooled connection
            assert resp.status == 200
        return client

    return build


@pytest.fixture
def baseline() -> Callable[[], Baseline]:
    """Take a baseline (after the warm-up the `faulty` proxy did)."""
    return Baseline
