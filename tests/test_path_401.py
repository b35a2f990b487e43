"""A 401 on one path is that path's (red team): a client that alternates a path the
tenant always refuses with a good request must not make fwproxy renew the token at its
pace. A token the tenant took before is verified (``GET /fotoweb/me`` with it) before it
is dropped; a real revocation still renews within the one request that meets it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from fwproxy.app import TOKENS
from fwproxy.sim import TenantState
from tests.conftest import ProxyFactory


async def status(request: web.Request) -> web.Response:
    """``/status?s=N`` answers N (behind the simulator's bearer check)."""
    code = int(request.query.get("s", "200"))
    return web.json_response({"status": code}, status=code)


def with_status(app: web.Application) -> None:
    app.router.add_get("/status", status)


def seen(state: TenantState, prefix: str) -> list[str]:
    return [r.path_qs for r in state.seen if r.path_qs.startswith(prefix)]


async def test_alternating_a_refused_path_with_good_requests_renews_nothing(
    make_proxy: ProxyFactory, tenant_state: TenantState,
) -> None:
    client = await make_proxy(routes=with_status)
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert tenant_state.token_requests == 1
    for _ in range(5):  # the red team's pattern: one token request a second before
        async with client.get("/status?s=401") as resp:
            assert resp.status == 401  # the tenant's own answer, passed back
        async with client.get("/fotoweb/me") as resp:
            assert resp.status == 200
    assert tenant_state.token_requests == 1
    assert client.app is not None
    assert client.app[TOKENS].verifications == 5
    # each 401: the request and one replay with the same token; never a query probe
    assert seen(tenant_state, "/status") == ["/status?s=401"] * 10
    assert all("access_token" not in path for path in seen(tenant_state, "/"))


async def test_a_revoked_token_is_renewed_within_the_request_that_meets_it(
    make_proxy: ProxyFactory, tenant_state: TenantState,
) -> None:
    client = await make_proxy(routes=with_status)
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    tenant_state.revoke_all()  # every path now 401s to it
    async with client.get("/status?s=200") as resp:
        assert resp.status == 200  # verified refused, dropped, renewed, replayed
    assert tenant_state.token_requests == 2
    async with client.get("/status?s=401") as resp:  # the new token, taken before: kept
        assert resp.status == 401
    assert tenant_state.token_requests == 2


async def test_a_storm_of_401s_is_one_verification_and_no_renewal(
    make_proxy: ProxyFactory, tenant_state: TenantState,
) -> None:
    client = await make_proxy(routes=with_status)
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    before = len(seen(tenant_state, "/fotoweb/me"))

    async def refused() -> int:
        async with client.get("/status?s=401") as resp:
            return resp.status

    assert await asyncio.gather(*(refused() for _ in range(30))) == [401] * 30
    assert tenant_state.token_requests == 1
    assert client.app is not None
    verifications = client.app[TOKENS].verifications
    assert verifications == len(seen(tenant_state, "/fotoweb/me")) - before
    assert 1 <= verifications < 30  # 30 401s at once share the verifications in flight
