"""Issue 16, the user session shared by a fleet: three `fwproxy run` in user context
(``grant_type: authorization_code``) sharing one real redis-server, in front of the
simulated tenant, whose access tokens live 3 s and whose refresh tokens rotate (a spent
one is refused with invalid_grant, as FotoWeb does). A minute of load on all three: no
invalid_grant, no "login required", and the refreshes never overlap."""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from fwproxy.config import parse_config
from fwproxy.fleet import shared_state
from fwproxy.fleetsession import FleetSessions, save_login
from fwproxy.sim import DEMO_USER, DEMO_WEB_CLIENT, DEMO_WEB_SECRET, TenantState
from fwproxy.store import StoredSession
from tests.conftest import merge, tenant_config
from tests.support.redis import RedisServer

from .conftest import FwproxyProcess, StartFleet

pytestmark = pytest.mark.e2e

MINUTE = 60.0  # of load: the "a minute"
CLIENTS_PER_INSTANCE = 4
USER = "Alice Liddell"


@pytest.fixture
def tenant_state() -> TenantState:
    # access tokens live 3 s; a refresh takes 50 ms, so two at once would overlap
    return TenantState(token_lifetime=3, refresh_delay=0.05)


async def load(proxy: FwproxyProcess, until: float, statuses: collections.Counter[str],
               users: set[str]) -> None:
    """One client: GET /fotoweb/me through `proxy` until `until` (monotonic)."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            async with session.get(proxy.url("/fotoweb/me")) as resp:
                statuses[str(resp.status)] += 1
                body = await resp.json()
                if resp.status == 200:
                    users.add(body["userName"])
                else:
                    statuses[body.get("detail", "")[:60]] += 1


async def test_three_instances_share_one_user_session_through_a_minute_of_rotation(
    start_fleet: StartFleet, tenant: TestServer, tenant_state: TenantState,
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    sections = {
        "auth": {"grant_type": "authorization_code", "client_id": DEMO_WEB_CLIENT,
                 "client_secret": DEMO_WEB_SECRET,
                 "redirect_uri": "http://127.0.0.1:8765/callback",
                 "token_store": str(tmp_path / "state" / "tokens.json")},
    }
    # what `fwproxy login` leaves in the fleet's record: a user's refresh token
    settings = parse_config(merge(tenant_config(tenant), {
        **sections, "state": {"backend": "redis", "redis_url": redis_server.url}}),
        environ={})
    first = "login-" + secrets.token_urlsafe(16)
    tenant_state.refresh_tokens[first] = (DEMO_WEB_CLIENT, DEMO_USER)
    await save_login(settings, StoredSession(refresh_token=first, user=USER))

    fleet = await start_fleet(3, sections)
    statuses: collections.Counter[str] = collections.Counter()
    users: set[str] = set()
    until = time.monotonic() + MINUTE
    await asyncio.gather(*(load(proxy, until, statuses, users)
                           for proxy in fleet for _ in range(CLIENTS_PER_INSTANCE)))

    assert set(statuses) == {"200"}, statuses  # no 503: no login required, no missing token
    assert users == {DEMO_USER}  # user context, all along
    refreshes = tenant_state.refreshes
    outcomes = collections.Counter(r.outcome for r in refreshes)
    assert outcomes == {"ok": len(refreshes)}, outcomes  # no invalid_grant
    assert len(refreshes) >= MINUTE / 3  # the refresh token rotated all along
    ordered = sorted(refreshes, key=lambda r: r.start)
    overlaps = [(a, b) for a, b in itertools.pairwise(ordered) if b.start < a.end]
    assert overlaps == []  # one refresh at a time, fleet-wide
    spent = [form["refresh_token"] for form in tenant_state.token_forms
             if form.get("grant_type") == "refresh_token"]
    assert len(spent) == len(set(spent))  # no refresh token presented twice
    assert first in spent
    assert not (tmp_path / "state" / "tokens.json").exists()  # the fleet's, not a file's
    for proxy in fleet:
        log = proxy.log_text()
        assert "login required" not in log
        assert "invalid_grant" not in log
    # the record holds the live refresh token, sealed: Redis shows no token
    state = shared_state(settings)
    assert state is not None
    try:
        stored = await FleetSessions(state).read()
        assert stored is not None
        assert stored.refresh_token in tenant_state.refresh_tokens
        assert stored.user == USER
        record = await state.call(lambda r: r.hgetall(state.key("session")))
        raw = b"".join(v for v in record.values() if isinstance(v, bytes))
        assert stored.refresh_token.encode() not in raw
        assert (stored.access_token or "-").encode() not in raw
    finally:
        await state.aclose()
