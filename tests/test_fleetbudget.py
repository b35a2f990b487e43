"""The fleet-wide tenant budget (fwproxy/fleetbudget.py): its pure decisions as tables, and
several instances' budgets on one real redis-server in one process (each with its own
`SharedState`, as separate processes have): the fleet-wide cap and rate, fairness per
instance, a dead instance's leases running out, the fallback share while Redis is away and
the return, reload, and no Redis call without a cap."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestServer

from fwproxy.app import OBSERVER, reconfigure
from fwproxy.budget import Lease, gcra
from fwproxy.config import StateConfig
from fwproxy.exceptions import TenantBusy
from fwproxy.fleet import SharedState
from fwproxy.fleetbudget import FleetBudget, Grant, grant, rate_share, share
from tests.conftest import ProxyFactory, proxy_settings, wait_until
from tests.support.redis import RedisServer

# --- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(("now", "want", "in_use", "cap", "tat", "rate", "burst", "expected"), [
    # no caps: everything asked for
    (10.0, 5, 0, 0, 0.0, 0.0, 0.0, Grant(5, 0.0, 0.0)),
    # slots only: what is free, never below 0 (a cap lowered under what is in use)
    (10.0, 5, 6, 8, 0.0, 0.0, 0.0, Grant(2, 0.0, 0.0)),
    (10.0, 5, 8, 8, 0.0, 0.0, 0.0, Grant(0, 0.0, 0.0)),
    (10.0, 5, 9, 8, 0.0, 0.0, 0.0, Grant(0, 0.0, 0.0)),
    # rate only, burst 3 after a quiet spell: three now, the fourth in one interval
    (10.0, 5, 0, 0, 0.0, 1.0, 3.0, Grant(3, 13.0, 1.0)),
    # rate 2/s burst 1, the last start half an interval ago: wait the other half
    (10.0, 1, 0, 0, 10.25, 2.0, 1.0, Grant(0, 10.25, 0.25)),
    # slots first: no slot free spends no rate token and leaves tat as it was
    (10.0, 2, 4, 4, 3.0, 1.0, 3.0, Grant(0, 3.0, 0.0)),
    # both: two slots free, the rate allows one more now, the next in a second
    (10.0, 5, 2, 4, 12.0, 1.0, 3.0, Grant(1, 13.0, 1.0)),
    # both, the rate with room: the slots are what is short (no hint)
    (10.0, 5, 2, 4, 0.0, 1.0, 3.0, Grant(2, 12.0, 0.0)),
    # a clamp sticks even when nothing is granted (tat far ahead after a rate change)
    (0.0, 1, 0, 0, 100.0, 1000.0, 1.0, Grant(0, 0.001, 0.001)),
])
def test_grant(now: float, want: int, in_use: int, cap: int, tat: float, rate: float,
               burst: float, expected: Grant) -> None:
    got = grant(now, want, in_use, cap, tat, rate, burst)
    assert got.granted == expected.granted
    assert got.tat == pytest.approx(expected.tat)
    assert got.wait == pytest.approx(expected.wait)


def test_grant_is_gcra_step_by_step() -> None:
    """One ask for n is n `gcra` steps (what the script does in its loop)."""
    tat = 0.0
    for now in (0.0, 0.1, 0.2, 1.5, 1.6, 5.0):
        batch = grant(now, 4, 0, 0, tat, 2.0, 3.0)
        one_by_one, steps = tat, 0
        for _ in range(4):
            step = gcra(now, one_by_one, 2.0, 3.0)
            one_by_one = step.tat
            if not step.allowed:
                break
            steps += 1
        assert batch.granted == steps
        assert batch.tat == pytest.approx(one_by_one)
        tat = batch.tat


@pytest.mark.parametrize(("total", "fleet_size", "expected"), [
    (8, 0, 8),  # no fleet size: the whole
    (8, 3, 3),  # rounded up
    (9, 3, 3),
    (8, 8, 1),
    (2, 5, 1),  # at least 1
    (0, 3, 0),  # no cap stays no cap
])
def test_share(total: int, fleet_size: int, expected: int) -> None:
    assert share(total, fleet_size) == expected


@pytest.mark.parametrize(("total", "fleet_size", "expected"), [
    (30.0, 0, 30.0), (30.0, 3, 10.0), (1.0, 4, 0.25), (0.0, 3, 0.0)])
def test_rate_share(total: float, fleet_size: int, expected: float) -> None:
    assert rate_share(total, fleet_size) == pytest.approx(expected)


# --- on a real redis-server ----------------------------------------------------------------

Make = Callable[..., Awaitable[FleetBudget]]


@pytest.fixture
async def make_budget(redis_server: RedisServer) -> AsyncIterator[Make]:
    """`make_budget(max_in_flight, max_rate, ...)`: one instance's budget, its own
    SharedState (its own connections) on the shared Redis; lease_time 1 s unless given."""
    made: list[tuple[FleetBudget, SharedState]] = []

    async def make(max_in_flight: int = 0, max_rate: float = 0.0, max_burst: float = 0.0,
                   queue_timeout: float = 10.0, *, fleet_size: int = 0,
                   lease_time: float = 1.0) -> FleetBudget:
        config = StateConfig(backend="redis", redis_url=redis_server.url,
                             lease_time=lease_time, fleet_size=fleet_size)
        state = SharedState(config, "scope", "m" * 40)
        await state.start()
        budget = FleetBudget(state, fleet_size)
        budget.configure(max_in_flight, max_rate, max_burst, queue_timeout)
        made.append((budget, state))
        return budget

    yield make
    for budget, state in made:
        await budget.aclose()
        await state.aclose()


async def zcard(budget: FleetBudget) -> int:
    count: int = await budget.state.call(lambda r: r.zcard(budget.slots_key))
    return count


def started(budget: FleetBudget, client: str, count: int) -> list[asyncio.Task[Lease]]:
    return [asyncio.ensure_future(budget.acquire(client)) for _ in range(count)]


async def test_the_cap_holds_across_instances(make_budget: Make) -> None:
    budgets = [await make_budget(max_in_flight=4) for _ in range(3)]
    tasks = [task for i, budget in enumerate(budgets)
             for task in started(budget, f"client-{i}", 4)]  # 12 want, 4 may
    await wait_until(lambda: sum(t.done() for t in tasks) == 4, "four granted")
    assert await zcard(budgets[0]) == 4
    for _ in range(3):  # the others stay in their lines (woken by releases only)
        await asyncio.sleep(0.05)
        assert sum(t.done() for t in tasks) == 4
    done = [t for t in tasks if t.done()]
    for task in done:  # each release lets exactly one more start, somewhere in the fleet
        task.result().release()
    await wait_until(lambda: sum(t.done() for t in tasks) == 8, "four more granted")
    assert await zcard(budgets[0]) == 4
    for task in tasks:
        if task.done() and not task.result().released:
            task.result().release()
    await wait_until(lambda: all(t.done() for t in tasks), "all granted")
    for task in tasks:
        task.result().release()
    await wait_until(zcard_is(budgets[0], 0), "every slot given back")


def zcard_is(budget: FleetBudget, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await zcard(budget) == count
    return check


async def test_the_rate_holds_across_instances(make_budget: Make) -> None:
    # one start every 10 s, a burst of 3: whatever the three instances ask at once, only
    # three start (no line: queue_timeout 0 answers busy at once)
    budgets = [await make_budget(max_rate=0.1, max_burst=3, queue_timeout=0) for _ in range(3)]
    outcomes: list[str] = []
    for _ in range(4):
        for budget in budgets:
            try:
                await budget.acquire("c")
                outcomes.append("ok")
            except TenantBusy:
                outcomes.append("busy")
    assert outcomes.count("ok") == 3
    assert outcomes[:3] == ["ok"] * 3


async def test_a_rate_waiter_waits_for_the_hint_not_a_loop(make_budget: Make) -> None:
    a, b = await make_budget(max_rate=4, max_burst=1), await make_budget(max_rate=4,
                                                                          max_burst=1)
    await a.acquire("c")  # the one start the burst allows
    lease = await b.acquire("c")  # waits about 0.25 s: the script's hint
    assert lease.waited > 0
    assert b.asks <= 3  # asked, waited for the hint, asked again (+1 for clock skew)


async def test_fairness_holds_per_instance(make_budget: Make) -> None:
    budget = await make_budget(max_in_flight=1)
    first = await budget.acquire("bulk")
    bulk = started(budget, "bulk", 4)
    await wait_until(lambda: budget.queue_length == 4, "bulk in line")
    oneoff = asyncio.ensure_future(budget.acquire("oneoff"))
    await wait_until(lambda: budget.queue_length == 5, "one-off in line")
    order: list[str] = []
    holding = first
    for _ in range(3):
        holding.release()
        await wait_until(lambda: any(t.done() and not t.result().released
                                     for t in [*bulk, oneoff]), "the next granted")
        nxt = next(t for t in [*bulk, oneoff] if t.done() and not t.result().released)
        order.append("oneoff" if nxt is oneoff else "bulk")
        holding = nxt.result()
    assert order == ["bulk", "oneoff", "bulk"]  # round robin: one turn, not four
    holding.release()
    for task in bulk:
        (await task).release()


async def test_a_dead_instances_leases_run_out(make_budget: Make) -> None:
    dead = await make_budget(max_in_flight=2)
    await dead.acquire("c")
    await dead.acquire("c")
    await _kill(dead)  # no release, no renewal
    other = await make_budget(max_in_flight=2, queue_timeout=10)
    assert await zcard(other) == 2
    lease = await other.acquire("c")  # within the lease (1 s), not the line's 10 s
    assert lease.waited > 0
    assert await zcard(other) == 1


async def _kill(budget: FleetBudget) -> None:
    """As `kill -9` leaves it: the leases stay in Redis, nobody renews or releases them."""
    budget._closed = True
    for task in (budget._asker, budget._renewer, budget._listener, budget._flusher):
        if task is not None:
            task.cancel()
    budget._held.clear()


async def test_a_live_holder_keeps_its_leases_past_the_lease_time(make_budget: Make) -> None:
    holder = await make_budget(max_in_flight=1, lease_time=1.0)
    lease = await holder.acquire("c")
    other = await make_budget(max_in_flight=1, queue_timeout=2.5)
    with pytest.raises(TenantBusy):  # renewed every lease_time / 3 for 2.5 lease times
        await other.acquire("c")
    lease.release()
    await wait_until(zcard_is(other, 0), "released")


async def test_redis_away_each_takes_its_share_then_shares_again(
        make_budget: Make, redis_server: RedisServer) -> None:
    budget = await make_budget(max_in_flight=4, fleet_size=2, queue_timeout=30)
    other = await make_budget(max_in_flight=4, fleet_size=2, queue_timeout=30)
    assert budget.view()["scope"] == "fleet"
    redis_server.stop()
    first = await budget.acquire("c")  # the ask fails: Redis is DOWN, the share decides
    assert budget.fallback
    assert budget.view() == {"scope": "instance share (Redis away)", "max_in_flight": 2,
                             "max_rate": 0.0}
    second = await budget.acquire("c")
    third = asyncio.ensure_future(budget.acquire("c"))  # over the share of 2: waits
    await wait_until(lambda: budget.queue_length == 1, "the third in line")
    redis_server.start()
    await wait_until(lambda: not budget.fallback, "sharing again")
    await third  # asked Redis: 2 (written back) + 1 of 4
    assert await zcard(budget) == 3
    last = await other.acquire("c")  # the fleet's fourth slot
    other.queue_timeout = 0.3
    with pytest.raises(TenantBusy):
        await other.acquire("c")
    for lease in (first, second, third.result(), last):
        lease.release()
    await wait_until(zcard_is(budget, 0), "every slot given back")
    assert budget.fallbacks == 1


async def test_a_reload_applies_to_the_line_at_once(make_budget: Make) -> None:
    budget = await make_budget(max_in_flight=1)
    held = await budget.acquire("c")
    waiting = asyncio.ensure_future(budget.acquire("c"))
    await wait_until(lambda: budget.queue_length == 1, "in line")
    budget.configure(2, 0, 0, 10)
    second = await waiting  # without a release: the new cap
    assert await zcard(budget) == 2
    held.release()
    second.release()


async def test_queue_timeout_answers_busy(make_budget: Make) -> None:
    budget = await make_budget(max_in_flight=1, queue_timeout=0.2)
    held = await budget.acquire("c")
    with pytest.raises(TenantBusy):
        await budget.acquire("c")
    held.release()
    await wait_until(zcard_is(budget, 0), "released")


OWN = frozenset({"info", "config|resetstat", "hello", "client|setinfo"})


async def redis_calls(redis_server: RedisServer) -> dict[str, int]:
    """Calls per command since the last reset (INFO commandstats), without this reader's
    own (its connection's HELLO and CLIENT SETINFO, INFO, CONFIG RESETSTAT)."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        info = await client.info("commandstats")
        await client.config_resetstat()
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in info.items()
            if isinstance(entry, dict) and name.removeprefix("cmdstat_") not in OWN}


@pytest.mark.parametrize("caps", [{}, {"max_in_flight": 100}, {"max_rate": 1000}])
async def test_redis_calls_per_request(make_proxy: ProxyFactory, redis_server: RedisServer,
                                       caps: dict[str, Any]) -> None:
    """Without a budget the request path makes no Redis call; with one, at most one ask
    (one script call) per request, and the slots go back in batches, off the path."""
    proxy = await make_proxy(state={"backend": "redis", "redis_url": redis_server.url},
                             tenant=caps)
    async with proxy.get("/fotoweb/me") as resp:  # the token is fetched
        assert resp.status == 200
    protection = proxy.app[OBSERVER].protection
    assert protection is not None
    budget = protection.budget
    assert isinstance(budget, FleetBudget)
    await wait_until(lambda: budget._flusher is None, "the first release sent")
    await redis_calls(redis_server)  # (a reset)
    asks = budget.asks

    async def one() -> int:
        async with proxy.get("/fotoweb/me") as resp:
            await resp.read()
            return resp.status

    assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
    await wait_until(lambda: budget._flusher is None, "the releases sent")
    calls = await redis_calls(redis_server)
    if not caps:
        assert calls == {}
        assert budget.asks == asks
    else:
        assert 1 <= budget.asks - asks <= 20
        # round trips: the asks, plus releases in batches (slots only), nothing else
        assert calls.get("evalsha", 0) >= budget.asks - asks
        assert calls.get("evalsha", 0) <= 2 * 20
        assert set(calls) <= {"evalsha", "time", "zremrangebyscore", "zcard", "zadd",
                              "pexpire", "exists", "zrem", "get", "set", "publish"}


async def test_the_fallback_is_shown_in_metrics_and_on_the_status_page(
        make_proxy: ProxyFactory, redis_server: RedisServer) -> None:
    proxy = await make_proxy(state={"backend": "redis", "redis_url": redis_server.url,
                                    "fleet_size": 2, "lease_time": "1s"},
                             tenant={"max_in_flight": 4})

    async def page(path: str) -> str:
        async with proxy.get(path) as resp:
            assert resp.status == 200
            return await resp.text()

    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    assert "fwproxy_tenant_budget_fallback 0.0" in await page("/_fwproxy/metrics")
    assert "fleet: max_in_flight 4, max_rate 0/s" in await page("/_fwproxy/")
    redis_server.stop()
    async with proxy.get("/fotoweb/me") as resp:  # the ask fails: this instance's share
        assert resp.status == 200
    assert "fwproxy_tenant_budget_fallback 1.0" in await page("/_fwproxy/metrics")
    assert ("instance share (Redis away): max_in_flight 2, max_rate 0/s"
            in await page("/_fwproxy/"))
    redis_server.start()

    async def shared_again() -> bool:
        return "fwproxy_tenant_budget_fallback 0.0" in await page("/_fwproxy/metrics")

    await wait_until(shared_again, "the fleet-wide budget again")


async def test_the_status_page_shows_a_local_budgets_caps(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(tenant={"max_in_flight": 3, "max_rate": 5})
    async with proxy.get("/_fwproxy/") as resp:
        assert "instance: max_in_flight 3, max_rate 5/s" in await resp.text()


async def test_a_reload_reaches_the_fleet_budget(make_proxy: ProxyFactory, tenant: TestServer,
                                                 redis_server: RedisServer) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url, "fleet_size": 2}
    proxy = await make_proxy(state=state, tenant={"max_in_flight": 1})
    assert proxy.app is not None
    protection = proxy.app[OBSERVER].protection
    assert protection is not None
    budget = protection.budget
    assert isinstance(budget, FleetBudget)
    plan = reconfigure(proxy.app, proxy_settings(tenant, state=state, tenant={
        "max_in_flight": 6, "max_rate": 40, "max_burst": 8, "queue_timeout": "3s"}))
    assert set(plan.applied) == {"tenant.max_in_flight", "tenant.max_rate", "tenant.max_burst",
                                 "tenant.queue_timeout"}
    assert (budget.fleet_in_flight, budget.fleet_rate, budget.fleet_burst) == (6, 40, 8)
    assert (budget.max_in_flight, budget.max_rate, budget.queue_timeout) == (3, 20, 3)
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200


async def test_redis_refusing_the_script_means_the_share_for_a_while(make_budget: Make) -> None:
    budget = await make_budget(max_in_flight=4, fleet_size=4)
    await budget.state.call(lambda r: r.set(budget.slots_key, b"not a sorted set"))
    lease = await budget.acquire("c")  # WRONGTYPE: Redis answers, but not to us
    assert budget.fallback
    assert budget.state.up  # (it is there: not marked DOWN)
    assert budget.max_in_flight == 1  # the share
    lease.release()
    await budget.state.call(lambda r: r.delete(budget.slots_key))
    await wait_until(lambda: not budget.fallback, "sharing again after ERROR_PAUSE")
    again = await budget.acquire("c")
    assert await zcard(budget) == 1
    again.release()


# --- hostile or broken Redis contents, lost leases, cancellation (red team) ---------------


@pytest.mark.parametrize("planted", [b"nan", b"-nan", b"inf", b"-inf", b"1e308", b"-1e308",
                                     b"not a number", b""])
async def test_a_planted_tat_never_lifts_the_rate_cap(make_budget: Make, planted: bytes) -> None:
    # Lua's tonumber reads "nan" as NaN, and every comparison with NaN is false: the
    # script granted everything and wrote "nan" back, lifting the rate cap for good
    budget = await make_budget(max_rate=0.1, max_burst=2, queue_timeout=0)
    await budget.state.call(lambda r: r.set(budget.tat_key, planted))
    outcomes: list[str] = []
    for _ in range(5):
        try:
            await budget.acquire("c")
            outcomes.append("ok")
        except TenantBusy:
            outcomes.append("busy")
    assert outcomes.count("ok") <= 2  # the burst, at most (a planted tat ahead: fewer)
    stored = await budget.state.call(lambda r: r.get(budget.tat_key))
    assert stored is not None
    assert not math.isnan(float(stored))


@pytest.mark.parametrize("score", [float("inf"), 1e300])
async def test_a_slot_planted_beyond_any_lease_does_not_hold_the_cap_for_good(
        make_budget: Make, score: float) -> None:
    # no instance writes an expiry beyond now + 1 h (state.lease_time's bound); a member
    # scored +inf stayed for good (the key's expiry is renewed by every ask)
    budget = await make_budget(max_in_flight=1, queue_timeout=0)
    await budget.state.call(lambda r: r.zadd(budget.slots_key, {"planted": score}))
    lease = await budget.acquire("c")
    assert await budget.state.call(lambda r: r.zscore(budget.slots_key, "planted")) is None
    lease.release()


async def test_leases_redis_lost_unnoticed_are_written_back_by_the_renewer(
        make_budget: Make) -> None:
    # Redis restarted empty (or failed over to a replica that missed the writes) faster
    # than any call noticed: no outage, so no recovery writes back. The renewer renewed
    # only the members still there, so the slots in use were free to the fleet: twice
    # the cap. (FLUSHALL stands in for the restart: an unnoticed one is its effect.)
    holder = await make_budget(max_in_flight=1, lease_time=1.0)
    lease = await holder.acquire("c")
    await holder.state.call(lambda r: r.flushall())
    await wait_until(zcard_is(holder, 1), "the held lease written back")
    other = await make_budget(max_in_flight=1, queue_timeout=0)
    with pytest.raises(TenantBusy):
        await other.acquire("c")
    assert holder.state.outages == 0
    lease.release()
    await wait_until(zcard_is(holder, 0), "released")


async def test_a_release_during_a_renewal_is_not_undone_by_it(make_budget: Make) -> None:
    """The renewal writes back what it was given; a lease released while the renewal was
    on its way is released again after it (never held in Redis for a lease time)."""
    budget = await make_budget(max_in_flight=2, lease_time=30.0)
    lease = await budget.acquire("c")
    ids = [*budget._held]  # what the renewal on its way carries
    lease.release()
    await wait_until(zcard_is(budget, 0), "the release reached Redis first")
    await budget._renewed(ids)  # then the renewal
    await wait_until(zcard_is(budget, 0), "released again after it")


async def test_a_client_gone_while_its_ask_is_in_flight_leaks_no_slot(make_budget: Make) -> None:
    # queue_timeout 0: the request itself asks. Cancelled mid-call (the client went), the
    # releases the ask carried were dropped (sent neither then nor later) and a slot the
    # script may have granted was nobody's: both held in Redis for a whole lease (30 s)
    budget = await make_budget(max_in_flight=1, queue_timeout=0, lease_time=30.0)
    (await budget.acquire("c")).release()  # queued: the next ask carries it
    asking = asyncio.ensure_future(budget.acquire("c"))
    await asyncio.sleep(0)  # the task runs up to its Redis call, carrying the release
    assert not budget._releasing
    assert not asking.done()
    asking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asking
    await wait_until(zcard_is(budget, 0), "nothing held in Redis")
    (await budget.acquire("c")).release()  # the slot is free at once



async def test_an_ask_sent_again_counts_its_slots_once(make_budget: Make) -> None:
    # redis-py sends a command again once when its reply is lost (a reset connection, a
    # socket timeout: a slow Redis). The script ran twice: the second run counted the
    # first one's grants as in use and granted none, so those slots were nobody's (and
    # never renewed) for a whole lease
    budget = await make_budget(max_in_flight=2, lease_time=30.0)
    keys = [budget.slots_key, budget.tat_key, budget.waiting_key]
    args: list[str | int | float] = [2, 2, 0, 0, budget.lease_ms, budget.channel, 0,
                                     "x:1", "x:2"]
    first = await budget._run(budget._acquire, keys, args)
    again = await budget._run(budget._acquire, keys, args)  # the same call, once more
    assert int(first[0]) == int(again[0]) == 2
    assert await zcard(budget) == 2


async def test_a_budget_key_redis_refuses_stops_no_other_write_back(
        make_budget: Make) -> None:
    # the budget's write-back is the first recovery callback (app.py makes it first): a
    # WRONGTYPE on its key made SharedState take it for "down again" and skip the rest
    # (the fleet's token, the user session), with Redis up: skipped until the next outage
    budget = await make_budget(max_in_flight=2)
    lease = await budget.acquire("c")
    ran: list[str] = []

    async def token_write_back() -> None:
        ran.append("token")

    budget.state.on_recovery(token_write_back)
    await budget.state.call(lambda r: r.set(budget.slots_key, b"not a sorted set"))
    budget.state._down("unreachable", OSError("a blip"))  # the watcher PINGs: back at once
    await wait_until(lambda: budget.state.recoveries == 1, "Redis seen back")
    await wait_until(lambda: ran == ["token"], "the other write-back ran")
    lease.release()


async def test_releases_redis_refused_are_sent_again_without_an_outage(
        make_budget: Make) -> None:
    # a release Redis refused (up: a key of the wrong type) was kept for a recovery that
    # never comes (Redis was never DOWN): kept for the process's life, one set per refusal
    budget = await make_budget(max_in_flight=2)
    lease = await budget.acquire("c")
    await budget.state.call(lambda r: r.set(budget.slots_key, b"not a sorted set"))
    budget._fleet_waits = True  # (the release goes at once)
    lease.release()
    await wait_until(lambda: budget.release_failures == 1, "the release refused")
    await budget.state.call(lambda r: r.delete(budget.slots_key))
    await wait_until(lambda: not budget.fallback, "sharing again")
    again = await budget.acquire("c")  # an ask that Redis answers
    await wait_until(lambda: not budget._unreleased, "the refused release sent again")
    again.release()
