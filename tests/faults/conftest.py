"""The fault-injection harness: a simulated tenant with switchable faults, a proxy in front
of it, and a check that fds, asyncio tasks and memory come back to their baseline."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ProxyFactory, Routes, wait_until
from tests.support.procfs import open_fds, rss

Client = TestClient[Any, Any]
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
        now = {"fds": self.fds, "tasks": self.tasks}

        def back() -> bool:
            gc.collect()
            now.update(fds=open_fds(), tasks=len(asyncio.all_tasks()))
            return now["fds"] <= self.fds + FD_SLACK and now["tasks"] <= self.tasks + 2

        await wait_until(back, lambda: (f"the baseline: fds {self.fds} -> {now['fds']}, "
                                        f"tasks {self.tasks} -> {now['tasks']}"),
                         timeout=10, every=0.05)
        assert rss() - self.rss < RSS_SLACK, f"RSS grew by {(rss() - self.rss) >> 20} MiB"


Faulty = Callable[..., Awaitable[Client]]


@pytest.fixture
def faulty(make_proxy: ProxyFactory) -> Faulty:
    """A proxy in front of the simulated tenant plus `routes`, warmed up; config sections
    override."""

    async def build(routes: Routes | None = None, **sections: dict[str, Any]) -> Client:
        client = await make_proxy(routes, **sections)
        async with client.get("/fotoweb/me") as resp:  # warm: a token, a pooled connection
            assert resp.status == 200
        return client

    return build


@pytest.fixture
def baseline() -> Callable[[], Baseline]:
    """Take a baseline (after the warm-up the `faulty` proxy did)."""
    return Baseline
