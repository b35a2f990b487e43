"""The simulated tenant's authorize flow and code exchange (fwproxy/sim/oauth.py, pages.py)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from fwproxy.pkce import challenge, make_verifier
from fwproxy.sim import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_REDIRECT,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    TOKEN_PATH,
    TenantState,
    create_tenant_app,
)
from fwproxy.sim.oauth import (
    AUTHORIZE_PATH,
    CONSENT_PATH,
    LOGIN_PATH,
    basic_credentials,
    verifier_matches,
)

Client = TestClient[Any, Any]
VERIFIER = make_verifier(bytes(range(48)))


@pytest.fixture
async def sim(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(create_tenant_app())


def form_of(page: str) -> str:
    match = re.search(r"<form.*</form>", page, re.DOTALL)
    assert match is not None, page
    return match.group(0)


async def sign_in(sim: Client, password: str = DEMO_PASSWORD) -> tuple[str, str, int, str]:
    """The login page, then the answer to posting it: (login form, pending id, status, page)."""
    query = {"response_type": "code", "client_id": DEMO_WEB_CLIENT,
             "redirect_uri": DEMO_REDIRECT, "state": "st-1",
             "code_challenge": challenge(VERIFIER), "code_challenge_method": "S256"}
    async with sim.get(AUTHORIZE_PATH, params=query) as resp:
        assert resp.status == 200
        first = await resp.text()
    pending = re.search(r'name="pending" value="([^"]+)"', first)
    assert pending is not None
    async with sim.post(LOGIN_PATH, data={"pending": pending.group(1), "username": DEMO_USER,
                                          "password": password}) as resp:
        return form_of(first), pending.group(1), resp.status, await resp.text()


async def test_a_wrong_password_shows_the_same_login_form_under_an_error(sim: Client) -> None:
    form, _, status, page = await sign_in(sim, password="not-" + DEMO_PASSWORD)
    assert status == 401
    assert '<p id="error">Wrong user name or password.</p>' in page
    assert form_of(page) == form  # one login form template
    for needed in ('id="username"', 'id="password"', 'type="password"', 'id="signin"',
                   f'action="{LOGIN_PATH}"'):
        assert needed in form


@pytest.mark.parametrize(("presented", "status", "error"), [
    (VERIFIER, 200, None),
    (make_verifier(bytes(48)), 400, "invalid_grant"),
    ("", 400, "invalid_grant"),
    ("v\u00e9rifier-" + "x" * 40, 400, "invalid_grant"),  # not ASCII: no match, no 500
])
async def test_the_code_exchange_checks_the_pkce_verifier(
    sim: Client, presented: str, status: int, error: str | None
) -> None:
    _, pending, login_status, _ = await sign_in(sim)
    assert login_status == 200
    async with sim.post(CONSENT_PATH, data={"pending": pending, "decision": "allow"},
                        allow_redirects=False) as resp:
        assert resp.status == 302
        answer = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert answer["state"] == ["st-1"]
    async with sim.post(TOKEN_PATH, data={
        "grant_type": "authorization_code", "code": answer["code"][0],
        "redirect_uri": DEMO_REDIRECT, "client_id": DEMO_WEB_CLIENT,
        "client_secret": DEMO_WEB_SECRET, "code_verifier": presented,
    }) as resp:
        assert resp.status == status
        body = await resp.json()
    assert body.get("error") == error
    assert ("access_token" in body) == (error is None)


@pytest.mark.parametrize(("verifier", "code_challenge", "matches"), [
    # RFC 7636 Appendix B
    ("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
     "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", True),
    ("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
     "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN", False),
    ("", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", False),
    ("d\u00e9", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", False),
    ("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "\u00e9", False),
])
def test_verifier_matches_is_s256_and_total(verifier: str, code_challenge: str,
                                             matches: bool) -> None:
    assert verifier_matches(verifier, code_challenge) is matches


@pytest.mark.parametrize(("header", "parsed"), [
    (None, None),
    ("Bearer x", None),
    ("Basic " + base64.b64encode(b"app:s3cret").decode(), ("app", "s3cret")),
    ("basic " + base64.b64encode(b"a%3Ab:s%2Bc+d").decode(), ("a:b", "s+c d")),  # 2.3.1
    ("Basic " + base64.b64encode(b"no-colon").decode(), ("", "")),
    ("Basic !!!", ("", "")),
    ("Basic " + base64.b64encode(b"\xff:x").decode(), ("", "")),
])
def test_basic_credentials(header: str | None, parsed: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == parsed


@pytest.mark.parametrize(("secret_in", "status"), [
    ("basic", 200), ("post", 200), ("both", 400), ("wrong-basic", 401), ("neither", 401),
])
async def test_client_credentials_by_post_or_basic(sim: Client, secret_in: str,
                                                   status: int) -> None:
    form = {"grant_type": "client_credentials"}
    headers = {}
    secret = "nope" if secret_in == "wrong-basic" else DEMO_CLIENT_SECRET
    if secret_in in ("basic", "both", "wrong-basic"):
        pair = f"{DEMO_CLIENT_ID}:{secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    if secret_in in ("post", "both"):
        form |= {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}
    async with sim.post(TOKEN_PATH, data=form, headers=headers) as resp:
        assert resp.status == status
        body = await resp.json()
    assert ("access_token" in body) == (status == 200)


async def test_refresh_tokens_rotate_and_a_spent_one_is_refused_and_recorded(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """As FotoWeb does: a refresh returns a new refresh token and kills the old one; the
    old one is then refused with invalid_grant. Each refresh is recorded (start, end,
    outcome), and may be slowed, so tests can see two refreshes overlap."""
    state = TenantState(refresh_delay=0.05)
    state.refresh_tokens["rt-0"] = (DEMO_WEB_CLIENT, DEMO_USER)
    sim = await aiohttp_client(create_tenant_app(state))

    async def refresh(token: str) -> tuple[int, dict[str, Any]]:
        async with sim.post(TOKEN_PATH, data={
                "grant_type": "refresh_token", "refresh_token": token,
                "client_id": DEMO_WEB_CLIENT, "client_secret": DEMO_WEB_SECRET}) as resp:
            return resp.status, await resp.json()

    status, first = await refresh("rt-0")
    assert status == 200
    assert first["refresh_token"] != "rt-0"
    status, spent = await refresh("rt-0")
    assert (status, spent["error"]) == (400, "invalid_grant")
    status, second = await refresh(first["refresh_token"])
    assert status == 200
    assert [r.outcome for r in state.refreshes] == ["ok", "invalid_grant", "ok"]
    assert all(r.end - r.start >= 0.05 for r in state.refreshes)
    # two at once with the same token: they overlap in the record, and one is refused
    both = await asyncio.gather(refresh(second["refresh_token"]),
                                refresh(second["refresh_token"]))
    assert sorted(code for code, _ in both) == [200, 400]
    last, before = state.refreshes[-1], state.refreshes[-2]
    assert last.start < before.end
