"""The tenant's circuit breaker (fwproxy/breaker.py): sequences as tables, no event loop."""

from __future__ import annotations

import pytest

from fwproxy.breaker import (
    ALLOWED,
    HALF_OPEN_RETRY,
    PROBE_TIMEOUT,
    Allowed,
    Breaker,
    Refused,
    State,
    TenantUnavailable,
    is_failure,
)
from fwproxy.retry import Failure, Outcome


def fail(breaker: Breaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.allow(now)
        assert isinstance(ticket, Allowed)
        breaker.record(now, ticket, False)


def state(breaker: Breaker) -> State:
    """(Read through a call: mypy would narrow the attribute across calls that change it.)"""
    return breaker.state


@pytest.mark.parametrize(("outcome", "failed"), [
    (Failure.CONNECT_REFUSED, True),
    (Failure.RESET_BEFORE_RESPONSE, True),
    (Failure.CLOSED_BEFORE_RESPONSE, True),
    (Failure.TIMEOUT, True),  # a hung tenant is the commonest outage
    (Failure.NOT_SENT, None),  # a stale pooled connection says nothing about now
    (502, True), (503, True), (504, True),
    (200, False), (404, False), (429, False), (500, False),  # it answered: alive
])
def test_what_counts_as_a_failure(outcome: Outcome, failed: bool | None) -> None:
    assert is_failure(outcome) is failed


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    breaker = Breaker(failures=3, cooldown=5)
    fail(breaker, 0.0, 2)
    breaker.record(0.0, ALLOWED, True)
    fail(breaker, 0.0, 2)
    assert state(breaker) is State.CLOSED
    fail(breaker, 1.0)
    assert state(breaker) is State.OPEN
    assert breaker.allow(1.0) == Refused(5.0)
    assert breaker.allow(4.5) == Refused(1.5)
    assert breaker.transitions == {("closed", "open"): 1}


def test_no_verdict_leaves_the_count_alone() -> None:
    breaker = Breaker(failures=2, cooldown=5)
    fail(breaker, 0.0)
    breaker.record(0.0, ALLOWED, None)
    fail(breaker, 0.0)
    assert state(breaker) is State.OPEN


# Each row: (time, what happens, what is expected). "allow" expects the allow() result
# ("ok", "probe", or a Refused); "ok"/"fail"/"none" record the last probe ticket's verdict.
SEQUENCES = {
    "probe succeeds: closed, cooldown back to base": [
        (10.0, "allow", Refused(5.0)),
        (15.0, "allow", "probe"),
        (15.1, "allow", Refused(HALF_OPEN_RETRY)),  # exactly one probe
        (15.2, "ok", State.CLOSED),
        (15.3, "allow", "ok"),
    ],
    "probe fails: open again with the cooldown doubled, up to the cap": [
        (15.0, "allow", "probe"),
        (15.5, "fail", State.OPEN),
        (25.0, "allow", Refused(0.5)),  # 10 s from 15.5
        (25.5, "allow", "probe"),
        (26.0, "fail", State.OPEN),
        (45.0, "allow", Refused(1.0)),  # 20 s
        (46.0, "allow", "probe"),
        (46.0, "fail", State.OPEN),  # 40 s
        (86.0, "allow", "probe"),
        (86.0, "fail", State.OPEN),  # 80 s, capped at 60
        (145.9, "allow", Refused(0.1)),
        (146.0, "allow", "probe"),
        (147.0, "ok", State.CLOSED),
    ],
    "a probe with no verdict frees the slot for the next request": [
        (15.0, "allow", "probe"),
        (15.1, "none", State.HALF_OPEN),
        (15.2, "allow", "probe"),
        (15.3, "ok", State.CLOSED),
    ],
    "a lost probe is replaced after PROBE_TIMEOUT": [
        (15.0, "allow", "probe"),
        (15.0 + PROBE_TIMEOUT - 0.1, "allow", Refused(HALF_OPEN_RETRY)),
        (15.0 + PROBE_TIMEOUT, "allow", "probe"),
        (80.0, "ok", State.CLOSED),
    ],
}


@pytest.mark.parametrize("name", SEQUENCES)
def test_sequences(name: str) -> None:
    breaker = Breaker(failures=2, cooldown=5)
    fail(breaker, 10.0, 2)  # opens at 10 for 5 s
    ticket = ALLOWED
    for now, action, expected in SEQUENCES[name]:
        if action == "allow":
            got = breaker.allow(now)
            if expected == "probe":
                assert isinstance(got, Allowed)
                assert got.probe
                ticket = got
            elif expected == "ok":
                assert got == ALLOWED
            else:
                assert isinstance(got, Refused)
                assert isinstance(expected, Refused)
                assert got.retry_after == pytest.approx(expected.retry_after), (now, name)
        else:
            breaker.record(now, ticket, {"ok": True, "fail": False, "none": None}[action])
            assert state(breaker) is expected, (now, name)


def test_a_replaced_probes_late_verdict_is_ignored() -> None:
    breaker = Breaker(failures=1, cooldown=5)
    fail(breaker, 0.0)
    first = breaker.allow(5.0)
    second = breaker.allow(5.0 + PROBE_TIMEOUT)
    assert isinstance(first, Allowed)
    assert isinstance(second, Allowed)
    assert first.probe != second.probe
    breaker.record(70.0, first, True)
    assert state(breaker) is State.HALF_OPEN
    breaker.record(70.0, second, False)
    assert state(breaker) is State.OPEN


def test_ordinary_attempts_count_only_while_closed() -> None:
    breaker = Breaker(failures=1, cooldown=5)
    early = breaker.allow(0.0)  # admitted before the breaker opened
    assert isinstance(early, Allowed)
    fail(breaker, 0.0)
    breaker.record(1.0, early, True)  # stale good news does not close it
    assert state(breaker) is State.OPEN
    probe = breaker.allow(5.0)
    assert isinstance(probe, Allowed)
    breaker.record(5.1, early, True)  # nor does it decide for the probe
    assert state(breaker) is State.HALF_OPEN
    breaker.record(5.2, probe, True)
    assert state(breaker) is State.CLOSED


def test_transitions_are_counted() -> None:
    breaker = Breaker(failures=1, cooldown=5)
    fail(breaker, 0.0)
    fail(breaker, 5.0)  # the probe fails
    probe = breaker.allow(15.0)
    assert isinstance(probe, Allowed)
    breaker.record(15.0, probe, True)
    assert breaker.transitions == {
        ("closed", "open"): 1, ("open", "half_open"): 2, ("half_open", "open"): 1,
        ("half_open", "closed"): 1,
    }


def test_zero_failures_disables_it() -> None:
    breaker = Breaker(failures=0, cooldown=5)
    assert not breaker.enabled
    fail(breaker, 0.0, 100)
    assert breaker.allow(0.0) == ALLOWED
    assert state(breaker) is State.CLOSED
    assert breaker.transitions == {}


def test_reload_disabling_closes_it_and_a_new_cooldown_applies_next_time() -> None:
    breaker = Breaker(failures=1, cooldown=5)
    fail(breaker, 0.0)
    breaker.configure(1, 30)
    assert breaker.allow(1.0) == Refused(4.0)  # the current opening keeps its end
    breaker.configure(0, 30)
    assert state(breaker) is State.CLOSED
    assert breaker.allow(1.0) == ALLOWED
    breaker.configure(1, 30)
    fail(breaker, 2.0)
    assert breaker.allow(2.0) == Refused(30.0)


def test_a_cooldown_above_the_cap_is_kept() -> None:
    breaker = Breaker(failures=1, cooldown=90)
    fail(breaker, 0.0)
    fail(breaker, 90.0)  # the probe fails: doubled, capped at max(60, 90)
    assert breaker.allow(90.0) == Refused(90.0)


def test_view_and_the_error_for_clients() -> None:
    breaker = Breaker(failures=1, cooldown=5)
    fail(breaker, 0.0)
    assert breaker.view(1.5) == {"state": "open", "failures": 0, "cooldown": 5,
                                 "retry_after": 3.5, "enabled": True}
    refused = breaker.allow(1.5)
    assert isinstance(refused, Refused)
    assert refused.header == "4"
    assert Refused(0.01).header == "1"
    exc = TenantUnavailable(refused)
    assert (exc.status, exc.error, exc.retry_after) == (503, "tenant_unavailable", "4")
    assert "4s" in str(exc)
