"""The manager's async shell: single flight, background renewal, backoff, invalidation."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from fwproxy.exceptions import NoTokenAvailable, TokenEndpointError, TokenEndpointUnreachable
from fwproxy.oauth import ClientCredentialsGrant, endpoint_name, post_token_request
from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState
from fwproxy.token_manager import TokenManager
from fwproxy.tokens import Token, Verdict, make_token
from fwproxy.upstream import create_session
from tests.conftest import SettingsFactory, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeGrant:
    """Hands out numbered tokens; a test decides when each request completes or fails."""

    name = "fake"
    cache_key: Hashable = ("tenant", "client")

    def __init__(self, clock: Callable[[], float], lifetime: float = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.fail_with: Exception | None = None
        self.tasks: list[asyncio.Task[Any]] = []  # the manager's task behind each fetch
        self._entered = asyncio.Event()

    def stored(self) -> Token | None:
        return None

    def has_news(self) -> bool:
        return False

    def update(self, auth: Any) -> None:
        raise AssertionError("not reloaded in these tests")

    async def started(self, calls: int) -> asyncio.Task[Any]:
        """The manager's task running fetch number `calls`, once that fetch has begun: the
        request in flight, to await instead of counting loop turns."""

        async def entered() -> None:
            while len(self.tasks) < calls:
                self._entered.clear()
                await self._entered.wait()

        await asyncio.wait_for(entered(), timeout=10)
        return self.tasks[calls - 1]

    async def fetch(self) -> Token:
        self.calls += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self._entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return make_token(f"token-{self.calls}", self.lifetime, self.clock(), 60)


def suspended(task: asyncio.Task[Any]) -> bool:
    """Whether `task` has started and now waits at an `await`."""
    coro = task.get_coro()
    assert inspect.iscoroutine(coro)
    return inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def grant(clock: Clock) -> FakeGrant:
    return FakeGrant(clock)


@pytest.fixture
def manager(grant: FakeGrant, clock: Clock) -> TokenManager:
    return TokenManager(grant, clock=clock, rand=lambda: 0.0)


async def test_cold_start_is_one_request_for_a_thousand_callers(
    manager: TokenManager, grant: FakeGrant
) -> None:
    grant.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(manager.get()) for _ in range(1000)]
    await grant.started(1)
    grant.gate.set()
    tokens = await asyncio.gather(*waiters)
    assert grant.calls == 1
    assert {token.value for token in tokens} == {"token-1"}


async def test_cached_token_is_returned_without_a_request(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    first = await manager.get()
    clock.now += 3000
    assert await manager.get() is first
    assert grant.calls == 1


async def test_renewal_window_renews_in_background_without_waiting(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    first = await manager.get()
    clock.now = first.renew_at
    grant.gate = asyncio.Event()  # the renewal hangs until released
    assert await manager.get() is first  # answered at once, with the old token
    assert await manager.get() is first
    renewal = await grant.started(2)
    assert grant.calls == 2  # one renewal started, not one per call
    grant.gate.set()
    await renewal
    renewed = await manager.get()
    assert renewed.value == "token-2"
    assert manager.renewals == 1


async def test_failed_renewal_keeps_serving_the_valid_token_and_backs_off(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    first = await manager.get()
    clock.now = first.renew_at
    grant.fail_with = TokenEndpointUnreachable("down")
    assert await manager.get() is first
    await asyncio.wait({await grant.started(2)})  # the renewal has failed
    assert grant.calls == 2
    assert await manager.get() is first  # within backoff: no new request
    assert grant.calls == 2
    clock.now += 1
    assert await manager.get() is first  # backoff over: one more attempt
    await asyncio.wait({await grant.started(3)})
    assert grant.calls == 3


async def test_no_token_raises_503_material_then_recovers(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    grant.fail_with = TokenEndpointError(401, "invalid_client", "Client authentication failed")
    with pytest.raises(NoTokenAvailable) as caught:
        await manager.get()
    assert caught.value.reason == "invalid_client"
    assert "invalid_client" in str(caught.value)
    assert caught.value.retry_after >= 1
    with pytest.raises(NoTokenAvailable):  # during backoff: no request at all
        await manager.get()
    assert grant.calls == 1
    grant.fail_with = None
    clock.now += 60
    assert (await manager.get()).value == "token-2"


async def test_retry_after_from_the_endpoint_is_honoured(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    grant.fail_with = TokenEndpointError(429, "http_429", None, retry_after=30)
    with pytest.raises(NoTokenAvailable) as caught:
        await manager.get()
    assert caught.value.retry_after == 30
    clock.now += 29
    with pytest.raises(NoTokenAvailable):
        await manager.get()
    assert grant.calls == 1


async def test_invalidate_only_drops_the_current_token(
    manager: TokenManager, grant: FakeGrant
) -> None:
    first = await manager.get()
    assert manager.invalidate(first) is True
    second = await manager.get()
    assert second.value == "token-2"
    assert manager.invalidate(first) is False  # a late 401 for the old token changes nothing
    assert await manager.get() is second


async def test_storm_of_401s_renews_once(manager: TokenManager, grant: FakeGrant) -> None:
    first = await manager.get()
    grant.gate = asyncio.Event()

    async def after_401() -> Token:
        manager.invalidate(first)
        return await manager.get()

    waiters = [asyncio.ensure_future(after_401()) for _ in range(200)]
    await grant.started(2)
    grant.gate.set()
    tokens = await asyncio.gather(*waiters)
    assert grant.calls == 2
    assert {token.value for token in tokens} == {"token-2"}


async def test_a_cancelled_waiter_does_not_cancel_the_shared_request(
    manager: TokenManager, grant: FakeGrant
) -> None:
    grant.gate = asyncio.Event()
    first = asyncio.ensure_future(manager.get())
    second = asyncio.ensure_future(manager.get())
    await grant.started(1)
    first.cancel()
    grant.gate.set()
    assert (await second).value == "token-1"
    assert grant.calls == 1


async def test_stale_token_is_never_handed_out(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    first = await manager.get()
    clock.now = first.stale_at
    second = await manager.get()
    assert second is not first
    assert grant.calls == 2


async def test_monotonic_expiry_ignores_wall_clock_jumps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    grant = FakeGrant(time.monotonic)
    manager = TokenManager(grant)  # default clocks
    first = await manager.get()
    monkeypatch.setattr(time, "time", lambda: 10**10)  # the wall clock jumps a century
    assert await manager.get() is first
    assert grant.calls == 1


async def test_aclose_cancels_a_renewal_that_outlasts_the_grace(
    manager: TokenManager, grant: FakeGrant
) -> None:
    grant.gate = asyncio.Event()
    waiter = asyncio.ensure_future(manager.get())
    await grant.started(1)
    await manager.aclose(grace=0.01)
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_aclose_lets_a_renewal_in_flight_finish(
    manager: TokenManager, grant: FakeGrant
) -> None:
    grant.gate = asyncio.Event()
    waiter = asyncio.ensure_future(manager.get())
    request = await grant.started(1)
    closing = asyncio.ensure_future(manager.aclose())
    await wait_until(lambda: suspended(closing), "aclose to wait for the request")
    assert not request.done()
    grant.gate.set()  # the token arrives while shutting down: it is not thrown away
    await closing
    assert (await waiter).value == "token-1"


# --- against the simulated tenant: the real grant over a real socket ----------------------


@pytest.fixture
async def real_manager(
    make_settings: SettingsFactory,
) -> AsyncIterator[Callable[..., TokenManager]]:
    """A manager with the real client-credentials grant; `auth` keys override."""
    sessions: list[aiohttp.ClientSession] = []

    def build(**auth: Any) -> TokenManager:
        settings = make_settings(auth=auth)
        session = create_session(settings.tenant)
        sessions.append(session)
        return TokenManager(ClientCredentialsGrant(session, settings.auth))

    yield build
    for session in sessions:
        await session.close()


async def test_client_credentials_request_is_exactly_as_fotoware_documents_it(
    real_manager: Callable[..., TokenManager], tenant_state: TenantState
) -> None:
    token = await real_manager().get()
    assert tenant_state.valid(token.value)
    assert tenant_state.token_forms == [{
        "grant_type": "client_credentials",
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }]
    headers = tenant_state.token_headers[0]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["Accept"] == "application/json"
    assert round(token.lifetime) == tenant_state.token_lifetime


async def test_invalid_client_is_reported_verbatim(
    real_manager: Callable[..., TokenManager],
) -> None:
    manager = real_manager(client_secret="wrong-secret-value")
    with pytest.raises(NoTokenAvailable) as caught:
        await manager.get()
    assert "invalid_client" in str(caught.value)
    assert "Client authentication failed" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)


async def test_unreachable_token_endpoint(
    real_manager: Callable[..., TokenManager], unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/fotoweb/oauth2/token"
    with pytest.raises(NoTokenAvailable, match="cannot reach token endpoint") as caught:
        await real_manager(token_url=url).get()
    assert caught.value.reason == "token_endpoint_unreachable"
    # the whole token URL, and no "Cannot connect to host ... ssl:default" from aiohttp
    assert str(caught.value) == (
        f"cannot reach token endpoint {url}: Connect call failed ('127.0.0.1', {unused_tcp_port})"
    )


async def test_token_endpoint_refusal_names_the_token_url(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def not_here(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>no</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/fotoweb/oauth2/tokn", not_here)
    server = await aiohttp_server(app)
    url = server.make_url("/fotoweb/oauth2/tokn").with_query(secret="q")
    shown = server.make_url("/fotoweb/oauth2/tokn")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TokenEndpointError) as caught:
            await post_token_request(session, url, b"grant_type=x", 60, lambda: 0.0)
    assert str(caught.value) == (
        "token endpoint refused (HTTP 404): http_404 (answered text/html, not OAuth JSON) "
        f"(POST {shown})"
    )
    assert caught.value.endpoint_status == 404


@pytest.mark.parametrize(
    ("url", "shown"),
    [("https://t.example/fotoweb/oauth2/token", "https://t.example/fotoweb/oauth2/token"),
     ("https://u:p@t.example/token?key=k#f", "https://t.example/token"),
     ("http://127.0.0.1:9/t", "http://127.0.0.1:9/t")],
)
def test_endpoint_name_keeps_no_secrets(url: str, shown: str) -> None:
    assert endpoint_name(URL(url)) == shown


async def test_unexpected_grant_failure_is_a_token_error_with_backoff(
    manager: TokenManager, grant: FakeGrant
) -> None:
    grant.fail_with = RuntimeError("Session is closed")
    with pytest.raises(NoTokenAvailable, match="unexpectedly: RuntimeError"):
        await manager.get()
    with pytest.raises(NoTokenAvailable):
        await manager.get()
    assert grant.calls == 1  # backed off like any other failure


async def test_401_to_a_token_issued_for_a_401_does_not_renew_again_at_once(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    first = await manager.get()
    assert manager.invalidate(first)
    answer = await manager.get()
    assert not manager.invalidate(answer)  # refused again at once: not the token's fault
    assert await manager.get() is answer
    clock.now += 10
    assert manager.invalidate(answer)
    assert (await manager.get()).value == "token-3"


async def test_a_token_the_tenant_accepted_is_dropped_on_a_later_401(
    manager: TokenManager, grant: FakeGrant, clock: Clock
) -> None:
    first = await manager.get()
    assert manager.invalidate(first)
    answer = await manager.get()
    manager.accepted(answer)  # it worked: a new revocation later is a real one ...
    assert not manager.invalidate(answer)  # ... though not within the same second
    clock.now += 1
    assert manager.invalidate(answer)
    assert (await manager.get()).value == "token-3"


async def test_fresh_is_the_token_only_until_it_wants_renewing(
    manager: TokenManager, clock: Clock
) -> None:
    assert manager.fresh() is None  # nothing fetched yet
    token = await manager.get()
    assert manager.fresh() is token
    clock.now = token.renew_at  # from here on get() renews in the background: not fresh
    assert manager.fresh() is None
    assert await manager.get() is token  # still usable meanwhile
    clock.now = token.obtained_at
    manager.invalidate(token)  # a 401 dropped it
    assert manager.fresh() is None


async def test_the_one_slot_holds_the_token_until_stale_and_only_for_its_credentials(
    clock: Clock,
) -> None:
    """One slot, tagged with whose token it is: a reload to another client (or token
    endpoint) never hands out the old client's token; the slot empties at `stale_at`."""
    class Reloadable(FakeGrant):
        def update(self, auth: Any) -> None:
            self.cache_key = ("tenant", auth.client_id)

    grant = Reloadable(clock)
    manager = TokenManager(grant, clock=clock, rand=lambda: 0.0)
    first = await manager.get()
    assert manager.current() is first
    manager.update(SimpleNamespace(client_id="other-client", idle_renewal=None))  # type: ignore[arg-type]
    assert manager.current() is None
    second = await manager.get()
    assert second is not first
    assert grant.calls == 2
    clock.now = second.stale_at
    assert manager.current() is None


async def test_a_storm_of_401s_to_a_token_taken_before_is_one_verification(
    manager: TokenManager, grant: FakeGrant,
) -> None:
    """However many 401s come in while the known-good request is out, it goes once; the
    tenant takes the token there, so it is kept: no renewal."""
    token = await manager.get()
    manager.accepted(token)
    gate, asked = asyncio.Event(), []

    async def verify(seen: Token) -> Verdict:
        asked.append(seen)
        await gate.wait()
        return Verdict.ACCEPTED

    storm = [asyncio.ensure_future(manager.refused(token, verify)) for _ in range(50)]
    await wait_until(lambda: len(asked) == 1, "the verification to start")
    storm[0].cancel()  # a client gone: the others still get the verdict
    gate.set()
    results = await asyncio.gather(*storm[1:])
    assert results == [False] * 49
    assert asked == [token]
    assert manager.verifications == 1
    assert await manager.get() is token
    assert grant.calls == 1


async def test_a_token_the_verification_refuses_is_dropped_once(
    manager: TokenManager, grant: FakeGrant,
) -> None:
    token = await manager.get()
    manager.accepted(token)

    async def verify(seen: Token) -> Verdict:
        await asyncio.sleep(0)
        return Verdict.REFUSED

    results = await asyncio.gather(*(manager.refused(token, verify) for _ in range(20)))
    assert results.count(True) == 1  # one of them dropped it; the rest found it replaced
    assert manager.verifications == 1
    assert (await manager.get()).value == "token-2"
    assert grant.calls == 2


async def test_a_verification_that_fails_proves_nothing(
    manager: TokenManager, grant: FakeGrant,
) -> None:
    token = await manager.get()
    manager.accepted(token)

    async def verify(seen: Token) -> Verdict:
        raise RuntimeError("unforeseen")

    assert await manager.refused(token, verify)  # as before verification: dropped
    assert (await manager.get()).value == "token-2"


async def test_the_echo_scrub_knows_the_current_token_and_the_one_before(
    manager: TokenManager, grant: FakeGrant,
) -> None:
    """A response to a request sent with the old token may come back after a renewal."""
    assert manager.echo is None
    first = await manager.get()
    assert manager.invalidate(first)
    second = await manager.get()
    echo = manager.echo
    assert echo is not None
    assert echo(f"x {first.value} y")
    assert echo(f"x {second.value} y")
    assert not echo("x token-3 y")
