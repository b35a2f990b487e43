"""Unmodified generic OAuth clients run a whole FotoWeb workflow (tests/sim/workflow.py)
against the simulated tenant on a real loopback port, with the tenant's real client id and
secret: authlib's OAuth2Session (client_secret_post and client_secret_basic), authlib's
AsyncOAuth2Client, requests-oauthlib's OAuth2Session with a BackendApplicationClient. The
sync clients run in a thread so the tenant keeps answering in the test's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestServer
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.requests_client import OAuth2Session
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session as RequestsOAuth2Session

from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TENANT, TOKEN_PATH, TenantState
from fwproxy.sim import create_tenant_app as tenant_app

from .workflow import UPLOAD_NAME, Outcome, run_async, run_sync, saw_what_the_tenant_holds


@pytest.fixture
async def tenant(aiohttp_server: Callable[..., Awaitable[TestServer]],
                 monkeypatch: pytest.MonkeyPatch) -> TestServer:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    state = TenantState()
    state.catalog.rendition_polls = 2
    return await aiohttp_server(tenant_app(state), host="127.0.0.1")


def state_of(server: TestServer) -> TenantState:
    assert server.app is not None
    state: TenantState = server.app[TENANT]
    return state


def check(outcome: Outcome, state: TenantState, who: str) -> None:
    """The workflow saw what the tenant holds, and the tenant saw the right credentials."""
    catalog = state.catalog
    assert outcome.user == "demo-app"
    first = saw_what_the_tenant_holds(outcome, catalog, who)
    assert catalog.rendition_polls == 2
    assert len(outcome.hits) == 25
    assert outcome.asset["href"] == first.href
    stored = catalog.asset("5000", UPLOAD_NAME)
    assert stored is not None
    assert outcome.uploaded["href"] == stored.href
    assert outcome.patched["metadata"]["25"] == {"value": ["workflow", who]}
    # every token request came from the tenant's own application, and one sufficed
    assert [form["client_id"] for form in state.token_forms] == [DEMO_CLIENT_ID]
    issued = {f"Bearer {token}" for token in state.tokens}
    previews = [s for s in state.seen if s.path_qs.startswith("/fotoweb/previews/")]
    assert [s.headers["authorization"] for s in previews] == [
        [f"Bearer {first.preview_token}"]]  # its own token, not the OAuth one
    others = [s for s in state.seen if s not in previews]
    assert len(others) >= 14
    assert {auth for s in others for auth in s.headers["authorization"]} <= issued
    assert all(len(s.headers["authorization"]) == 1 for s in others)


def base_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
async def test_authlib_oauth2session(tenant: TestServer, method: str) -> None:
    base = base_of(tenant)

    def work() -> Outcome:
        with OAuth2Session(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET,
                           token_endpoint_auth_method=method) as session:
            session.trust_env = False
            session.fetch_token(base + TOKEN_PATH, grant_type="client_credentials")
            return run_sync(session, base, "authlib")

    outcome = await asyncio.to_thread(work)
    check(outcome, state_of(tenant), "authlib")
    header = state_of(tenant).token_headers[0].get("Authorization", "")
    assert header.startswith("Basic ") == (method == "client_secret_basic")


async def test_authlib_async_oauth2_client(tenant: TestServer) -> None:
    base = base_of(tenant)
    async with AsyncOAuth2Client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, trust_env=False,
                                 token_endpoint_auth_method="client_secret_post") as client:
        await client.fetch_token(base + TOKEN_PATH, grant_type="client_credentials")
        outcome = await run_async(client, base, "authlib-async")
    check(outcome, state_of(tenant), "authlib-async")


async def test_requests_oauthlib_backend_application_client(tenant: TestServer) -> None:
    base = base_of(tenant)

    def work() -> Outcome:
        with RequestsOAuth2Session(client=BackendApplicationClient(client_id=DEMO_CLIENT_ID)
                                   ) as session:
            session.trust_env = False
            session.fetch_token(token_url=base + TOKEN_PATH, client_id=DEMO_CLIENT_ID,
                                client_secret=DEMO_CLIENT_SECRET)
            return run_sync(session, base, "requests-oauthlib")

    outcome = await asyncio.to_thread(work)
    check(outcome, state_of(tenant), "requests-oauthlib")
    assert state_of(tenant).token_headers[0]["Authorization"].startswith("Basic ")
