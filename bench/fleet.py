"""Scenario: a fleet (issue 16). Three `fwproxy run` on the bench's nginx tenant, measured
with three wrk at once (one per instance, the connections split between them), four ways:

  three, shared budget   state.backend: redis (one redis-server for the three) and the
                         tenant budget on: max_in_flight high enough never to limit
  three, Redis, no cap   state.backend: redis, no budget: the request path should make no
                         Redis call at all
  three, no shared state the same three instances' config without the state section
  one alone              one instance of the last kind, all the connections

Runs are interleaved (one of each, then again), and the row's figure is the median. The
target: the shared budget keeps >= 0.8x the req/s of the three without shared state (the
median of the per-run ratios). Redis's cost per request comes from INFO commandstats
before and after each run: round trips (EVALSHA calls: the budget's asks, and its releases
sent in batches) and commands (those the scripts run inside Redis too), per request
answered; asks (round trips on the request path: the script's ZREMRANGEBYSCORE runs once
per ask) per request. Goal: without a budget no call; with one at most one ask per request
(batched: fewer under load; releases and renewals leave the path).

redis-server is the Debian package (bench/setup.sh installs it); without it the row says so.
Everything runs on the bench's machine: the three instances, nginx, Redis and the three wrk
share its cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from bench.parsing import parse_wrk
from bench.tenant import FWPROXY, JSON_PATH, Failed, free_port, fwproxy_config, wait_200
from tests.support.processes import Sessions
from tests.support.redis import RedisServer, redis_server_path

TARGET = 0.8  # shared budget / no shared state, req/s
INSTANCES = 3
BUDGET = {"max_in_flight": 100000}  # on, never limiting
SETUPS = ("shared budget", "redis, no cap", "no shared state", "one alone")
OWN = frozenset({"info", "hello", "client|setinfo", "config|resetstat"})


def config(work: Path, name: str, tenant_port: int, state: dict[str, Any] | None,
           budget: dict[str, Any] | None) -> tuple[Path, int]:
    """A fwproxy config on the bench's tenant, with a state section and a budget."""
    port = free_port()
    path = fwproxy_config(work, name, port, tenant_port)
    data = yaml.safe_load(path.read_text())
    data["log"] = {"level": "warning"}
    if state:
        data["state"] = state
    if budget:
        data["tenant"].update(budget)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, port


def redis_calls(url: str) -> dict[str, int]:
    """Calls per command since the last reset (without this reader's own), then reset."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("commandstats")
        client.config_resetstat()
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in info.items()
            if isinstance(entry, dict) and name.removeprefix("cmdstat_") not in OWN}


def wrk_many(urls: list[str], connections: int, duration: float) -> dict[str, Any]:
    """One wrk per URL at once, the connections split; the sum of req/s and requests."""
    each = max(2, connections // len(urls))
    argv = ["wrk", "-t1", f"-c{each}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "10s"]
    procs = [subprocess.Popen(  # noqa: S603
        [*argv, url + JSON_PATH], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for url in urls]
    results = [parse_wrk(proc.communicate(timeout=duration + 60)[0]) for proc in procs]
    errors = [r["error"] for r in results if r["error"]]
    return {"rps": sum(r["rps"] for r in results),
            "requests": sum(r["requests"] for r in results), "error": "; ".join(errors)}


def scenario(work: Path, tenant_port: int, procs: Sessions, opts: argparse.Namespace,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the fleet row (the module docstring); every process it starts is stopped before
    it returns. JSON-ready; `table` prints it."""
    result: dict[str, Any] = {"runs": [], "rows": {}, "notes": [], "target": TARGET}
    say(f"\n== a fleet: {INSTANCES} fwproxy run sharing one Redis, against the same without "
        "shared state, and one alone ==")
    if redis_server_path() is None:
        result["error"] = "redis-server is not installed (bash bench/setup.sh installs it)"
        say(f"  skipped: {result['error']}")
        return result
    server = RedisServer(work / "redis")
    started: list[Any] = []
    try:
        server.start()
        state = {"backend": "redis", "redis_url": server.url, "lease_time": "15s"}
        groups: dict[str, list[str]] = {}
        waiting = []
        begun = time.perf_counter()
        for setup, shared, budget in (("shared budget", state, BUDGET),
                                      ("redis, no cap", state, None),
                                      ("no shared state", None, None)):
            for i in range(INSTANCES):  # all started at once, then waited for
                path, port = config(work, f"fleet-{setup.replace(' ', '-').replace(',', '')}"
                                    f"-{i}", tenant_port, shared, budget)
                proc = procs.start(f"fleet-{len(started)}", [FWPROXY, "run", "--config",
                                                             str(path)])
                started.append(proc)
                url = f"http://127.0.0.1:{port}"
                waiting.append((url, proc))
                groups.setdefault(setup, []).append(url)
        for url, proc in waiting:
            wait_200(url + JSON_PATH, {}, None, procs, proc, begun)
        groups["one alone"] = groups["no shared state"][:1]
        for run in range(opts.runs):
            for setup in SETUPS:
                wrk_many(groups[setup], opts.connections, opts.warmup)  # warm-up
                redis_calls(server.url)  # (a reset)
                measured = wrk_many(groups[setup], opts.connections, opts.duration)
                calls = redis_calls(server.url)
                requests = max(1, measured["requests"])
                measured.update(setup=setup, run=run,
                                asks_per_request=calls.get("zremrangebyscore", 0) / requests,
                                round_trips=calls.get("evalsha", 0) + calls.get("eval", 0),
                                commands=sum(calls.values()),
                                round_trips_per_request=(calls.get("evalsha", 0)
                                                         + calls.get("eval", 0)) / requests,
                                commands_per_request=sum(calls.values()) / requests)
                result["runs"].append(measured)
                say(f"  run {run + 1} {setup}: {measured['rps']:.0f} req/s, "
                    f"{measured['round_trips_per_request']:.3f} Redis round trips and "
                    f"{measured['commands_per_request']:.3f} commands per request"
                    + (f" ({measured['error']})" if measured["error"] else ""))
    except (Failed, RuntimeError, OSError, subprocess.SubprocessError, redis.RedisError,
            ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        say(f"  FAILED: {result['error']}")
    finally:
        for proc in reversed(started):
            procs.stop(proc)
        server.stop()
    summarize(result)
    return result


def summarize(result: dict[str, Any]) -> None:
    runs = result["runs"]
    for setup in SETUPS:
        mine = [r for r in runs if r["setup"] == setup and not r["error"]]
        if mine:
            result["rows"][setup] = {
                "rps": statistics.median(r["rps"] for r in mine),
                "asks_per_request": statistics.median(r["asks_per_request"] for r in mine),
                "round_trips_per_request": statistics.median(
                    r["round_trips_per_request"] for r in mine),
                "commands_per_request": statistics.median(
                    r["commands_per_request"] for r in mine),
                "runs": len(mine)}
    ratios = []
    by_run: dict[int, dict[str, float]] = {}
    for r in runs:
        if not r["error"]:
            by_run.setdefault(r["run"], {})[r["setup"]] = r["rps"]
    for each in by_run.values():
        if each.get("no shared state") and "shared budget" in each:
            ratios.append(each["shared budget"] / each["no shared state"])
    result["ratios"] = ratios
    result["ratio"] = statistics.median(ratios) if ratios else None


def table(result: dict[str, Any], smoke: bool) -> str:
    out = [f"a fleet: {INSTANCES} fwproxy run on one tenant, one wrk each; Redis per request "
           "from INFO commandstats (round trips: script calls; commands: those inside too)",
           f"{'setup':34}|{'req/s':>9} |{'asks':>7}{'round trips':>12}{'commands':>10} | "
           "vs no shared state"]
    out.append("-" * 34 + "+" + "-" * 10 + "+" + "-" * 30 + "+" + "-" * 20)
    if "error" in result:
        out.append(f"failed: {result['error']}")
    rows = result["rows"]
    base = rows.get("no shared state", {}).get("rps")
    for setup in SETUPS:
        row = rows.get(setup)
        if row is None:
            continue
        label = {"shared budget": f"{INSTANCES}, shared budget (Redis)",
                 "redis, no cap": f"{INSTANCES}, Redis, no budget",
                 "no shared state": f"{INSTANCES}, no shared state",
                 "one alone": "1 alone"}[setup]
        versus = f"{row['rps'] / base:.2f}x" if base else "-"
        out.append(f"{label:34}|{row['rps']:9.0f} |{row['asks_per_request']:7.3f}"
                   f"{row['round_trips_per_request']:12.3f}"
                   f"{row['commands_per_request']:10.3f} | {versus}")
    ratio: float | None = result.get("ratio")
    if ratio is not None:
        runs = ", ".join(f"{r:.2f}" for r in result["ratios"])
        verdict = "" if smoke else (" PASS" if ratio >= TARGET else " FAIL")
        out.append(f"shared budget / no shared state: median {ratio:.2f}x of runs [{runs}] "
                   f"(target >= {TARGET}x){verdict}")
    shared = rows.get("shared budget")
    if shared is not None:
        out.append(f"with the budget: {shared['asks_per_request']:.3f} asks (round trips on "
                   "the request path) per request (goal <= 1); releases and renewals are "
                   "batched off the path")
    cap = rows.get("redis, no cap")
    if cap is not None:
        none = cap["round_trips_per_request"] == 0 and cap["commands_per_request"] == 0
        out.append("without a budget: " + (
            "no Redis call on the request path" if none else
            f"{cap['commands_per_request']:.3f} Redis commands per request (goal 0)"))
    out += [f"note: {note}" for note in result["notes"]]
    return "\n".join(out)
