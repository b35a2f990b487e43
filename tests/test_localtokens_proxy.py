"""Local tokens wired in: the endpoint, admission, the special paths, reload, user context,
metrics. The proxy in-process in front of the simulated tenant, whose record (`seen`,
`token_headers`, `token_forms`) shows what it was sent."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fwproxy import keys as keys_module
from fwproxy.app import PROXY, TOKENS, create_app, reconfigure
from fwproxy.config import Settings
from fwproxy.exceptions import ConfigError
from fwproxy.keys import add_key, remove_key
from fwproxy.loading import load_mapping
from fwproxy.localtokens import Holder, file_signing_keys, issue
from fwproxy.sim import (
    DEMO_CLIENT_ID,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    TenantState,
)
from fwproxy.store import StoredSession, TokenStore
from tests.conftest import ProxyFactory, merge, raw_exchange, tenant_config

Client = TestClient[Any, Any]
TOKEN_PATH = "/fotoweb/oauth2/token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CHALLENGE = 'Bearer realm="fwproxy", error="invalid_token"'


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def make_settings(tenant: TestServer, state_dir: Path) -> Callable[..., Settings]:
    """Settings with local tokens on; the signing key in `state_dir` ($STATE_DIRECTORY)."""

    def build(**sections: dict[str, Any]) -> Settings:
        raw = merge(tenant_config(tenant), {"local_tokens": {"enabled": True}})
        return load_mapping(merge(raw, sections), {"STATE_DIRECTORY": str(state_dir)})

    return build


@pytest.fixture
def start(aiohttp_client: Callable[..., Awaitable[Client]], make_settings: Callable[..., Settings]
          ) -> Callable[..., Awaitable[Client]]:
    async def build(**sections: dict[str, Any]) -> Client:
        return await aiohttp_client(create_app(make_settings(**sections)))

    return build


async def get_token(proxy: Client, client_id: str = "tool", secret: str | None = None,
                    basic: bool = False, expect: int = 200) -> dict[str, Any]:
    form = {"grant_type": "client_credentials"}
    headers = dict(FORM)
    if basic:
        pair = f"{quote(client_id, safe='')}:{quote(secret or '', safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form["client_id"] = client_id
        if secret is not None:
            form["client_secret"] = secret
    async with proxy.post(TOKEN_PATH, data=form, headers=headers) as resp:
        assert resp.status == expect, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await resp.json()
        if expect == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
        return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tenant_saw_no_local_token(state: TenantState) -> None:
    for seen in state.seen:
        assert "fwpl_" not in seen.path_qs
        assert "fwpl_" not in repr(seen.headers)
    assert "fwpl_" not in repr(state.token_headers) + repr(state.token_forms)


def fwproxy_tokens_only(state: TenantState) -> None:
    """No client's token request reached the tenant: every one it saw was fwproxy's own."""
    ours = {DEMO_CLIENT_ID, DEMO_WEB_CLIENT}
    assert all(form.get("client_id", DEMO_CLIENT_ID) in ours for form in state.token_forms)
    for headers in state.token_headers:
        basic = headers.get("Authorization", "").removeprefix("Basic ")
        assert not basic or base64.b64decode(basic).decode().split(":")[0] in ours


# --- the endpoint, and using what it issues ------------------------------------------------


async def test_a_tool_gets_a_token_and_uses_it(start: Callable[..., Awaitable[Client]],
                                               tenant_state: TenantState) -> None:
    proxy = await start()
    answer = await get_token(proxy, "any-tool")  # no API keys: any client_id will do
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 3600
    token = answer["access_token"]
    assert token.startswith("fwpl_")
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 200
    scheme, _, real = tenant_state.seen[-1].headers["authorization"][0].partition(" ")
    assert scheme == "Bearer"
    assert tenant_state.valid(real)  # fwproxy's own token, in place of the local one
    tenant_saw_no_local_token(tenant_state)
    fwproxy_tokens_only(tenant_state)


async def test_a_local_token_in_the_query_is_replaced(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState) -> None:
    proxy = await start()
    token = (await get_token(proxy))["access_token"]
    for name in ("access_token", "access%5Ftoken"):
        async with proxy.get(f"/sim/echo?a=1&{name}={token}&b=2") as resp:
            assert resp.status == 200
        seen = tenant_state.seen[-1]
        assert seen.path_qs == "/sim/echo?a=1&b=2"
        assert tenant_state.valid(seen.headers["authorization"][0].partition(" ")[2])
    tenant_saw_no_local_token(tenant_state)


@pytest.mark.parametrize("basic", [False, True])
async def test_api_keys_client_id_is_the_name_secret_is_the_key(
        start: Callable[..., Awaitable[Client]], keys_file: Path, tenant_state: TenantState,
        basic: bool) -> None:
    secret = add_key(keys_file, "robot")
    proxy = await start(access={"api_keys_file": str(keys_file)})
    token = (await get_token(proxy, "robot", secret, basic=basic))["access_token"]
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:  # no X-Fwproxy-Key
        assert resp.status == 200
    refused = await get_token(proxy, "robot", "fwp_wrong", basic=basic, expect=401)
    assert refused["error"] == "invalid_client"
    other = await get_token(proxy, "someone", secret, basic=basic, expect=401)
    assert other["error"] == "invalid_client"
    assert secret not in repr(refused) + repr(other)
    fwproxy_tokens_only(tenant_state)


async def test_endpoint_rules(start: Callable[..., Awaitable[Client]],
                              tenant_state: TenantState) -> None:
    proxy = await start()
    async with proxy.post(TOKEN_PATH, data={"grant_type": "password", "client_id": "x"},
                          headers=FORM) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "unsupported_grant_type"
    async with proxy.post(TOKEN_PATH, data="grant_type=client_credentials&grant_type=x",
                          headers=FORM) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    async with proxy.get(TOKEN_PATH) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
    # the path is matched as the tenant reads it: case and a trailing slash do not matter
    async with proxy.post("/FotoWeb/OAuth2/Token/", data={"grant_type": "client_credentials",
                                                           "client_id": "x"}) as resp:
        assert resp.status == 200
    fwproxy_tokens_only(tenant_state)
    assert all(seen.path_qs.lower().rstrip("/") != TOKEN_PATH for seen in tenant_state.seen)


async def test_a_token_request_whose_body_never_comes_gets_408_and_a_closed_connection(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState) -> None:
    proxy = await start(limits={"client_body_timeout": 0.2})
    answer = await raw_exchange(proxy.port, (
        f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        "grant_type=client").encode())
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"invalid_request"' in answer
    assert tenant_state.token_requests == 0


async def test_a_token_request_too_large_gets_413_and_a_closed_connection(
        start: Callable[..., Awaitable[Client]]) -> None:
    proxy = await start()
    body = b"grant_type=client_credentials&client_id=x&pad=" + b"x" * 20000
    answer = await raw_exchange(proxy.port, (
        f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n").encode() + body[:9000])
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"access_token" not in answer


def test_a_state_directory_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    raw = {"tenant": {"url": "https://acme.fotoware.cloud"},
           "auth": {"client_id": "a", "client_secret": "b"}, "local_tokens": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"local_tokens\.enabled: cannot create the "
                                          r"state directory"):
        load_mapping(raw, {"STATE_DIRECTORY": str(blocker / "state")})


# --- refused local tokens never reach the tenant --------------------------------------------


async def test_invalid_forged_expired_revoked_get_401_from_fwproxy(
        start: Callable[..., Awaitable[Client]], keys_file: Path, state_dir: Path,
        tenant_state: TenantState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "RELOAD_EVERY", 0.0)  # the key file is re-read at once
    secret = add_key(keys_file, "robot")
    proxy = await start(access={"api_keys_file": str(keys_file)})
    token = (await get_token(proxy, "robot", secret))["access_token"]
    signing = file_signing_keys(state_dir / "local-tokens.key").current()
    robot = proxy_app_keys(proxy).by_name("robot")
    assert robot is not None
    expired = issue(signing, Holder.of_key(robot), time.time() - 100, 10)
    forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    foreign_key = issue(type(signing)(1, b"x" * 32), Holder.of_key(robot), time.time(), 60)
    seen_before = len(tenant_state.seen)
    for bad, why in ((forged, "not issued by this proxy"), (expired, "expired"),
                     (foreign_key, "not issued by this proxy"), ("fwpl_x.y", "malformed")):
        async with proxy.get("/fotoweb/me", headers=bearer(bad)) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)
            assert why in (await resp.json())["detail"]
        async with proxy.get(f"/fotoweb/me?access_token={bad}") as resp:
            assert resp.status == 401
    assert remove_key(keys_file, "robot")
    add_key(keys_file, "robot")  # the same name again: a new key, the old tokens stay dead
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)
        assert "revoked" in (await resp.json())["detail"]
    assert len(tenant_state.seen) == seen_before  # none of them reached the tenant


def proxy_app_keys(proxy: Client) -> Any:
    app = proxy.app
    assert app is not None
    return app[PROXY].guard._keys


async def test_read_only_keys_stay_read_only(start: Callable[..., Awaitable[Client]],
                                             keys_file: Path) -> None:
    secret = add_key(keys_file, "viewer", read_only=True)
    proxy = await start(access={"api_keys_file": str(keys_file)})
    token = (await get_token(proxy, "viewer", secret))["access_token"]
    async with proxy.get("/sim/echo", headers=bearer(token)) as resp:
        assert resp.status == 200
    async with proxy.post("/sim/echo", data=b"x", headers=bearer(token)) as resp:
        assert resp.status == 403
        assert "read_only" in (await resp.json())["detail"]


async def test_a_plain_request_pays_only_the_authorization_look_up(
        start: Callable[..., Awaitable[Client]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Authorization or a query, admission never looks further for a local token."""
    from fwproxy import guard

    def never(*args: object) -> None:
        raise AssertionError("a plain request went through admit_credentials")

    proxy = await start()
    monkeypatch.setattr(guard, "admit_credentials", never)
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200


# --- a credential of the client's own -------------------------------------------------------


@pytest.mark.parametrize(("enabled", "mode", "status"), [
    (True, "keep", 200),  # forwarded untouched, borrows nothing: no API key needed
    (True, "replace", 401),  # fwproxy's token would replace it: the key is needed
    (False, "keep", 401),  # local tokens off: the API key rules as before
])
async def test_a_foreign_bearer_passes_untouched_without_an_api_key(
        start: Callable[..., Awaitable[Client]], keys_file: Path, tenant_state: TenantState,
        enabled: bool, mode: str, status: int) -> None:
    add_key(keys_file, "robot")
    proxy = await start(access={"api_keys_file": str(keys_file)},
                        auth={"client_authorization": mode},
                        local_tokens={"enabled": enabled})
    preview, _ = tenant_state.issue()  # a FotoWeb preview token, say: the tenant's own
    async with proxy.get("/sim/echo", headers=bearer(preview)) as resp:
        assert resp.status == status
    if status == 200:
        assert tenant_state.seen[-1].headers["authorization"] == [f"Bearer {preview}"]
        assert tenant_state.token_requests == 0  # fwproxy lent nothing


# --- the special paths ------------------------------------------------------------------------


async def test_token_path_with_local_tokens_off_goes_to_the_tenant_as_sent(
        make_proxy: ProxyFactory, tenant_state: TenantState) -> None:
    proxy = await make_proxy()  # the default config: local tokens off
    async with proxy.get("/fotoweb/me") as resp:  # fwproxy has its token
        assert resp.status == 200
    assert tenant_state.token_requests == 1
    basic = "Basic " + base64.b64encode(b"some-client:wrong").decode()
    async with proxy.post(TOKEN_PATH, data={"grant_type": "client_credentials"},
                          headers={**FORM, "Authorization": basic}) as resp:
        assert resp.status == 401  # the tenant's invalid_client, passed back
        assert (await resp.json())["error"] == "invalid_client"
    assert tenant_state.token_requests == 2  # the client's, once: no replay, no probe
    assert tenant_state.token_headers[-1]["Authorization"] == basic  # as the client sent it
    # the simulator records the Basic credentials read into the form (sim/oauth.py); with
    # a client_secret in the body as well it would have answered 400 invalid_request
    assert tenant_state.token_forms[-1] == {"grant_type": "client_credentials",
                                            "client_id": "some-client", "client_secret": "wrong"}
    async with proxy.get("/fotoweb/me") as resp:  # fwproxy's token was not dropped
        assert resp.status == 200
    assert tenant_state.token_requests == 2
    async with proxy.post(TOKEN_PATH, data={"grant_type": "client_credentials"},
                          headers=FORM) as resp:  # no credentials: none are added
        assert resp.status == 401
    assert "Authorization" not in tenant_state.token_headers[-1]
    assert tenant_state.token_requests == 3


@pytest.mark.parametrize(("enabled", "mode"), [(True, "keep"), (False, "keep"),
                                               (False, "replace")])
async def test_authorize_path_never_gets_fwproxys_token(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState,
        enabled: bool, mode: str) -> None:
    proxy = await start(local_tokens={"enabled": enabled}, auth={"client_authorization": mode,
                        "token_placement": "auto"})
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    requests = tenant_state.token_requests
    async with proxy.get("/fotoweb/oauth2/authorize?client_id=nobody&response_type=code",
                         allow_redirects=False) as resp:
        assert resp.status < 500
    seen = tenant_state.seen[-1]
    assert seen.path_qs.startswith("/fotoweb/oauth2/authorize?")
    assert "authorization" not in seen.headers
    assert "access_token" not in seen.path_qs
    async with proxy.get("/fotoweb/oauth2/authorize", headers={"Authorization": "Basic eDp5"},
                         allow_redirects=False):
        pass
    assert tenant_state.seen[-1].headers["authorization"] == ["Basic eDp5"]  # as sent
    assert tenant_state.token_requests == requests


async def test_a_401_on_the_authorize_path_does_not_drop_fwproxys_token(
        make_tenant: Callable[..., Awaitable[TestServer]], tenant_state: TenantState,
        aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=401)  # (recorded by the sim)

    def routes(app: web.Application) -> None:
        app.router.add_route("*", "/auth/authorize", refuse)

    server = await make_tenant(routes)
    raw = merge(tenant_config(server), {"auth": {"authorize_url": "/auth/authorize"}})
    proxy = await aiohttp_client(create_app(load_mapping(raw, {})))
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    async with proxy.post("/auth/authorize", data=b"x") as resp:
        assert resp.status == 401
    assert tenant_state.token_requests == 1  # not dropped, not renewed, not replayed
    assert [seen.path_qs for seen in tenant_state.seen].count("/auth/authorize") == 1  # nor probed
    assert "authorization" not in tenant_state.seen[-1].headers
    app = proxy.app
    assert app is not None
    assert app[TOKENS].current() is not None


# --- reload, restart, user context, metrics ---------------------------------------------------


async def test_tokens_survive_a_reload_and_a_restart(
        start: Callable[..., Awaitable[Client]], make_settings: Callable[..., Settings]) -> None:
    proxy = await start()
    token = (await get_token(proxy))["access_token"]
    app = proxy.app
    assert app is not None
    plan = reconfigure(app, make_settings(local_tokens={"enabled": True, "lifetime": "5m"}))
    assert plan.applied == ("local_tokens.lifetime",)
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 200
    assert (await get_token(proxy))["expires_in"] == 300
    again = await start()  # a new process reading the same state directory
    async with again.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 200
    reconfigure(app, make_settings(local_tokens={"enabled": False}))
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 401  # off: a bearer like any other, which the tenant refuses
    reconfigure(app, make_settings())  # and on again, by a reload
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 200
    assert (await get_token(proxy))["expires_in"] == 3600


async def test_deleting_the_signing_key_revokes_every_token(
        start: Callable[..., Awaitable[Client]], state_dir: Path) -> None:
    token = (await get_token(await start()))["access_token"]
    (state_dir / "local-tokens.key").unlink()
    proxy = await start()  # a restart makes a new key
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 401
        assert "not issued by this proxy" in (await resp.json())["detail"]


async def test_user_context_tools_get_local_tokens_tenant_sees_the_user(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState,
        tmp_path: Path) -> None:
    tenant_state.refresh_tokens["rt-alice"] = (DEMO_WEB_CLIENT, DEMO_USER)
    store = tmp_path / "user" / "tokens.json"
    TokenStore(store).save(StoredSession("rt-alice"))
    proxy = await start(auth={"grant_type": "authorization_code", "client_id": DEMO_WEB_CLIENT,
                              "client_secret": DEMO_WEB_SECRET, "token_store": str(store),
                              "redirect_uri": "http://127.0.0.1:8765/callback"})
    assert (store.parent / "local-tokens.key").exists()  # next to the token store
    token = (await get_token(proxy))["access_token"]
    async with proxy.get("/fotoweb/me", headers=bearer(token)) as resp:
        assert resp.status == 200
        assert (await resp.json())["userName"] == DEMO_USER
    real = tenant_state.seen[-1].headers["authorization"][0].partition(" ")[2]
    assert tenant_state.token_users[real] == DEMO_USER
    tenant_saw_no_local_token(tenant_state)


async def test_metrics_and_status_page_count_without_a_token_value(
        start: Callable[..., Awaitable[Client]]) -> None:
    proxy = await start()
    token = (await get_token(proxy))["access_token"]
    await get_token(proxy)
    forged = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]  # a MAC character
    async with proxy.get("/fotoweb/me", headers=bearer(forged)):
        pass
    async with proxy.post(TOKEN_PATH, data={"grant_type": "password"}, headers=FORM):
        pass
    async with proxy.get("/_fwproxy/metrics") as resp:
        metrics = await resp.text()
    assert "fwproxy_local_tokens_issued_total 2.0" in metrics
    assert 'fwproxy_local_tokens_refused_total{reason="bad_signature"} 1.0' in metrics
    assert 'fwproxy_local_tokens_refused_total{reason="unsupported_grant_type"} 1.0' in metrics
    async with proxy.get("/_fwproxy/") as resp:
        page = await resp.text()
    assert '<td id="local-tokens">2</td>' in page
    for text in (metrics, page):
        assert "fwpl_" not in text


# --- what looks like a local token anywhere is judged here, never forwarded -----------------


@pytest.mark.parametrize("shape", [
    "bearer\t{t}", "Bearer  {t}", "BEARER {t}", "Bearer {T}",  # white space, case, prefix case
])
async def test_a_local_token_in_any_spelling_is_judged_not_forwarded(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState, shape: str) -> None:
    proxy = await start()
    token = (await get_token(proxy, "any-tool"))["access_token"]
    value = shape.format(t=token, T="FWPL_" + token[len("fwpl_"):])
    async with proxy.get("/fotoweb/me", headers={"Authorization": value}) as resp:
        assert resp.status in (200, 401)  # swapped for fwproxy's token, or refused
        if resp.status == 401:
            assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)
    tenant_saw_no_local_token(tenant_state)


async def test_two_authorization_headers_are_refused(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState) -> None:
    proxy = await start()
    token = (await get_token(proxy, "any-tool"))["access_token"]
    seen = len(tenant_state.seen)
    headers = [("Authorization", "Basic eDp5"), ("Authorization", f"Bearer {token}")]
    async with proxy.get("/fotoweb/me", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    assert len(tenant_state.seen) == seen


@pytest.mark.parametrize("query", [
    "access_token%00={t}", "x={t}", "x=%66wpl_{rest}", "ACCESS_TOKEN={t}",
])
async def test_a_local_token_under_another_parameter_name_never_reaches_the_tenant(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState, query: str) -> None:
    proxy = await start()
    token = (await get_token(proxy, "any-tool"))["access_token"]
    target = "/fotoweb/me?" + query.format(t=token, rest=token[len("fwpl_"):])
    for headers in ({}, bearer(token)):
        async with proxy.get(target, headers=headers) as resp:
            assert resp.status == 401  # refused as malformed: which credential counts?
            assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)
    tenant_saw_no_local_token(tenant_state)


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("path", ["/fotoweb/oauth2/token.aspx", "/fotoweb/oauth2/token/x",
                                  "/fotoweb/oauth2/authorize.aspx"])
async def test_paths_beside_the_token_and_authorize_paths_never_get_fwproxys_token(
        start: Callable[..., Awaitable[Client]], tenant_state: TenantState, enabled: bool,
        path: str) -> None:
    """The tenant may route them to the same endpoint: they get no token of fwproxy's."""
    proxy = await start(local_tokens={"enabled": enabled})
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    async with proxy.get(path, allow_redirects=False) as resp:
        assert resp.status < 500
    seen = tenant_state.seen[-1]
    assert seen.path_qs == path
    assert "authorization" not in seen.headers


# --- the gate keeps what a signature vouches for, and asks the time and the keys again --------

class LiveKeys:
    """A key store whose keys the test changes (KeyStore's by_name, nothing else)."""

    def __init__(self, *keys: keys_module.ApiKey) -> None:
        self.keys = {key.name: key for key in keys}

    def by_name(self, name: str) -> keys_module.ApiKey | None:
        return self.keys.get(name)


def gate_with(tmp_path: Path, live: LiveKeys | None = None) -> Any:
    from fwproxy.tokengate import Counts, Gate

    return Gate(file_signing_keys(tmp_path / "local-tokens.key"), 60,
                live, Counts())  # type: ignore[arg-type]


def test_a_token_seen_before_is_revoked_with_its_key(tmp_path: Path) -> None:
    robot = keys_module.ApiKey("robot", keys_module.digest("fwp_robot-key"))
    live = LiveKeys(robot)
    gate = gate_with(tmp_path, live)
    token = issue(file_signing_keys(tmp_path / "local-tokens.key").current(),
                  Holder.of_key(robot), time.time(), 60)
    assert not isinstance(gate.check(token), web.Response)
    assert not isinstance(gate.check(token), web.Response)  # (the second from the memo)
    del live.keys["robot"]
    refused = gate.check(token)
    assert isinstance(refused, web.Response)
    assert refused.status == 401
    assert gate.counts.refused["revoked"] == 1


def test_a_token_seen_before_expires_on_time(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gate = gate_with(tmp_path)
    now = time.time()
    token = issue(file_signing_keys(tmp_path / "local-tokens.key").current(),
                  Holder.open("robot"), now, 60)
    assert not isinstance(gate.check(token), web.Response)
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert isinstance(gate.check(token), web.Response)
    assert gate.counts.refused["expired"] == 1


def test_a_forged_token_is_refused_every_time_and_not_kept(tmp_path: Path) -> None:
    from fwproxy.tokengate import MEMO_SIZE

    gate = gate_with(tmp_path)
    token = issue(file_signing_keys(tmp_path / "local-tokens.key").current(),
                  Holder.open("robot"), time.time(), 60)
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for _ in range(3):
        assert isinstance(gate.check(forged), web.Response)
    assert gate.counts.refused["bad_signature"] == 3
    signing = file_signing_keys(tmp_path / "local-tokens.key").current()
    for n in range(MEMO_SIZE + 5):  # the memo stays bounded
        assert not isinstance(gate.check(issue(signing, Holder.open(f"c{n}"), time.time(), 60)),
                              web.Response)
    assert len(gate._vouched) <= MEMO_SIZE
