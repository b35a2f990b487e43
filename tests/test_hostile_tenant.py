"""A tenant that answers with exact bytes: odd headers, split bodies, odd Locations.

The tenant here is a raw asyncio server that replies with canned bytes (aiohttp's own server
would refuse to send most of them); tokens still come from the simulated tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import PROXY, create_app
from fwproxy.config import parse_config
from fwproxy.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState, create_tenant_app

Client = TestClient[Any, Any]
Reply = Callable[[bytes], bytes]  # request head -> response bytes


class RawTenant:
    """Answers every request with `reply(request_head)` and closes the connection."""

    def __init__(self) -> None:
        self.reply: Reply = lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            writer.write(self.reply(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_tenant() -> AsyncIterator[RawTenant]:
    tenant = RawTenant()
    await tenant.start()
    yield tenant
    assert tenant.server is not None
    tenant.server.close()
    await tenant.server.wait_closed()


@pytest.fixture
async def token_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> TestServer:
    return await aiohttp_server(create_tenant_app(TenantState()), host="127.0.0.1")


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], raw_tenant: RawTenant,
    token_server: TestServer,
) -> Callable[..., Awaitable[Client]]:
    async def build(**auth: Any) -> Client:
        settings = parse_config({
            "tenant": {"url": f"http://127.0.0.1:{raw_tenant.port}",
                       "allow_insecure_http": True},
            "auth": {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET,
                     "token_url": f"http://127.0.0.1:{token_server.port}/fotoweb/oauth2/token",
                     **auth},
        }, environ={})
        return await aiohttp_client(create_app(settings))

    return build


def response(*headers: str, status: str = "200 OK", body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


async def test_header_with_control_characters_is_dropped_not_a_crash(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]]
) -> None:
    raw_tenant.reply = lambda head: response("X-Bad: a\x01b", "X-Good: fine", body=b"ok")
    client = await make_client()
    async with client.get("/x") as resp:
        assert resp.status == 200
        assert "X-Bad" not in resp.headers
        assert resp.headers["X-Good"] == "fine"
        assert await resp.read() == b"ok"


async def test_long_tenant_headers_are_relayed(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]]
) -> None:
    policy = "default-src 'self' " + "https://cdn.example " * 1000  # ~20 KB, over 8190
    raw_tenant.reply = lambda head: response(f"Content-Security-Policy: {policy}")
    client = await make_client()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert f"Content-Security-Policy: {policy.strip()}\r\n".encode() in answer


async def test_malformed_response_detail_does_not_echo_tenant_bytes(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]]
) -> None:
    raw_tenant.reply = lambda head: b"HTTP/1.1 200 OK\r\nX: " + b"q" * 200_000 + b"\r\n\r\n"
    client = await make_client()
    async with client.get("/x") as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"] == "upstream_protocol_error"
    assert "qqq" not in body["detail"]


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("//cdn.example/img.jpg", "//cdn.example/img.jpg"),  # protocol-relative: as is
        ("HTTP://127.0.0.1:{tenant}/a?b=1#f", "http://127.0.0.1:{proxy}/a?b=1#f"),
        ("/relative/path", "/relative/path"),
        ("https://elsewhere.example/x", "https://elsewhere.example/x"),
        ("http://127.0.0.1:1/other-port", "http://127.0.0.1:1/other-port"),
        ("not a url \x7f", None),  # unsendable: dropped
    ],
)
async def test_locations(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]],
    location: str, expected: str | None,
) -> None:
    raw_tenant.reply = lambda head: response(
        f"Location: {location.format(tenant=raw_tenant.port)}", status="302 Found"
    )
    client = await make_client()
    async with client.get("/x", allow_redirects=False) as resp:
        assert resp.status == 302
        got = resp.headers.get("Location")
    assert got == (expected.format(proxy=client.port) if expected else None)


async def test_token_in_query_is_never_echoed_back_in_a_location(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]]
) -> None:
    def echo_target(head: bytes) -> bytes:
        target = head.split(b" ")[1].decode()
        return response(
            f"Location: http://127.0.0.1:{raw_tenant.port}{target}",
            f"Content-Location: https://cdn.example{target}",
            status="302 Found",
        )

    raw_tenant.reply = echo_target
    client = await make_client(token_placement="query")
    async with client.get("/a?x=1", allow_redirects=False) as resp:
        assert b"access_token=" in raw_tenant.heads[-1]  # the token did go upstream
        assert resp.headers["Location"] == f"http://127.0.0.1:{client.port}/a?x=1"
        assert resp.headers["Content-Location"] == "https://cdn.example/a?x=1"


@pytest.mark.parametrize("status", ["404 Not Found", "414 URI Too Long", "500 Oops"])
async def test_query_placement_is_learned_only_from_success(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], status: str
) -> None:
    def header_refused(head: bytes) -> bytes:
        if b"access_token=" in head:
            return response(status=status)
        return response(status="401 Unauthorized")

    raw_tenant.reply = header_refused
    client = await make_client()
    async with client.get("/x") as resp:
        assert resp.status == int(status[:3])
    assert client.app is not None
    assert client.app[PROXY].placement == "header"


async def test_target_fragment_is_not_sent_upstream(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /a#frag?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()
    assert raw_tenant.heads[-1].startswith(b"GET /a HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("target", "status", "upstream"),
    [
        (b"OPTIONS * HTTP/1.1", {b"400"}, None),
        (b"GET http://127.0.0.1 HTTP/1.1", {b"200"}, b"GET / HTTP/1.1"),
        (b"GET http://evil.example HTTP/1.1", {b"400"}, None),  # Host disagrees
        # aiohttp's C parser refuses unknown methods (400); its Python parser lets fwproxy
        (b"TRACK /x HTTP/1.1", {b"400", b"405"}, None),
    ],
)
async def test_unusual_request_lines(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]],
    target: bytes, status: set[bytes], upstream: bytes | None,
) -> None:
    client = await make_client()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(target + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ")[1] in status
    if upstream is None:
        assert not raw_tenant.heads
    else:
        assert raw_tenant.heads[-1].startswith(upstream)


async def test_token_response_split_across_packets(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    raw_tenant: RawTenant,
) -> None:
    async def slow_token(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"access_token": "split-tok')
        await asyncio.sleep(0.05)  # two TCP segments, not one
        await resp.write(b'en", "token_type": "bearer", "expires_in": 3600}')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/token", slow_token)
    server = await aiohttp_server(app, host="127.0.0.1")
    settings = parse_config({
        "tenant": {"url": f"http://127.0.0.1:{raw_tenant.port}", "allow_insecure_http": True},
        "auth": {"client_id": "a", "client_secret": "b",
                 "token_url": f"http://127.0.0.1:{server.port}/token"},
    }, environ={})
    client = await aiohttp_client(create_app(settings))
    async with client.get("/x") as resp:
        assert resp.status == 200
    assert b"Authorization: Bearer split-token\r\n" in raw_tenant.heads[-1]
