"""The simulated tenant's request limits: over N concurrent or R per second it refuses, as a
FotoWeb server does: it drops the connection without an answer, or answers 429 (with or
without ``Retry-After``), or 503.

Theory of operation. `Limits` is the switch (frozen; off when both limits are None);
`Limiter` holds it with the record: requests in flight, the peak, admitted and refused
counts, and the rate window. The rate window is GCRA (the generic cell rate algorithm): a
theoretical arrival time that every admitted request pushes on by 1/R; a request is refused
when that time would run more than `burst` intervals ahead of now. `decide` is the pure
decision (no clock, no loop); `middleware` applies it to every request of the app, in front
of everything else (a refused request is not recorded in `TenantState.seen` and needs no
token: the limit sits in front of the server, as a load balancer's would).

What counts: every path but ``/sim/limits`` (the switch itself is never refused). FotoWeb's
limit is per server, so the OAuth endpoints (``/fotoweb/oauth2/...``: token, authorize,
login) count too, unless `Limits.count_oauth` is False. A request is in flight from the
moment its head arrived until its answer was handed to the socket; `Limits.delay` makes each
admitted request take that long (a real tenant's work), so concurrency is real. `peak` is the
most requests the tenant held at once, counting the arriving one, refused or not: a peak of 8
means no request ever arrived while 8 others were in flight.

Switches: ``create_tenant_app(limits=Limits(...))`` at start, ``Limiter.switch`` in a test, or
``POST /sim/limits`` with the JSON of `parse_limits` (the whole new setting: ``{}`` switches
limits off); a switch resets the record and the rate window. ``GET /sim/limits`` reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Action = Literal["drop", "429", "503"]
ACTIONS: tuple[Action, ...] = ("drop", "429", "503")
HOOK_PATH = "/sim/limits"
OAUTH_PREFIX = "/fotoweb/oauth2/"


@dataclass(frozen=True)
class Limits:
    """What the tenant allows; None: no such limit."""

    max_concurrent: int | None = None  # requests in flight at once
    max_rate: float | None = None  # requests per second (GCRA)
    burst: int = 1  # requests the rate window lets through at once (1: evenly spaced)
    action: Action = "drop"  # drop: close without an answer; 429 or 503: answer that
    retry_after: int | Literal["auto"] | None = None  # seconds; "auto": when the window opens
    count_oauth: bool = True  # the OAuth endpoints count too (FotoWeb's limit is per server)
    delay: float = 0.0  # seconds each admitted request takes

    @property
    def active(self) -> bool:
        return self.max_concurrent is not None or self.max_rate is not None


@dataclass(frozen=True)
class Decision:
    """`refuse`: None to admit, else the action; `tat`: the window's new theoretical arrival
    time; `retry_after`: the header's value (None: no header)."""

    refuse: Action | None
    tat: float
    retry_after: int | None = None


def decide(limits: Limits, in_flight: int, tat: float, now: float) -> Decision:
    """Admit or refuse a request arriving at `now` while `in_flight` others are held; `tat`
    is the rate window's theoretical arrival time. Concurrency is checked first; a refused
    request does not move the window."""
    if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
        return _refuse(limits, tat, wait=None)
    if limits.max_rate is None:
        return Decision(None, tat)
    interval = 1.0 / limits.max_rate
    start = max(tat, now)
    if start + interval - now > limits.burst * interval + 1e-9:
        return _refuse(limits, tat, wait=start + interval - limits.burst * interval - now)
    return Decision(None, start + interval)


def _refuse(limits: Limits, tat: float, wait: float | None) -> Decision:
    if limits.action == "drop" or limits.retry_after is None:
        return Decision(limits.action, tat)
    if limits.retry_after == "auto":  # when the rate window opens; 1 s for concurrency
        return Decision(limits.action, tat, 1 if wait is None else max(1, math.ceil(wait)))
    return Decision(limits.action, tat, limits.retry_after)


def parse_limits(data: object) -> Limits:
    """`Limits` from the JSON of ``POST /sim/limits``; ValueError names the bad key."""
    if not isinstance(data, Mapping):
        raise ValueError("the body must be a JSON object, e.g. {\"max_concurrent\": 10}")
    known = set(Limits.__dataclass_fields__)
    for key in data:
        if key not in known:
            raise ValueError(f"unknown key {key!r}; known: {', '.join(sorted(known))}")

    def number(key: str, kind: type, low: float) -> Any:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and not isinstance(value, int)) or not value >= low \
                or not math.isfinite(value):
            raise ValueError(f"{key}: expected {'an integer' if kind is int else 'a number'} "
                             f">= {low:g}, got {value!r}")
        return kind(value)

    action = str(data.get("action", "drop"))
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    retry: int | Literal["auto"] | None = (
        "auto" if data.get("retry_after") == "auto" else number("retry_after", int, 0))
    count_oauth = data.get("count_oauth", True)
    if not isinstance(count_oauth, bool):
        raise ValueError(f"count_oauth: expected true or false, got {count_oauth!r}")
    return Limits(
        max_concurrent=number("max_concurrent", int, 1),
        max_rate=number("max_rate", float, 0.001),
        burst=number("burst", int, 1) or 1,
        action=action,
        retry_after=retry,
        count_oauth=count_oauth,
        delay=number("delay", float, 0) or 0.0,
    )


@dataclass
class Limiter:
    """The tenant's limits and their record, as `TenantState.limits`."""

    limits: Limits = field(default_factory=Limits)
    in_flight: int = 0
    peak: int = 0
    admitted: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    tat: float = 0.0

    def switch(self, limits: Limits) -> None:
        """New limits; the record and the rate window start again (requests in flight stay
        counted)."""
        self.limits = limits
        self.peak = self.in_flight
        self.admitted = 0
        self.refused = dict.fromkeys(ACTIONS, 0)
        self.tat = 0.0

    def arrive(self, now: float) -> Decision:
        self.peak = max(self.peak, self.in_flight + 1)
        decision = decide(self.limits, self.in_flight, self.tat, now)
        self.tat = decision.tat
        if decision.refuse is None:
            self.in_flight += 1
            self.admitted += 1
        else:
            self.refused[decision.refuse] += 1
        return decision

    def leave(self) -> None:
        self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        return {"limits": asdict(self.limits), "in_flight": self.in_flight, "peak": self.peak,
                "admitted": self.admitted, "refused": dict(self.refused)}


LimiterOf = Callable[[web.Application], Limiter]


def middleware(limiter_of: LimiterOf) -> Middleware:
    """The aiohttp middleware that applies the app's limits (`limiter_of(app)`)."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        limiter = limiter_of(request.app)
        path = request.path
        if path == HOOK_PATH or (not limiter.limits.count_oauth
                                 and path.startswith(OAUTH_PREFIX)):
            return await handler(request)
        decision = limiter.arrive(time.monotonic())
        if decision.refuse is not None:
            return refusal(request, decision)
        try:
            if limiter.limits.delay > 0:
                await asyncio.sleep(limiter.limits.delay)
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # a Response too: answered here, raised on
                await _answer(request, exc)
                raise
            await _answer(request, response)
            return response
        finally:
            limiter.leave()

    return limit


async def _answer(request: web.Request, response: web.StreamResponse) -> None:
    """Hand the answer to the socket inside the slot, not after it (aiohttp's own prepare
    and write_eof then do nothing)."""
    if not response.prepared:
        with contextlib.suppress(ConnectionError):  # gone: aiohttp's own write says so
            await response.prepare(request)
            await response.write_eof()


def refusal(request: web.Request, decision: Decision) -> web.StreamResponse:
    if decision.refuse == "drop":
        if request.transport is not None:
            request.transport.abort()  # no answer: aiohttp's write of the one below fails
        return web.Response(status=503)
    headers = {} if decision.retry_after is None else {
        "Retry-After": str(decision.retry_after)}
    status = int(cast(str, decision.refuse))
    return web.json_response(
        {"error": "too_many_requests" if status == 429 else "service_unavailable",
         "detail": "the simulated tenant's limit"}, status=status, headers=headers)


def hook(limiter_of: LimiterOf) -> Handler:
    """``GET /sim/limits``: the limits and their record; ``POST``: switch to the JSON body's
    limits (400 with ``{"error", "detail"}`` naming the bad key)."""

    async def limits_hook(request: web.Request) -> web.StreamResponse:
        limiter = limiter_of(request.app)
        if request.method == "POST":
            try:
                limiter.switch(parse_limits(json.loads(await request.read() or b"{}")))
            except ValueError as exc:  # json.JSONDecodeError is one
                return web.json_response({"error": "bad_limits", "detail": str(exc)},
                                         status=400)
        elif request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return web.json_response(limiter.snapshot())

    return limits_hook
