"""The user session shared by a fleet (fleetsession.py): several instances (grants, or
in-process proxies) on one real redis-server in front of the simulated tenant, which
rotates refresh tokens and refuses a spent one with invalid_grant, as FotoWeb does."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fwproxy.app import SHARED_SESSION, SHARED_STATE, TOKENS, create_app
from fwproxy.cli import EXIT_OK, main
from fwproxy.config import Settings, parse_config
from fwproxy.exceptions import (
    LoginRequired,
    NoTokenAvailable,
    SharedStateUnavailable,
    TokenEndpointUnreachable,
)
from fwproxy.fleet import SharedState, shared_state
from fwproxy.fleetsession import LOGGED_OUT, FleetSessions, logout, save_login
from fwproxy.oauth import RefreshTokenGrant
from fwproxy.sim import DEMO_USER, DEMO_WEB_CLIENT, DEMO_WEB_SECRET, TenantState
from fwproxy.sim.state import Refresh
from fwproxy.store import StoredSession
from tests.conftest import merge, tenant_config, wait_until
from tests.e2e.conftest import write_config
from tests.support.redis import RedisServer

Client = TestClient[Any, Any]
USER = "Alice Liddell"


def overlapping(refreshes: list[Refresh]) -> list[tuple[Refresh, Refresh]]:
    """Pairs of refreshes at the tenant that ran at the same time."""
    ordered = sorted(refreshes, key=lambda r: r.start)
    return [(a, b) for a, b in itertools.pairwise(ordered) if b.start < a.end]


@pytest.fixture
def fleet_settings(tenant: TestServer, redis_server: RedisServer, tmp_path: Path,
                   unused_tcp_port: int, tenant_state: TenantState) -> Settings:
    """User context (the Web App client) with state.backend: redis."""
    redirect = f"http://127.0.0.1:{unused_tcp_port}/callback"
    for app in tenant_state.apps.values():
        app.redirect_uris = [redirect]
    return parse_config(merge(tenant_config(tenant), {
        "auth": {"grant_type": "authorization_code", "client_id": DEMO_WEB_CLIENT,
                 "client_secret": DEMO_WEB_SECRET, "redirect_uri": redirect,
                 "token_store": str(tmp_path / "state" / "tokens.json")},
        "state": {"backend": "redis", "redis_url": redis_server.url, "lease_time": "2s"},
    }), environ={})


async def seed(settings: Settings, tenant_state: TenantState) -> str:
    """A logged-in user's session in the fleet's record (what `fwproxy login` leaves,
    without an access token yet); its refresh token."""
    refresh_token = "seed-" + secrets.token_urlsafe(16)
    tenant_state.refresh_tokens[refresh_token] = (DEMO_WEB_CLIENT, DEMO_USER)
    await save_login(settings, StoredSession(refresh_token=refresh_token, user=USER))
    return refresh_token


class Fleet:
    """`count` instances' grants, each with its own Redis connection."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.states: list[SharedState] = []
        for _ in range(count):
            state = shared_state(settings)
            assert state is not None
            self.states.append(state)
        self.sessions = [FleetSessions(state) for state in self.states]
        self.http = aiohttp.ClientSession()
        self.grants = [RefreshTokenGrant(self.http, settings.auth, sessions)
                       for sessions in self.sessions]

    async def record(self) -> StoredSession | None:
        probe = FleetSessions(self.states[0])
        return await probe.read()

    async def aclose(self) -> None:
        await self.http.close()
        for state in self.states:
            await state.aclose()


@pytest.fixture
async def fleet(fleet_settings: Settings) -> AsyncIterator[Callable[[int], Fleet]]:
    made: list[Fleet] = []

    def make(count: int) -> Fleet:
        made.append(Fleet(fleet_settings, count))
        return made[-1]

    yield make
    for one in made:
        await one.aclose()


# --- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cause", "error"), [
    (SharedStateUnavailable("unreachable", "Redis is unreachable"), "shared_state_unavailable"),
    (LoginRequired("no stored session"), "no_token"),
    (TokenEndpointUnreachable("no answer"), "no_token"),
])
def test_the_503_error_code_follows_its_cause(cause: Any, error: str) -> None:
    refused = NoTokenAvailable(cause, 3)
    assert (refused.status, refused.error, refused.reason) == (503, error, cause.reason)


# --- several grants on one Redis -------------------------------------------------------------


async def test_a_fleet_refreshes_once_per_rotation_and_never_spends_a_token_twice(
    fleet_settings: Settings, tenant_state: TenantState, fleet: Callable[[int], Fleet],
) -> None:
    tenant_state.refresh_delay = 0.05  # a refresh takes a while: overlaps would show
    first = await seed(fleet_settings, tenant_state)
    three = fleet(3)
    handed: list[str] = []
    for _ in range(4):  # each round: every instance needs a new token at once
        tokens = await asyncio.gather(*(grant.fetch() for grant in three.grants))
        assert len({token.value for token in tokens}) == 1  # one token for the fleet
        handed.append(tokens[0].value)
    assert len(set(handed)) == 4
    assert [r.outcome for r in tenant_state.refreshes] == ["ok"] * 4  # one a round
    assert overlapping(tenant_state.refreshes) == []
    stored = await three.record()
    assert stored is not None
    assert stored.access_token == handed[-1]
    assert stored.user == USER
    assert stored.refresh_token in tenant_state.refresh_tokens  # the live one is stored
    assert first not in tenant_state.refresh_tokens


async def test_an_instance_uses_the_token_another_refreshed_without_asking(
    fleet_settings: Settings, tenant_state: TenantState, fleet: Callable[[int], Fleet],
) -> None:
    await seed(fleet_settings, tenant_state)
    two = fleet(2)
    a, b = two.grants
    token = await a.fetch()
    assert (await b.fetch()).value == token.value
    assert len(tenant_state.refreshes) == 1
    assert two.sessions[1].acting_as() == f"{USER} (fwproxy login, shared by the fleet)"


async def test_a_cancelled_refresh_still_stores_the_rotation(
    fleet_settings: Settings, tenant_state: TenantState, fleet: Callable[[int], Fleet],
) -> None:
    first = await seed(fleet_settings, tenant_state)
    one = fleet(1)
    tenant_state.refresh_delay = 0.3
    task = asyncio.ensure_future(one.grants[0].fetch())
    await wait_until(lambda: tenant_state.token_requests == 1, "the refresh at the tenant")
    task.cancel()
    await wait_until(lambda: len(tenant_state.refreshes) == 1, "the refresh to end")

    async def rotated() -> bool:
        stored = await one.record()
        return stored is not None and stored.refresh_token != first

    await wait_until(rotated, "the rotated session in Redis")
    stored = await one.record()
    assert stored is not None
    assert stored.refresh_token in tenant_state.refresh_tokens


# --- Redis away ------------------------------------------------------------------------------


async def test_without_redis_the_token_is_used_until_it_expires_then_503_and_no_refresh(
    fleet_settings: Settings, tenant_state: TenantState, redis_server: RedisServer,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """Point 6, user context: the current access token goes on being used; no refresh
    without the fleet lock; once it expires, 503 shared_state_unavailable with Retry-After;
    Redis back (empty): the session is written back and the fleet goes on, no login."""
    tenant_state.token_lifetime = 3
    await seed(fleet_settings, tenant_state)
    proxy = await aiohttp_client(create_app(fleet_settings))
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
        assert (await resp.json())["userName"] == DEMO_USER
    assert proxy.app is not None
    token = proxy.app[TOKENS].current()
    assert token is not None
    refreshes = len(tenant_state.refreshes)
    redis_server.stop()
    answers: list[tuple[int, float]] = []
    refusal: dict[str, Any] = {}

    async def refused() -> bool:
        async with proxy.get("/fotoweb/me") as resp:
            answers.append((resp.status, time.monotonic()))
            if resp.status == 200:
                return False
            refusal.update(await resp.json(), retry_after=resp.headers.get("Retry-After"))
            return True

    await wait_until(refused, "a refusal", every=0.1)
    status, at = answers[-1]
    assert status == 503
    assert refusal["error"] == "shared_state_unavailable"
    assert int(refusal["retry_after"]) >= 1
    assert all(code == 200 for code, _ in answers[:-1])
    assert at >= token.stale_at  # not before the token expired
    assert len(answers) > 1  # it was used meanwhile
    assert len(tenant_state.refreshes) == refreshes  # never without the lock
    state = proxy.app[SHARED_STATE]
    assert state.up is False

    redis_server.start()  # back, empty
    await wait_until(lambda: state.recoveries == 1, "Redis to be seen back")

    async def served() -> bool:
        async with proxy.get("/fotoweb/me") as resp:
            return resp.status == 200

    await wait_until(served, "the proxy to serve again", every=0.1)
    assert [r.outcome for r in tenant_state.refreshes] == ["ok"] * len(tenant_state.refreshes)
    assert len(tenant_state.refreshes) == refreshes + 1  # with the written-back token


async def test_redis_back_empty_gets_the_newest_session_back(
    fleet_settings: Settings, tenant_state: TenantState, redis_server: RedisServer,
    fleet: Callable[[int], Fleet],
) -> None:
    """A rotated refresh token is never replaced by an older one: whichever instance
    writes back first, the newest version wins."""
    await seed(fleet_settings, tenant_state)
    two = fleet(2)
    a, b = two.grants
    await a.fetch()  # refresh 1: a holds that session
    await b.fetch()  # b uses a's token (it handed out none)
    await b.fetch()  # b's token is the record's: refresh 2, a's refresh token is spent
    newest = await two.record()
    assert newest is not None
    assert [r.outcome for r in tenant_state.refreshes] == ["ok", "ok"]

    redis_server.stop()
    for sessions in two.sessions:  # both see Redis gone
        with pytest.raises(SharedStateUnavailable):
            await sessions.read()
    redis_server.start()  # back, empty: both write back what they hold

    async def newest_back() -> bool:
        with contextlib.suppress(SharedStateUnavailable):
            back = await two.record()
            return back is not None and back.refresh_token == newest.refresh_token
        return False

    await wait_until(newest_back, "the newest session written back")
    await two.sessions[0].write_back()  # a's older session, last: refused
    back = await two.record()
    assert back is not None
    assert back.refresh_token == newest.refresh_token
    # and the fleet goes on from it: no invalid_grant, no login
    assert (await a.fetch()).value == newest.access_token  # b's token, no refresh
    await a.fetch()  # now a refresh, with the written-back refresh token
    assert [r.outcome for r in tenant_state.refreshes] == ["ok", "ok", "ok"]


async def test_a_rotation_made_as_redis_goes_away_is_written_back(
    fleet_settings: Settings, tenant_state: TenantState, redis_server: RedisServer,
    fleet: Callable[[int], Fleet],
) -> None:
    first = await seed(fleet_settings, tenant_state)
    one = fleet(1)
    tenant_state.refresh_delay = 0.5
    task = asyncio.ensure_future(one.grants[0].fetch())
    await wait_until(lambda: tenant_state.token_requests == 1, "the refresh at the tenant")
    redis_server.stop()  # while the tenant rotates the refresh token
    token = await task  # used: the rotation lives in this instance until Redis is back
    assert token.value in tenant_state.tokens
    redis_server.start()

    async def written_back() -> bool:
        try:
            stored = await one.record()
        except SharedStateUnavailable:
            return False
        return stored is not None and stored.refresh_token != first

    await wait_until(written_back, "the rotated session written back")
    stored = await one.record()
    assert stored is not None
    assert stored.refresh_token in tenant_state.refresh_tokens
    assert stored.access_token == token.value


# --- fwproxy login / logout on the shared session ------------------------------------------


def cli(settings: Settings, tmp_path: Path, said: list[str]) -> Callable[..., int]:
    """`fwproxy COMMAND --config` for `settings`' fleet, to run in a thread (its own event
    loop: the tenant answers from the test's); stdout and stderr go to `said`."""
    config = write_config(tmp_path / "fwproxy.yaml", {
        "tenant": {"url": str(settings.tenant.url), "allow_insecure_http": True},
        "auth": {"grant_type": "authorization_code", "client_id": DEMO_WEB_CLIENT,
                 "redirect_uri": settings.auth.redirect_uri,
                 "token_store": str(settings.auth.token_store)},
        "state": {"backend": "redis", "redis_url": settings.state.redis_url},
    })
    environ = {"FWPROXY_CLIENT_SECRET": DEMO_WEB_SECRET}

    def run(*argv: str) -> int:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main([*argv, "--config", str(config)], environ=environ)
        said.append(out.getvalue())
        return code

    return run


async def test_login_and_logout_act_on_the_fleets_session(
    fleet_settings: Settings, tenant_state: TenantState, tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[Client]], fleet: Callable[[int], Fleet],
) -> None:
    from tests.test_login import Browser, do_login

    async with aiohttp.ClientSession() as session:
        outcome, _ = await do_login(fleet_settings, Browser(session).run)
    assert outcome.ok, outcome.message
    assert "shared by the fleet" in outcome.message
    assert fleet_settings.auth.token_store is not None
    assert not fleet_settings.auth.token_store.exists()  # not in the file
    probe = fleet(1)
    stored = await probe.record()
    assert stored is not None
    assert stored.user == USER

    proxy = await aiohttp_client(create_app(fleet_settings))
    async with proxy.get("/fotoweb/me") as resp:
        assert (await resp.json())["userName"] == DEMO_USER
    assert tenant_state.token_requests == 1  # the login's exchange: its token was used
    async with proxy.get("/_fwproxy/") as resp:
        assert f"{USER} (fwproxy login, shared by the fleet)" in await resp.text()

    said: list[str] = []
    run = cli(fleet_settings, tmp_path, said)

    assert proxy.app is not None
    current = proxy.app[TOKENS].current()
    assert current is not None
    assert await asyncio.to_thread(run, "token") == EXIT_OK  # the fleet's token
    assert said[-1].strip() == current.value
    assert await asyncio.to_thread(run, "logout") == EXIT_OK
    assert said[-1] == "logged out\n"
    assert await probe.record() is None
    assert await asyncio.to_thread(run, "logout") == EXIT_OK
    assert said[-1] == "there was no stored session\n"
    assert not fleet_settings.auth.token_store.exists()
    # the running instance, which holds the session, cannot bring it back by writing back
    await proxy.app[SHARED_SESSION].write_back()
    raw = await probe.sessions[0].lock.read()
    assert raw is not None
    assert raw.value == LOGGED_OUT


async def test_a_new_login_is_picked_up_by_a_refused_instance(
    fleet_settings: Settings, tenant_state: TenantState,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    await seed(fleet_settings, tenant_state)
    tenant_state.revoke_refresh_tokens()  # the session dies at the tenant
    proxy = await aiohttp_client(create_app(fleet_settings))
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 503
        assert "login required" in (await resp.json())["detail"]
    await seed(fleet_settings, tenant_state)  # `fwproxy login` somewhere in the fleet

    async def served() -> bool:
        async with proxy.get("/fotoweb/me") as resp:
            return resp.status == 200

    await wait_until(served, "the new login to be picked up", timeout=10, every=0.2)
    assert [r.outcome for r in tenant_state.refreshes] == ["invalid_grant", "ok"]


async def test_logout_with_redis_away_fails_plainly(
    fleet_settings: Settings, redis_server: RedisServer, tmp_path: Path,
) -> None:
    redis_server.stop()
    with pytest.raises(SharedStateUnavailable):
        await logout(fleet_settings)
    said: list[str] = []
    assert await asyncio.to_thread(cli(fleet_settings, tmp_path, said), "logout") == 1
    assert said[-1] == ("fwproxy: shared state (Redis) unavailable: Redis is unreachable\n")


async def test_login_with_redis_away_stores_nothing_and_says_why(
    fleet_settings: Settings, redis_server: RedisServer,
) -> None:
    from tests.test_login import Browser, do_login

    redis_server.stop()
    async with aiohttp.ClientSession() as session:
        outcome, _ = await do_login(fleet_settings, Browser(session).run)
    assert not outcome.ok
    assert outcome.message.startswith("the session could not be stored: shared state (Redis)")
    assert fleet_settings.auth.token_store is not None
    assert not fleet_settings.auth.token_store.exists()


async def test_a_refresh_that_lost_the_lock_keeps_its_rotation_unless_something_newer_is_stored(
    fleet_settings: Settings, tenant_state: TenantState, fleet: Callable[[int], Fleet],
) -> None:
    """The holder paused past its lease: its rotation is the only live refresh token (the
    tenant refuses the spent one), so it is stored if nothing newer is; a newer session (a
    login meanwhile) wins and is the one used."""
    await seed(fleet_settings, tenant_state)
    two = fleet(2)
    ours = StoredSession(refresh_token="rotated-1", access_token="a-1",
                         expires_at=time.time() + 60, user=USER, lifetime=60)
    async with two.sessions[0].hold() as held:
        await two.states[1].call(lambda r: r.delete(two.sessions[0].lock.lock_key))
        assert await held.save(ours) is ours  # the lock was lost, nothing newer: kept
    stored = await two.record()
    assert stored is not None
    assert stored.refresh_token == "rotated-1"

    login = StoredSession(refresh_token="login-2", access_token="a-2",
                          expires_at=time.time() + 60, user=USER, lifetime=60)
    async with two.sessions[0].hold() as held:
        await two.states[1].call(lambda r: r.delete(two.sessions[0].lock.lock_key))
        await save_login(fleet_settings, login)  # a login takes the lock: a newer version
        kept = await held.save(StoredSession(refresh_token="rotated-3"))
    assert kept is not None
    assert kept.refresh_token == "login-2"  # the newer session, not ours
    stored = await two.record()
    assert stored is not None
    assert stored.refresh_token == "login-2"


async def test_redis_restarted_empty_between_two_probes_loses_no_session(
    fleet_settings: Settings, tenant_state: TenantState, redis_server: RedisServer,
    fleet: Callable[[int], Fleet],
) -> None:
    """Redis restarted without persistence faster than the watcher's PING (redis-py's one
    quiet retry reconnects): nobody saw it DOWN, so no recovery write-back ran. The next
    refresh still finds the session: the instance puts back what it holds before taking
    the lock (newest wins), instead of the fleet losing its user ("no stored session")."""
    await seed(fleet_settings, tenant_state)
    one = fleet(1)  # no watcher (never started): the restart goes unseen
    grant = one.grants[0]
    await grant.fetch()  # refresh 1: this instance holds the rotated session
    redis_server.stop()
    redis_server.start()  # back, empty, between two PINGs
    assert one.states[0].up is True
    assert one.states[0].recoveries == 0
    await grant.fetch()  # refresh 2, with the rotated refresh token: no login required
    assert [r.outcome for r in tenant_state.refreshes] == ["ok", "ok"]
    stored = await one.record()
    assert stored is not None
    assert stored.refresh_token in tenant_state.refresh_tokens


async def test_an_older_record_put_back_in_redis_does_not_undo_what_this_instance_saw(
    fleet_settings: Settings, tenant_state: TenantState, fleet: Callable[[int], Fleet],
) -> None:
    """Someone who can write Redis (but has no key) copies the sealed session record, and
    after `fwproxy logout` puts the copy back (it opens: same name, same version): an
    instance that saw the logout keeps it (newest wins at every read, not only at
    write-back), and neither uses the old access token nor refreshes with the old refresh
    token, which the tenant would still take."""
    await seed(fleet_settings, tenant_state)
    one = fleet(1)
    grant, sessions = one.grants[0], one.sessions[0]
    await grant.fetch()
    state = one.states[0]
    version, sealed = await state.call(lambda r: r.hmget(sessions.lock.record_key, "v", "s"))
    assert isinstance(version, bytes)
    assert isinstance(sealed, bytes)
    assert await logout(fleet_settings)
    assert await sessions.read() is None  # this instance sees the logout
    await state.call(lambda r: r.hset(sessions.lock.record_key,
                                                 mapping={"v": version, "s": sealed}))  # the replay
    assert await sessions.read() is None
    assert grant.stored() is None
    with pytest.raises(LoginRequired):
        await grant.fetch()
    assert [r.outcome for r in tenant_state.refreshes] == ["ok"]


async def test_a_logout_after_an_unseen_empty_restart_is_not_undone(
    fleet_settings: Settings, tenant_state: TenantState, redis_server: RedisServer,
    fleet: Callable[[int], Fleet],
) -> None:
    """Redis restarted empty, unseen (its fence counter starts again from nothing); then
    `fwproxy logout` (or a login as someone else). Its version must still be above what
    the running instances hold, or their write-back (newest wins) would bring the old
    session back: login and logout take a version no lower than Redis's clock."""
    await seed(fleet_settings, tenant_state)
    one = fleet(1)
    grant = one.grants[0]
    await grant.fetch()  # this instance holds the session
    redis_server.stop()
    redis_server.start()  # back, empty, unseen
    assert await logout(fleet_settings) is False  # nothing in Redis, but marked
    with pytest.raises(LoginRequired):
        await grant.fetch()
    assert await one.sessions[0].read() is None
    assert [r.outcome for r in tenant_state.refreshes] == ["ok"]
    raw = await one.sessions[0].lock.read()
    assert raw is not None
    assert raw.value == LOGGED_OUT


@pytest.mark.parametrize("command", ["logout", "token"])
def test_a_command_with_redis_away_says_one_line_on_stderr(
    tmp_path: Path, command: str,
) -> None:
    """`fwproxy logout` / `token` as an operator runs them (a process of their own, its own
    logging): one line saying why, exit 1; not the running proxy's outage warning too
    ("each instance goes on by itself"), which is about a fleet, not this command."""
    import subprocess
    import sys

    nowhere = RedisServer(tmp_path / "nowhere")  # never started
    config = write_config(tmp_path / "fwproxy.yaml", {
        "tenant": {"url": "https://acme.fotoware.cloud"},
        "auth": {"grant_type": "authorization_code", "client_id": DEMO_WEB_CLIENT,
                 "redirect_uri": "http://127.0.0.1:8765/callback",
                 "token_store": str(tmp_path / "tokens.json")},
        "state": {"backend": "redis", "redis_url": nowhere.url},
    })
    done = subprocess.run(
        [sys.executable, "-m", "fwproxy", command, "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "FWPROXY_CLIENT_SECRET": DEMO_WEB_SECRET,
             "HOME": str(tmp_path)}, cwd=Path(__file__).parent.parent)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "fwproxy: shared state (Redis) unavailable: Redis is unreachable\n"


async def test_shutdown_leaves_no_probe_of_the_session_running(
    fleet_settings: Settings, tenant_state: TenantState, redis_server: RedisServer,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """A refused instance reads the record in the background (`changed`); shutting down
    while such a read hangs (Redis stopped answering) cancels it, rather than leaving a
    task on a closed client (to reconnect, or be destroyed pending with the loop)."""
    import os
    import signal

    proxy = await aiohttp_client(create_app(fleet_settings))
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 503  # nobody logged in: refused
    assert proxy.app is not None
    sessions = proxy.app[SHARED_SESSION]
    assert redis_server.pid is not None
    os.kill(redis_server.pid, signal.SIGSTOP)  # answers nothing from now on
    try:
        sessions.changed(sessions.mark())  # starts a background read, which hangs
        probe = sessions._probe
        assert probe is not None
        assert not probe.done()
        await proxy.close()
        assert probe.done()
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
