"""The proxy in-process, against the simulated tenant over real loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fwproxy.app import PROXY, TOKENS
from fwproxy.sim import GZIP_PAYLOAD, TenantState
from tests.conftest import (
    CLOSE,
    ProxyFactory,
    raw_exchange,
    wait_until,
)
from tests.test_upstream import FORGED

Client = TestClient[Any, Any]


async def echo(client: Client, path: str = "/sim/echo", method: str = "GET",
               **kwargs: Any) -> dict[str, Any]:
    async with client.request(method, path, **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


# --- the token goes in ---------------------------------------------------------------------


async def test_plain_request_arrives_authenticated(
    proxy: Client, tenant_state: TenantState
) -> None:
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
        assert (await resp.json())["userName"] == "demo-app"
    seen = tenant_state.seen[-1]
    scheme, _, token = seen.headers["authorization"][0].partition(" ")
    assert scheme == "Bearer"
    assert tenant_state.valid(token)
    assert tenant_state.token_requests == 1


async def test_token_is_reused_across_requests(proxy: Client, tenant_state: TenantState) -> None:
    for _ in range(5):
        await echo(proxy)
    assert tenant_state.token_requests == 1


async def test_concurrent_cold_start_makes_one_token_request(
    proxy: Client, tenant_state: TenantState
) -> None:
    results = await asyncio.gather(*(echo(proxy) for _ in range(200)))
    assert len(results) == 200
    assert tenant_state.token_requests == 1


# --- forwarding is transparent ---------------------------------------------------------------


async def test_target_is_forwarded_byte_exact(proxy: Client, tenant_state: TenantState) -> None:
    target = b"/sim/echo?b=%2F&a=1&a=2&q=caf%C3%A9&plus=a+b&empty=&flag"
    response = await raw_exchange(
        proxy.port, b"GET " + target + CLOSE
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert tenant_state.seen[-1].path_qs == target.decode()


async def test_odd_paths_stay_on_the_tenant(proxy: Client, tenant_state: TenantState) -> None:
    for target in (b"//evil.example/sim/echo", b"/@evil.example/x", b"/\\evil.example/x"):
        await raw_exchange(
            proxy.port, b"GET " + target + CLOSE
        )
        assert tenant_state.seen[-1].path_qs == target.decode()


async def test_absolute_form_target_cannot_retarget(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    proxy = await make_proxy(access={"accept_hosts": ["*"]})
    response = await raw_exchange(
        proxy.port,
        b"GET http://evil.example/sim/echo?x=1 HTTP/1.1\r\nHost: evil.example\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200")
    seen = tenant_state.seen[-1]
    assert seen.path_qs == "/sim/echo?x=1"
    assert seen.headers["host"] == [f"127.0.0.1:{proxy_tenant_port(proxy)}"]


def proxy_app(client: Client) -> web.Application:
    app: web.Application | None = client.app
    assert app is not None
    return app


def proxy_tenant_port(proxy: Client) -> int:
    port = proxy_app(proxy)[PROXY]._tenant.port
    assert port is not None
    return port


async def test_host_header_goes_to_the_tenant_as_its_own(
    proxy: Client, tenant_state: TenantState
) -> None:
    seen = await echo(proxy, headers={"Host": f"localhost:{proxy.port}"})
    assert seen["headers"]["host"] == [f"127.0.0.1:{proxy_tenant_port(proxy)}"]
    assert seen["headers"]["x-forwarded-host"] == [f"localhost:{proxy.port}"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example"])
async def test_foreign_host_is_refused_dns_rebinding(
    proxy: Client, tenant_state: TenantState, host: str
) -> None:
    async with proxy.get("/fotoweb/me", headers={"Host": host}) as resp:
        assert resp.status == 403
        body = await resp.json()
    assert "access.accept_hosts" in body["detail"]
    assert not tenant_state.seen
    assert tenant_state.token_requests == 0


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "null"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),  # an <img> from another site
        ({"Sec-Fetch-Site": "none"}, True),  # typed into the address bar
        ({"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, True),
        ({"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"}, False),
        ({}, True),  # curl and scripts
    ],
)
async def test_cross_site_browser_requests_are_refused(
    proxy: Client, tenant_state: TenantState, headers: dict[str, str], allowed: bool
) -> None:
    headers = {name: value.replace("{port}", str(proxy.port)) for name, value in headers.items()}
    async with proxy.post("/sim/echo", data=b"x", headers=headers) as resp:
        assert resp.status == (200 if allowed else 403)
    assert len(tenant_state.seen) == (1 if allowed else 0)


async def test_allowed_origins_and_hosts_are_configurable(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(access={"accept_hosts": ["fwproxy.internal"],
                                      "allow_origins": ["https://intranet.example"]})
    seen = await echo(client, headers={"Host": "fwproxy.internal:8080",
                                       "Origin": "https://intranet.example",
                                       "Sec-Fetch-Site": "cross-site"})
    assert seen["method"] == "GET"
    async with client.get("/sim/echo", headers={"Host": "localhost"}) as resp:
        assert resp.status == 403  # the list replaces the default


@pytest.mark.parametrize("method", ["CONNECT", "TRACE"])
async def test_connect_and_trace_are_refused(
    proxy: Client, tenant_state: TenantState, method: str
) -> None:
    target = b"evil.example:443" if method == "CONNECT" else b"/sim/echo"
    response = await raw_exchange(
        proxy.port,
        method.encode() + b" " + target + CLOSE,
    )
    assert response.startswith(b"HTTP/1.1 405")
    assert b'"error": "method_not_allowed"' in response
    assert not tenant_state.seen


async def test_every_method_is_forwarded(proxy: Client) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"):
        seen = await echo(proxy, method=method)
        assert seen["method"] == method
    async with proxy.head("/sim/echo") as resp:
        assert resp.status == 200


async def test_hop_by_hop_headers_are_dropped(proxy: Client) -> None:
    seen = await echo(proxy, headers={
        "Connection": "keep-alive, X-Hop, Authorization",
        "X-Hop": "secret-hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
    })
    headers = seen["headers"]
    for name in ("x-hop", "keep-alive", "te", "upgrade", "proxy-authorization",
                 "proxy-connection"):
        assert name not in headers, name
    assert headers["x-end-to-end"] == ["kept"]
    # "Connection: Authorization" named a header the client did not send; ours still goes
    assert headers["authorization"][0].startswith("Bearer ")


async def test_forged_forwarding_headers_are_replaced(proxy: Client) -> None:
    seen = (await echo(proxy, headers=FORGED))["headers"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    for name in FORGED:
        if not name.lower().startswith(("x-forwarded-for", "x-forwarded-proto",
                                        "x-forwarded-host")):
            assert name.lower() not in seen, name


async def test_trusted_peers_forwarding_headers_are_kept(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    proxy = await make_proxy(access={"trust_forwarded_from": ["127.0.0.0/8"]})
    seen = (await echo(proxy, headers=FORGED))["headers"]
    assert seen["x-forwarded-for"] == ["10.9.8.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["evil.example"]
    assert seen["x-real-ip"] == ["10.9.8.7"]
    for name in ("forwarded", "x-original-url", "x-rewrite-url", "x-forwarded-uri"):
        assert name not in seen, name
    # a peer outside the trusted networks gets the default: replaced
    proxy = await make_proxy(access={"trust_forwarded_from": ["10.0.0.0/8"]})
    seen = (await echo(proxy, headers=FORGED))["headers"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    assert "x-real-ip" not in seen


@pytest.mark.parametrize(
    "host", ["[::1].evil.example", "[::1]@evil.example", "[::1]garbage", "a b", "x:99999",
             "localhost:", "u@localhost", "local%68ost"],
)
async def test_malformed_host_is_refused(
    proxy: Client, tenant_state: TenantState, host: str
) -> None:
    response = await raw_exchange(
        proxy.port, b"GET /sim/echo HTTP/1.1\r\nHost: " + host.encode()
        + b"\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "bad_host"
    assert "Host" in body["detail"]
    assert not tenant_state.seen


async def test_absolute_form_target_names_neither_forwarded_host_nor_location(
    proxy: Client, tenant_state: TenantState
) -> None:
    # disagreeing with Host: refused, nothing forwarded
    response = await raw_exchange(
        proxy.port, b"GET http://evil.example/sim/redirect HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400")
    assert b'"host_mismatch"' in response
    assert not tenant_state.seen
    # agreeing: the validated host[:port], not aiohttp's request.host (which drops the port)
    port = proxy.port
    for path in ("/sim/redirect", "/sim/echo"):
        response = await raw_exchange(port, (
            f"GET http://LOCALHOST.:{port}{path} HTTP/1.1\r\nHost: localhost:{port}\r\n"
            "Connection: close\r\n\r\n").encode())
        head, _, body = response.partition(b"\r\n\r\n")
        if path == "/sim/redirect":
            assert f"\r\nLocation: http://localhost:{port}/fotoweb/me\r\n".encode() in head
        else:
            assert json.loads(body)["headers"]["x-forwarded-host"] == [f"localhost:{port}"]


async def test_without_host_the_socket_names_forwarded_host_and_location(
    proxy: Client, tenant_state: TenantState
) -> None:
    response = await raw_exchange(proxy.port, b"GET /sim/echo HTTP/1.0\r\n\r\n")
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["headers"]["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    response = await raw_exchange(proxy.port, b"GET /sim/redirect HTTP/1.0\r\n\r\n")
    assert f"\r\nLocation: http://127.0.0.1:{proxy.port}/fotoweb/me\r\n".encode() in response


async def test_no_headers_are_invented(proxy: Client) -> None:
    response = await raw_exchange(
        proxy.port, b"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 200")
    body = response.split(b"\r\n\r\n", 1)[1]
    for invented in (b"accept-encoding", b"user-agent", b'"accept"', b"content-type"):
        assert invented not in body


async def test_gzip_passes_through_untouched(proxy: Client) -> None:
    async with proxy.get("/sim/gzip", headers={"Accept-Encoding": "gzip"},
                         auto_decompress=False) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        body = await resp.read()
    assert body == gzip.compress(GZIP_PAYLOAD, mtime=0)


async def test_redirects_are_passed_back_and_pointed_at_the_proxy(proxy: Client) -> None:
    async with proxy.get("/sim/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == f"http://127.0.0.1:{proxy.port}/fotoweb/me"
        assert resp.headers["Content-Location"] == f"http://127.0.0.1:{proxy.port}/fotoweb/me"
    elsewhere = "https://example.org/x?y=1"
    async with proxy.get("/sim/redirect", params={"elsewhere": elsewhere},
                         allow_redirects=False) as resp:
        assert resp.headers["Location"] == elsewhere


async def test_request_body_streams_and_arrives_intact(proxy: Client) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def chunks() -> Any:
        for start in range(0, len(payload), 65536):
            yield payload[start:start + 65536]

    async with proxy.post("/sim/upload", data=chunks()) as resp:
        result = await resp.json()
    assert result == {"body_size": len(payload),
                      "body_sha256": hashlib.sha256(payload).hexdigest()}


async def test_expect_100_continue(proxy: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"PUT /sim/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    await writer.drain()
    interim = await reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert b'"body_size": 5' in response


async def test_cookies_are_not_shared_between_clients(
    make_proxy: ProxyFactory,
) -> None:
    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.set_cookie("session", "alice")
        resp.set_cookie("other", "x")
        return resp

    client = await make_proxy(lambda app: app.router.add_get("/sim/cookie", set_cookie))
    async with client.get("/sim/cookie") as resp:
        assert len(resp.headers.getall("Set-Cookie")) == 2
    client.session.cookie_jar.clear()
    seen = await echo(client)
    assert "cookie" not in seen["headers"]


# --- client credentials of the client's own ----------------------------------------------


async def test_client_authorization_keep(proxy: Client, tenant_state: TenantState) -> None:
    async with proxy.get("/sim/echo", headers={"Authorization": "Bearer preview-token"}) as resp:
        assert resp.status == 401  # the tenant does not know it, and it is not replayed
    assert tenant_state.seen[-1].headers["authorization"] == ["Bearer preview-token"]
    assert tenant_state.token_requests == 0
    assert len(tenant_state.seen) == 1


async def test_client_access_token_in_query_is_kept(
    proxy: Client, tenant_state: TenantState
) -> None:
    async with proxy.get("/sim/echo?access_token=client-own") as resp:
        assert resp.status == 401
    assert "authorization" not in tenant_state.seen[-1].headers
    assert tenant_state.seen[-1].path_qs == "/sim/echo?access_token=client-own"


@pytest.mark.parametrize("name", ["ACCESS_TOKEN", "Access_Token", "access%5Ftoken",
                                  "%61ccess_token", "access%u005Ftoken"])
async def test_client_access_token_in_any_spelling_is_kept(
    proxy: Client, tenant_state: TenantState, name: str
) -> None:
    # ASP.NET reads each as access_token: the client's own credentials (red team)
    answer = await raw_exchange(proxy.port, f"GET /sim/echo?{name}=client-own".encode() + CLOSE)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert "authorization" not in tenant_state.seen[-1].headers
    assert tenant_state.seen[-1].path_qs == f"/sim/echo?{name}=client-own"
    assert tenant_state.token_requests == 0


async def test_client_access_token_in_any_spelling_is_replaced(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"client_authorization": "replace"})
    answer = await raw_exchange(client.port, b"GET /sim/echo?ACCESS_TOKEN=mine&x=1&access%5F"
                                b"token=x&Access%u005FToken=y&access-token=z" + CLOSE)
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = tenant_state.seen[-1]
    assert seen.path_qs == "/sim/echo?x=1&access-token=z"
    assert seen.headers["authorization"][0].startswith("Bearer ")


async def test_client_authorization_replace(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(auth={"client_authorization": "replace"})
    seen = await echo(client, path="/sim/echo?access_token=old&x=1",
                      headers={"Authorization": "Bearer old"})
    assert seen["headers"]["authorization"] != ["Bearer old"]
    assert seen["path_qs"] == "/sim/echo?x=1"


# --- 401: renew once, replay once ------------------------------------------------------------


async def test_401_renews_and_replays(proxy: Client, tenant_state: TenantState) -> None:
    await echo(proxy)
    tenant_state.revoke_all()
    seen = await echo(proxy)
    assert tenant_state.valid(seen["headers"]["authorization"][0][7:])
    assert tenant_state.token_requests == 2
    assert proxy_app(proxy)[PROXY].replays == 1


async def test_401_storm_renews_once(proxy: Client, tenant_state: TenantState) -> None:
    await echo(proxy)
    tenant_state.revoke_all()
    await asyncio.gather(*(echo(proxy) for _ in range(100)))
    assert tenant_state.token_requests == 2


@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024])  # memory copy, and a spilled copy
async def test_post_body_is_replayed_whole(
    proxy: Client, tenant_state: TenantState, size: int
) -> None:
    await echo(proxy)
    tenant_state.revoke_all()
    payload = bytes(range(256)) * (size // 256)
    async with proxy.post("/sim/upload", data=payload) as resp:
        assert resp.status == 200
        result = await resp.json()
    assert result["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_chunked_body_is_replayed_whole(proxy: Client, tenant_state: TenantState) -> None:
    await echo(proxy)
    tenant_state.revoke_all()

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 10000

    async with proxy.post("/sim/upload", data=chunks()) as resp:
        assert (await resp.json())["body_size"] == 100000


async def test_body_too_large_to_replay_gets_the_401(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"replay_max_body": "1KiB"})
    await echo(client)
    tenant_state.revoke_all()
    async with client.post("/sim/upload", data=b"y" * 5000) as resp:
        assert resp.status == 401
    assert tenant_state.token_requests == 1  # dropped, not yet renewed
    await echo(client)  # the next request renews and works
    assert tenant_state.token_requests == 2


async def test_403_never_renews(proxy: Client, tenant_state: TenantState) -> None:
    async with proxy.get("/sim/forbidden") as resp:
        assert resp.status == 403
    assert tenant_state.token_requests == 1
    assert len(tenant_state.seen) == 1


async def test_401_forever_is_one_renewal_and_one_replay(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"token_placement": "header"})
    tenant_state.strip_authorization = True  # every request now looks unauthenticated
    async with client.get("/sim/echo") as resp:
        assert resp.status == 401
    assert tenant_state.token_requests == 2
    assert len(tenant_state.seen) == 2


# --- header-stripping reverse proxies (Fotoware's "Using application access tokens" page) ---


async def test_stripped_authorization_falls_back_to_query(
    proxy: Client, tenant_state: TenantState, caplog: pytest.LogCaptureFixture
) -> None:
    tenant_state.strip_authorization = True
    for path in ("/sim/echo", "/sim/echo?again=1"):  # one path: the probe answers, no more
        seen = await echo(proxy, path=path)
        assert "access_token=" in seen["path_qs"]
        assert proxy_app(proxy)[PROXY].placement == "header"
    assert len(tenant_state.seen) == 6  # original, replay, query probe, twice: never more
    assert tenant_state.token_requests == 2  # the first token and one renewal
    async with proxy.get("/fotoweb/me") as resp:  # a second path: learned
        assert resp.status == 200
    assert proxy_app(proxy)[PROXY].placement == "query"
    before = len(tenant_state.seen)
    seen = await echo(proxy, path="/sim/echo?x=1")
    assert len(tenant_state.seen) == before + 1  # learned: straight to the query
    assert seen["path_qs"].startswith("/sim/echo?x=1&access_token=")
    assert "authorization" not in seen["headers"]
    warnings = [r for r in caplog.records if "proxy_set_header Authorization" in r.getMessage()]
    assert len(warnings) == 1
    assert "on 2 paths (/sim/echo: 401 with the header, 200 in the query; /fotoweb/me: " in (
        warnings[0].getMessage())


async def test_query_probe_sends_the_whole_body_again(
    proxy: Client, tenant_state: TenantState
) -> None:
    tenant_state.strip_authorization = True
    body = bytes(range(256)) * 1200  # 300 KiB: the tenant answers 401 before reading it
    seen = await echo(proxy, method="POST", data=body)
    assert "access_token=" in seen["path_qs"]
    assert seen["body_size"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_probe_with_a_body_that_proves_nothing_passes_the_401_back(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    async def forms_auth(request: web.Request) -> web.Response:
        if "Authorization" in request.headers:  # never reads the body
            return web.json_response({"error": "invalid_token"}, status=401)
        await request.read()
        raise web.HTTPFound("/fotoweb/views/login?ReturnUrl=" + quote(request.raw_path, safe=""))

    client = await make_proxy(lambda app: app.router.add_post("/sim/forms", forms_auth))
    async with client.post("/sim/forms", data=b"b" * 300_000, allow_redirects=False) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "invalid_token"
    assert "access_token=" in tenant_state.seen[-1].path_qs  # the probe went, with the body
    assert tenant_state.seen[-1].body_size == 300_000
    assert proxy_app(client)[PROXY].placement == "header"


async def test_query_placement_can_be_forced(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"token_placement": "query"})
    seen = await echo(client, path="/sim/echo?access_token_x=1")
    assert seen["path_qs"].startswith("/sim/echo?access_token_x=1&access_token=")
    assert "authorization" not in seen["headers"]


# --- failures map to clear JSON errors ---------------------------------------------------------


async def test_tenant_down_is_502(make_proxy: ProxyFactory, unused_tcp_port: int) -> None:
    client = await make_proxy(
        tenant={"url": f"http://127.0.0.1:{unused_tcp_port}"},
        auth={"client_id": "x", "client_secret": "y",
              "token_url": f"http://127.0.0.1:{unused_tcp_port}/token"})
    # No token can be had either: the token endpoint is the first thing that fails.
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"].isdigit()
        body = await resp.json()
    assert body["error"] == "no_token"
    assert "cannot reach token endpoint" in body["detail"]


async def test_tenant_api_down_is_502_with_json(
    make_proxy: ProxyFactory,
    tenant_state: TenantState,
    unused_tcp_port: int,
) -> None:
    client = await make_proxy()
    await echo(client)  # a token is cached; now the API host goes away
    proxy = proxy_app(client)[PROXY]
    proxy._tenant = proxy._tenant.with_port(unused_tcp_port)
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"] == "upstream_unreachable"
    assert "cannot connect" in body["detail"]


async def test_stalled_tenant_is_504(
    make_proxy: ProxyFactory,
) -> None:
    released = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(text="late")

    client = await make_proxy(
        lambda app: app.router.add_get("/sim/stall", stall), tenant={"read_timeout": "200ms"}
    )
    async with client.get("/sim/stall") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "upstream_timeout"
    released.set()


async def test_tenant_that_stalls_mid_body_is_cut_off(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fwproxy.access")
    released = asyncio.Event()

    async def half(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "2000"})
        await resp.prepare(request)
        await resp.write(b"h" * 1000)
        await released.wait()  # the second half never comes
        return resp

    client = await make_proxy(
        lambda app: app.router.add_get("/sim/half", half), tenant={"read_timeout": "200ms"}
    )

    async def fetch() -> bytes:
        async with client.get("/sim/half") as resp:
            assert resp.status == 200
            return await resp.read()

    with pytest.raises(aiohttp.ClientPayloadError):  # an incomplete body, never a whole one
        await asyncio.wait_for(fetch(), timeout=30)
    released.set()

    def access() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "fwproxy.access"]

    # the line is written as the handler returns, just after the cut
    await wait_until(lambda: bool(access()), "the access line")
    assert "error=upstream_timeout" in access()[-1]
    await echo(client)  # and the proxy is fine afterwards


async def test_a_slow_client_is_not_a_stalled_tenant(
    make_proxy: ProxyFactory,
) -> None:
    """Only waiting for the tenant counts against tenant.read_timeout: not a client that
    uploads slowly, nor one that reads the answer slowly."""
    big = b"d" * (16 << 20)  # more than the socket buffers hold: the proxy has to wait

    async def download(request: web.Request) -> web.Response:
        return web.Response(body=big)

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    def routes(app: web.Application) -> None:
        app.router.add_get("/sim/big", download)
        app.router.add_post("/sim/slow-upload", upload)

    client = await make_proxy(routes, tenant={"read_timeout": "200ms"})
    pause = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def slow_body() -> Any:
        for _ in range(3):
            yield b"u" * 1000
            loop.call_later(0.6, pause.set)  # three times the timeout, between chunks
            await pause.wait()
            pause.clear()

    async with client.post("/sim/slow-upload", data=slow_body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["size"] == 3000
    async with client.get("/sim/big") as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(65536)
        loop.call_later(0.6, pause.set)  # the proxy is held up writing to us meanwhile
        await pause.wait()
        rest = await resp.read()
    assert len(first) + len(rest) == len(big)


async def test_invalid_client_is_503_naming_it(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"client_secret": "wrong-secret-value"})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 503
        text = await resp.text()
    assert "invalid_client" in text
    assert "wrong-secret-value" not in text


async def test_token_endpoint_recovers_by_itself(
    proxy: Client, tenant_state: TenantState
) -> None:
    tenant_state.token_endpoint_fault = (500, "text/html", b"<h1>down</h1>")
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 503
        body = await resp.json()
        retry_after = int(resp.headers["Retry-After"])
    assert "http_500" in body["detail"]
    assert 1 <= retry_after <= 2
    tenant_state.token_endpoint_fault = None

    async def recovered() -> bool:
        async with proxy.get("/fotoweb/me") as resp:
            return resp.status == 200

    # the first backoff is at most a second: poll until it has passed
    await wait_until(recovered, "the proxy to recover", timeout=10, every=0.1)


async def test_truncated_upstream_body_is_not_a_short_200(
    make_proxy: ProxyFactory,
) -> None:
    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b"z" * 1000)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def truncated_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"z" * 1000)
        assert request.transport is not None
        request.transport.close()
        return resp

    def routes(app: web.Application) -> None:
        app.router.add_get("/sim/truncated", truncated)
        app.router.add_get("/sim/truncated-chunked", truncated_chunked)

    client = await make_proxy(routes)
    for path in ("/sim/truncated", "/sim/truncated-chunked"):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(path) as resp:
                await resp.read()
    await echo(client)  # and the proxy is fine afterwards


async def test_client_disconnect_cancels_the_upstream_request(
    make_proxy: ProxyFactory,
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        started.set()
        try:
            while True:
                await resp.write(b"." * 65536)
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, ConnectionError):
            cancelled.set()
            raise

    client = await make_proxy(lambda app: app.router.add_get("/sim/endless", endless))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /sim/endless HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await started.wait()
    writer.close()
    await asyncio.wait_for(cancelled.wait(), timeout=10)
    await echo(client)


async def test_proxy_tokens_are_exposed_for_the_app(proxy: Client) -> None:
    await echo(proxy)
    assert proxy_app(proxy)[TOKENS].current() is not None


async def test_endpoint_that_always_refuses_does_not_hammer_the_token_endpoint(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=401)

    client = await make_proxy(lambda app: app.router.add_get("/sim/refuse", refuse))
    for _ in range(5):
        async with client.get("/sim/refuse") as resp:
            assert resp.status == 401
    assert tenant_state.token_requests == 2  # the first token, and one renewal: no more
    assert proxy_app(client)[PROXY].placement == "header"


async def test_tenant_that_stops_reading_an_upload_is_504(
    make_proxy: ProxyFactory,
) -> None:
    released = asyncio.Event()

    async def ignore_body(request: web.Request) -> web.Response:
        await released.wait()  # never reads the body, never answers
        return web.Response(text="late")

    client = await make_proxy(
        lambda app: app.router.add_put("/sim/ignore", ignore_body),
        tenant={"read_timeout": "300ms"}, auth={"replay_max_body": 0},
    )

    async def big_body() -> Any:
        for _ in range(256):  # 64 MiB: far more than the socket buffers hold
            yield b"u" * 262144

    async def upload() -> tuple[int, dict[str, str]]:
        async with client.put("/sim/ignore", data=big_body()) as resp:
            return resp.status, await resp.json()

    status, body = await asyncio.wait_for(upload(), timeout=30)  # a hang is the failure
    assert status == 504
    assert "took no request body" in body["detail"]
    released.set()
