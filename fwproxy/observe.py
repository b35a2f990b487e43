"""What operators see: health, readiness, Prometheus metrics and a status page.

All of it lives under a reserved prefix (``/_fwproxy`` by default; FotoWeb lives under
``/fotoweb/``, so nothing collides). None of it shows a secret: no token, no client secret.
Every text that did not come from fwproxy itself (what the token endpoint said, an error's
message) goes out through `log.outward`; metric labels are closed sets.
Request figures are plain numbers updated per request; they, and the token and replay
figures read from the live objects, become Prometheus metrics only at scrape time (custom
collectors), so a request costs a few additions.
"""

from __future__ import annotations

import asyncio
import bisect
import html
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__
from .attempts import Protection
from .breaker import State
from .budget import WAIT_BUCKETS
from .exceptions import TokenError
from .fleetview import SharedStateCollector, SharedView, shared_state_line, shared_state_readiness
from .log import outward
from .token_manager import TokenManager
from .tokengate import Counts

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series: noise
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
READY_WAIT = 10.0  # seconds /ready waits for a first token before saying 503


@dataclass(frozen=True)
class Event:
    """One remembered error, for the status page: when, the method, what kind, and what
    fwproxy answered. Never the path or query: they are another client's business (and a
    query may carry a token)."""

    at: float  # wall clock, for display only
    method: str
    kind: str
    detail: str


class Metrics:
    """Per-request figures, plus the last errors for the status page.

    Plain numbers, updated on the event loop (no locks, no label lookups per request), and
    turned into Prometheus families only when scraped.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self.in_flight = 0
        self.requests: dict[tuple[str, int], int] = {}  # (method, status // 100): count
        self.bytes_in = 0
        self.bytes_out = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: +Inf
        self.latency_sum = 0.0
        self.errors: deque[Event] = deque(maxlen=20)
        self.local_tokens = Counts()  # issued and refused (tokengate.py)
        self.registry.register(RequestCollector(self))

    def observe(self, method: str, status: int, bytes_in: int, bytes_out: int,
                upstream_seconds: float | None) -> None:
        key = (method if method in KNOWN_METHODS else "other", status // 100)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if upstream_seconds is not None:
            self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, upstream_seconds)] += 1
            self.latency_sum += upstream_seconds

    def error(self, method: str, kind: str, detail: str = "") -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.errors.appendleft(Event(time.time(), method, kind, outward(detail)))


class RequestCollector(Collector):
    """`Metrics` as Prometheus families, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        requests = CounterMetricFamily("fwproxy_requests", "Requests answered, by method and "
                                       "status class", labels=["method", "status_class"])
        for (method, status_class), count in sorted(m.requests.items()):
            requests.add_metric([method, f"{status_class}xx" if status_class else "none"],
                                count)
        in_flight = GaugeMetricFamily("fwproxy_requests_in_flight", "Requests being handled",
                                      value=m.in_flight)
        buckets, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), m.latency_counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        latency = HistogramMetricFamily(
            "fwproxy_upstream_seconds", "Time until the tenant's response headers arrived",
            buckets=buckets, sum_value=m.latency_sum,
        )
        bytes_in = CounterMetricFamily("fwproxy_request_body_bytes",
                                       "Request body bytes forwarded", value=m.bytes_in)
        bytes_out = CounterMetricFamily("fwproxy_response_body_bytes",
                                        "Response body bytes relayed", value=m.bytes_out)
        issued = CounterMetricFamily("fwproxy_local_tokens_issued", "Local tokens issued by "
                                     "fwproxy's token endpoint", value=m.local_tokens.issued)
        refused = CounterMetricFamily("fwproxy_local_tokens_refused", "Local tokens (or "
                                      "requests for one) refused, by reason",
                                      labels=["reason"])
        for reason, count in m.local_tokens.refused.items():
            refused.add_metric([reason], count)
        yield from (requests, in_flight, latency, bytes_in, bytes_out, issued, refused)


class TokenCollector(Collector):
    """Token and replay figures, read from the live objects at scrape time."""

    def __init__(self, tokens: TokenManager, replays: ReplayStats) -> None:
        self._tokens = tokens
        self._replays = replays

    def collect(self) -> Iterator[Metric]:
        tokens = self._tokens
        requests = CounterMetricFamily("fwproxy_token_requests", "Token requests made",
                                       value=tokens.requests)
        taken = CounterMetricFamily("fwproxy_token_taken", "Tokens another worker or fleet "
                                    "instance fetched, taken without a token request",
                                    value=tokens.taken)
        failures = CounterMetricFamily("fwproxy_token_failures", "Failed token requests, "
                                       "by reason", labels=["reason"])
        for reason, count in sorted(tokens.failures_by_reason.items()):
            failures.add_metric([reason], count)
        renewals = CounterMetricFamily("fwproxy_token_renewals", "Background renewals ahead "
                                       "of expiry", value=tokens.renewals)
        current = tokens.current()
        left = GaugeMetricFamily("fwproxy_token_seconds_to_expiry", "Seconds until the "
                                 "current token expires (0: none)",
                                 value=max(0.0, current.seconds_left(time.monotonic()))
                                 if current else 0.0)
        replays = CounterMetricFamily("fwproxy_replays", "Requests sent again after a 401",
                                      value=self._replays.replays)
        fallback = GaugeMetricFamily("fwproxy_token_in_query", "1 when the tenant was seen to "
                                     "strip Authorization and the token goes in the query",
                                     value=1.0 if self._replays.placement == "query" else 0.0)
        yield from (requests, taken, failures, renewals, left, replays, fallback)


class TenantCollector(Collector):
    """Protecting the tenant (attempts.py): the line, retries, the breaker. Labels are
    closed sets (retry causes and stop reasons from retry.py, breaker states)."""

    def __init__(self, protection: Protection) -> None:
        self._protection = protection

    def collect(self) -> Iterator[Metric]:
        p = self._protection
        budget, breaker = p.budget, p.breaker
        yield GaugeMetricFamily("fwproxy_tenant_queue_length", "Requests waiting in line for "
                                "the tenant (tenant.max_in_flight, max_rate)",
                                value=budget.queue_length)
        buckets, total = [], 0
        for bound, count in zip((*WAIT_BUCKETS, math.inf), budget.wait_counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily("fwproxy_tenant_wait_seconds", "Time spent in line for "
                                    "the tenant", buckets=buckets, sum_value=budget.wait_sum)
        yield CounterMetricFamily("fwproxy_tenant_busy", "Requests answered 503 busy after "
                                  "tenant.queue_timeout in line", value=budget.refused)
        yield GaugeMetricFamily("fwproxy_tenant_in_flight", "Attempts at the tenant now",
                                value=p.in_flight)
        yield GaugeMetricFamily("fwproxy_tenant_budget_fallback", "1 while this instance of a "
                                "fleet enforces its own share of the budget (Redis away)",
                                value=1.0 if budget.fallback else 0.0)
        retries = CounterMetricFamily("fwproxy_tenant_retries", "Retries made, by cause",
                                      labels=["cause"])
        for cause, count in sorted(p.counters.retries.items()):
            retries.add_metric([cause], count)
        yield retries
        yield CounterMetricFamily("fwproxy_tenant_retries_refused_by_budget", "Retries not "
                                  "made because tenant.retry_budget was spent",
                                  value=p.counters.budget_refused)
        state = GaugeMetricFamily("fwproxy_tenant_breaker_state", "1 for the breaker's state",
                                  labels=["state"])
        for each in State:
            state.add_metric([each.value], 1.0 if breaker.state is each else 0.0)
        yield state
        moves = CounterMetricFamily("fwproxy_tenant_breaker_transitions", "Breaker state "
                                    "changes", labels=["from", "to"])
        for (old, new), count in sorted(breaker.transitions.items()):
            moves.add_metric([old, new], count)
        yield moves


def _budget_caps(view: object) -> str:
    """The budget's caps in force and whose they are (fleet-wide, or this instance's share
    while Redis is away), for the status page; nothing without a cap."""
    if not isinstance(view, dict) or not (view["max_in_flight"] or view["max_rate"]):
        return ""
    return (f'; budget <span id="budget">{html.escape(str(view["scope"]))}: max_in_flight '
            f'{view["max_in_flight"]}, max_rate {view["max_rate"]:g}/s</span>')


class ReplayStats(Protocol):
    """What the proxy reports about replays and placement (implemented by `Proxy`)."""

    replays: int
    placement: str


@dataclass(frozen=True)
class StatusInfo:
    tenant: str
    grant: str
    client_id: str
    acting_as: Callable[[], str]


class Observer:
    """The handlers under the status prefix; `tokens` and `proxy` are attached at startup."""

    def __init__(self, prefix: str, info: StatusInfo) -> None:
        self.prefix = prefix
        self.info = info
        self.metrics = Metrics()
        self.tokens: TokenManager | None = None
        self.protection: Protection | None = None
        self.shared: SharedView | None = None  # state.backend: redis

    def attach(self, tokens: TokenManager, replays: ReplayStats,
               protection: Protection | None = None) -> None:
        self.tokens = tokens
        self.metrics.registry.register(TokenCollector(tokens, replays))
        if protection is not None:
            self.protection = protection
            self.metrics.registry.register(TenantCollector(protection))

    def share(self, shared: SharedView) -> None:
        """Show the fleet's shared state on the status page, in readiness and metrics."""
        self.shared = shared
        self.metrics.registry.register(SharedStateCollector(shared))

    def probe_routes(self) -> list[web.RouteDef]:
        """Liveness and readiness: for probes, which carry no API key."""
        return [
            web.get(f"{self.prefix}/health", self.health),
            web.get(f"{self.prefix}/ready", self.ready),
        ]

    def page_routes(self) -> list[web.RouteDef]:
        """Metrics and the status page: they need an API key when keys are configured."""
        return [
            web.get(f"{self.prefix}/metrics", self.metrics_page),
            web.get(f"{self.prefix}/", self.status_page),
            web.get(self.prefix, self.status_page),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "version": __version__})

    async def ready(self, request: web.Request) -> web.Response:
        """200 while a valid token is held or can be had now; 503 says why not. In a fleet
        it also says whether Redis is there, and while it is not, why and what this
        instance does meanwhile (``degraded``: ready all the same)."""
        assert self.tokens is not None
        shared: dict[str, object] = {}
        if self.shared is not None:
            part = shared_state_readiness(self.shared.view(),
                                          self.info.grant == "authorization_code")
            shared = {"shared_state": part} if part["up"] else {
                "degraded": True, "shared_state": part}
        if self.tokens.current() is not None:
            return web.json_response({"status": "ready", **shared})
        try:
            await asyncio.wait_for(self.tokens.get(), READY_WAIT)
        except TokenError as exc:
            return web.json_response({"status": "not_ready", "reason": exc.reason,
                                      "detail": outward(str(exc)), **shared}, status=503)
        except asyncio.TimeoutError:
            return web.json_response({"status": "not_ready", "reason": "token_pending",
                                      "detail": "the token endpoint has not answered yet",
                                      **shared}, status=503)
        return web.json_response({"status": "ready", **shared})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def status_page(self, request: web.Request) -> web.Response:
        assert self.tokens is not None
        page = render_status(self.metrics, self.tokens, self.info, self.protection,
                             self.shared)
        return web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store"})


def render_status(metrics: Metrics, tokens: TokenManager, info: StatusInfo,
                  protection: Protection | None = None,
                  shared: SharedView | None = None) -> str:
    """A small self-refreshing HTML page; every value is escaped, and every text from
    outside fwproxy goes through `outward` first, so none is a secret."""
    current = tokens.current()
    left = int(current.seconds_left(time.monotonic())) if current else -1
    counts: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.name[:-6] + "".join(f" {v}" for v in sample.labels.values())
                counts[key] = counts.get(key, 0) + sample.value
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:g}</td></tr>"
                   for k, v in sorted(counts.items()))
    errors = "".join(
        f"<li><time>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.at))}Z</time> "
        f"<b>{html.escape(e.kind)}</b> {e.method} {html.escape(outward(e.detail))}</li>"
        for e in metrics.errors
    ) or "<li>none</li>"
    problem = tokens.last_error
    token_line = (
        f'valid, expires in <span id="left" data-left="{left}">{left}</span> s'
        if current else
        f"none ({html.escape(outward(str(problem))) if problem else 'not fetched yet'})"
    )
    tenant_line = ""
    if protection is not None:
        view = protection.view()
        breaker = view["breaker"]
        assert isinstance(breaker, dict)
        tenant_line = (
            f'<tr><td>tenant protection</td><td id="protection">breaker {breaker["state"]}'
            + (f' (retry after {breaker["retry_after"]:.0f} s)' if breaker["retry_after"] else "")
            + f', {view["queued"]} waiting in line, {view["in_flight"]} at the tenant, '
            f'{view["retries"]} retries, {view["budget_refused"]} refused by the retry budget'
            + _budget_caps(view["budget"]) + "</td></tr>")
    shared_line = "" if shared is None else (
        '<tr><td>shared state</td><td id="shared-state">'
        f"{html.escape(shared_state_line(shared.view(), info.grant == 'authorization_code'))}"
        "</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fwproxy status</title>
<meta http-equiv="refresh" content="30">
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}
td{{padding:2px 1em 2px 0}} h1{{font-size:1.4em}}</style></head>
<body><h1>fwproxy {html.escape(__version__)}</h1>
<table>
<tr><td>tenant</td><td id="tenant">{html.escape(info.tenant)}</td></tr>
<tr><td>grant</td><td>{html.escape(info.grant)} (client {html.escape(info.client_id)})</td></tr>
<tr><td>acting as</td><td id="acting">{html.escape(outward(info.acting_as()))}</td></tr>
<tr><td>token</td><td id="token">{token_line}</td></tr>
<tr><td>local tokens issued</td><td id="local-tokens">{metrics.local_tokens.issued}</td></tr>
{tenant_line}{shared_line}
<tr><td>up since</td><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(metrics.started))}Z
</td></tr>
</table>
<h2>Counters</h2><table id="counters">{rows}</table>
<h2>Last errors</h2><ul id="errors">{errors}</ul>
<script>
const el = document.getElementById("left");
if (el) {{
  let left = Number(el.dataset.left);
  setInterval(() => {{ left = Math.max(0, left - 1); el.textContent = left; }}, 1000);
  el.dataset.ticking = "yes";
}}
</script>
</body></html>
"""
