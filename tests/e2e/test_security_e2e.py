"""Nothing a client sends can point the token somewhere else, and no secret reaches the log."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.sim import DEMO_CLIENT_SECRET, TenantState
from fwproxy.values import SCHEMA
from tests.conftest import tenant_config

from .conftest import (
    CURL_TIMEOUT,
    FwproxyProcess,
    StartProxy,
    clean_env,
    complete,
    curl,
    launch_fwproxy,
    write_config,
)

pytestmark = pytest.mark.e2e


def answer(result_text: str) -> tuple[int, Any]:
    """Split `curl -w '\\n%{http_code}'` output into the status and the JSON body."""
    body, _, status = result_text.rpartition("\n")
    return int(status), json.loads(body) if body else None


# `access.accept_hosts` (a Host allowlist against DNS rebinding) may refuse a foreign Host
# before anything is forwarded; accept it explicitly to show that even an accepted name
# does not choose where the request goes.
HAS_HOST_ALLOWLIST = "access" in SCHEMA and "accept_hosts" in SCHEMA["access"]
ACCEPT_EVIL: dict[str, dict[str, Any]] = (
    {"access": {"accept_hosts": ["127.0.0.1", "evil.example"]}} if HAS_HOST_ALLOWLIST else {}
)


async def test_host_header_does_not_choose_the_upstream(
    start_proxy: StartProxy, tenant: TestServer
) -> None:
    proxy = await start_proxy(ACCEPT_EVIL)
    result = await curl("-H", "Host: evil.example", "-w", "\n%{http_code}",
                        proxy.url("/sim/echo"))
    status, echo = answer(result.text)
    assert status == 200
    assert echo["headers"]["host"] == [f"127.0.0.1:{tenant.port}"]
    assert echo["headers"]["x-forwarded-host"] == ["evil.example"]
    assert echo["path_qs"] == "/sim/echo"


@pytest.mark.skipif(not HAS_HOST_ALLOWLIST, reason="no access.accept_hosts in this version")
async def test_foreign_host_is_refused_by_default(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    result = await curl("-H", "Host: evil.example", "-w", "\n%{http_code}",
                        fwproxy.url("/sim/echo"))
    status, document = answer(result.text)
    assert status == 403
    assert document["error"] == "forbidden"
    assert "evil.example" in document["detail"]
    assert not tenant_state.seen


async def test_absolute_form_target_keeps_only_the_path(
    start_proxy: StartProxy, tenant: TestServer
) -> None:
    proxy = await start_proxy(ACCEPT_EVIL)
    result = await curl("--request-target", "http://evil.example/sim/echo?a=1",
                        "-H", "Host: evil.example", "-w", "\n%{http_code}", proxy.url("/"))
    status, echo = answer(result.text)
    assert status == 200
    assert echo["path_qs"] == "/sim/echo?a=1"
    assert echo["headers"]["host"] == [f"127.0.0.1:{tenant.port}"]


# --- forwarding headers: from the validated Host and the socket, not from the client ------

FORGED = {
    "X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "443", "X-Real-IP": "10.9.8.7",
    "Forwarded": "for=10.9.8.7;host=evil.example", "X-Client-IP": "10.9.8.7",
    "True-Client-IP": "10.9.8.7", "X-Original-URL": "/fotoweb/admin/",
    "X-Rewrite-URL": "/fotoweb/admin/",
}


def forged_args() -> list[str]:
    return [arg for name, value in FORGED.items() for arg in ("-H", f"{name}: {value}")]


async def test_forged_forwarding_headers_are_replaced(fwproxy: FwproxyProcess) -> None:
    result = await curl(*forged_args(), "-w", "\n%{http_code}", fwproxy.url("/sim/echo"))
    status, echo = answer(result.text)
    assert status == 200
    seen = echo["headers"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{fwproxy.port}"]
    for name in ("x-forwarded-port", "x-real-ip", "forwarded", "x-client-ip",
                 "true-client-ip", "x-original-url", "x-rewrite-url"):
        assert name not in seen, name


async def test_trusted_peers_forwarding_headers_are_kept(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"access": {"trust_forwarded_from": ["127.0.0.1/32"]}})
    result = await curl(*forged_args(), "-w", "\n%{http_code}", proxy.url("/sim/echo"))
    status, echo = answer(result.text)
    assert status == 200
    seen = echo["headers"]
    assert seen["x-forwarded-for"] == ["10.9.8.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["evil.example"]
    assert seen["x-forwarded-port"] == ["443"]
    assert seen["x-real-ip"] == ["10.9.8.7"]
    for name in ("forwarded", "x-original-url", "x-rewrite-url"):  # dropped from anyone
        assert name not in seen, name


async def test_absolute_form_target_names_neither_forwarded_host_nor_location(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    result = await curl("--request-target", "http://evil.example/sim/redirect",
                        "-w", "\n%{http_code}", fwproxy.url("/"))
    status, document = answer(result.text)
    assert status == 400
    assert document["error"] == "host_mismatch"
    assert not tenant_state.seen
    own = f"127.0.0.1:{fwproxy.port}"  # what curl sends as Host
    result = await curl("--request-target", f"http://{own}/sim/echo", "-w", "\n%{http_code}",
                        fwproxy.url("/"))
    status, echo = answer(result.text)
    assert status == 200
    assert echo["headers"]["x-forwarded-host"] == [own]
    result = await curl("--request-target", f"http://{own}/sim/redirect", "-i",
                        fwproxy.url("/"))
    head = result.stdout.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert f"\r\nLocation: http://{own}/fotoweb/me\r\n" in head, head


@pytest.mark.parametrize("host", ["[::1]garbage", "[::1].evil.example", "[::1]@evil.example",
                                  "localhost:99999"])
async def test_malformed_host_is_refused(
    fwproxy: FwproxyProcess, tenant_state: TenantState, host: str
) -> None:
    result = await curl("-H", f"Host: {host}", "-w", "\n%{http_code}",
                        fwproxy.url("/sim/echo"))
    status, document = answer(result.text)
    assert status == 400
    assert document["error"] == "bad_host"
    assert not tenant_state.seen


async def test_double_slash_path_stays_on_the_tenant(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    result = await curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                        fwproxy.url("//evil.example/x"))
    assert result.text == "404"  # the tenant's own answer: it has no such resource
    assert [(r.method, r.path_qs) for r in tenant_state.seen] == [("GET", "//evil.example/x")]


@pytest.mark.parametrize(
    "method",
    [
        "CONNECT",  # `CONNECT /path`: aiohttp routes no CONNECT; once a plain 404
        "TRACE",
    ],
)
async def test_connect_and_trace_are_refused(
    fwproxy: FwproxyProcess, tenant_state: TenantState, method: str
) -> None:
    result = await curl("-X", method, "-i", fwproxy.url("/sim/echo"))
    assert result.returncode == 0, result.stderr
    head = result.stdout.decode("latin-1")
    assert head.startswith("HTTP/1.1 405"), head
    assert "allow: " in head.lower()
    assert "method_not_allowed" in head
    assert not tenant_state.seen
    await fwproxy.stop()
    assert fwproxy.log_count(f'"{method} /sim/echo" 405') == 1


@pytest.mark.parametrize("method", ["TRACK", "DEBUG"])
async def test_echoing_methods_are_never_forwarded(
    fwproxy: FwproxyProcess, tenant_state: TenantState, method: str
) -> None:
    # IIS's TRACK and DEBUG would echo the token too. aiohttp's parser may reject them
    # before fwproxy sees them (400) or fwproxy refuses them (405): either way, not sent.
    result = await curl("-X", method, "-o", "/dev/null", "-w", "%{http_code}",
                        fwproxy.url("/sim/echo"))
    assert result.text in ("400", "405")
    assert not tenant_state.seen


async def test_real_connect_tunnel_is_refused(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    # curl asks the proxy for a tunnel: "CONNECT example.org:443". Nothing leaves loopback:
    # curl only talks to the proxy, which must refuse rather than connect anywhere.
    result = await curl("-v", "-p", "-x", fwproxy.base, "--max-time", "30",
                        "https://example.org/")
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 56, stderr  # CURLE_RECV_ERROR: the CONNECT was refused
    assert "CONNECT example.org:443" in stderr
    assert "< HTTP/1.1 405" in stderr
    assert not tenant_state.seen


async def test_client_credentials_are_replaced_when_configured(
    start_proxy: StartProxy, tenant_state: TenantState
) -> None:
    proxy = await start_proxy({"auth": {"client_authorization": "replace"}})
    result = await curl(
        "-H", "Authorization: Bearer client-header-value", "-w", "\n%{http_code}",
        proxy.url("/sim/echo?access_token=client-query-value&b=2"),
    )
    status, echo = answer(result.text)
    assert status == 200
    assert echo["path_qs"] == "/sim/echo?b=2"
    [authorization] = echo["headers"]["authorization"]
    assert authorization.removeprefix("Bearer ") in tenant_state.tokens
    await proxy.stop()
    assert "client-header-value" not in proxy.log_text()
    assert "client-query-value" not in proxy.log_text()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_reaches_the_log(
    start_proxy: StartProxy, tenant_state: TenantState, log_format: str
) -> None:
    proxy = await start_proxy({"log": {"format": log_format}}, args=["--log-level", "debug"])
    tokens: set[str] = set()

    async def get(path: str, *args: str) -> int:
        result = await curl(*args, "-o", "/dev/null", "-w", "%{http_code}", proxy.url(path))
        tokens.update(tenant_state.tokens)
        return int(result.text)

    assert await get("/fotoweb/me") == 200
    tenant_state.revoke_all()
    post = await curl("--data-binary", "x" * 5000, "-o", "/dev/null", "-w", "%{http_code}",
                      proxy.url("/sim/upload"))
    assert post.text == "200"  # 401, renewal, replay of the body
    tokens.update(tenant_state.tokens)
    assert await get("/fotoweb/archives/") == 200
    # A client's own token is its business: passed on as it is (and refused by the tenant).
    assert await get("/fotoweb/me?access_token=client-supplied-secret-value") == 401
    assert await get("/fotoweb/me", "-H", "Authorization: Bearer client-header-secret-value"
                     ) == 401
    await proxy.stop()

    log = proxy.log_text()
    assert len(tokens) == 2
    assert tenant_state.token_requests == 2
    assert "replays=1" in log
    assert log.count("fwproxy.access") == 5
    assert DEMO_CLIENT_SECRET not in log
    for token in tokens:
        assert token not in log
    assert "client-supplied-secret-value" not in log
    assert "access_token=********" in log  # the request was logged, masked
    assert "client-header-secret-value" not in log


async def test_wrong_secret_gives_503_without_the_secret(
    start_proxy: StartProxy, tenant_state: TenantState
) -> None:
    wrong = "wrong-secret-value-4b1d"
    proxy = await start_proxy({"auth": {"client_secret": wrong}}, args=["--log-level", "debug"])
    result = await curl("-i", proxy.url("/fotoweb/me"))
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"\r\nRetry-After: " in head
    document = json.loads(body)
    assert document["error"] == "no_token"
    assert "invalid_client" in document["detail"]
    assert not tenant_state.seen  # nothing was sent to the API without a token
    await proxy.stop()
    assert wrong.encode() not in result.stdout
    assert wrong not in proxy.log_text()
    assert "invalid_client" in proxy.log_text()


# --- malformed request lines, on both of aiohttp's parsers ------------------------------------

PARSERS = {"c": "", "python": "1"}  # AIOHTTP_NO_EXTENSIONS


@pytest.fixture(params=sorted(PARSERS))
async def proxy_on_parser(
    request: pytest.FixtureRequest, tenant: TestServer, tmp_path: Path
) -> AsyncIterator[FwproxyProcess]:
    """`fwproxy run` on aiohttp's C parser (llhttp) or its pure-Python one."""
    env = {"AIOHTTP_NO_EXTENSIONS": PARSERS[request.param]}
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import aiohttp.http_parser as p; "
        "print(p.HttpRequestParser is p.HttpRequestParserPy)",
        stdout=asyncio.subprocess.PIPE, env=clean_env(env))
    out, _ = await complete(probe, 60, "the parser probe")
    assert out.strip() == (b"True" if request.param == "python" else b"False")
    path = write_config(tmp_path / "fwproxy.yaml", tenant_config(tenant))
    proxy = await launch_fwproxy(path, env=env)
    try:
        yield proxy
    finally:
        await proxy.stop()


async def exchange_until_closed(port: int, data: bytes) -> bytes:
    """Send raw bytes with no `Connection: close`; the answer, once fwproxy hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), CURL_TIMEOUT)  # a hang guard
    except asyncio.TimeoutError:
        raise AssertionError(f"fwproxy kept the connection open after {data!r}") from None
    finally:
        writer.close()


HOST = b"\r\nHost: 127.0.0.1\r\n"
MALFORMED = [
    b"GET /fotoweb/me\nX: y HTTP/1.1" + HOST + b"\r\n",  # LF inside the target
    b"GET /fotoweb/me" + HOST + b"\r\n",  # HTTP/0.9 (no version) with headers
    b"GET /fotoweb/me\r\n\r\n",  # HTTP/0.9
    b"GET /fotoweb/me HTTP/0.9" + HOST + b"\r\n",
    b"GET /fotoweb/me HTTP/1.2" + HOST + b"\r\n",
    b"GET /fotoweb/me HTTP/2.0" + HOST + b"\r\n",
    b"GET /fotoweb/me HTTP/1.1 x" + HOST + b"\r\n",
    b"get /fotoweb/me HTTP/1.1" + HOST + b"\r\n",  # the Python parser upper-cased it
    b"FOO /fotoweb/me HTTP/1.1" + HOST + b"\r\n",
    b"GET /fotoweb/m\xe9 HTTP/1.1" + HOST + b"\r\n",
    b"GET /fotoweb/me?q=\xe9 HTTP/1.1" + HOST + b"\r\n",
    b"GET /fotoweb/me\rX HTTP/1.1" + HOST + b"\r\n",
    b"GET /fotoweb/m\x00e HTTP/1.1" + HOST + b"\r\n",
    b"GET /fotoweb/me HTTP/1.1" + HOST + b"X-A: caf\xe9\r\n\r\n",
    b"POST /sim/echo HTTP/1.1" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",  # past 2**64
    b"POST /sim/echo HTTP/1.0" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_request_lines_are_refused_on_both_parsers(
    proxy_on_parser: FwproxyProcess, tenant_state: TenantState, data: bytes
) -> None:
    answer = await exchange_until_closed(proxy_on_parser.port, data)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert not tenant_state.seen
    # the same connection-per-request client still gets its answers
    good = b"GET /fotoweb/me HTTP/1.1" + HOST + b"Connection: close\r\n\r\n"
    assert (await exchange_until_closed(proxy_on_parser.port, good)).startswith(
        b"HTTP/1.1 200 ")
    assert [seen.path_qs for seen in tenant_state.seen] == ["/fotoweb/me"]


@pytest.mark.parametrize(
    "data",
    [b"GET /fotoweb/me HTTP/1.0" + HOST + b"\r\n",
     b"\r\nGET /fotoweb/me HTTP/1.1" + HOST + b"Connection: close\r\n\r\n",
     b"M-SEARCH /fotoweb/me HTTP/1.1" + HOST + b"Connection: close\r\n\r\n",
     b"POST /sim/echo HTTP/1.1" + HOST + b"Transfer-Encoding: chunked\r\nConnection: close"
     b"\r\n\r\n0003;ext=1\r\nabc\r\n0\r\n\r\n",
     b"GET /fotoweb/me HTTP/1.1" + HOST + b"X-A: caf\xc3\xa9\r\nConnection: close\r\n\r\n"],
    ids=["http10", "leading-crlf", "m-search", "chunk-ext", "utf8-header"],
)
async def test_well_formed_requests_pass_on_both_parsers(
    proxy_on_parser: FwproxyProcess, tenant_state: TenantState, data: bytes
) -> None:
    answer = await exchange_until_closed(proxy_on_parser.port, data)
    assert len(tenant_state.seen) == 1, answer[:200]
    assert answer.split(b" ", 2)[1] != b"400", answer[:200]


@pytest.mark.parametrize("method", [b"TRACK", b"DEBUG", b"TRACE"])
async def test_echoing_methods_are_refused_on_both_parsers(
    proxy_on_parser: FwproxyProcess, tenant_state: TenantState, method: bytes,
    request: pytest.FixtureRequest,
) -> None:
    answer = await exchange_until_closed(
        proxy_on_parser.port, method + b" /sim/echo HTTP/1.1" + HOST + b"Connection: close\r\n\r\n")
    llhttp = request.node.callspec.params["proxy_on_parser"] == "c"
    expected = b"400" if llhttp and method != b"TRACE" else b"405"  # llhttp refuses them first
    assert answer.split(b" ", 2)[1] == expected, answer[:200]
    assert not tenant_state.seen
