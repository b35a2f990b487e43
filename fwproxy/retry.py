"""Safe retries of a tenant attempt, decided without I/O: `now` and the dice are passed in.

Theory of operation
-------------------
One client request may make several tenant attempts. After each failed one the handler
asks `retry_decision` what to do, giving what it knows: the method, how the attempt ended
(an `Outcome`: a connection failure of a named kind, or the tenant's status), the attempt's
number, the seconds already spent waiting, the tenant's ``Retry-After``, whether the body
can be sent again and whether any response byte has reached the client. The answer is one
of three, checked in this order (the first that applies wins):

    a status that is not 429/502/503/504                 -> PassBack   (it is the answer)
    response bytes already reached the client            -> stop "response_started"
    a tenant timeout (the request may be running there)  -> stop "timeout"
    method not in retry_methods, and a request byte
      may have been sent (anything but not_sent /
      connect_refused, which any method may retry)       -> stop "method"
    attempt > retries                                    -> stop "exhausted"
    body too large to replay                             -> stop "body"
    Retry-After longer than what is left of
      retry_max_wait                                     -> stop "retry_after"
    nothing left of retry_max_wait                       -> stop "max_wait"
    the retry budget is spent                            -> stop "budget"
    otherwise                                            -> RetryAfter(wait, cause)

"stop" is `PassBack(reason)` when the tenant answered (its answer goes to the client as it
is) and `Fail(reason)` when it did not (the handler's 502). The budget is asked last, so
"refused by the budget" counts only retries that would otherwise have happened.

The wait is the tenant's ``Retry-After`` when it sends a usable one (delta-seconds or an
HTTP-date, RFC 9110 section 10.2.3; garbage, a negative number or a date in the past is
ignored), else exponential backoff with full jitter: uniform in
``[0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))]``, clipped to what is left of
``retry_max_wait``. Full jitter spreads a fleet's retries evenly instead of in waves (the
AWS "Exponential Backoff and Jitter" result). A 0.5 s base suits the failures retried here:
a stale pooled connection or a reset is usually fixed by the next connection at once, and an
app pool restarting takes seconds, which the growing ceiling reaches by the fourth retry;
with the default two retries they add 0.75 s on average, 1.5 s at most. The 10 s cap
keeps a long retry chain probing at least every 10 s; ``retry_max_wait`` bounds the total.

`RetryBudget` keeps retries from multiplying an outage (Finagle's retry budget): over a
sliding 10 s window, retries may be at most ``ratio`` of the requests seen, plus a floor of
10 a second. Ten one-second buckets, so memory stays constant whatever the load.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # RFC 9110 9.2.2
BUDGET_WINDOW = 10  # seconds, one bucket each
BUDGET_FLOOR = 10.0  # retries a second allowed whatever the ratio


class Failure(enum.Enum):
    """How an attempt ended without a response from the tenant."""

    NOT_SENT = "not_sent"  # the connection failed before a single request byte went out
    CONNECT_REFUSED = "connect_refused"  # TCP/TLS connect failed: nothing was sent either
    RESET_BEFORE_RESPONSE = "reset_before_response"  # sent (maybe in part), then RST
    CLOSED_BEFORE_RESPONSE = "closed_before_response"  # sent, then closed without answer
    TIMEOUT = "timeout"  # tenant.read_timeout passed: the request may be running there


Outcome = Failure | int  # a failure, or the status the tenant answered with

NOTHING_SENT = frozenset({Failure.NOT_SENT, Failure.CONNECT_REFUSED})


@dataclass(frozen=True)
class RetryPolicy:
    """The ``tenant.retries`` family of settings."""

    retries: int = 2
    methods: frozenset[str] = DEFAULT_METHODS  # upper case
    max_wait: float = 20.0

    @classmethod
    def of(cls, retries: int, methods: Collection[str], max_wait: float) -> RetryPolicy:
        return cls(retries, frozenset(m.upper() for m in methods), max_wait)


@dataclass(frozen=True)
class RetryAfter:
    """Wait `seconds`, then make the next attempt. `cause` names the outcome (a metrics
    label from a closed set: a `Failure` value or ``status_NNN``)."""

    seconds: float
    cause: str


@dataclass(frozen=True)
class PassBack:
    """Not retried: the tenant's answer goes back to the client as it is."""

    reason: str


@dataclass(frozen=True)
class Fail:
    """Not retried, and there is no answer to pass back: the handler's error response."""

    reason: str


Decision = RetryAfter | PassBack | Fail


def cause_of(outcome: Outcome) -> str:
    return outcome.value if isinstance(outcome, Failure) else f"status_{outcome}"


def retry_decision(
    policy: RetryPolicy,
    method: str,
    outcome: Outcome,
    attempt: int,
    waited: float,
    retry_after: str | None,
    *,
    replayable: bool,
    response_started: bool,
    budget_allows: bool,
    rand: float,
    wall_now: float,
) -> Decision:
    """What to do after attempt number `attempt` (1: the first) ended in `outcome` (the
    table in the module docstring). `waited`: seconds already spent between attempts of
    this request; `rand` in [0, 1) for the jitter; `wall_now` (time.time()) for a
    ``Retry-After`` date."""
    if not isinstance(outcome, Failure) and outcome not in RETRY_STATUSES:
        return PassBack("answered")
    stop = Fail if isinstance(outcome, Failure) else PassBack
    if response_started:
        return stop("response_started")
    if outcome is Failure.TIMEOUT:
        return stop("timeout")
    if outcome not in NOTHING_SENT and method.upper() not in policy.methods:
        return stop("method")
    if attempt > policy.retries:
        return stop("exhausted")
    if not replayable:
        return stop("body")
    left = policy.max_wait - waited
    asked = parse_retry_after(retry_after, wall_now)
    if asked is not None and asked > left:
        return stop("retry_after")
    if left <= 0:
        return stop("max_wait")
    if not budget_allows:
        return stop("budget")
    if asked is None:
        asked = min(backoff(attempt, rand), left)
    return RetryAfter(asked, cause_of(outcome))


def backoff(attempt: int, rand: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2 ** (attempt - 1))) for `rand` in [0, 1)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(max(0, attempt - 1), 64))
    return ceiling * rand


_DELTA = re.compile(r"[0-9]+")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ 0-9][0-9]) {_TIME} ([0-9]{{4}})")


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds, or an HTTP-date in any
    of RFC 9110's three formats (section 5.6.7) minus `wall_now`. None for no header,
    garbage, a negative number or a date not in the future."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA.fullmatch(value):
        return float(value) if len(value) <= 12 else math.inf  # (no 4300-digit int parse)
    date = parse_http_date(value, wall_now)
    if date is None or date <= wall_now:
        return None
    return date - wall_now


def parse_http_date(value: str, wall_now: float) -> float | None:
    """An HTTP-date as seconds since the epoch, or None when it is not one."""
    if match := _IMF.fullmatch(value):
        day, month, year, hh, mm, ss = match.groups()
    elif match := _RFC850.fullmatch(value):
        day, month, short, hh, mm, ss = match.groups()
        # RFC 9110 5.6.7: a two-digit year more than 50 years in the future is in the past
        this_year = _year_of(wall_now)
        full = this_year - this_year % 100 + int(short)
        year = str(full - 100 if full > this_year + 50 else full)
    elif match := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = match.groups()
    else:
        return None
    try:  # datetime checks the ranges (a 31 November is garbage); a leap second is :59 + 1
        stamp = datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm),
                         min(int(ss), 59), tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    return stamp + (int(ss) == 60)


def _year_of(wall_now: float) -> int:
    try:
        return datetime.fromtimestamp(wall_now, timezone.utc).year
    except (ValueError, OverflowError, OSError):
        return 1970


class RetryBudget:
    """Retries allowed over the last `BUDGET_WINDOW` seconds: ``ratio`` of the requests,
    plus `BUDGET_FLOOR` a second. The clock is passed in (monotonic seconds)."""

    __slots__ = ("_requests", "_retries", "_stamps", "ratio")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio  # tenant.retry_budget; may change on a reload
        self._stamps = [-1] * BUDGET_WINDOW  # which second each bucket holds
        self._requests = [0] * BUDGET_WINDOW
        self._retries = [0] * BUDGET_WINDOW

    def _bucket(self, now: float) -> int:
        second = math.floor(now)
        index = second % BUDGET_WINDOW
        if self._stamps[index] != second:
            self._stamps[index] = second
            self._requests[index] = self._retries[index] = 0
        return index

    def window(self, now: float) -> tuple[int, int]:
        """Requests and retries recorded in the last `BUDGET_WINDOW` seconds."""
        oldest = math.floor(now) - BUDGET_WINDOW
        requests = retries = 0
        for stamp, req, ret in zip(self._stamps, self._requests, self._retries, strict=True):
            if stamp > oldest:
                requests += req
                retries += ret
        return requests, retries

    def record_request(self, now: float) -> None:
        """A client request began (once per request, not per attempt)."""
        self._requests[self._bucket(now)] += 1

    def record_retry(self, now: float) -> None:
        """A retry is about to be made."""
        self._retries[self._bucket(now)] += 1

    def can_retry(self, now: float) -> bool:
        """Whether one more retry fits in the budget now (it records nothing)."""
        requests, retries = self.window(now)
        return retries < self.ratio * requests + BUDGET_FLOOR * BUDGET_WINDOW


class RetryCounters:
    """What the metrics layer reads: retries made by cause, and requests not retried by
    reason (``budget``: refused by the retry budget). Both keys come from closed sets."""

    __slots__ = ("retries", "stopped")

    def __init__(self) -> None:
        self.retries: dict[str, int] = {}
        self.stopped: dict[str, int] = {}

    def count(self, decision: Decision) -> None:
        if isinstance(decision, RetryAfter):
            self.retries[decision.cause] = self.retries.get(decision.cause, 0) + 1
        elif decision.reason != "answered":
            self.stopped[decision.reason] = self.stopped.get(decision.reason, 0) + 1

    @property
    def budget_refused(self) -> int:
        return self.stopped.get("budget", 0)
