"""Protecting the tenant (issue 15, attempts.py) through an in-process proxy: safe retries,
Retry-After, the retry budget, the breaker, the budget's fair line and its queue timeout,
fwproxy's token requests in the priority lane, the access line and metrics, and a reload
of every tenant.* key. The waits between attempts go through `FakeSleep`, which records
them and returns at once (no test sleeps for a backoff)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from fwproxy import keys
from fwproxy.app import PROXY, create_app, reconfigure
from fwproxy.attempts import BudgetedGrant, Protection
from fwproxy.breaker import State
from fwproxy.budget import LocalBudget
from fwproxy.config import TenantConfig, parse_config
from fwproxy.proxy import Proxy
from fwproxy.sim import TenantState
from fwproxy.tokens import Token
from fwproxy.upstream import create_session
from tests.conftest import ProxyFactory, merge, proxy_settings, wait_until
from tests.support.grants import GrantStub

Client = TestClient[Any, Any]


class FakeSleep:
    """Records the waits asked for between attempts; `then` runs at the first one."""

    def __init__(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        self.waits: list[float] = []
        self._then = then

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._then is not None:
            then, self._then = self._then, None
            await then()


def proxy_of(client: Client) -> Proxy:
    app = client.app
    assert app is not None
    proxy: Proxy = app[PROXY]
    return proxy


def fake_sleep(client: Client, sleep: FakeSleep | None = None) -> FakeSleep:
    sleep = sleep or FakeSleep()
    proxy_of(client).protection._sleep = sleep
    return sleep


def scripted(path: str, answers: list[Callable[[web.Request], Awaitable[web.StreamResponse]]],
             seen: list[str]) -> Callable[[web.Application], None]:
    """A tenant route that answers its n-th request with answers[n] (the last one after)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        answer = answers[min(len(seen), len(answers)) - 1]
        return await answer(request)

    def routes(app: web.Application) -> None:
        app.router.add_route("*", path, handler)

    return routes


def status(code: int, headers: dict[str, str] | None = None
           ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=code, text=f"answer {code}", headers=headers)
    return answer


async def drop(request: web.Request) -> web.StreamResponse:
    """Read the request, then close the connection without a byte of answer."""
    await request.read()
    assert request.transport is not None
    request.transport.abort()
    return web.Response()  # (written to a closed transport: never sent)


OK = status(200)


# --- retries -----------------------------------------------------------------------------

async def test_429_with_retry_after_is_retried_after_that_wait(
        make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(429, {"Retry-After": "3"}), OK], seen))
    sleep = fake_sleep(client)
    with caplog.at_level(logging.INFO, logger="fwproxy.access"):
        async with client.get("/t") as resp:
            assert resp.status == 200
    assert seen == ["GET", "GET"]
    assert sleep.waits == [3.0]
    assert any("retries=1 waited=3000ms" in r.getMessage() for r in caplog.records)


async def test_429_without_retry_after_backs_off_with_full_jitter(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(429), status(503), OK], seen))
    sleep = fake_sleep(client)
    async with client.get("/t") as resp:
        assert resp.status == 200
    assert len(seen) == 3
    assert len(sleep.waits) == 2
    assert 0 <= sleep.waits[0] < 0.5  # full jitter under a ceiling of 0.5 s ...
    assert 0 <= sleep.waits[1] < 1.0  # ... doubling


async def test_retries_are_bounded_and_the_last_answer_is_passed_back(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(502)], seen),
                              tenant={"breaker_failures": 0})
    fake_sleep(client)
    async with client.get("/t") as resp:
        assert resp.status == 502
        assert await resp.text() == "answer 502"  # the tenant's own answer
    assert len(seen) == 3  # retries: 2


async def test_a_retry_after_longer_than_retry_max_wait_is_passed_back(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(503, {"Retry-After": "120"}), OK], seen),
                              tenant={"retry_max_wait": "20s"})
    sleep = fake_sleep(client)
    async with client.get("/t") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "120"
    assert seen == ["GET"]
    assert sleep.waits == []


async def test_a_post_is_never_retried_once_its_bytes_went_out(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [drop, OK], seen))
    fake_sleep(client)
    async with client.post("/t", data=b"payload") as resp:
        assert resp.status == 502
    assert seen == ["POST"]
    seen.clear()  # nor on a 503
    client2 = await make_proxy(scripted("/u", [status(503), OK], seen))
    fake_sleep(client2)
    async with client2.post("/u", data=b"payload") as resp:
        assert resp.status == 503
    assert seen == ["POST"]


async def test_a_get_is_retried_after_the_tenant_dropped_the_connection(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [drop, OK], seen))
    sleep = fake_sleep(client)
    async with client.get("/t") as resp:
        assert resp.status == 200
    assert seen == ["GET", "GET"]
    assert len(sleep.waits) == 1


async def test_aiohttp_does_not_resend_on_its_own(make_proxy: ProxyFactory) -> None:
    """With tenant.retries 0 the tenant sees one attempt of a GET whose pooled connection it
    drops: aiohttp's own silent re-send (ClientSession._retry_connection) is off."""
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [OK, drop, OK], seen), tenant={"retries": 0})
    session = proxy_of(client)._sender._session
    assert session._retry_connection is False  # the attribute aiohttp reads (client.py)
    async with client.get("/t") as resp:  # leaves a pooled connection
        assert resp.status == 200
    async with client.get("/t") as resp:
        assert resp.status == 502
    assert seen == ["GET", "GET"]


async def test_create_session_switches_aiohttp_resend_off() -> None:
    session = create_session(TenantConfig(url=URL("http://127.0.0.1:9")))
    try:
        assert session._retry_connection is False
    finally:
        await session.close()


async def test_a_post_is_retried_after_a_connect_failure(
        aiohttp_server: Callable[..., Awaitable[TestServer]],
        aiohttp_client: Callable[..., Awaitable[Client]], tenant: TestServer) -> None:
    """The first connect is refused (nothing listens yet); during the wait the tenant comes
    up on that port, and the POST, body and all, goes there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(text="stored")

    late = web.Application()
    late.router.add_post("/up", upload)
    settings = proxy_settings(tenant, tenant={"url": f"http://127.0.0.1:{port}"},
                              auth={"token_url": f"http://127.0.0.1:{tenant.port}"
                                                 "/fotoweb/oauth2/token"})
    client = await aiohttp_client(create_app(settings))

    async def start_tenant() -> None:
        await aiohttp_server(late, host="127.0.0.1", port=port)

    sleep = fake_sleep(client, FakeSleep(start_tenant))
    async with client.post("/up", data=b"x" * 100_000) as resp:
        assert resp.status == 200
        assert await resp.text() == "stored"
    assert got == [b"x" * 100_000]
    assert len(sleep.waits) == 1


# --- the retry budget and the breaker ----------------------------------------------------

async def test_the_retry_budget_bounds_retries_in_a_total_outage(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(503)], seen),
                              tenant={"breaker_failures": 0, "retry_budget": 0})
    fake_sleep(client)
    requests = 150  # 300 retries wanted; the budget allows 10 a second over 10 s: 100
    answers = await asyncio.gather(*(client.get("/t") for _ in range(requests)))
    assert all(resp.status == 503 for resp in answers)
    for resp in answers:
        resp.release()
    protection = proxy_of(client).protection
    assert len(seen) <= requests + 100
    assert protection.counters.budget_refused >= requests - 50  # (2 retries for 50 at most)
    assert sum(protection.counters.retries.values()) <= 100


async def test_breaker_opens_answers_at_once_then_probes_and_closes(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    healthy = False

    async def answer(request: web.Request) -> web.StreamResponse:
        return await (OK if healthy else status(503))(request)

    client = await make_proxy(scripted("/t", [answer], seen),
                              tenant={"breaker_failures": 3, "breaker_cooldown": "1s",
                                      "retries": 0})
    for _ in range(3):
        async with client.get("/t") as resp:
            assert resp.status == 503
    assert len(seen) == 3
    async with client.get("/t") as resp:  # open: the tenant is not asked
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "tenant_unavailable"
    assert len(seen) == 3
    async with client.get("/_fwproxy/ready") as resp:  # fwproxy itself is fine
        assert resp.status == 200
    breaker = proxy_of(client).protection.breaker
    assert breaker.state is State.OPEN
    async with client.get("/_fwproxy/metrics") as resp:
        text = await resp.text()
    assert 'fwproxy_tenant_breaker_state{state="open"} 1.0' in text
    healthy = True

    async def probed() -> bool:
        async with client.get("/t") as resp:
            return resp.status == 200

    await wait_until(probed, "the half-open probe to pass", every=0.1)
    assert breaker.view(0)["state"] == "closed"
    assert breaker.transitions == {("closed", "open"): 1, ("open", "half_open"): 1,
                                   ("half_open", "closed"): 1}
    async with client.get("/_fwproxy/metrics") as resp:
        text = await resp.text()
    assert ('fwproxy_tenant_breaker_transitions_total{from="half_open",to="closed"} 1.0'
            in text)


# --- the budget: fair line, queue timeout, the token's lane -----------------------------

def gated(path: str, gate: asyncio.Event, order: list[str], at_once: list[int]
          ) -> Callable[[web.Application], None]:
    now = [0]

    async def handler(request: web.Request) -> web.Response:
        now[0] += 1
        at_once.append(now[0])
        order.append(request.query.get("who", "?"))
        try:
            await gate.wait()
        finally:
            now[0] -= 1
        return web.Response(text="done")

    def routes(app: web.Application) -> None:
        app.router.add_get(path, handler)

    return routes


async def test_the_line_is_fair_across_clients(make_proxy: ProxyFactory, tmp_path: Path
                                               ) -> None:
    keys_file = tmp_path / "keys"
    bulk, single = keys.add_key(keys_file, "bulk"), keys.add_key(keys_file, "single")
    gate, order, at_once = asyncio.Event(), list[str](), list[int]()
    client = await make_proxy(gated("/t", gate, order, at_once),
                              tenant={"max_in_flight": 1},
                              access={"api_keys_file": str(keys_file)})
    budget = proxy_of(client).protection.budget
    async with client.get("/fotoweb/me", headers={"X-Fwproxy-Key": bulk}) as resp:
        assert resp.status == 200  # (a token first)

    async def get(key: str, who: str) -> int:
        async with client.get(f"/t?who={who}", headers={"X-Fwproxy-Key": key}) as resp:
            return resp.status

    tasks = [asyncio.create_task(get(bulk, f"bulk{n}")) for n in range(20)]
    await wait_until(lambda: budget.queue_length == 19, "the bulk tool's line")
    tasks.append(asyncio.create_task(get(single, "single")))
    await wait_until(lambda: budget.queue_length == 20, "the single request in line")
    gate.set()
    assert await asyncio.gather(*tasks) == [200] * 21
    assert order.index("single") <= 2  # one bulk request in flight, at most one more
    assert max(at_once) == 1


async def test_queue_timeout_is_503_busy(make_proxy: ProxyFactory) -> None:
    gate, order, at_once = asyncio.Event(), list[str](), list[int]()
    client = await make_proxy(gated("/t", gate, order, at_once),
                              tenant={"max_in_flight": 1, "queue_timeout": "200ms"})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    first = asyncio.create_task(client.get("/t?who=first"))
    await wait_until(lambda: order == ["first"], "the first request at the tenant")
    async with client.get("/t?who=second") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "busy"
    assert order == ["first"]
    gate.set()
    (await first).release()


async def test_no_budget_no_line(make_proxy: ProxyFactory) -> None:
    """Without max_in_flight and max_rate the line is never entered."""
    client = await make_proxy()
    budget = proxy_of(client).protection.budget
    assert not budget.configured
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert budget.granted == 0


async def test_a_401_renewal_does_not_wait_for_the_slot_its_request_holds(
        make_proxy: ProxyFactory, tenant_state: TenantState) -> None:
    """max_in_flight 1: the 401's slot is given back before the token is renewed, and the
    token request takes the priority lane; the replay gets its answer."""
    client = await make_proxy(tenant={"max_in_flight": 1, "queue_timeout": "5s"})
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    tenant_state.revoke_all()
    async with client.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert proxy_of(client).replays == 1


class CountingGrant(GrantStub):
    name = "counting"
    cache_key = "k"

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def fetch(self) -> Token:
        self.calls += 1
        await self.gate.wait()
        return Token("t", 0.0, 3600.0, 3000.0, 3500.0)


async def test_token_requests_take_the_priority_lane() -> None:
    settings = parse_config(merge(tenant_config_for(8443), {"tenant": {"max_in_flight": 1}}),
                            environ={})
    protection = Protection(settings.tenant)
    inner = CountingGrant()
    grant = BudgetedGrant(inner, protection, settings.tenant.url, settings.auth)
    budget: LocalBudget = protection.budget
    held = await budget.acquire("a")
    waiting = asyncio.create_task(budget.acquire("b"))
    await wait_until(lambda: budget.queue_length == 1, "b in line")
    fetch = asyncio.create_task(grant.fetch())
    await wait_until(lambda: budget.queue_length == 2, "the token request in line")
    held.release()
    await wait_until(lambda: inner.calls == 1, "the token request to go out")
    assert not waiting.done()  # b still waits: the token request took the slot first
    inner.gate.set()
    await fetch
    (await waiting).release()
    assert budget.in_flight == 0


def tenant_config_for(port: int) -> dict[str, Any]:
    return {"tenant": {"url": f"https://127.0.0.1:{port}"},
            "auth": {"client_id": "a", "client_secret": "s"}}


# --- visible, and every key on reload ---------------------------------------------------

async def test_metrics_name_the_line_the_retries_and_the_breaker(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(429), OK], seen),
                              tenant={"max_in_flight": 4})
    fake_sleep(client)
    async with client.get("/t") as resp:
        assert resp.status == 200
    async with client.get("/_fwproxy/metrics") as resp:
        text = await resp.text()
    for line in ("fwproxy_tenant_queue_length 0.0", "fwproxy_tenant_in_flight 0.0",
                 'fwproxy_tenant_retries_total{cause="status_429"} 1.0',
                 "fwproxy_tenant_retries_refused_by_budget_total 0.0",
                 'fwproxy_tenant_breaker_state{state="closed"} 1.0',
                 'fwproxy_tenant_wait_seconds_bucket{le="+Inf"} 3.0'):
        assert line in text, line
    async with client.get("/_fwproxy/") as resp:
        page = await resp.text()
    assert "breaker closed, 0 waiting in line, 0 at the tenant, 1 retries" in page


RELOADED: dict[str, Any] = {
    "max_in_flight": 3, "max_rate": 7.0, "max_burst": 9.0, "queue_timeout": 4.0,
    "retries": 1, "retry_methods": ("GET",), "retry_max_wait": 2.0, "retry_budget": 0.5,
    "breaker_failures": 11, "breaker_cooldown": 13.0,
}


def applied(protection: Protection, key: str) -> object:
    return {
        "max_in_flight": protection.budget.max_in_flight,
        "max_rate": protection.budget.max_rate,
        "max_burst": protection.budget.burst,
        "queue_timeout": protection.budget.queue_timeout,
        "retries": protection.policy.retries,
        "retry_methods": tuple(sorted(protection.policy.methods)),
        "retry_max_wait": protection.policy.max_wait,
        "retry_budget": protection.retry_budget.ratio,
        "breaker_failures": protection.breaker.threshold,
        "breaker_cooldown": protection.breaker.base_cooldown,
    }[key]


@pytest.mark.parametrize("key", sorted(RELOADED))
async def test_a_reload_applies_every_tenant_key(make_proxy: ProxyFactory, tenant: TestServer,
                                                 key: str) -> None:
    client = await make_proxy()
    app = client.app
    assert app is not None
    protection = proxy_of(client).protection
    assert applied(protection, key) != RELOADED[key]
    value = list(RELOADED[key]) if isinstance(RELOADED[key], tuple) else RELOADED[key]
    plan = reconfigure(app, proxy_settings(tenant, tenant={key: value}))
    assert plan.applied == (f"tenant.{key}",)
    assert applied(protection, key) == RELOADED[key]


async def test_a_request_waiting_to_retry_holds_no_slot(make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(503), OK], seen),
                              tenant={"max_in_flight": 1})
    protection = proxy_of(client).protection
    during: list[tuple[int, int]] = []

    async def look() -> None:
        during.append((protection.budget.in_flight, protection.in_flight))

    fake_sleep(client, FakeSleep(look))
    async with client.get("/t") as resp:
        assert resp.status == 200
    await wait_until(lambda: protection.budget.in_flight == 0, "the slot back")
    assert during == [(0, 0)]
    assert seen == ["GET", "GET"]


async def test_a_body_too_large_to_keep_is_not_retried(make_proxy: ProxyFactory) -> None:
    seen: list[str] = []
    client = await make_proxy(scripted("/t", [status(503), OK], seen),
                              auth={"replay_max_body": "1KiB"})
    sleep = fake_sleep(client)
    async with client.put("/t", data=b"x" * 10_000) as resp:
        assert resp.status == 503
    assert seen == ["PUT"]
    assert sleep.waits == []
    async with client.put("/t", data=b"x" * 100) as resp:  # a small one is
        assert resp.status == 200


async def test_a_client_gone_mid_upload_is_not_retried_nor_held_against_the_tenant(
        make_proxy: ProxyFactory) -> None:
    seen: list[str] = []

    async def upload(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        await request.read()
        return web.Response(text="stored")

    client = await make_proxy(lambda app: app.router.add_put("/up", upload))
    fake_sleep(client)
    protection = proxy_of(client).protection
    async with client.get("/fotoweb/me") as resp:  # (a token first)
        assert resp.status == 200
    _reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"PUT /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
                 + b"x" * 1000)
    await writer.drain()
    await wait_until(lambda: seen == ["PUT"], "the upload to reach the tenant")
    writer.close()
    await wait_until(lambda: protection.in_flight == 0, "the attempt to end")
    assert seen == ["PUT"]
    assert protection.breaker.failures == 0
    assert protection.counters.retries == {}
