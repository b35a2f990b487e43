"""User context (Fotoware's "Web Application or API authorization" page): PKCE, the token
store, `fwproxy login`, running as a user.

The browser here is an aiohttp client that reads the tenant's HTML forms and submits them
as a person would; tests/e2e/test_login_browser_e2e.py does the same in real Chromium.
"""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import create_app
from fwproxy.config import Settings, parse_config
from fwproxy.exceptions import ConfigError
from fwproxy.login import Outcome, login
from fwproxy.pkce import authorize_url, challenge, make_verifier, same_state
from fwproxy.sim import (
    DEMO_NATIVE_CLIENT,
    DEMO_PASSWORD,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    TenantState,
)
from fwproxy.store import StoredSession, TokenStore
from fwproxy.tokens import authorization_code_form, parse_token_response, refresh_token_form
from tests.conftest import merge, tenant_config

Client = TestClient[Any, Any]


# --- pure: PKCE, the authorize URL, forms -----------------------------------------------------


def test_pkce_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifier_is_long_and_high_entropy() -> None:
    verifier = make_verifier(bytes(range(48)))
    assert 43 <= len(verifier) <= 128
    assert re.fullmatch(r"[A-Za-z0-9_-]+", verifier)
    with pytest.raises(ValueError, match="32 random bytes"):
        make_verifier(b"short")


def test_authorize_url_is_exactly_as_fotoware_documents_it() -> None:
    from yarl import URL

    url = authorize_url(URL("https://acme.example/fotoweb/oauth2/authorize"), "my app",
                        "http://127.0.0.1:8765/callback", "st&te=", "ch+al/ge")
    parts = urlsplit(url)
    assert parts.scheme == "https"
    assert parts.path == "/fotoweb/oauth2/authorize"
    assert "my+app" in parts.query or "my%20app" in parts.query  # URL-encoded
    assert parse_qs(parts.query) == {
        "response_type": ["code"], "client_id": ["my app"],
        "redirect_uri": ["http://127.0.0.1:8765/callback"], "state": ["st&te="],
        "code_challenge": ["ch+al/ge"], "code_challenge_method": ["S256"],
    }


def test_state_check_is_exact() -> None:
    assert same_state("abc", "abc")
    assert not same_state("abc", "abd")
    assert not same_state("abc", None)
    assert not same_state("abc", "abc ")


def test_code_exchange_form() -> None:
    confidential = parse_qs(authorization_code_form("c", "s", "the code", "http://r/cb", "v")
                            .decode())
    assert confidential == {"grant_type": ["authorization_code"], "client_id": ["c"],
                            "client_secret": ["s"], "code": ["the code"],
                            "redirect_uri": ["http://r/cb"], "code_verifier": ["v"]}
    public = parse_qs(authorization_code_form("c", None, "x", None, "v").decode())
    assert "client_secret" not in public  # a public client never sends one
    assert "redirect_uri" not in public  # only if the authorize request had one


def test_refresh_form() -> None:
    assert parse_qs(refresh_token_form("c", None, "r").decode()) == {
        "grant_type": ["refresh_token"], "client_id": ["c"], "refresh_token": ["r"]}
    assert "client_secret" in parse_qs(refresh_token_form("c", "s", "r").decode())


def test_refresh_token_is_parsed_and_hidden() -> None:
    body = b'{"access_token": "a", "token_type": "bearer", "expires_in": 60, ' \
           b'"refresh_token": "rt-secret"}'
    token = parse_token_response(200, "application/json", body, 0.0, 10)
    assert token.refresh_token == "rt-secret"
    assert "rt-secret" not in repr(token)


# --- the token store ----------------------------------------------------------------------------


def test_store_is_atomic_and_private(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "state" / "fwproxy" / "tokens.json")
    assert store.load() is None
    store.save(StoredSession("rt-1", "at-1", 123.0, "alice"))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert store.load() == StoredSession("rt-1", "at-1", 123.0, "alice")
    store.save(StoredSession("rt-2"))
    assert store.load() == StoredSession("rt-2")
    assert [p.name for p in store.path.parent.iterdir()] == ["tokens.json"]  # no temp left
    assert "rt-2" not in repr(store.load())
    assert store.remove()
    assert not store.remove()


def test_store_readable_by_others_or_damaged_is_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.save(StoredSession("rt"))
    store.path.chmod(0o644)
    with pytest.raises(ConfigError, match="too open"):
        store.load()
    store.path.chmod(0o600)
    store.path.write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        store.load()


def test_user_context_config(tmp_path: Path) -> None:
    base = {"tenant": {"url": "https://t.example"},
            "auth": {"grant_type": "authorization_code", "client_id": "native",
                     "redirect_uri": "http://127.0.0.1:8765/callback"}}
    settings = parse_config(base, environ={"XDG_STATE_HOME": str(tmp_path)})
    assert settings.auth.client_secret is None  # a public client
    assert settings.auth.token_store == tmp_path / "fwproxy" / "tokens.json"
    assert str(settings.auth.authorize_url) == "https://t.example/fotoweb/oauth2/authorize"
    systemd = parse_config(base, environ={"STATE_DIRECTORY": "/var/lib/fwproxy"})
    assert systemd.auth.token_store == Path("/var/lib/fwproxy/tokens.json")
    for bad in ("https://127.0.0.1:8765/cb", "http://example.org:8765/cb",
                "http://127.0.0.1/cb"):
        with pytest.raises(ConfigError, match=r"auth\.redirect_uri"):
            parse_config(merge(base, {"auth": {"redirect_uri": bad}}), environ={})


# --- fwproxy login against the simulated tenant --------------------------------------------


class Browser:
    """Follows the tenant's HTML: fills the login form, answers the consent form."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def run(self, url: str, consent: str = "allow", password: str = DEMO_PASSWORD
                  ) -> tuple[int, str]:
        async with self.session.get(url) as resp:
            page = await resp.text()
            base = resp.url
        if "password" not in page:
            return resp.status, page
        pending = re.search(r'name="pending" value="([^"]+)"', page)
        assert pending is not None
        async with self.session.post(base.with_path("/fotoweb/oauth2/login").with_query(None),
                                     data={"pending": pending.group(1), "username": DEMO_USER,
                                           "password": password}) as resp:
            page = await resp.text()
            if resp.status != 200:
                return resp.status, page
        async with self.session.post(
            base.with_path("/fotoweb/oauth2/consent").with_query(None),
            data={"pending": pending.group(1), "decision": consent},
        ) as resp:  # follows the redirect to fwproxy's callback
            return resp.status, await resp.text()


@pytest.fixture
def user_settings(
    tenant: TestServer, tenant_state: TenantState, tmp_path: Path, unused_tcp_port: int
) -> Callable[..., Settings]:
    redirect = f"http://127.0.0.1:{unused_tcp_port}/callback"
    for app in tenant_state.apps.values():
        app.redirect_uris = [redirect]

    def build(public: bool = False, **auth: Any) -> Settings:
        section: dict[str, Any] = {
            "grant_type": "authorization_code", "redirect_uri": redirect,
            "token_store": str(tmp_path / "state" / "tokens.json"),
            "client_id": DEMO_NATIVE_CLIENT if public else DEMO_WEB_CLIENT,
            "client_secret": None if public else DEMO_WEB_SECRET, **auth,
        }
        config = merge(tenant_config(tenant), {"auth": section})
        if section["client_secret"] is None:
            del config["auth"]["client_secret"]
        return parse_config(config, environ={})

    return build


async def do_login(settings: Settings, browser_step: Callable[[str], Awaitable[Any]]
                   ) -> tuple[Outcome, Any]:
    """Run `login`, handing the printed URL to `browser_step` as a person would."""
    urls: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.ensure_future(login(settings, open_browser=False, timeout=30,
                                       say=urls.put_nowait))
    url = await asyncio.wait_for(urls.get(), 10)
    seen = await browser_step(url)
    return await task, seen


async def test_login_then_proxy_acts_as_the_user(
    user_settings: Callable[..., Settings], tenant_state: TenantState,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    settings = user_settings()
    async with aiohttp.ClientSession() as session:
        outcome, (status, page) = await do_login(settings, Browser(session).run)
    assert outcome.ok, outcome.message
    assert status == 200
    assert "Logged in as Alice Liddell" in page
    form = tenant_state.token_forms[-1]
    assert form["grant_type"] == "authorization_code"
    assert form["client_secret"] == DEMO_WEB_SECRET
    assert form["redirect_uri"] == settings.auth.redirect_uri
    assert "code_verifier" in form
    stored = TokenStore(settings.auth.token_store or Path()).load()
    assert stored is not None
    assert stored.user == "Alice Liddell"
    for secret in (stored.refresh_token, stored.access_token or "-"):
        assert secret not in page  # the tokens never reach the browser

    proxy = await aiohttp_client(create_app(settings))
    async with proxy.get("/fotoweb/me") as resp:
        assert (await resp.json())["userName"] == DEMO_USER
    assert tenant_state.token_requests == 1  # started from the stored token: no refresh


async def test_public_client_sends_no_secret(
    user_settings: Callable[..., Settings], tenant_state: TenantState
) -> None:
    settings = user_settings(public=True)
    async with aiohttp.ClientSession() as session:
        outcome, _ = await do_login(settings, Browser(session).run)
    assert outcome.ok, outcome.message
    assert "client_secret" not in tenant_state.token_forms[-1]
    assert tenant_state.token_forms[-1]["code_verifier"]


async def test_denied_consent_is_shown_plainly_and_stores_nothing(
    user_settings: Callable[..., Settings],
) -> None:
    settings = user_settings()
    async with aiohttp.ClientSession() as session:
        outcome, (status, page) = await do_login(
            settings, lambda url: Browser(session).run(url, consent="deny"))
    assert not outcome.ok
    assert "access_denied" in outcome.message
    assert status == 400
    assert "access_denied" in page
    assert TokenStore(settings.auth.token_store or Path()).load() is None


async def test_forged_state_is_refused_and_stores_nothing(
    user_settings: Callable[..., Settings],
) -> None:
    settings = user_settings()

    async def forge(url: str) -> tuple[int, str]:
        callback = f"{settings.auth.redirect_uri}?code=stolen&state=forged"
        async with aiohttp.ClientSession() as session, session.get(callback) as resp:
            return resp.status, await resp.text()

    outcome, (status, page) = await do_login(settings, forge)
    assert not outcome.ok
    assert "state" in outcome.message
    assert status == 400
    assert "cross-site request forgery" in page
    assert TokenStore(settings.auth.token_store or Path()).load() is None


async def test_callback_server_answers_only_its_path(
    user_settings: Callable[..., Settings],
) -> None:
    settings = user_settings()
    assert settings.auth.redirect_uri is not None
    other = settings.auth.redirect_uri.replace("/callback", "/other")

    async def probe_then_deny(url: str) -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(other) as resp:
                status = resp.status
            await Browser(session).run(url, consent="deny")
        return status

    outcome, status = await do_login(settings, probe_then_deny)
    assert status == 404
    assert not outcome.ok


async def test_login_gives_up_after_the_timeout(user_settings: Callable[..., Settings]) -> None:
    outcome = await login(user_settings(), open_browser=False, timeout=0.2, say=lambda _: None)
    assert not outcome.ok
    assert "no login came back" in outcome.message


# --- running as the user -------------------------------------------------------------------


@pytest.fixture
async def logged_in(user_settings: Callable[..., Settings]) -> Settings:
    settings = user_settings()
    async with aiohttp.ClientSession() as session:
        outcome, _ = await do_login(settings, Browser(session).run)
    assert outcome.ok
    return settings


async def test_refresh_rotation_is_persisted_before_use(
    logged_in: Settings, tenant_state: TenantState,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    store = TokenStore(logged_in.auth.token_store or Path())
    first = store.load()
    assert first is not None
    proxy = await aiohttp_client(create_app(logged_in))
    tenant_state.revoke_all()  # the access token dies: a 401, then a refresh
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    second = store.load()
    assert second is not None
    assert second.refresh_token != first.refresh_token  # rotated ...
    assert first.refresh_token not in tenant_state.refresh_tokens  # ... the old one is dead
    assert second.refresh_token in tenant_state.refresh_tokens
    assert tenant_state.token_forms[-1]["grant_type"] == "refresh_token"
    assert second.user == first.user


async def test_concurrent_refreshes_are_one(
    logged_in: Settings, tenant_state: TenantState,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    proxy = await aiohttp_client(create_app(logged_in))
    tenant_state.revoke_all()
    before = tenant_state.token_requests
    answers = await asyncio.gather(*(proxy.get("/fotoweb/me") for _ in range(50)))
    assert [r.status for r in answers] == [200] * 50
    for resp in answers:
        resp.release()
    assert tenant_state.token_requests == before + 1  # one refresh: no rotated token lost


async def test_revoked_refresh_token_means_login_required_then_a_new_login_heals(
    logged_in: Settings, tenant_state: TenantState,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    proxy = await aiohttp_client(create_app(logged_in))
    tenant_state.revoke_all()
    tenant_state.revoke_refresh_tokens()
    for _ in range(3):
        async with proxy.get("/fotoweb/me") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert "login required: run fwproxy login" in body["detail"]
    refreshes = [f for f in tenant_state.token_forms if f["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1  # not retried in a loop
    async with proxy.get("/_fwproxy/ready") as resp:
        assert resp.status == 503
        assert (await resp.json())["reason"] == "login_required"

    async with aiohttp.ClientSession() as session:  # a new login while the proxy runs
        outcome, _ = await do_login(logged_in, Browser(session).run)
    assert outcome.ok
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200  # picked up without a restart
        assert (await resp.json())["userName"] == DEMO_USER


async def test_a_restart_picks_the_session_up(
    logged_in: Settings, tenant_state: TenantState,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    for _ in range(2):  # two "runs" of the proxy, one after the other
        proxy = await aiohttp_client(create_app(logged_in))
        async with proxy.get("/fotoweb/me") as resp:
            assert (await resp.json())["userName"] == DEMO_USER
        await proxy.close()
    assert tenant_state.token_requests == 1  # just the login's code exchange


async def test_status_page_names_the_user(
    logged_in: Settings, aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    proxy = await aiohttp_client(create_app(logged_in))
    async with proxy.get("/_fwproxy/") as resp:
        page = await resp.text()
    assert "Alice Liddell (fwproxy login)" in page


async def test_store_lock_gives_up_instead_of_hanging(tmp_path: Path) -> None:
    import fcntl
    import os

    from fwproxy.exceptions import TokenEndpointUnreachable, TokenError, TokenStoreBusy

    store = TokenStore(tmp_path / "tokens.json")
    other = os.open(tmp_path / "tokens.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX)  # "another process" holds it
    try:
        with pytest.raises(TokenError, match="held by another process") as caught:
            async with store.locked(timeout=0.1):
                pass
    finally:
        os.close(other)
    # its own error: metrics and readiness must not blame the token endpoint for a lock
    assert isinstance(caught.value, TokenStoreBusy)
    assert not isinstance(caught.value, TokenEndpointUnreachable)
    assert caught.value.reason == "token_store_busy"
    async with store.locked(timeout=1):  # free again
        pass


async def test_a_failing_callback_is_reported_at_once(
    user_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    settings = user_settings(token_store=str(blocker / "tokens.json"))  # cannot be created
    async with aiohttp.ClientSession() as session:
        outcome, (status, _) = await do_login(settings, Browser(session).run)
    assert not outcome.ok
    assert "the login failed" in outcome.message  # not "no login came back" after 30 s
    assert status == 400
