"""Who may use the proxy, and for what: rules, keys, limits, smuggling shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, HttpVersion, HttpVersion10, HttpVersion11, web
from aiohttp.test_utils import TestClient, make_mocked_request
from multidict import CIMultiDict

from fwproxy import keys
from fwproxy.config import parse_config
from fwproxy.exceptions import ConfigError
from fwproxy.guard import Admitted, Guard, smuggling_shape
from fwproxy.sim import TenantState
from tests.conftest import CLOSE, ProxyFactory, raw_exchange

Client = TestClient[Any, Any]
RULES = [
    {"name": "readers", "methods": ["GET", "HEAD"],
     "paths": ["/fotoweb/archives/**", "/fotoweb/me"], "action": "allow"},
    {"name": "no-admin", "paths": ["/fotoweb/admin/**"], "action": "deny"},
]


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- client addresses ------------------------------------------------------------------------


async def test_client_outside_allow_from_is_refused(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(access={"allow_from": ["10.0.0.0/8"]})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 403
        assert "allow_from" in (await resp.json())["detail"]
    assert not tenant_state.seen


async def test_client_inside_allow_from_passes(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(access={"allow_from": ["10.0.0.0/8", "127.0.0.0/8"]})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("access", "ok"),
    [({}, False), ({"allow_from": ["10.0.0.0/8"]}, True), ({"allow_public": True}, True),
     ({"api_keys_file": "KEYS"}, True)],
)
def test_listening_publicly_needs_a_deliberate_choice(
    tmp_path: Path, access: dict[str, Any], ok: bool
) -> None:
    if access.get("api_keys_file") == "KEYS":
        keys.add_key(tmp_path / "keys", "k")
        access = {"api_keys_file": str(tmp_path / "keys")}
    raw_config = {
        "listen": {"host": "0.0.0.0"},  # noqa: S104
        "tenant": {"url": "https://t.example"},
        "auth": {"client_id": "a", "client_secret": "b"},
        "access": access,
    }
    if ok:
        parse_config(raw_config, environ={})
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(raw_config, environ={})
    assert caught.value.key == "listen.host"
    for way in ("access.allow_from", "access.api_keys_file", "access.allow_public: true"):
        assert way in caught.value.message


# --- method and path rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/fotoweb/archives/5000/", 200),
        ("GET", "/fotoweb/me", 200),
        ("POST", "/fotoweb/me", 200),  # no rule matches a POST there: default allow
        ("GET", "/fotoweb/admin/users", 403),
        ("GET", "/fotoweb/admin", 403),
        ("GET", "/fotoweb/%61dmin/users", 403),  # encoded letters
        ("GET", "/fotoweb/admin%2Fusers", 403),  # encoded slash
        ("GET", "/fotoweb//admin/users", 403),  # doubled slash
        ("GET", "/FotoWeb/ADMIN/users", 403),  # IIS: case-insensitive
        ("GET", "/fotoweb\\admin/users", 403),  # IIS: backslash is a slash
        ("GET", "/fotoweb/%5cadmin/users", 403),
        ("GET", "/fotoweb/./admin/users", 400),  # dot segments: refused, not resolved
        ("GET", "/fotoweb/archives/../admin/users", 400),
        ("GET", "/fotoweb/%2e%2e/fotoweb/admin", 400),
        ("GET", "/fotoweb/.%2E/admin", 400),
        ("GET", "/fotoweb/%2561dmin/users", 400),  # double encoding: refused
        ("GET", "/fotoweb/administrators", 200),  # not under /fotoweb/admin/
        ("GET", "/fotoweb/%u0061dmin/x", 400),  # IIS decodes %uNNNN: refused
        ("GET", "/fotoweb/%u0041DMIN/x", 400),
        ("GET", "/fotoweb%u002fadmin/x", 400),
        ("GET", "/fotoweb/archives/..%20/admin/x", 400),  # Windows trims it to ..
        ("GET", "/fotoweb/archives/..%2e%20/admin/x", 400),
        ("GET", "/fotoweb/(S(x))/admin/x", 400),  # ASP.NET cookieless segment
        ("GET", "/fotoweb/admin;x/users", 400),  # path parameter
        ("GET", "/fotoweb/admin;x%2Fusers", 400),
        ("GET", "/fotoweb/archives/5000/;o=+;p=1", 200),  # FotoWeb's listing page
        ("GET", "/fotoweb/admin;x", 403),  # judged without its parameter too
        ("GET", "/fotoweb/%c0%afadmin/x", 400),  # overlong UTF-8
        ("GET", "/fotoweb/admin%09/x", 400),  # tab
        ("GET", "/fotoweb%EF%BC%8Fadmin/x", 400),  # fullwidth solidus
        ("GET", "/fotoweb/%EF%BD%81dmin/x", 403),  # fullwidth a: folded, then denied
        ("GET", "/fotoweb/adm%C4%B1n/x", 403),  # dotless i: .NET upper-cases it to I
        ("GET", "/fotoweb/caf%C3%A9/", 200),  # other characters pass
        ("GET", "/fotoweb/admin::$INDEX_ALLOCATION/", 400),  # NTFS streams (red team)
        ("GET", "/fotoweb/admin:$DATA/", 400),
        ("GET", "/fotoweb/ADMIN~1/", 400),  # an 8.3 short name
        ("GET", "/fotoweb/archives/~me/", 200),  # '~' without a digit passes
    ],
)
async def test_rules_match_the_path_the_tenant_will_see(
    make_proxy: ProxyFactory, tenant_state: TenantState, method: str, target: str,
    expected: int,
) -> None:
    client = await make_proxy(access={"rules": RULES})
    answer = await raw_exchange(client.port, f"{method} {target}".encode() + CLOSE)
    got = status(answer)
    if expected == 200:
        assert got != 403
        assert got != 400
        assert tenant_state.seen[-1].path_qs == target  # forwarded byte for byte
    else:
        assert got == expected
        assert not tenant_state.seen
        if expected == 403:
            assert b"no-admin" in answer  # the body names the rule


async def test_default_deny_and_method_rules(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(access={"rules": RULES[:1], "default": "deny"})
    async with client.get("/fotoweb/archives/") as resp:
        assert resp.status == 200
    async with client.delete("/fotoweb/archives/5000/") as resp:
        assert resp.status == 403
        assert "'default'" in (await resp.json())["detail"]
    async with client.get("/sim/echo") as resp:
        assert resp.status == 403


async def test_default_deny_allow_list_cannot_be_escaped(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(access={"rules": RULES[:1], "default": "deny"})
    for target in ("/fotoweb/archives/%u002e%u002e/admin/x", "/fotoweb/archives/..%20/admin/x",
                   "/fotoweb/archives/(S(x))/../admin/x", "/fotoweb/archives/%c0%ae%c0%ae/x",
                   "/fotoweb/archives/%EF%BC%8E%EF%BC%8E/admin/x"):
        answer = await raw_exchange(client.port, f"GET {target}".encode() + CLOSE)
        assert status(answer) == 400, (target, answer)
    answer = await raw_exchange(client.port, b"GET /fotoweb/archives/5000/" + CLOSE)
    assert status(answer) == 200
    assert [seen.path_qs for seen in tenant_state.seen] == ["/fotoweb/archives/5000/"]


OVERRIDES = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]


@pytest.mark.parametrize("header", OVERRIDES)
@pytest.mark.parametrize(
    "access",
    [{"read_only": True},
     {"rules": [{"name": "get-me", "methods": ["GET"], "paths": ["/sim/**"], "action": "allow"}],
      "default": "deny"},
     {"rules": [{"name": "no-delete", "methods": ["DELETE"], "paths": ["/**"],
                 "action": "deny"}]}],
)
async def test_method_override_headers_are_judged(
    make_proxy: ProxyFactory, tenant_state: TenantState, header: str, access: dict[str, Any]
) -> None:
    client = await make_proxy(access=access)
    async with client.get("/sim/echo", headers={header: "DELETE"}) as resp:
        assert resp.status == 403
        assert "DELETE /sim/echo" in (await resp.json())["detail"]
    async with client.get("/sim/echo", headers={header: "get"}) as resp:
        assert resp.status == 200
    assert [seen.method for seen in tenant_state.seen] == ["GET"]


@pytest.mark.parametrize("header", OVERRIDES)
async def test_method_override_to_an_echoing_method_is_refused(
    proxy: Client, tenant_state: TenantState, header: str
) -> None:
    async with proxy.get("/sim/echo", headers={header: "TRACE"}) as resp:
        assert resp.status == 405
    async with proxy.post("/sim/echo", headers={header: "PUT"}) as resp:
        assert resp.status == 200  # nothing configured: forwarded as it is
        assert (await resp.json())["headers"][header.lower()] == ["PUT"]
    assert [seen.method for seen in tenant_state.seen] == ["POST"]


NO_DELETE = {"rules": [{"name": "no-delete", "methods": ["DELETE"], "paths": ["/**"],
                        "action": "deny"}]}


@pytest.mark.parametrize(
    "query",
    ["x-http-method-override=DELETE", "X-HTTP-Method-Override=delete", "x_http_method=DELETE",
     "a=1&X-METHOD-OVERRIDE=put,delete", "x-http-method-override=%44ELETE",
     "x%2Dhttp%2Dmethod%2Doverride=DELETE", "%78-http-method=DELETE",
     "x-http-%u006dethod=DELETE", "_method=delete", "_METHOD=DELETE"],
)
async def test_method_override_in_the_query_is_judged(
    make_proxy: ProxyFactory, tenant_state: TenantState, query: str
) -> None:
    # ASP.NET MVC reads the override from the query string too (red team: 200 before)
    client = await make_proxy(access=NO_DELETE)
    answer = await raw_exchange(client.port, f"POST /sim/echo?{query}".encode() + CLOSE)
    assert status(answer) == 403, answer
    assert b"DELETE /sim/echo" in answer
    assert not tenant_state.seen


async def test_method_override_in_the_query_to_an_echoing_method_is_refused(
    proxy: Client, tenant_state: TenantState
) -> None:
    answer = await raw_exchange(proxy.port, b"GET /sim/echo?X-HTTP-Method=trace" + CLOSE)
    assert status(answer) == 405
    # names that only look alike pass untouched, as do values of other parameters
    for target in (b"/sim/echo?x-http-method-overrides=DELETE", b"/sim/echo?q=_method%3DPUT",
                   b"/sim/echo?method=DELETE"):
        answer = await raw_exchange(proxy.port, b"POST " + target + CLOSE)
        assert status(answer) == 200, answer
    assert not any(seen.method == "TRACE" for seen in tenant_state.seen)


async def test_underscore_method_override_header_never_reaches_the_tenant(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    # IIS would read X_HTTP_Method_Override as X-HTTP-Method-Override (red team: forwarded)
    client = await make_proxy(access={"read_only": True})
    answer = await raw_exchange(client.port, b"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"X_HTTP_Method_Override: DELETE\r\nx_method_override: PUT"
                                b"\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200
    assert not [name for name in tenant_state.seen[-1].headers if "_" in name]


FORM_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
              "Application/X-WWW-Form-URLencoded; charset=utf-8"]
DENY_DELETE = [{"name": "no-delete", "methods": ["DELETE"], "paths": ["/**"], "action": "deny"}]
OVERRIDE_PART = (b'--b\r\nContent-Disposition: form-data; name="X-HTTP-Method-Override"'
                 b"\r\n\r\nDELETE\r\n--b--\r\n")


def form_body(content_type: str) -> bytes:
    if content_type.startswith("multipart"):
        return OVERRIDE_PART
    return b"a=1&x-http-method-override=delete"


async def pieces(*chunks: bytes) -> Any:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)  # (each its own write: the proxy reads them one by one)


@pytest.mark.parametrize("content_type", FORM_TYPES)
async def test_form_post_naming_a_denied_override_is_stopped_before_its_end(
    make_proxy: ProxyFactory, tenant_state: TenantState, content_type: str
) -> None:
    # ASP.NET MVC reads x-http-method-override=delete from the form: fwproxy reads it too
    client = await make_proxy(access={"rules": DENY_DELETE})
    async with client.post("/sim/upload", data=form_body(content_type),
                           headers={"Content-Type": content_type}) as resp:
        assert resp.status == 403
        answer = await resp.json()
    assert answer["error"] == "forbidden"
    assert "names a method override" in answer["detail"]
    assert "DELETE /sim/upload is denied by access rule 'no-delete'" in answer["detail"]
    assert tenant_state.upload_sizes == []  # the tenant never had the whole body
    # a form without such a field, or another content type, goes through whole
    harmless = (b'--b\r\nContent-Disposition: form-data; name="x-http-method-overrides"'
                b"\r\n\r\nDELETE\r\n--b--\r\n" if content_type.startswith("multipart")
                else b"x-http-method-overrides=delete&a=x-http-method-override")
    async with client.post("/sim/upload", data=harmless,
                           headers={"Content-Type": content_type}) as resp:
        assert resp.status == 200
    async with client.post("/sim/upload", data=form_body(content_type),
                           headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
    assert tenant_state.upload_sizes == [len(harmless), len(form_body(content_type))]


@pytest.mark.parametrize(
    ("content_type", "chunks"),
    [("application/x-www-form-urlencoded",
      (b"a=" + b"v" * 70000 + b"&X_HTTP_METH", b"OD_OVERRIDE", b"=DELETE&b=2")),
     ("application/x-www-form-urlencoded", (b"a=1;%58-HTTP-Method-Override", b"=DELETE")),
     ("application/x-www-form-urlencoded", (b"a=1&%u0058-http-method", b"-override=PUT")),
     ("multipart/form-data; boundary=\"a'b(c)\"",
      (b"--a'b(c)\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"x\"\r\n\r\n"
       + b"\0" * 70000, b"\r\n--a'b(c)\r\nCONTENT-DISPOSITION: form-data; NAME=\"x-http-",
       b"method-override\"\r\n\r\nDELETE\r\n--a'b(c)--\r\n")),
     ("multipart/form-data", (b"--b\r\n", b"\r\n\r\nx\r\n--b--\r\n"))],
    ids=["urlencoded-split", "semicolon-percent", "percent-u", "multipart-split",
         "no-boundary"],
)
async def test_an_override_split_across_chunks_is_found(
    make_proxy: ProxyFactory, tenant_state: TenantState, content_type: str,
    chunks: tuple[bytes, ...],
) -> None:
    client = await make_proxy(access={"rules": DENY_DELETE})
    async with client.post("/sim/upload", data=pieces(*chunks),
                           headers={"Content-Type": content_type}) as resp:
        assert resp.status == 403
        assert "no-delete" in (await resp.json())["detail"]
    assert [seen.method for seen in tenant_state.seen] in ([], ["POST"])
    assert tenant_state.upload_sizes == []  # aborted: never a "complete" body


async def test_fotoweb_chunked_upload_passes_a_delete_rule(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    # FotoWeb's uploads: multipart chunks, no override field, for an admin denied DELETE
    client = await make_proxy(access={"rules": DENY_DELETE})
    tenant_state.catalog.chunk_size = 64 * 1024
    content = bytes(range(256)) * 600  # 150 KiB: three chunks
    async with client.post("/fotoweb/api/uploads", json={
            "destination": "/fotoweb/archives/5001/", "filename": "scan.tif",
            "fileSize": len(content)}) as resp:
        assert resp.status == 200
        opened = await resp.json()
    for index in range(opened["numChunks"]):
        form = FormData()
        form.add_field("chunk", content[index * 65536:(index + 1) * 65536], filename="blob",
                       content_type="application/octet-stream")
        async with client.post(f"/fotoweb/api/uploads/{opened['id']}/chunks/{index}",
                               data=form) as resp:
            assert resp.status == 204, await resp.text()
    stored = tenant_state.catalog.asset("5001", "scan.tif")
    assert stored is not None
    assert stored.content == content
    async with client.delete(f"/fotoweb/api/uploads/{opened['id']}") as resp:
        assert resp.status == 403  # the rule still holds


async def test_form_override_with_api_keys_and_default_deny(
    make_proxy: ProxyFactory, tenant_state: TenantState, keys_file: Path
) -> None:
    writer = keys.add_key(keys_file, "writer")
    reader = keys.add_key(keys_file, "reader", read_only=True)
    client = await make_proxy(access={"api_keys_file": str(keys_file), "default": "deny",
                                      "rules": [{"name": "writers", "methods": [
                                          "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH",
                                          "DELETE"], "paths": ["/sim/**"], "action": "allow"}]})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with client.post("/sim/upload", data=b"_method=PROPFIND", headers={
            **form, "X-Fwproxy-Key": writer}) as resp:
        assert resp.status == 403  # a method no rule names: the default denies it
        detail = (await resp.json())["detail"]
        assert "a method no rule names" in detail
        assert "'default'" in detail
    async with client.post("/sim/upload", data=b"a=1", headers={
            **form, "X-Fwproxy-Key": writer}) as resp:
        assert resp.status == 200
    async with client.post("/sim/upload", data=b"x-http-method=DELETE", headers={
            **form, "X-Fwproxy-Key": reader}) as resp:
        assert resp.status == 403  # a read-only key: no POST at all
        assert "read_only" in (await resp.json())["detail"]
    assert tenant_state.upload_sizes == [3]


async def test_form_post_without_rules_is_not_looked_at(
    proxy: Client, tenant_state: TenantState
) -> None:
    async with proxy.post("/sim/echo", data={"x-http-method-override": "DELETE"}) as resp:
        assert resp.status == 200
    assert [seen.method for seen in tenant_state.seen] == ["POST"]


@pytest.mark.parametrize(
    "destination",
    ["/fotoweb/admin/x", "http://127.0.0.1/fotoweb/admin/x", "HTTP://other/FotoWeb/Admin",
     "/fotoweb/%61dmin/x", "/fotoweb/archives/../admin/x", "/fotoweb/admin::$DATA",
     "/fotoweb/ADMIN~1/x", "ftp://h/fotoweb/admin/x", "fotoweb/admin"],
)
@pytest.mark.parametrize("method", ["MOVE", "COPY"])
async def test_webdav_destination_is_judged(
    make_proxy: ProxyFactory, tenant_state: TenantState, method: str, destination: str
) -> None:
    client = await make_proxy(access={"rules": RULES[1:]})
    request = (f"{method} /fotoweb/archives/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Destination: {destination}\r\nConnection: close\r\n\r\n").encode()
    answer = await raw_exchange(client.port, request)
    assert status(answer) in (400, 403), answer
    assert b"Destination" in answer
    assert not tenant_state.seen
    request = request.replace(destination.encode(), b"/fotoweb/archives/2")
    assert status(await raw_exchange(client.port, request)) != 403
    assert [seen.method for seen in tenant_state.seen] == [method]


async def test_read_only(make_proxy: ProxyFactory, tenant_state: TenantState) -> None:
    client = await make_proxy(access={"read_only": True})
    for method in ("GET", "HEAD", "OPTIONS"):
        async with client.request(method, "/sim/echo") as resp:
            assert resp.status == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        async with client.request(method, "/sim/echo", data=b"x") as resp:
            assert resp.status == 403
            assert "read_only" in (await resp.json())["detail"]
    assert {seen.method for seen in tenant_state.seen} == {"GET", "HEAD", "OPTIONS"}


# --- API keys ----------------------------------------------------------------------------------


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys"


async def test_api_keys(
    make_proxy: ProxyFactory, tenant_state: TenantState, keys_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = keys.add_key(keys_file, "writer")
    reader = keys.add_key(keys_file, "reader", read_only=True)
    assert keys_file.stat().st_mode & 0o777 == 0o600
    assert writer not in keys_file.read_text()  # only the hash is kept
    client = await make_proxy(access={"api_keys_file": str(keys_file)})

    async with client.get("/sim/echo") as resp:
        assert resp.status == 401
    async with client.get("/sim/echo", headers={"X-Fwproxy-Key": writer + "x"}) as resp:
        assert resp.status == 401
    assert not tenant_state.seen

    async with client.post("/sim/echo", headers={"X-Fwproxy-Key": writer}) as resp:
        assert resp.status == 200
        assert "x-fwproxy-key" not in (await resp.json())["headers"]
    async with client.post("/sim/echo", headers={"X-Fwproxy-Key": reader}) as resp:
        assert resp.status == 403  # a read-only key
    async with client.get("/sim/echo", headers={"X-Fwproxy-Key": reader}) as resp:
        assert resp.status == 200

    monkeypatch.setattr(keys, "RELOAD_EVERY", 0.0)
    late = keys.add_key(keys_file, "late")  # added while running: no restart needed
    async with client.get("/sim/echo", headers={"X-Fwproxy-Key": late}) as resp:
        assert resp.status == 200
    assert keys.remove_key(keys_file, "writer")
    async with client.get("/sim/echo", headers={"X-Fwproxy-Key": writer}) as resp:
        assert resp.status == 401


async def test_api_key_in_an_underscore_header_is_neither_accepted_nor_forwarded(
    make_proxy: ProxyFactory, tenant_state: TenantState, keys_file: Path
) -> None:
    key = keys.add_key(keys_file, "writer")
    client = await make_proxy(access={"api_keys_file": str(keys_file)})
    for name in ("X_Fwproxy_Key", "x_fwproxy_key", "X-Fwproxy_Key"):
        request = (f"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n{name}: {key}\r\n"
                   "Connection: close\r\n\r\n").encode()
        assert status(await raw_exchange(client.port, request)) == 401, name
    assert not tenant_state.seen
    request = (f"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fwproxy-Key: {key}\r\n"
               f"X_Fwproxy_Key: {key}\r\nConnection: close\r\n\r\n").encode()
    assert status(await raw_exchange(client.port, request)) == 200
    assert not [name for name in tenant_state.seen[-1].headers if "fwproxy" in name]


def test_keys_file_readable_by_others_is_refused(keys_file: Path) -> None:
    keys.add_key(keys_file, "k")
    keys_file.chmod(0o644)
    with pytest.raises(ConfigError, match="too open"):
        keys.load_keys(keys_file)


def test_key_repr_shows_no_hash() -> None:
    key = keys.ApiKey("n", b"\x01" * 32)
    assert "01" not in repr(key)


# --- limits ------------------------------------------------------------------------------------


async def test_max_body_declared(make_proxy: ProxyFactory, tenant_state: TenantState) -> None:
    client = await make_proxy(limits={"max_body": "1KiB"})
    async with client.post("/sim/upload", data=b"x" * 2000) as resp:
        assert resp.status == 413
    assert not tenant_state.seen
    async with client.post("/sim/upload", data=b"x" * 1000) as resp:
        assert resp.status == 200


async def test_max_body_chunked_is_cut_not_truncated(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(limits={"max_body": "100KiB"})

    async def chunks() -> Any:
        for _ in range(20):
            yield b"c" * 10240

    async with client.post("/sim/upload", data=chunks()) as resp:
        assert resp.status == 413
    assert all(size <= 100 * 1024 for size in tenant_state.upload_sizes)
    assert tenant_state.upload_sizes == []  # the tenant never saw a "complete" short body


async def test_max_header_bytes(make_proxy: ProxyFactory, tenant_state: TenantState) -> None:
    client = await make_proxy(limits={"max_header_bytes": "4KiB"})
    headers = {f"X-Pad-{i}": "p" * 500 for i in range(10)}
    async with client.get("/sim/echo", headers=headers) as resp:
        assert resp.status in (400, 431)  # aiohttp's own parser may refuse first
    assert not tenant_state.seen


Stalled = Callable[..., Awaitable[tuple[Client, asyncio.Event, asyncio.Event]]]


@pytest.fixture
def stalled_proxy(make_proxy: ProxyFactory) -> Stalled:
    async def build(**limits: Any) -> tuple[Client, asyncio.Event, asyncio.Event]:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            entered.set()
            await release.wait()
            return web.Response(text="done")

        client = await make_proxy(lambda app: app.router.add_get("/sim/slow", slow),
                                  limits=limits)
        return client, entered, release

    return build


async def test_max_concurrent_answers_503_when_full(
    stalled_proxy: Stalled,
) -> None:
    client, entered, release = await stalled_proxy(max_concurrent=1)
    first = asyncio.ensure_future(client.get("/sim/slow"))
    await entered.wait()
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "busy"
    release.set()
    async with await first as resp:
        assert resp.status == 200
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200  # the slot came back


async def test_max_concurrent_queues_with_a_timeout(
    stalled_proxy: Stalled,
) -> None:
    client, entered, release = await stalled_proxy(max_concurrent=1, queue_timeout="30s")
    first = asyncio.ensure_future(client.get("/sim/slow"))
    await entered.wait()
    second = asyncio.ensure_future(client.get("/fotoweb/me"))
    await asyncio.sleep(0.05)
    assert not second.done()  # queued, not refused
    release.set()
    async with await first as resp:
        assert resp.status == 200
    async with await second as resp:
        assert resp.status == 200


@pytest.mark.parametrize("code", [429, 503])
async def test_tenant_backpressure_is_passed_back_when_retries_are_off(
    make_proxy: ProxyFactory, tenant_state: TenantState, code: int,
) -> None:
    """tenant.retries: 0 (issue 15 retries it by default: tests/test_attempts.py)."""
    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=code, headers={"Retry-After": "7"}, text="slow down")

    client = await make_proxy(lambda app: app.router.add_get("/sim/busy", busy),
                              tenant={"retries": 0})
    async with client.get("/sim/busy") as resp:
        assert resp.status == code
        assert resp.headers["Retry-After"] == "7"
    assert len(tenant_state.seen) == 1


# --- request smuggling shapes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
        b"Content-Length: 4\r\n\r\nabcd",
        b"POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Folded: a\r\n b\r\n\r\n",  # obs-fold
        b"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Nul: a\x00b\r\n\r\n",
        b"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cr: a\rb\r\n\r\n",
        b"GET /sim/echo\r\nx HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/e\x00cho HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding : chunked\r\n\r\n"
        b"0\r\n\r\n",
        # malformed request lines: LF in the target (llhttp reads HTTP/0.9), HTTP/0.9, 1.2, 2.0
        b"GET /sim/echo\nX: y HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/echo\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/echo\r\n\r\n",
        b"GET /sim/echo HTTP/1.2\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/echo HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"get /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"FOO /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/\xe9cho HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/echo?a=\xe9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: caf\xe9\r\n\r\n",  # not UTF-8
        b"POST /sim/echo HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    ],
)
async def test_smuggling_shapes_are_refused(
    proxy: Client, tenant_state: TenantState, head: bytes
) -> None:
    answer = await raw_exchange(proxy.port, head)
    assert status(answer) == 400
    assert not tenant_state.seen


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ([("Content-Length", "3"), ("Transfer-Encoding", "chunked")], True),
        ([("Content-Length", "3"), ("Content-Length", "3")], True),
        ([("Content-Length", "-3")], True),
        ([("Transfer-Encoding", "chunked, chunked")], True),
        ([("Transfer-Encoding", "chunked")], False),
        ([("Content-Length", "10")], False),
        ([("X-Ok", "a b")], False),
        ([("X-Ok", "caf\u00e9")], False),  # UTF-8 header values pass
    ],
)
def test_smuggling_shape_check_holds_for_any_parser(
    headers: list[tuple[str, str]], refused: bool
) -> None:
    request = make_mocked_request("POST", "/x", headers=CIMultiDict(headers))
    assert (smuggling_shape(request) is not None) == refused


# --- the host a request names, and whose forwarding headers count ---------------------------

GUARD_BASE: dict[str, Any] = {
    "tenant": {"url": "https://t.example"},
    "auth": {"client_id": "a", "client_secret": "b"},
}


def make_guard(**access: Any) -> Guard:
    return Guard(parse_config({**GUARD_BASE, "access": access}, environ={}))


@pytest.mark.parametrize(
    ("target", "host", "expected"),
    [
        ("/x", "localhost:8080", "localhost:8080"),
        ("/x", "LocalHost.:8080", "localhost:8080"),  # canonical: what is forwarded
        ("/x", "[0:0::1]:8080", "[::1]:8080"),
        ("/x", "127.0.0.1", "127.0.0.1"),
        ("http://localhost:8080/x", "localhost:8080", "localhost:8080"),
        ("HTTP://LOCALHOST/x", "localhost:80", "localhost"),
        # aiohttp's request.host is the absolute-form target's host: it must not win
        ("http://evil.example/x", "localhost", 400),
        ("http://localhost:9/x", "localhost:8080", 400),
        ("http://u@localhost/x", "localhost", 400),
        ("http://evil.example/x", "evil.example", 403),
        ("/x", "[::1].evil.example", 400),
        ("/x", "[::1]@evil.example", 400),
        ("/x", "[::1]garbage", 400),
        ("/x", "a b", 400),
        ("/x", "x:99999", 400),
        ("/x", "", 400),
        ("/x", "evil.example", 403),
    ],
)
def test_admit_validates_the_host(target: str, host: str, expected: str | int) -> None:
    guard = make_guard()
    for _ in range(2):  # the second time from the memo
        admitted = guard.admit(make_mocked_request("GET", target, headers={"Host": host}))
        if isinstance(expected, int):
            assert isinstance(admitted, web.Response)
            assert admitted.status == expected
            assert isinstance(admitted.body, bytes)
            assert b'"detail"' in admitted.body
        else:
            assert isinstance(admitted, Admitted)
            assert admitted.host == expected
            assert admitted.path == "/x"


def test_status_pages_refuse_a_malformed_host() -> None:
    refusal = make_guard().admit_client(
        make_mocked_request("GET", "/_fwproxy/health", headers={"Host": "[::1]garbage"}),
        loopback=True)
    assert refusal is not None
    assert refusal.status == 400
    assert isinstance(refusal.body, bytes)
    assert b'"bad_host"' in refusal.body


def test_without_host_the_socket_names_the_host() -> None:
    request = make_mocked_request("GET", "/x", headers={}, version=HttpVersion10)
    admitted = make_guard().admit(request)
    assert isinstance(admitted, Admitted)
    assert admitted.host == "127.0.0.1:80"  # the mocked socket's own address


@pytest.mark.parametrize(
    ("trust", "remote", "trusted"),
    [([], "10.1.2.3", False), (["10.0.0.0/8"], "10.1.2.3", True),
     (["10.0.0.0/8"], "192.168.0.1", False), (["10.0.0.0/8"], None, False)],
)
def test_admit_says_whether_the_peer_is_trusted(
    trust: list[str], remote: str | None, trusted: bool
) -> None:
    guard = make_guard(trust_forwarded_from=trust, allow_from=["0.0.0.0/0"])
    request = make_mocked_request("GET", "/x", headers={"Host": "localhost"})
    if remote is not None:
        request = request.clone(remote=remote)
    for _ in range(2):
        admitted = guard.admit(request)
        assert isinstance(admitted, Admitted)
        assert admitted.trusted is trusted


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "why"),
    [
        ("GET", "/x", HttpVersion(0, 9), [], "HTTP version"),  # also LF in the target
        ("GET", "/x", HttpVersion(1, 2), [], "HTTP version"),
        ("GET", "/x", HttpVersion(2, 0), [], "HTTP version"),
        ("FOO", "/x", HttpVersion11, [], "unknown method"),
        ("GET", "/\udce9", HttpVersion11, [], "0x80-0xFF"),
        ("GET", "/x?q=\udce9", HttpVersion11, [], "0x80-0xFF"),
        ("POST", "/x", HttpVersion10, [("Transfer-Encoding", "chunked")], "HTTP/1.0"),
        ("GET", "/x", HttpVersion10, [], None),
        ("PROPFIND", "/x", HttpVersion11, [], None),
        ("M-SEARCH", "/x", HttpVersion11, [], None),
        ("POST", "/x", HttpVersion11, [("Transfer-Encoding", "chunked")], None),
    ],
)
def test_request_line_shapes_for_any_parser(
    method: str, target: str, version: HttpVersion, headers: list[tuple[str, str]],
    why: str | None,
) -> None:
    request = make_mocked_request(method, target, headers=CIMultiDict(headers),
                                  version=version)
    answer = smuggling_shape(request)
    assert answer is None if why is None else why in (answer or "")


@pytest.mark.parametrize(("raw", "why"), [
    ([(b"X-A", b"caf\xe9"), (b"X B", b"1")], "not UTF-8"),  # the first header's fault counts
    ([(b"X B", b"1"), (b"X-A", b"caf\xe9")], "CR, LF or NUL"),
    ([(b"X-A", b"ok"), (b"X-B", b"a\x00b")], "CR, LF or NUL"),
    ([(b"X-A", b"ok"), (b"X-B\t", b"v")], "CR, LF or NUL"),
    ([(b"X-A", b"a\rb")], "CR, LF or NUL"),
    ([(b"X-A", b"caf\xc3\xa9"), (b"X-B", b"a b\tc")], None),  # UTF-8, inner space and tab
    ([], None),
])
def test_header_bytes_are_judged_header_by_header(raw: list[tuple[bytes, bytes]],
                                                  why: str | None) -> None:
    """The headers are searched joined first (the usual request is clean); any doubt is
    then settled header by header, in order, so the reason is the first header's."""
    request = make_mocked_request("GET", "/x")
    request._message = request._message._replace(raw_headers=tuple(raw))
    answer = smuggling_shape(request)
    assert answer is None if why is None else why in (answer or "")
