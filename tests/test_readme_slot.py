"""README, Protecting the tenant: "A slot is held until the tenant's answer has been read to
the end" (so a tenant that limits concurrent requests sees no more than `max_in_flight`,
counting downloads still streaming), and given back once it has been."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from fwproxy.app import PROXY
from tests.conftest import ProxyFactory, wait_until

Client = TestClient[Any, Any]


async def test_a_slot_is_held_until_the_answer_is_read_to_the_end(
    make_proxy: ProxyFactory,
) -> None:
    more = asyncio.Event()

    async def slow_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "20"})
        await resp.prepare(request)
        await resp.write(b"first half")
        await more.wait()
        await resp.write(b"other half")
        return resp

    client = await make_proxy(lambda app: app.router.add_get("/slow", slow_body),
                              tenant={"max_in_flight": 1, "queue_timeout": "100ms"})
    app = client.app
    assert app is not None
    budget = app[PROXY].protection.budget
    async with client.get("/slow") as resp:
        assert resp.status == 200
        assert await resp.content.readexactly(10) == b"first half"
        assert budget.in_flight == 1  # the head came, the body has not ended: still held
        async with client.get("/fotoweb/me") as busy:  # so a second request waits, then 503
            assert busy.status == 503
            assert (await busy.json())["error"] == "busy"
        more.set()
        assert await resp.read() == b"other half"
    await wait_until(lambda: budget.in_flight == 0, "the slot given back")
    async with client.get("/fotoweb/me") as after:
        assert after.status == 200
