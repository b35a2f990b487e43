"""``tenant.read_timeout`` for every exchange, on one timer.

aiohttp's own read timeout re-arms an event-loop timer on every read from the tenant; at a
few thousand requests a second that timer work costs more than all of fwproxy's access
checks. Here each exchange only notes when it starts and stops waiting for the tenant (two
clock reads), and one timer, armed while anything is in flight, sweeps a few times per
timeout period: an exchange that has waited longer than the timeout has its task cancelled,
and leaving `Stall.timed` turns that cancellation into `UpstreamTimeout` at the await it
interrupted (the way `asyncio.timeout` does it). Only an exchange inside one of those
awaits (``with Stall.timed(...)``) is ever cancelled. A timeout fires between `timeout` and
`timeout + tick` after the wait began.

Only waiting for the tenant counts: not a slow client's upload, not a slow client reading
the response (the proxy stops reading the tenant while the client catches up). Those are
`ClientWatch`'s, on the same pattern: ``limits.client_body_timeout`` and
``limits.client_send_timeout``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .exceptions import UpstreamTimeout


class Stall:
    """One exchange's waiting state, for `Watchdog`.

    The handler *times* the awaits that turn a cancellation into a timeout
    (``with stall.timed(...)``), and only then can the watchdog fire. Within one the wait
    counts from `since`: at once for a request without a body and for the next piece
    of the answer; for an upload, from when the body's writer (aiohttp runs it in a task of
    its own) hands the tenant a chunk, and once the whole body is sent. The writer names
    the attempt it belongs to, so a writer of an earlier attempt, still finishing, cannot
    move the clock.
    """

    __slots__ = ("_what", "attempt", "fired", "since", "task", "timing")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self._what: Callable[[], str] = str
        self.attempt = 0
        self.timing = False
        self.since = math.inf  # when it began waiting for the tenant; inf: not waiting
        self.fired = False

    def timed(self, waiting: bool, what: Callable[[], str]) -> Stall:
        """Use as ``with stall.timed(...) as attempt:`` around one await on the tenant. In
        it the watchdog may fire; its cancellation leaves the block as `UpstreamTimeout`
        saying `what()`. `attempt` is for the body's writer (`waiting`, `idle`)."""
        self.attempt += 1
        self.timing = True
        self.since = time.monotonic() if waiting else math.inf
        self._what = what
        return self

    def __enter__(self) -> int:
        return self.attempt

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.timing = False
        self.since = math.inf
        if not self.fired or not isinstance(exc, asyncio.CancelledError):
            return
        self.fired = False
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+; on 3.10 a shutdown
        if uncancel is not None and uncancel() > 0:  # racing the timeout ends as a 504
            return  # someone else's cancellation too (shutdown): it goes on
        raise UpstreamTimeout(self._what()) from None

    def waiting(self, attempt: int) -> None:
        """From the body's writer: the tenant has a chunk to take, or the whole body."""
        if attempt == self.attempt and self.timing:
            self.since = time.monotonic()

    def idle(self, attempt: int) -> None:
        """From the body's writer: waiting for the client's next bytes, not the tenant."""
        if attempt == self.attempt and self.timing:
            self.since = math.inf


class Sweep:
    """One timer for everything a timeout watches: armed while something is watched, it
    runs `_fire_late` every `tick` (an eighth of the timeout, 10 ms to 1 s)."""

    def __init__(self, timeout: float) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.configure(timeout)

    def configure(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(1.0, max(0.01, timeout / 8))

    @property
    def armed(self) -> bool:
        """Whether the sweep timer is set (only while something is in flight)."""
        return self._timer is not None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        if self.timeout > 0 and self._fire_late():  # (a reload may have lifted the limit)
            assert self._loop is not None
            self._timer = self._loop.call_later(self.tick, self._sweep)

    def _fire_late(self) -> bool:
        """End what has waited past the timeout; whether anything is still watched."""
        raise NotImplementedError


class Watchdog(Sweep):
    """Cancels exchanges that have waited for the tenant longer than `timeout` seconds
    (0: no limit, nothing is watched)."""

    def __init__(self, timeout: float) -> None:
        self._stalls: set[Stall] = set()
        super().__init__(timeout)

    def configure(self, timeout: float) -> None:
        """Set the timeout (at start, and on a reload): it holds from now on for every
        exchange already watched and every one started later; 0 stops watching."""
        super().configure(timeout)
        if timeout <= 0:
            self._stalls.clear()
            self.close()

    def start(self) -> Stall:
        """Watch the current task from now until `stop`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        # with the loop given, current_task() skips get_running_loop(): a getpid() on 3.11
        task = asyncio.current_task(loop)
        assert task is not None
        stall = Stall(task)
        if self.timeout <= 0:
            return stall
        self._stalls.add(stall)
        if self._timer is None:
            self._arm(loop)
        return stall

    def stop(self, stall: Stall) -> None:
        self._stalls.discard(stall)

    def _fire_late(self) -> bool:
        if not self._stalls:
            return False
        deadline = time.monotonic() - self.timeout
        for stall in self._stalls:
            if stall.timing and stall.since < deadline and not stall.fired:
                stall.fired = True
                stall.task.cancel()
        return True


class Owed:
    """Something a client owes the proxy (`ClientWatch`): the next bytes of its request
    body, or taking the response. `since`: when it began to be owed with no progress
    (inf: nothing owed now). `backlog`, when given, is read by the sweep instead: the bytes
    waiting for the client (its transport's write buffer); progress is that shrinking."""

    __slots__ = ("_fire", "_seen", "backlog", "since")

    def __init__(self, fire: Callable[[], None], backlog: Callable[[], int] | None) -> None:
        self._fire = fire
        self.backlog = backlog
        self.since = math.inf
        self._seen = 0

    def _check(self, now: float, deadline: float) -> bool:
        """Whether it has been owed since before `deadline`, after noting any progress."""
        if self.backlog is not None:
            size = self.backlog()
            if size == 0:
                self.since = math.inf
            elif size < self._seen or self.since == math.inf:
                self.since = now
            self._seen = size
        return self.since < deadline


class ClientWatch(Sweep):
    """A client-side timeout (``limits.client_body_timeout``, ``client_send_timeout``) for
    every request, on one timer, the way `Watchdog` does the tenant's: a body read notes
    when it starts and stops waiting (two clock reads); a response is only looked at by the
    sweep (its transport's write buffer). What has been owed for longer than `timeout` is
    handed to its `fire` (which ends it), between `timeout` and `timeout + 2 * tick` late.
    0: no limit, nothing is watched."""

    def __init__(self, timeout: float) -> None:
        self._owed: set[Owed] = set()
        super().__init__(timeout)

    def watch(self, fire: Callable[[], None], backlog: Callable[[], int] | None = None
              ) -> Owed | None:
        """Watch until `unwatch`; None when there is no limit."""
        if self.timeout <= 0:
            return None
        owed = Owed(fire, backlog)
        self._owed.add(owed)
        if self._timer is None:
            self._arm(asyncio.get_running_loop())
        return owed

    def unwatch(self, owed: Owed | None) -> None:
        if owed is not None:
            self._owed.discard(owed)

    def _fire_late(self) -> bool:
        if not self._owed:
            return False
        now = time.monotonic()
        deadline = now - self.timeout
        for owed in [owed for owed in self._owed if owed._check(now, deadline)]:
            self._owed.discard(owed)
            owed._fire()
        return True
