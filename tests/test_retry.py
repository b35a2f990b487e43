"""Pure retry decisions (fwproxy/retry.py): tables, no event loop."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fwproxy.retry import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    BUDGET_FLOOR,
    BUDGET_WINDOW,
    Fail,
    Failure,
    Outcome,
    PassBack,
    RetryAfter,
    RetryBudget,
    RetryCounters,
    RetryPolicy,
    backoff,
    parse_http_date,
    parse_retry_after,
    retry_decision,
)

POLICY = RetryPolicy()  # retries 2, GET HEAD OPTIONS PUT DELETE, 20 s
WALL = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


def decide(method: str = "GET", outcome: Outcome = 503, attempt: int = 1,
           waited: float = 0.0, retry_after: str | None = None, **kw: Any) -> object:
    args: dict[str, Any] = {"replayable": True, "response_started": False,
                            "budget_allows": True, "rand": 0.5, "wall_now": WALL}
    policy = kw.pop("policy", POLICY)
    args.update(kw)
    return retry_decision(policy, method, outcome, attempt, waited, retry_after, **args)


@pytest.mark.parametrize(("method", "outcome", "expected"), [
    # statuses: only 429/502/503/504 are retried, and only for retry_methods
    ("GET", 200, PassBack("answered")),
    ("GET", 500, PassBack("answered")),
    ("GET", 401, PassBack("answered")),
    ("GET", 429, RetryAfter(0.25, "status_429")),
    ("GET", 502, RetryAfter(0.25, "status_502")),
    ("HEAD", 503, RetryAfter(0.25, "status_503")),
    ("OPTIONS", 504, RetryAfter(0.25, "status_504")),
    ("PUT", 503, RetryAfter(0.25, "status_503")),
    ("delete", 503, RetryAfter(0.25, "status_503")),  # method case does not matter
    ("POST", 503, PassBack("method")),
    ("PATCH", 502, PassBack("method")),
    # the request may have reached the tenant: only idempotent methods
    ("GET", Failure.RESET_BEFORE_RESPONSE, RetryAfter(0.25, "reset_before_response")),
    ("PUT", Failure.CLOSED_BEFORE_RESPONSE, RetryAfter(0.25, "closed_before_response")),
    ("POST", Failure.RESET_BEFORE_RESPONSE, Fail("method")),
    ("POST", Failure.CLOSED_BEFORE_RESPONSE, Fail("method")),
    # nothing was sent: any method
    ("POST", Failure.NOT_SENT, RetryAfter(0.25, "not_sent")),
    ("PATCH", Failure.CONNECT_REFUSED, RetryAfter(0.25, "connect_refused")),
    # a timeout is never retried: the tenant may still be doing the work
    ("GET", Failure.TIMEOUT, Fail("timeout")),
])
def test_what_is_retried(method: str, outcome: Outcome, expected: object) -> None:
    assert decide(method, outcome) == expected


@pytest.mark.parametrize(("kw", "expected"), [
    ({"response_started": True}, PassBack("response_started")),
    ({"response_started": True, "outcome": Failure.NOT_SENT}, Fail("response_started")),
    ({"replayable": False}, PassBack("body")),
    ({"replayable": False, "outcome": Failure.NOT_SENT}, Fail("body")),
    ({"attempt": 2}, RetryAfter(0.5, "status_503")),  # the second retry
    ({"attempt": 3}, PassBack("exhausted")),  # retries: 2 -> three attempts at most
    ({"attempt": 1, "policy": RetryPolicy(retries=0)}, PassBack("exhausted")),
    ({"budget_allows": False}, PassBack("budget")),
    ({"budget_allows": False, "outcome": Failure.CONNECT_REFUSED}, Fail("budget")),
    ({"waited": 20.0}, PassBack("max_wait")),
    ({"waited": 19.9}, RetryAfter(0.1, "status_503")),  # backoff (0.25) clipped to the rest
    # checked in order: a non-idempotent method stops before the budget is even asked
    ({"method": "POST", "budget_allows": False}, PassBack("method")),
    ({"attempt": 3, "budget_allows": False}, PassBack("exhausted")),
])
def test_when_retries_stop(kw: dict[str, Any], expected: object) -> None:
    result = decide(**kw)
    if isinstance(expected, RetryAfter) and isinstance(result, RetryAfter):
        assert result.cause == expected.cause
        assert result.seconds == pytest.approx(expected.seconds)
    else:
        assert result == expected


@pytest.mark.parametrize(("header", "waited", "expected"), [
    ("3", 0.0, RetryAfter(3.0, "status_503")),  # the tenant's delay, not the backoff
    ("0", 0.0, RetryAfter(0.0, "status_503")),
    ("20", 0.0, RetryAfter(20.0, "status_503")),  # exactly what is left: fits
    ("21", 0.0, PassBack("retry_after")),  # longer than retry_max_wait: pass it back
    ("5", 16.0, PassBack("retry_after")),  # longer than what is left of it
    ("Sun, 06 Nov 1994 08:49:47 GMT", 0.0, RetryAfter(10.0, "status_503")),
    ("Sun, 06 Nov 1994 09:49:37 GMT", 0.0, PassBack("retry_after")),
    ("-3", 0.0, RetryAfter(0.25, "status_503")),  # garbage: the backoff
    ("soon", 0.0, RetryAfter(0.25, "status_503")),
    ("Sun, 06 Nov 1994 08:00:00 GMT", 0.0, RetryAfter(0.25, "status_503")),  # in the past
])
def test_retry_after_from_the_tenant(header: str, waited: float, expected: object) -> None:
    assert decide(retry_after=header, waited=waited) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("120", 120.0),
    (" 7 ", 7.0),
    ("0", 0.0),
    ("9" * 5000, math.inf),  # no giant int parse; far longer than any max_wait
    ("-1", None),
    ("1.5", None),  # delta-seconds is 1*DIGIT
    ("+5", None),
    ("\uff15", None),  # a full-width digit is not a DIGIT
    ("", None),
    ("Sun, 06 Nov 1994 08:49:38 GMT", 1.0),  # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:40 GMT", 3.0),  # obsolete RFC 850
    ("Sun Nov  6 08:49:42 1994", 5.0),  # asctime
    ("Sun, 06 Nov 1994 08:49:37 GMT", None),  # now: not in the future
    ("Sun, 06 Nov 1994 08:49:38 +0000", None),  # only GMT
    ("Sun, 31 Nov 1994 08:49:38 GMT", None),  # no such day
    ("Sun, 06 Nov 1994 25:49:38 GMT", None),
    ("06 Nov 1994 08:49:38 GMT", None),
    ("Sun, 06 Foo 1994 08:49:38 GMT", None),
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, WALL) == expected


def test_rfc850_two_digit_years_more_than_50_years_ahead_are_in_the_past() -> None:
    now = 1.8e9  # 2027
    assert parse_http_date("Sunday, 01-Jan-78 00:00:00 GMT", now) == 252460800.0  # 1978
    assert parse_http_date("Friday, 01-Jan-77 00:00:00 GMT", now) == 3376684800.0  # 2077
    assert parse_http_date("Monday, 01-Jan-29 00:00:00 GMT", now) == 1861920000.0


def test_a_leap_second_date() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT", 0) == 1483228800.0


@pytest.mark.parametrize(("attempt", "rand", "expected"), [
    (1, 0.0, 0.0),
    (1, 0.999, BACKOFF_BASE * 0.999),
    (2, 0.5, BACKOFF_BASE),
    (3, 1.0, 4 * BACKOFF_BASE),
    (6, 1.0, BACKOFF_CAP),  # 16 s, capped
    (10_000, 0.5, BACKOFF_CAP / 2),  # no overflow
])
def test_full_jitter_backoff(attempt: int, rand: float, expected: float) -> None:
    assert backoff(attempt, rand) == pytest.approx(expected)


def test_the_policy_from_config_upper_cases_the_methods() -> None:
    policy = RetryPolicy.of(3, ["get", "Put"], 5)
    assert policy == RetryPolicy(3, frozenset({"GET", "PUT"}), 5)


def test_budget_floor_allows_ten_a_second_with_no_requests() -> None:
    budget = RetryBudget(0.2)
    for i in range(int(BUDGET_FLOOR * BUDGET_WINDOW)):
        assert budget.can_retry(100.0)
        budget.record_retry(100.0 + i / 1000)
    assert not budget.can_retry(100.5)


def test_budget_grows_with_requests_by_the_ratio() -> None:
    budget = RetryBudget(0.2)
    for _ in range(1000):
        budget.record_request(50.0)
    for _ in range(100 + 200):  # the floor plus 20% of 1000
        assert budget.can_retry(50.0)
        budget.record_retry(50.0)
    assert not budget.can_retry(50.0)


def test_budget_window_slides_and_memory_stays_constant() -> None:
    budget = RetryBudget(0.0)
    for _ in range(100):
        budget.record_retry(10.2)
    assert not budget.can_retry(19.9)  # the retries at second 10 are still in the window
    assert budget.can_retry(20.0)  # ten seconds later they are gone
    assert budget.window(20.0) == (0, 0)
    for second in range(1000):  # a long run reuses the same ten buckets
        budget.record_request(float(second))
    assert budget.window(999.5) == (BUDGET_WINDOW, 0)
    assert len(budget._stamps) == BUDGET_WINDOW


def test_counters_by_cause_and_by_reason() -> None:
    counters = RetryCounters()
    for decision in (RetryAfter(1, "status_503"), RetryAfter(0, "status_503"),
                     RetryAfter(0, "not_sent"), PassBack("answered"), PassBack("budget"),
                     Fail("budget"), Fail("method")):
        counters.count(decision)
    assert counters.retries == {"status_503": 2, "not_sent": 1}
    assert counters.stopped == {"budget": 2, "method": 1}  # an answer is no stop
    assert counters.budget_refused == 2
