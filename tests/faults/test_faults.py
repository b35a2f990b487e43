"""Faults, each asserting what the client sees, that the proxy is healthy afterwards, and that
fds, tasks and memory return to baseline (see conftest.Baseline).

Where a request could have been retried and is not, the test says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import struct
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fwproxy.sim import TenantState
from tests.conftest import wait_until
from tests.faults.conftest import Baseline, Client, Faulty

JSON = "application/json"


async def error_of(client: Client, path: str = "/fotoweb/me", **kwargs: Any
                   ) -> tuple[int, dict[str, Any], Any]:
    async with client.get(path, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers


# --- the token endpoint misbehaves --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason", "words"),
    [
        ((502, "text/html", b"<html>Bad gateway</html>"), "http_502", "text/html"),
        ((500, JSON, b'{"oops": tru'), "http_500", "not OAuth JSON"),
        ((200, "text/html", b"<html>login</html>"), "token_response_invalid", "not a JSON"),
        ((200, JSON, b'{"access_token": "t", "token_type": "bearer", "expires_in": 0}'),
         "token_response_invalid", "expires_in must be positive"),
        ((200, JSON, b'{"access_token": "t", "token_type": "bearer", "expires_in": -60}'),
         "token_response_invalid", "expires_in must be positive"),
        ((200, JSON, b'{"access_token": "t", "token_type": "mac", "expires_in": 60}'),
         "token_response_invalid", "only bearer"),
        ((200, JSON, b'{"token_type": "bearer", "expires_in": 60}'),
         "token_response_invalid", "no usable access_token"),
        ((429, JSON, b'{"error": "slow_down"}'), "slow_down", "slow_down"),
        ((503, "text/plain", b"maintenance"), "http_503", "text/plain"),
    ],
)
async def test_token_endpoint_answers_badly(
    faulty: Faulty, tenant_state: TenantState, baseline: Callable[[], Baseline],
    fault: tuple[int, str, bytes], reason: str, words: str,
) -> None:
    client = await faulty()
    base = baseline()
    tenant_state.token_endpoint_fault = fault
    tenant_state.revoke_all()  # the cached token dies: a new one is needed now
    status, body, headers = await error_of(client)
    # Not retried at once: the token endpoint just failed; backoff decides when to ask again
    assert status == 503
    assert body["error"] == "no_token"
    assert words in body["detail"]
    assert int(headers["Retry-After"]) >= 1
    async with client.get("/_fwproxy/ready") as resp:
        assert (await resp.json())["reason"] == reason
    tenant_state.token_endpoint_fault = None
    await recovered(client)
    await base.check(client)


async def recovered(client: Client) -> None:
    """The proxy recovers by itself once the backoff has passed (bounded wait)."""

    async def answers() -> bool:
        async with client.get("/fotoweb/me") as resp:
            return resp.status == 200

    await wait_until(answers, "recovery", timeout=15, every=0.1)


async def test_huge_expires_in_is_clamped_and_works(
    faulty: Faulty, tenant_state: TenantState
) -> None:
    tenant_state.token_lifetime = 10**12
    client = await faulty()
    async with client.get("/_fwproxy/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^fwproxy_token_seconds_to_expiry (\S+)$", text, re.MULTILINE)
    assert found is not None
    left = float(found.group(1))
    assert left <= 86400  # renewed at least daily whatever the endpoint claims


async def test_token_endpoint_slower_than_the_client_waits(
    faulty: Faulty, tenant_state: TenantState, baseline: Callable[[], Baseline],
) -> None:
    client = await faulty()
    base = baseline()
    before = tenant_state.token_requests
    tenant_state.token_endpoint_gate = asyncio.Event()  # the endpoint hangs ...
    tenant_state.revoke_all()
    with pytest.raises(asyncio.TimeoutError):  # ... so the client gives up
        await asyncio.wait_for(client.get("/fotoweb/me"), 0.3)
    tenant_state.token_endpoint_gate.set()  # the shared request goes on, serves the next one
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert tenant_state.token_requests == before + 1
    await base.check(client)


# --- the tenant misbehaves ---------------------------------------------------------------------


def abortive_close(request: web.Request) -> None:
    """Close with a TCP RST (SO_LINGER 0): a reset, not an orderly end."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def test_reset_mid_response(faulty: Faulty, baseline: Callable[[], Baseline]) -> None:
    async def reset(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b"r" * 10000)
        abortive_close(request)
        return resp

    client = await faulty(lambda app: app.router.add_get("/sim/reset", reset))
    base = baseline()
    # Not retried: the response had begun; only the client may decide to ask again
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/sim/reset") as resp:
            await resp.read()
    await base.check(client)


async def test_reset_before_the_response(
    faulty: Faulty, baseline: Callable[[], Baseline]
) -> None:
    async def reset(request: web.Request) -> web.Response:
        abortive_close(request)
        return web.Response()

    client = await faulty(lambda app: app.router.add_get("/sim/reset-early", reset))
    base = baseline()
    status, body, _ = await error_of(client, "/sim/reset-early")
    # Not retried: the tenant may have acted on the request before resetting it
    assert status == 502
    assert body["error"] == "upstream_protocol_error"
    await base.check(client)


async def test_tenant_closes_mid_upload(
    faulty: Faulty, baseline: Callable[[], Baseline]
) -> None:
    async def half(request: web.Request) -> web.Response:
        await request.content.read(100000)
        abortive_close(request)
        return web.Response()

    client = await faulty(lambda app: app.router.add_put("/sim/half", half))
    base = baseline()

    async def body() -> Any:
        for _ in range(200):
            yield b"u" * 65536

    async with client.put("/sim/half", data=body()) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] in ("upstream_protocol_error",
                                                "upstream_unreachable")
    await base.check(client)


async def test_401_on_every_other_request(
    faulty: Faulty, tenant_state: TenantState, baseline: Callable[[], Baseline]
) -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] % 2:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"ok": True})

    client = await faulty(lambda app: app.router.add_get("/sim/flaky", flaky))
    base = baseline()
    before = tenant_state.token_requests
    for _ in range(10):
        async with client.get("/sim/flaky") as resp:
            assert resp.status == 200  # the replay gets the good half
    assert calls["n"] == 20  # one replay each, never more
    assert tenant_state.token_requests <= before + 1  # no renewal per request
    await base.check(client)


async def test_huge_response_headers(faulty: Faulty, baseline: Callable[[], Baseline]) -> None:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(headers={f"X-Big-{i}": "h" * 8000 for i in range(40)})

    client = await faulty(lambda app: app.router.add_get("/sim/huge", huge))
    base = baseline()
    async with client.get("/sim/huge") as resp:
        assert resp.status == 200
        assert len(resp.headers["X-Big-39"]) == 8000
    await base.check(client)


# --- clients misbehave ------------------------------------------------------------------------


async def test_client_disconnects_mid_upload(
    faulty: Faulty, baseline: Callable[[], Baseline]
) -> None:
    reading, gone = asyncio.Event(), asyncio.Event()

    async def sink(request: web.Request) -> web.Response:
        reading.set()
        try:
            while await request.content.read(65536):
                pass
        except (asyncio.CancelledError, ConnectionError, aiohttp.ClientPayloadError):
            gone.set()
            raise
        gone.set()
        return web.Response()

    client = await faulty(lambda app: app.router.add_put("/sim/sink", sink))
    base = baseline()
    assert client.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"PUT /sim/sink HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 100000000\r\n\r\n" + b"x" * 300000)
    await writer.drain()
    await reading.wait()
    writer.close()  # gone, 99.7 MB short
    await asyncio.wait_for(gone.wait(), 10)  # the upstream request ended with it
    await base.check(client)


async def test_slowloris_headers_are_cut_off(faulty: Faulty,
                                             baseline: Callable[[], Baseline]) -> None:
    client = await faulty(limits={"client_idle_timeout": "300ms"})
    base = baseline()
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /fotoweb/me HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> bytes:
        for _ in range(100):  # a header line every 100 ms, never finishing
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            if reader.at_eof():
                break
            await asyncio.sleep(0.1)
        return await reader.read()

    try:
        answer = await asyncio.wait_for(trickle(), 20)
    except ConnectionError:
        answer = b""
    assert answer == b""  # cut off without an answer, long before 100 header lines came
    writer.close()
    await base.check(client)


# --- the clock -----------------------------------------------------------------------------------


async def test_token_lifetime_shorter_than_refresh_margin(
    faulty: Faulty, tenant_state: TenantState
) -> None:
    tenant_state.token_lifetime = 2  # refresh_margin stays at its default, 60 s
    client = await faulty()
    loop = asyncio.get_running_loop()
    end = loop.time() + 3  # longer than a token lives: renewals must happen meanwhile
    statuses = []
    while loop.time() < end:
        async with client.get("/fotoweb/me") as resp:
            statuses.append(resp.status)
        await asyncio.sleep(0.05)
    assert set(statuses) == {200}
    assert tenant_state.token_requests >= 2


async def test_upload_digest_survives_a_401_mid_run(
    faulty: Faulty, tenant_state: TenantState, baseline: Callable[[], Baseline]
) -> None:
    client = await faulty()
    base = baseline()
    payload = bytes(range(256)) * 4096
    tenant_state.revoke_all()
    async with client.post("/sim/upload", data=payload) as resp:
        result = json.loads(await resp.text())
    assert result["body_sha256"] == hashlib.sha256(payload).hexdigest()
    await base.check(client)
