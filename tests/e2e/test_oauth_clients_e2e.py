"""Unmodified generic OAuth clients run the whole FotoWeb workflow (tests/sim/workflow.py)
through a real `fwproxy run` with `local_tokens: {enabled: true}`, holding only local
credentials: an API key's name and key (made with `fwproxy key add`) as client id and
secret, or, without API keys, any id and secret. They fetch a local token from fwproxy at
the path of `auth.token_url`; fwproxy swaps it for its real token. The tenant's record
proves it never saw a local token, a local credential, or a client's token request: every
token request it saw is fwproxy's own, with the real client id.

Runs once fwproxy has the local token endpoint (`local_tokens` in the config SCHEMA).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.requests_client import OAuth2Session
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session as RequestsOAuth2Session

from fwproxy.sim import DEMO_CLIENT_ID, TENANT, TOKEN_PATH, TenantState
from tests.sim.workflow import Outcome, run_async, run_sync, saw_what_the_tenant_holds

from .conftest import StartProxy, run_fwproxy

# SCHEMA lives in fwproxy/values.py since issue 13 (fwproxy/config.py before)
_SCHEMA_HOME = "fwproxy.values" if importlib.util.find_spec("fwproxy.values") else "fwproxy.config"
SCHEMA = importlib.import_module(_SCHEMA_HOME).SCHEMA
pytestmark = pytest.mark.skipif("local_tokens" not in SCHEMA,
                                reason="needs the local token endpoint")

DUMMY_ID, DUMMY_SECRET = "any-tool", "any-secret-at-all"
CLIENTS = ["authlib-post", "authlib-basic", "authlib-async", "requests-oauthlib"]


@pytest.fixture(autouse=True)
def _insecure_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def sync_client(kind: str, client_id: str, secret: str, token_url: str
                ) -> Callable[[str, dict[str, str]], tuple[Outcome, str]]:
    """A function running the workflow with the sync client `kind`, in a thread; it
    returns what the workflow saw and the local access token the client held."""
    def work(base: str, preview_headers: dict[str, str]) -> tuple[Outcome, str]:
        session: Any
        if kind == "requests-oauthlib":  # client_secret_basic, its default
            session = RequestsOAuth2Session(client=BackendApplicationClient(client_id=client_id))
        else:
            method = "client_secret_basic" if kind == "authlib-basic" else "client_secret_post"
            session = OAuth2Session(client_id, secret, token_endpoint_auth_method=method)
        with session:
            session.trust_env = False
            if kind == "requests-oauthlib":
                session.fetch_token(token_url=token_url, client_id=client_id,
                                    client_secret=secret)
            else:
                session.fetch_token(token_url, grant_type="client_credentials")
            outcome = run_sync(session, base, kind, preview_headers)
            return outcome, str(session.token["access_token"])
    return work


async def run_client(kind: str, base: str, client_id: str, secret: str,
                     preview_headers: dict[str, str]) -> tuple[Outcome, str]:
    token_url = base + TOKEN_PATH  # the path of auth.token_url, on fwproxy
    if kind != "authlib-async":
        work = sync_client(kind, client_id, secret, token_url)
        return await asyncio.to_thread(work, base, preview_headers)
    async with AsyncOAuth2Client(client_id, secret, trust_env=False,
                                 token_endpoint_auth_method="client_secret_post") as client:
        await client.fetch_token(token_url, grant_type="client_credentials")
        outcome = await run_async(client, base, kind, preview_headers)
        return outcome, str(client.token["access_token"])


def check(outcome: Outcome, state: TenantState, who: str, secrets: list[str]) -> None:
    """The workflow saw what the tenant holds; the tenant saw only fwproxy's credentials
    (and the preview's own token), never a local one."""
    assert outcome.user == "demo-app"  # the tenant's application, through fwproxy's token
    first = saw_what_the_tenant_holds(outcome, state.catalog, who)

    # every token request the tenant saw is fwproxy's own: none is a client's
    assert state.token_forms
    assert {form.get("client_id") for form in state.token_forms} == {DEMO_CLIENT_ID}
    assert {form.get("grant_type") for form in state.token_forms} == {"client_credentials"}
    # no local token, key or dummy secret reached it, anywhere in any request it saw
    for seen in state.seen:
        text = seen.path_qs + repr(seen.headers)
        for secret in secrets:
            assert secret not in text, (seen.method, seen.path_qs)
    for headers in state.token_headers:
        for secret in secrets:
            assert secret not in repr(headers)
    # API requests carried fwproxy's real token; the preview, its own previewToken
    real = {f"Bearer {token}" for token in state.tokens}
    previews = [s for s in state.seen if s.path_qs.startswith("/fotoweb/previews/")]
    assert [s.headers.get("authorization") for s in previews] == [
        [f"Bearer {first.preview_token}"]]
    others = [s for s in state.seen if s not in previews]
    assert len(others) >= 14
    for seen in others:
        assert len(seen.headers.get("authorization", [])) == 1, seen.path_qs
        assert seen.headers["authorization"][0] in real, seen.path_qs


@pytest.mark.parametrize("kind", CLIENTS)
async def test_clients_with_an_api_key_as_local_credentials(
    start_proxy: StartProxy, tenant: TestServer, tmp_path: Path, kind: str
) -> None:
    keys = tmp_path / "fwproxy.keys"
    added = await run_fwproxy("key", "add", "workflow", "--file", str(keys))
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    proxy = await start_proxy({"access": {"api_keys_file": str(keys)},
                               "local_tokens": {"enabled": True}})
    outcome, local = await run_client(kind, proxy.base, "workflow", key,
                                      {"X-Fwproxy-Key": key})
    assert tenant.app is not None
    check(outcome, tenant.app[TENANT], kind, [local, key])


@pytest.mark.parametrize("kind", CLIENTS)
async def test_clients_without_api_keys_use_any_id_and_secret(
    start_proxy: StartProxy, tenant: TestServer, kind: str
) -> None:
    proxy = await start_proxy({"local_tokens": {"enabled": True}})
    outcome, local = await run_client(kind, proxy.base, DUMMY_ID, DUMMY_SECRET, {})
    assert tenant.app is not None
    check(outcome, tenant.app[TENANT], kind, [local, DUMMY_SECRET])
