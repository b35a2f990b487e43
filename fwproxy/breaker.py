"""The tenant's circuit breaker: stop sending attempts to a tenant that keeps failing.

Theory of operation
-------------------
Every tenant attempt (a retry is one too) asks `Breaker.allow(now)` first and reports how
it went with `Breaker.record(now, ticket, ok)`: ``ok`` is `is_failure`'s opposite (a connect
error, a reset or close before a response, a timeout, or 502/503/504 from the tenant is a
failure; any other answer, 4xx and 500 included, shows the tenant alive), or None when the
attempt says nothing about the tenant (the client went away; the connection was a stale
pooled one, `Failure.NOT_SENT`)::

              breaker_failures consecutive failures
    CLOSED ─────────────────────────────────────────────> OPEN (cooldown = breaker_cooldown)
      ▲                                                     │ refuse everything, at once,
      │ the probe succeeds                                  │ Retry-After: what is left
      │ (cooldown back to breaker_cooldown)                 │ cooldown over: the next
      │                                                     ▼ request is the probe
      └───────────────────────────────────────────── HALF_OPEN ──> OPEN (cooldown doubled,
                                                     one probe       capped at 60 s) when
                                                     admitted        the probe fails

In HALF_OPEN exactly one attempt is admitted (its `Allowed` ticket carries the probe's
number); every other is refused with a 1 s Retry-After until the probe's verdict comes. A
probe with no verdict (None) frees the probe slot; so does one with no verdict within
`PROBE_TIMEOUT` (a handler that never reported), and a late verdict of a replaced probe is
ignored. Verdicts of ordinary attempts count only while CLOSED: an attempt admitted before
the breaker opened brings stale news.

``breaker_failures: 0`` disables it: `enabled` is False, `allow` admits everything and
`record` does nothing (the handler may skip both). Time is passed in (monotonic seconds);
nothing here does I/O. `transitions` counts each (from, to) pair for the metrics.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .exceptions import TenantUnavailable as TenantUnavailable  # (its home: exceptions)
from .retry import Failure, Outcome

COOLDOWN_CAP = 60.0
PROBE_TIMEOUT = 60.0  # a probe not reported on by then is presumed lost: probe again
HALF_OPEN_RETRY = 1.0  # Retry-After while the probe is out


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Allowed:
    """Go ahead. `probe`: the probe's number in HALF_OPEN, 0 for an ordinary attempt;
    give the ticket back to `record`."""

    probe: int = 0


ALLOWED = Allowed()


@dataclass(frozen=True)
class Refused:
    """Do not touch the tenant; answer 503 ``tenant_unavailable`` with `header`."""

    retry_after: float

    @property
    def header(self) -> str:
        """The Retry-After value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


def is_failure(outcome: Outcome) -> bool | None:
    """An attempt's verdict on the tenant's health: True failed, False alive, None no
    verdict (a stale pooled connection the tenant had closed says nothing about now)."""
    if isinstance(outcome, Failure):
        return None if outcome is Failure.NOT_SENT else True
    return outcome in (502, 503, 504)


class Breaker:
    """One tenant's breaker (the module docstring's state machine)."""

    __slots__ = ("_probe", "_probe_since", "_probes", "base_cooldown", "cap", "cooldown",
                 "failures", "open_until", "state", "threshold", "transitions")

    def __init__(self, failures: int, cooldown: float, cap: float = COOLDOWN_CAP) -> None:
        self.state = State.CLOSED
        self.failures = 0  # consecutive failed attempts while CLOSED
        self.open_until = 0.0
        self.transitions: dict[tuple[str, str], int] = {}
        self._probes = 0  # probes ever admitted: each one's number
        self._probe = 0  # the number of the probe out now; 0: none
        self._probe_since = 0.0
        self.threshold = failures
        self.base_cooldown = self.cooldown = cooldown
        self.cap = cap
        self.configure(failures, cooldown, cap)

    def configure(self, failures: int, cooldown: float, cap: float = COOLDOWN_CAP) -> None:
        """New settings (a reload). The state is kept, but disabling closes the breaker;
        a new cooldown applies from the next opening."""
        self.threshold = failures
        self.base_cooldown = cooldown
        self.cap = max(cap, cooldown)
        if self.state is State.CLOSED:
            self.cooldown = cooldown
        if not self.enabled and self.state is not State.CLOSED:
            self._close()

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def allow(self, now: float) -> Allowed | Refused:
        """Whether an attempt may go to the tenant now."""
        if self.state is State.CLOSED:
            return ALLOWED
        if self.state is State.OPEN:
            if now < self.open_until:
                return Refused(self.open_until - now)
            self._move(State.HALF_OPEN)
        if self._probe and now - self._probe_since < PROBE_TIMEOUT:
            return Refused(HALF_OPEN_RETRY)
        self._probes += 1
        self._probe, self._probe_since = self._probes, now
        return Allowed(self._probe)

    def record(self, now: float, ticket: Allowed, ok: bool | None) -> None:
        """How the attempt `ticket` admitted went: `ok` True alive, False failed, None no
        verdict."""
        if ticket.probe:
            if ticket.probe != self._probe or self.state is not State.HALF_OPEN:
                return  # a replaced probe's late word
            self._probe = 0
            if ok:
                self._close()
            elif ok is not None:
                self._open(now, min(self.cap, self.cooldown * 2))
            return
        if self.state is not State.CLOSED or ok is None or not self.enabled:
            return
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self._open(now, self.base_cooldown)

    def retry_after(self, now: float) -> float:
        """Seconds until an attempt may be admitted again (0: now)."""
        if self.state is State.OPEN:
            return max(0.0, self.open_until - now)
        if self.state is State.HALF_OPEN and self._probe:
            return HALF_OPEN_RETRY
        return 0.0

    def view(self, now: float) -> dict[str, object]:
        """For the status page and metrics: state, failures counted, current cooldown."""
        return {"state": self.state.value, "failures": self.failures,
                "cooldown": self.cooldown, "retry_after": self.retry_after(now),
                "enabled": self.enabled}

    def _open(self, now: float, cooldown: float) -> None:
        self.cooldown = cooldown
        self.open_until = now + cooldown
        self.failures = 0
        self._move(State.OPEN)

    def _close(self) -> None:
        self.failures = 0
        self.cooldown = self.base_cooldown
        self._probe = 0
        self._move(State.CLOSED)

    def _move(self, state: State) -> None:
        key = (self.state.value, state.value)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.state = state
