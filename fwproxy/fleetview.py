"""The fleet's shared state as operators see it (README "Running a fleet"): the part of
/_fwproxy/ready, the status page's line and the metrics that say whether this instance
reaches Redis, and while it does not, why and what it does meanwhile. Pure text and
scrape-time metrics read from `fleet.SharedState.view()`; nothing secret (no URL, no key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .exceptions import WHY


class SharedView(Protocol):
    """What the status page, readiness and metrics read of the fleet's shared state
    (fleet.SharedState)."""

    outages: int
    recoveries: int

    def view(self) -> dict[str, object]: ...


class SharedStateCollector(Collector):
    """Whether this instance reaches the fleet's Redis (fleet.py): up, outages, recoveries,
    and while down why (a closed set: exceptions.WHY)."""

    def __init__(self, shared: SharedView) -> None:
        self._shared = shared

    def collect(self) -> Iterator[Metric]:
        view = self._shared.view()
        up = view["up"] is True
        yield GaugeMetricFamily("fwproxy_shared_state_up", "1 while Redis (state.backend: "
                                "redis) answers, 0 while this instance goes on by itself",
                                value=1.0 if up else 0.0)
        down = GaugeMetricFamily("fwproxy_shared_state_down", "1 for why Redis is "
                                 "unavailable, while it is", labels=["why"])
        for why in WHY:
            down.add_metric([why], 1.0 if not up and view["why"] == why else 0.0)
        yield down
        yield CounterMetricFamily("fwproxy_shared_state_outages", "Times Redis became "
                                  "unavailable", value=self._shared.outages)
        yield CounterMetricFamily("fwproxy_shared_state_recoveries", "Times Redis came back "
                                  "and this instance shared again", value=self._shared.recoveries)


def meanwhile(user_context: bool) -> str:
    """What an instance does while Redis is away (README "Running a fleet")."""
    if user_context:
        return ("using its current access token; no refresh until Redis is back (then 503 "
                "shared_state_unavailable)")
    return "using its own token"


def shared_state_readiness(view: dict[str, object], user_context: bool) -> dict[str, object]:
    """The ``shared_state`` part of /ready: up, or why not, for how long, and what this
    instance does meanwhile (never a reason to fail readiness by itself)."""
    if view["up"] is True:
        return {"up": True}
    return {"up": False, "why": view["why"], "for_seconds": view["for_seconds"],
            "meanwhile": meanwhile(user_context)}


def shared_state_line(view: dict[str, object], user_context: bool) -> str:
    """The status page's shared state row, as text (escaped by the caller)."""
    where = f'Redis, key prefix {view["prefix"]}'
    counts = f'; {view["outages"]} outages so far'
    if view["up"] is True:
        return f'up ({where}) for {view["for_seconds"]} s{counts}'
    return (f'DOWN ({view["why"]}) for {view["for_seconds"]} s: {meanwhile(user_context)} '
            f"until it is back ({where}){counts}")
