"""The simulated tenant's limits (fwproxy/sim/limits.py): the pure decision as tables, then
the middleware and the ``/sim/limits`` hook against the app on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fwproxy.sim import TOKEN_PATH, TenantState, create_tenant_app
from fwproxy.sim.limits import Decision, Limits, decide, parse_limits
from tests.conftest import wait_until

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


# --- the decision, without a loop ---------------------------------------------------------

@pytest.mark.parametrize(("limits", "in_flight", "tat", "now", "expected"), [
    (Limits(), 1000, 0.0, 5.0, Decision(None, 0.0)),  # off
    (Limits(max_concurrent=10), 9, 0.0, 5.0, Decision(None, 0.0)),
    (Limits(max_concurrent=10), 10, 0.0, 5.0, Decision("drop", 0.0)),
    (Limits(max_concurrent=10, action="503"), 10, 0.0, 5.0, Decision("503", 0.0)),
    (Limits(max_concurrent=1, action="429", retry_after=7), 1, 0.0, 5.0,
     Decision("429", 0.0, 7)),
    (Limits(max_concurrent=1, action="429", retry_after="auto"), 1, 0.0, 5.0,
     Decision("429", 0.0, 1)),
    (Limits(max_concurrent=1, action="drop", retry_after=7), 1, 0.0, 5.0,
     Decision("drop", 0.0)),  # no answer, no header
    # rate 10/s, burst 1: one every 0.1 s
    (Limits(max_rate=10), 0, 0.0, 5.0, Decision(None, 5.1)),
    (Limits(max_rate=10), 0, 5.1, 5.0, Decision("drop", 5.1)),
    (Limits(max_rate=10), 0, 5.1, 5.1, Decision(None, 5.2)),
    # burst 3: three at once, the fourth waits 0.1 s
    (Limits(max_rate=10, burst=3), 0, 5.2, 5.0, Decision(None, 5.3)),
    (Limits(max_rate=10, burst=3), 0, 5.3, 5.0, Decision("drop", 5.3)),
    # Retry-After "auto": when the window opens, whole seconds
    (Limits(max_rate=0.5, action="429", retry_after="auto"), 0, 12.0, 5.0,
     Decision("429", 12.0, 7)),  # the window opens at 12: 7 s
    (Limits(max_rate=0.5, action="503", retry_after=None), 0, 12.0, 5.0,
     Decision("503", 12.0)),
    # concurrency first: a refused request does not move the window
    (Limits(max_concurrent=2, max_rate=10), 2, 0.0, 5.0, Decision("drop", 0.0)),
])
def test_decide(limits: Limits, in_flight: int, tat: float, now: float,
                expected: Decision) -> None:
    got = decide(limits, in_flight, tat, now)
    assert (got.refuse, round(got.tat, 6), got.retry_after) == (
        expected.refuse, expected.tat, expected.retry_after)


def test_rate_admits_r_per_second_over_time() -> None:
    limits, tat, admitted = Limits(max_rate=50, burst=5), 0.0, 0
    for step in range(10_000):  # one offer every millisecond for 10 s
        decision = decide(limits, 0, tat, 100.0 + step / 1000)
        tat = decision.tat
        admitted += decision.refuse is None
    assert admitted in (504, 505)  # 50/s for 10 s, plus the burst


@pytest.mark.parametrize(("body", "expected"), [
    ({}, Limits()),
    ({"max_concurrent": 10}, Limits(max_concurrent=10)),
    ({"max_rate": 2.5, "burst": 4, "action": "429", "retry_after": 3},
     Limits(max_rate=2.5, burst=4, action="429", retry_after=3)),
    ({"max_rate": 5, "action": "503", "retry_after": "auto", "count_oauth": False,
      "delay": 0.05},
     Limits(max_rate=5.0, action="503", retry_after="auto", count_oauth=False, delay=0.05)),
])
def test_parse_limits(body: dict[str, Any], expected: Limits) -> None:
    assert parse_limits(body) == expected


@pytest.mark.parametrize(("body", "names"), [
    ([], "JSON object"),
    ({"max_concurent": 1}, "max_concurent"),
    ({"max_concurrent": 0}, "max_concurrent"),
    ({"max_concurrent": 1.5}, "max_concurrent"),
    ({"max_concurrent": True}, "max_concurrent"),
    ({"max_rate": 0}, "max_rate"),
    ({"max_rate": "fast"}, "max_rate"),
    ({"burst": 0}, "burst"),
    ({"action": "reset"}, "action"),
    ({"retry_after": -1}, "retry_after"),
    ({"count_oauth": "no"}, "count_oauth"),
    ({"delay": -0.1}, "delay"),
])
def test_parse_limits_names_the_bad_key(body: object, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        parse_limits(body)


# --- the middleware and the hook ----------------------------------------------------------

@pytest.fixture
def state() -> TenantState:
    return TenantState()


@pytest.fixture
async def sim(aiohttp_client: ClientFactory, state: TenantState) -> Client:
    return await aiohttp_client(create_tenant_app(state))


def bearer(state: TenantState) -> dict[str, str]:
    return {"Authorization": f"Bearer {state.issue()[0]}"}


async def crowd(sim: Client, state: TenantState, n: int, path: str = "/fotoweb/me"
                ) -> list[int | str]:
    """`n` requests at once, each on its own connection: status, or the exception's name."""
    headers = bearer(state)

    async def one() -> int | str:
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    sim.make_url(path), headers=headers) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_over_concurrency_the_connection_is_dropped_without_an_answer(
        sim: Client, state: TenantState) -> None:
    state.limits.switch(Limits(max_concurrent=3, delay=1.0))  # held while all arrive
    results = await crowd(sim, state, 8)
    assert results.count(200) == 3
    assert sorted(set(results) - {200}) == ["ServerDisconnectedError"]  # no status at all
    assert state.limits.refused["drop"] in (5, 10)  # aiohttp tries a GET twice
    assert state.limits.admitted == 3
    assert state.limits.peak == 4  # 3 held and the arriving one, refused
    assert state.limits.in_flight == 0


async def test_429_with_retry_after(sim: Client, state: TenantState) -> None:
    state.limits.switch(Limits(max_concurrent=1, action="429", retry_after=4, delay=2.0))
    headers = bearer(state)
    first = asyncio.ensure_future(sim.get("/fotoweb/me", headers=headers))
    await wait_until(lambda: state.limits.in_flight == 1, "the first request held")
    async with sim.get("/fotoweb/me", headers=headers) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "4"
        assert (await resp.json())["error"] == "too_many_requests"
    async with await first as resp:
        assert resp.status == 200
    assert state.limits.refused == {"drop": 0, "429": 1, "503": 0}


@pytest.mark.parametrize("action", ["429", "503"])
async def test_refusal_without_retry_after(sim: Client, state: TenantState,
                                           action: str) -> None:
    state.limits.switch(parse_limits({"max_rate": 0.01, "action": action}))
    headers = bearer(state)
    async with sim.get("/fotoweb/me", headers=headers) as resp:
        assert resp.status == 200
    async with sim.get("/fotoweb/me", headers=headers) as resp:
        assert resp.status == int(action)
        assert "Retry-After" not in resp.headers
    assert state.limits.refused[action] == 1


async def test_503_with_retry_after_auto_says_when_the_window_opens(
        sim: Client, state: TenantState) -> None:
    state.limits.switch(Limits(max_rate=0.01, action="503", retry_after="auto"))
    headers = bearer(state)
    statuses = []
    for _ in range(2):
        async with sim.get("/fotoweb/archives/", headers=headers) as resp:
            statuses.append(resp.status)
            retry = resp.headers.get("Retry-After")
    assert statuses == [200, 503]
    assert retry is not None
    assert 90 < int(retry) <= 100  # one request per 100 s: the next in about 100 s


async def test_rate_limit_admits_the_burst_then_refuses(sim: Client,
                                                        state: TenantState) -> None:
    state.limits.switch(Limits(max_rate=0.01, burst=3, action="429"))
    headers = bearer(state)
    statuses = []
    for _ in range(5):
        async with sim.get("/fotoweb/me", headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429, 429]


async def test_peak_is_recorded_without_limits(sim: Client, state: TenantState) -> None:
    state.limits.switch(Limits(delay=1.0))  # no limit; requests take 1 s
    assert await crowd(sim, state, 6) == [200] * 6
    assert (state.limits.peak, state.limits.admitted, state.limits.in_flight) == (6, 6, 0)


async def test_token_endpoint_counts_unless_count_oauth_is_off(
        sim: Client, state: TenantState) -> None:
    form = {"grant_type": "client_credentials", "client_id": "fwproxy-demo",
            "client_secret": "demo-secret-not-for-production"}
    state.limits.switch(Limits(max_rate=0.01, action="503"))
    statuses = []
    for _ in range(2):
        async with sim.post(TOKEN_PATH, data=form) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 503]
    state.limits.switch(Limits(max_rate=0.01, action="503", count_oauth=False))
    for _ in range(3):
        async with sim.post(TOKEN_PATH, data=form) as resp:
            assert resp.status == 200
    async with sim.get("/fotoweb/me", headers=bearer(state)) as resp:
        assert resp.status == 200  # the API still counts: the first one passes
    async with sim.get("/fotoweb/me", headers=bearer(state)) as resp:
        assert resp.status == 503


async def test_hook_switches_limits_on_and_off_at_run_time(sim: Client,
                                                           state: TenantState) -> None:
    headers = bearer(state)
    async with sim.post("/sim/limits", headers=headers,
                        json={"max_rate": 0.01, "action": "429", "retry_after": 2}) as resp:
        assert resp.status == 200
        assert (await resp.json())["limits"]["action"] == "429"
    for expected in (200, 429):
        async with sim.get("/fotoweb/me", headers=headers) as resp:
            assert resp.status == expected
    async with sim.get("/sim/limits", headers=headers) as resp:  # never refused itself
        record = await resp.json()
    assert (record["admitted"], record["refused"]["429"]) == (1, 1)
    async with sim.post("/sim/limits", headers=headers, json={}) as resp:  # off
        assert (await resp.json())["refused"] == {"drop": 0, "429": 0, "503": 0}
    for _ in range(5):
        async with sim.get("/fotoweb/me", headers=headers) as resp:
            assert resp.status == 200


async def test_hook_refuses_bad_limits_with_a_json_error(sim: Client,
                                                         state: TenantState) -> None:
    headers = bearer(state)
    for body in (b'{"action": "explode"}', b"not json"):
        async with sim.post("/sim/limits", headers=headers, data=body) as resp:
            assert resp.status == 400
            answer = await resp.json()
            assert set(answer) == {"error", "detail"}
    assert "action" in answer["detail"] or "Expecting" in answer["detail"]
    assert not state.limits.limits.active  # unchanged


async def test_app_factory_switches_limits_on_at_start(aiohttp_client: ClientFactory) -> None:
    state = TenantState()
    sim = await aiohttp_client(create_tenant_app(state, Limits(max_rate=0.01, action="503")))
    headers = bearer(state)
    for expected in (200, 503):
        async with sim.get("/fotoweb/me", headers=headers) as resp:
            assert resp.status == expected


async def test_errors_raised_by_handlers_are_answered_inside_the_slot(
        sim: Client, state: TenantState) -> None:
    state.limits.switch(Limits(max_concurrent=5))
    headers = bearer(state)
    async with sim.get("/fotoweb/archives/9999/", headers=headers) as resp:  # HTTPNotFound
        assert resp.status == 404
    async with sim.get("/no/such/route", headers=headers) as resp:
        assert resp.status == 404
    assert (state.limits.admitted, state.limits.in_flight) == (2, 0)
