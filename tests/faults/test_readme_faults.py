"""README, Reliability: the faults it lists that tests/faults/ had not yet run through the
baseline check (fds, tasks and memory back where they were, the proxy healthy afterwards):
a stalling tenant (504), a body cut short, 401 forever, a client gone mid-download,
`expires_in` missing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from fwproxy.sim import TenantState
from tests.conftest import token_check
from tests.faults.conftest import Baseline, Faulty


async def test_a_stalling_tenant_is_504(faulty: Faulty, baseline: Callable[[], Baseline]) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    client = await faulty(lambda app: app.router.add_get("/sim/stall", stall),
                          tenant={"read_timeout": "300ms", "retries": 0})
    base = baseline()
    async with client.get("/sim/stall") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "upstream_timeout"
    release.set()
    await base.check(client)


async def test_a_body_cut_short_is_never_a_short_200(
    faulty: Faulty, baseline: Callable[[], Baseline]
) -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b"s" * 1000)
        assert request.transport is not None
        request.transport.close()  # an orderly close, 999,000 bytes short
        return resp

    client = await faulty(lambda app: app.router.add_get("/sim/short", short))
    base = baseline()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/sim/short") as resp:
            await resp.read()
    await base.check(client)


async def test_401_forever_on_one_path_is_one_check_and_one_replay(
    faulty: Faulty, tenant_state: TenantState, baseline: Callable[[], Baseline]
) -> None:
    calls = {"n": 0}

    async def refuse(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.json_response({"error": "invalid_token"}, status=401)

    client = await faulty(lambda app: app.router.add_get("/sim/refuse", refuse),
                          auth={"token_placement": "header"})
    base = baseline()
    before = tenant_state.token_requests
    checks = sum(map(token_check, tenant_state.seen))
    async with client.get("/sim/refuse") as resp:
        assert resp.status == 401  # the tenant's answer, after one replay
    assert calls["n"] == 2
    # the token works elsewhere (one check, GET /fotoweb/me): kept, no renewal
    assert sum(map(token_check, tenant_state.seen)) == checks + 1
    assert tenant_state.token_requests == before
    await base.check(client)


async def test_a_client_gone_mid_download_cancels_the_upstream_request(
    faulty: Faulty, baseline: Callable[[], Baseline]
) -> None:
    sending, gone = asyncio.Event(), asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(10**10)})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"d" * 65536)
                sending.set()
        except (asyncio.CancelledError, ConnectionError):
            gone.set()
            raise

    client = await faulty(lambda app: app.router.add_get("/sim/endless", endless))
    base = baseline()
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /sim/endless HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await reader.read(100000)
    await sending.wait()
    writer.close()  # gone, almost 10 GB short
    await asyncio.wait_for(gone.wait(), 10)  # the tenant's side of it ended too
    await base.check(client)


async def test_a_token_without_expires_in_is_used_and_renewed_within_5_minutes(
    faulty: Faulty, tenant_state: TenantState, baseline: Callable[[], Baseline]
) -> None:
    client = await faulty()
    base = baseline()
    tenant_state.token_endpoint_fault = (
        200, "application/json",
        b'{"access_token": "token-without-expiry", "token_type": "bearer"}')
    tenant_state.revoke_all()  # the cached token dies: the next one comes without expires_in
    tenant_state.tokens["token-without-expiry"] = float("inf")  # the tenant takes it
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    async with client.get("/_fwproxy/metrics") as resp:
        text = await resp.text()
    left = float(text.split("\nfwproxy_token_seconds_to_expiry ", 1)[1].split()[0])
    assert 0 < left <= 300  # assumed short; the 401 replay covers a shorter real one
    tenant_state.token_endpoint_fault = None
    await base.check(client)
