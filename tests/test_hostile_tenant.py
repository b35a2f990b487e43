"""A tenant that answers with exact bytes: odd headers, split bodies, odd Locations.

The tenant here is a raw asyncio server that replies with canned bytes (aiohttp's own server
would refuse to send most of them); tokens still come from the simulated tenant.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import PROXY
from tests.conftest import CLOSE, ProxyFactory, TenantFactory, raw_exchange

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
def make_client(
    make_proxy: ProxyFactory, raw_tenant: RawTenant, tenant: TestServer,
) -> Callable[..., Awaitable[Client]]:
    """A proxy in front of the raw tenant, with tokens from the simulated one; `auth` keys
    override."""

    async def build(**auth: Any) -> Client:
        return await make_proxy(
            tenant={"url": f"http://127.0.0.1:{raw_tenant.port}"},
            auth={"token_url": f"http://127.0.0.1:{tenant.port}/fotoweb/oauth2/token", **auth})

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


@pytest.mark.parametrize("status", [
    "301 Moved Permanently", "302 Found", "303 See Other", "307 Temporary Redirect",
    "404 Not Found", "414 URI Too Long", "500 Oops",
])
async def test_query_placement_is_learned_only_from_success(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], status: str
) -> None:
    def header_refused(head: bytes) -> bytes:
        if b"access_token=" in head:
            return response("Location: /elsewhere", status=status, body=b"probe")
        return response(status="401 Unauthorized", body=b"header refused")

    raw_tenant.reply = header_refused
    client = await make_client()
    for path in ("/x", "/y"):
        async with client.get(path, allow_redirects=False) as resp:
            # the probe's answer proves nothing and is not passed on: the tenant's 401 is
            assert resp.status == 401
            assert await resp.read() == b"header refused"
            assert "Location" not in resp.headers
    assert b"access_token=" in raw_tenant.heads[2]  # the first request's probe did go
    assert client.app is not None
    assert client.app[PROXY].placement == "header"


# --- the token in the query must not come back (issue 11, item 2) -------------------------

TOKEN = "Tk/+=%&?~x9"  # visible ASCII with what a URL encodes, so encodings differ from it


def shows_token(data: bytes) -> bool:
    """Whether the token is in `data`, raw or percent-encoded up to three times."""
    text = data.decode("latin-1")
    for _ in range(4):
        if TOKEN in text:
            return True
        text = unquote(text)
    return False


@pytest.fixture
async def odd_token_url(make_tenant: TenantFactory) -> str:
    """A token endpoint that issues `TOKEN` (a new Token each time, the same value)."""
    async def issue(request: web.Request) -> web.Response:
        return web.json_response(
            {"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600})

    server = await make_tenant(lambda app: app.router.add_post("/token", issue),
                               app=web.Application())
    return f"http://127.0.0.1:{server.port}/token"


def target_of(head: bytes) -> str:
    return head.split(b" ")[1].decode()


def forms_auth(head: bytes) -> bytes:
    """ASP.NET forms authentication: 401 to a bearer header it rejects, and without one a
    302 to the login page whose ReturnUrl (and "Object moved" page) holds the target."""
    if b"\r\nauthorization:" in head.lower():
        return response("WWW-Authenticate: Bearer", status="401 Unauthorized",
                        body=b'{"error": "invalid_token"}')
    location = "/fotoweb/views/login?ReturnUrl=" + quote(target_of(head), safe="").lower()
    page = f'<html><body><h2>Object moved to <a href="{location}">here</a>.</h2></body></html>'
    return response(f"Location: {location}", "Content-Type: text/html", status="302 Found",
                    body=page.encode())


async def test_forms_auth_redirect_neither_switches_placement_nor_leaks_the_token(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
) -> None:
    raw_tenant.reply = forms_auth
    client = await make_client(token_url=odd_token_url)
    for path in (b"/fotoweb/me", b"/fotoweb/archives/?q=1", b"/fotoweb/me"):
        answer = await raw_exchange(client.port, b"GET " + path + CLOSE)
        assert shows_token(raw_tenant.heads[-1])  # the probe sent it in the query
        assert answer.startswith(b"HTTP/1.1 401 ")  # the tenant's answer to the header
        assert b"invalid_token" in answer
        assert not shows_token(answer)
    assert client.app is not None
    assert client.app[PROXY].placement == "header"


@pytest.mark.parametrize("echo", [
    "Location: /fotoweb/views/login?ReturnUrl={once}",
    "Location: /fotoweb/views/login?ReturnUrl={once_lower}",
    "Location: http://127.0.0.1:{port}/sso?next=http%3A%2F%2Fidp%2F%3Fr%3D{once}",
    "location: http://127.0.0.1:{port}/sso#r={once}",
    "Content-Location: https://cdn.example/x?r={token}",
    "CONTENT-LOCATION: https://cdn.example/x?r={once}",
    "Refresh: 0; url=/fotoweb/views/login?ReturnUrl={once}",
    "refresh: 0; URL={target}",
    'Link: <http://127.0.0.1:{port}{target}>; rel="canonical"',
    'LINK: </login?ReturnUrl={once}>; rel="next"',
    "X-Original-Url: {target}",
])
async def test_query_token_echoed_in_a_response_header_is_dropped(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
    caplog: pytest.LogCaptureFixture, echo: str,
) -> None:
    def echoing(head: bytes) -> bytes:
        target = target_of(head)  # the token in it once percent-encoded, as fwproxy sent it
        once = quote(target, safe="")
        line = echo.format(port=raw_tenant.port, target=target, once=once, token=TOKEN,
                           once_lower=re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), once))
        return response(line, "X-Good: fine", status="302 Found")

    raw_tenant.reply = echoing
    client = await make_client(token_url=odd_token_url, token_placement="query")
    answer = await raw_exchange(client.port, b"GET /fotoweb/me?x=1" + CLOSE)
    assert shows_token(raw_tenant.heads[-1])
    assert answer.startswith(b"HTTP/1.1 302 ")
    assert b"\r\nX-Good: fine\r\n" in answer
    assert not shows_token(answer)
    name = echo.partition(":")[0]
    assert b"\r\n" + name.lower().encode() + b":" not in answer.lower()
    warnings = [r.getMessage() for r in caplog.records if "echoed the access token" in
                r.getMessage()]
    assert len(warnings) == 1
    assert name.lower() in warnings[0].lower()
    assert not any(shows_token(r.getMessage().encode()) for r in caplog.records)


async def test_query_token_echoed_in_the_reason_phrase_is_replaced(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw_tenant.reply = lambda head: response(status=f"302 Moved to {target_of(head)}")
    client = await make_client(token_url=odd_token_url, token_placement="query")
    answer = await raw_exchange(client.port, b"GET /fotoweb/me" + CLOSE)
    assert answer.startswith(b"HTTP/1.1 302 Found\r\n")
    assert not shows_token(answer)
    assert any("reason phrase" in r.getMessage() for r in caplog.records)


def strips_authorization(head: bytes) -> bytes:
    """A tenant behind an NGINX that strips Authorization: every header request is 401;
    with the token in the query it answers 200, and links to where it was asked."""
    target = target_of(head)
    if "access_token=" not in target:
        return response(status="401 Unauthorized", body=b"no token")
    return response(f'Link: <{target}>; rel="self"', "X-Good: fine", body=b"ok")


async def test_query_placement_is_learned_from_two_paths_and_says_what_it_saw(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw_tenant.reply = strips_authorization
    client = await make_client(token_url=odd_token_url)
    assert client.app is not None
    proxy = client.app[PROXY]
    # one path, however spelled and however often, proves nothing for every client
    for path in (b"/fotoweb/me?secret=q1", b"/FotoWeb/ME/", b"/fotoweb/%6De"):
        sent = len(raw_tenant.heads)
        answer = await raw_exchange(client.port, b"GET " + path + CLOSE)
        assert answer.startswith(b"HTTP/1.1 200 ")  # the probe's 2xx is the client's answer
        assert answer.endswith(b"\r\n\r\nok")
        assert b"\r\nX-Good: fine\r\n" in answer
        assert not shows_token(answer)  # its Link echoed the token: dropped
        assert len(raw_tenant.heads) - sent == 3  # original, replay, probe: never more
        assert proxy.placement == "header"
    assert not [r for r in caplog.records if "proxy_set_header" in r.getMessage()]
    # the same evidence on a second path does
    answer = await raw_exchange(client.port, b"GET /fotoweb/archives/?secret=q2" + CLOSE)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert proxy.placement == "query"
    warnings = [r.getMessage() for r in caplog.records if "proxy_set_header" in r.getMessage()]
    assert len(warnings) == 1
    assert ("/fotoweb/me: 401 with the header, 200 in the query; "
            "/fotoweb/archives: 401 with the header, 200 in the query") in warnings[0]
    assert "secret" not in warnings[0]
    assert "access_token=" not in warnings[0]
    assert not shows_token(warnings[0].encode())
    # learned: straight to the query, still scrubbed
    sent = len(raw_tenant.heads)
    answer = await raw_exchange(client.port, b"GET /fotoweb/other" + CLOSE)
    assert len(raw_tenant.heads) - sent == 1
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert not shows_token(answer)


async def test_a_body_that_reflects_the_url_still_carries_the_token(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
) -> None:
    """What README says plainly: headers are scrubbed, bodies are not."""
    raw_tenant.reply = lambda head: response(
        f"Link: <{target_of(head)}>", body=b"you asked for " + target_of(head).encode())
    client = await make_client(token_url=odd_token_url, token_placement="query")
    answer = await raw_exchange(client.port, b"GET /fotoweb/me" + CLOSE)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert not shows_token(head)
    assert shows_token(body)


async def test_probe_that_fails_is_a_clean_502(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]],
) -> None:
    def header_refused(head: bytes) -> bytes:
        if b"access_token=" in head:
            return b""  # the connection closes with no answer
        return response(status="401 Unauthorized")

    raw_tenant.reply = header_refused
    client = await make_client()
    async with client.get("/x") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_protocol_error"
    assert b"access_token=" in raw_tenant.heads[-1]


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
    make_tenant: TenantFactory, make_proxy: ProxyFactory, raw_tenant: RawTenant,
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

    server = await make_tenant(lambda app: app.router.add_post("/token", slow_token),
                               app=web.Application())
    client = await make_proxy(
        tenant={"url": f"http://127.0.0.1:{raw_tenant.port}"},
        auth={"client_id": "a", "client_secret": "b",
              "token_url": f"http://127.0.0.1:{server.port}/token"})
    async with client.get("/x") as resp:
        assert resp.status == 200
    assert b"Authorization: Bearer split-token\r\n" in raw_tenant.heads[-1]


# --- no token of ours comes back, in any encoding or placement (red team) ----------------

def token_shapes(token: str) -> dict[str, str]:
    """How a tenant may reflect a token it was sent: the red team's three and more."""
    return {
        "X-B64": base64.b64encode(token.encode()).decode(),
        "X-B64-Url": base64.urlsafe_b64encode(f"Bearer {token}".encode()).decode().rstrip("="),
        "X-Json": json.dumps(token)[1:-1].replace("/", "\\/"),
        "X-Json-U": "".join(f"\\u{ord(c):04x}" for c in token),
        "X-Html": "".join(f"&#{ord(c)};" for c in token),
        "X-Html-Hex": "".join(f"&#x{ord(c):x};" for c in token),
        "X-Hex": token.encode().hex(),
        "X-Debug-Auth": f"Bearer {token}",
        "Set-Cookie": f"s={token}; path=/",
    }


def shows_any_shape(data: bytes, token: str) -> bool:
    text = data.decode("latin-1")
    return shows_token(data) or any(v in text for v in token_shapes(token).values())


async def test_a_probe_answer_carries_the_token_in_no_encoding(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The red team's path: 401 to the header, 200 to the query, the token reflected in
    base64, JSON and HTML entities. Any client can make fwproxy probe; none reads it."""
    def reflecting(head: bytes) -> bytes:
        if "access_token=" not in target_of(head):
            return response(status="401 Unauthorized", body=b"no")
        lines = [f"{name}: {value}" for name, value in token_shapes(TOKEN).items()]
        return response(*lines, "X-Good: fine", body=b"ok")

    raw_tenant.reply = reflecting
    client = await make_client(token_url=odd_token_url)
    answer = await raw_exchange(client.port, b"GET /status?s=401" + CLOSE)
    assert answer.startswith(b"HTTP/1.1 200 ")  # the probe's answer
    assert b"\r\nX-Good: fine\r\n" in answer
    assert not shows_any_shape(answer, TOKEN)
    for name in token_shapes(TOKEN):
        assert b"\r\n" + name.lower().encode() + b":" not in answer.lower()
    assert not any(shows_any_shape(r.getMessage().encode(), TOKEN) for r in caplog.records)


async def test_a_token_sent_in_the_header_is_not_reflected_to_the_client(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], odd_token_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Header placement (the default): a tenant that reflects the Authorization it got in
    its reason phrase, a debug header or a cookie, raw or encoded, still gives the client
    nothing of it."""
    def reflecting(head: bytes) -> bytes:
        assert f"Authorization: Bearer {TOKEN}\r\n".encode() in head
        lines = [f"{name}: {value}" for name, value in token_shapes(TOKEN).items()]
        return response(*lines, "X-Good: fine", status=f"200 OK {TOKEN}", body=b"ok")

    raw_tenant.reply = reflecting
    client = await make_client(token_url=odd_token_url)
    answer = await raw_exchange(client.port, b"GET /fotoweb/me" + CLOSE)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nX-Good: fine\r\n" in answer
    assert answer.endswith(b"\r\n\r\nok")
    assert not shows_any_shape(answer, TOKEN)
    assert any("reason phrase" in r.getMessage() for r in caplog.records)
    assert any("X-Debug-Auth" in r.getMessage() and "Set-Cookie" in r.getMessage()
               for r in caplog.records)


# --- an interim status as the final answer (red team) ----------------------------------

@pytest.mark.parametrize("status", ["101 Switching Protocols", "100 Continue", "199 Odd"])
async def test_an_interim_status_as_the_final_answer_is_a_502(
    raw_tenant: RawTenant, make_client: Callable[..., Awaitable[Client]], status: str,
) -> None:
    """`GET /status?s=101` pipelined with `GET /fotoweb/me`: a relayed 101 would leave the
    client speaking HTTP on a connection it was told had switched protocols."""
    def answer(head: bytes) -> bytes:
        if target_of(head).startswith("/status"):
            return (f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .encode())
        return response(body=b"me")

    raw_tenant.reply = answer
    client = await make_client()
    get = b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data = await raw_exchange(
        client.port, b"GET /status?s=101" + get + b"GET /fotoweb/me" + CLOSE)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 502 "), data[:200]
    assert b'"upstream_protocol_error"' in rest
    assert b"HTTP/1.1 200 OK\r\n" in rest
    assert rest.endswith(b"\r\n\r\nme")
    assert b" 101 " not in data
    assert b" 100 " not in data
