"""Renewal on a timer (Fotoware's approach 3), in-process against the simulated tenant with
short-lived tokens: an idle proxy keeps its token fresh, `auth.idle_renewal` stops that."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from fwproxy.app import TOKENS, create_app, reconfigure
from fwproxy.config import Settings, parse_config
from fwproxy.exceptions import ConfigError
from fwproxy.sim import DEMO_USER, TenantState
from fwproxy.store import TokenStore
from tests.conftest import ProxyFactory, wait_until
from tests.test_login import Client, logged_in, user_settings  # noqa: F401 (fixtures)

LIFETIME = 4  # seconds; the margin shrinks to 1 s, so a renewal is due 2 s after issue


@pytest.fixture
def tenant_state() -> TenantState:
    """Every token this tenant issues, the login's too, is short-lived."""
    return TenantState(token_lifetime=LIFETIME)


def all_expired(state: TenantState) -> bool:
    return bool(state.tokens) and max(state.tokens.values()) <= time.monotonic()


async def test_an_idle_proxy_renews_before_expiry(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy()
    client.app[TOKENS].start()  # as `serve` does once listening
    # not a single request: the timer obtains a token and renews it ahead of its expiry
    # (the tenant counts a token request before the manager has taken the answer: wait for both)
    await wait_until(lambda: tenant_state.token_requests >= 3 and client.app[TOKENS].renewals >= 2,
                     "two renewals while idle")
    first, second, third = tenant_state.token_times[:3]
    assert second < first + LIFETIME
    assert third < second + LIFETIME
    assert client.app[TOKENS].renewals >= 2
    # the first request after the quiet spell takes the fresh token: no token request
    issued = set(tenant_state.tokens)
    resp = await client.get("/fotoweb/me")
    assert resp.status == 200
    assert tenant_state.seen[-1].headers["authorization"][0].removeprefix("Bearer ") in issued


async def test_an_idle_proxy_renews_a_users_token_with_the_refresh_token(
    tenant_state: TenantState, logged_in: Settings,  # noqa: F811 (the fixture)
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """User context (Fotoware's "Web Application or API authorization" page): the timer
    refreshes too, and each rotated refresh token is stored before the next refresh uses
    it."""
    refreshes = sum(form["grant_type"] == "refresh_token" for form in tenant_state.token_forms)
    assert refreshes == 0
    proxy = await aiohttp_client(create_app(logged_in))
    proxy.app[TOKENS].start()

    def refreshed() -> int:
        return sum(form["grant_type"] == "refresh_token" for form in tenant_state.token_forms)

    await wait_until(lambda: refreshed() >= 2, "two refreshes while idle")
    store = TokenStore(logged_in.auth.token_store or Path())
    await wait_until(lambda: (saved := store.load()) is not None
                     and saved.refresh_token in tenant_state.refresh_tokens,
                     "the live refresh token in the store")
    async with proxy.get("/fotoweb/me") as resp:
        assert (await resp.json())["userName"] == DEMO_USER


async def test_idle_renewal_0_renews_only_when_requests_come(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    client = await make_proxy(auth={"idle_renewal": 0})
    client.app[TOKENS].start()
    assert (await client.get("/fotoweb/me")).status == 200
    assert tenant_state.token_requests == 1
    await wait_until(lambda: all_expired(tenant_state), "the token to expire")
    assert tenant_state.token_requests == 1  # nobody used it: nothing renewed
    assert (await client.get("/fotoweb/me")).status == 200  # fetched for this request
    assert tenant_state.token_requests == 2


async def test_idle_renewal_renews_while_used_and_stops_after_that_long_idle(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    tenant_state.token_lifetime = 2  # a renewal due every second
    client = await make_proxy(auth={"idle_renewal": "2500ms"})
    client.app[TOKENS].start()
    await wait_until(lambda: tenant_state.token_requests >= 1, "the first token")
    # in use, back to back, for longer than idle_renewal
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        assert (await client.get("/fotoweb/me")).status == 200
    last_use = time.monotonic()
    assert tenant_state.token_requests >= 3  # renewed while used
    # idle: renewals go on for up to idle_renewal, then stop, and the token runs out
    await wait_until(lambda: all_expired(tenant_state), "renewals to stop and the token to "
                     "expire", timeout=30)
    assert tenant_state.token_times[-1] < last_use + 2.5 + 1.0  # decided within idle_renewal
    count = tenant_state.token_requests
    assert (await client.get("/fotoweb/me")).status == 200  # a request fetches again
    assert tenant_state.token_requests == count + 1


async def test_a_failed_timed_renewal_backs_off_and_recovers(
    make_proxy: ProxyFactory, tenant_state: TenantState
) -> None:
    tenant_state.token_endpoint_fault = (503, "text/html", b"<h1>down</h1>")
    client = await make_proxy()
    client.app[TOKENS].start()  # as `serve` does once listening
    await wait_until(lambda: tenant_state.token_requests >= 2, "a retry after the backoff")
    tokens = client.app[TOKENS]
    assert tokens.failures_by_reason
    tenant_state.token_endpoint_fault = None
    await wait_until(lambda: tokens.current() is not None, "recovery without a request",
                     timeout=30)
    assert (await client.get("/fotoweb/me")).status == 200


@pytest.mark.parametrize(("value", "seconds"), [
    ("always", None), ("Always", None), (0, 0.0), ("0", 0.0), ("8h", 28800.0), (90, 90.0),
])
def test_idle_renewal_values(value: object, seconds: float | None) -> None:
    raw = {"tenant": {"url": "https://x"}, "auth": {"client_id": "a", "client_secret": "b",
                                                    "idle_renewal": value}}
    assert parse_config(raw, environ={}).auth.idle_renewal == seconds
    bare = {"tenant": {"url": "https://x"}, "auth": {"client_id": "a", "client_secret": "b"}}
    assert parse_config(bare, environ={}).auth.idle_renewal is None  # default: always


@pytest.mark.parametrize("value", ["never", "-1", True, "5 parsecs"])
def test_idle_renewal_refuses_other_values_naming_the_key(value: object) -> None:
    raw = {"tenant": {"url": "https://x"}, "auth": {"client_id": "a", "client_secret": "b",
                                                    "idle_renewal": value}}
    with pytest.raises(ConfigError, match=r"auth\.idle_renewal.*always or a duration"):
        parse_config(raw, environ={})


async def test_a_reload_changes_idle_renewal_at_once(
    make_proxy: ProxyFactory, make_settings: Callable[..., Settings],
    tenant_state: TenantState,
) -> None:
    client = await make_proxy(auth={"idle_renewal": 0})
    client.app[TOKENS].start()
    assert (await client.get("/fotoweb/me")).status == 200
    assert tenant_state.token_requests == 1
    reconfigure(client.app, make_settings())  # SIGHUP with idle_renewal back to always
    await wait_until(lambda: tenant_state.token_requests >= 3, "renewals while idle")
