"""The soak's verdict: the pass criteria over the tally and the two quiet points, the report
(JSON) and the table it prints."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from bench.soak_load import BACKOFF_CAP, Load, percentile
from bench.soak_proxy import MIB, ProxyProcess, Snapshot

FD_TOLERANCE = 2
RSS_GROWTH_LIMIT = 0.20


def add_exit(report: dict[str, Any], proxy: ProxyProcess, code: int, took: float) -> None:
    """fwproxy's exit and log summary, known only once it stopped."""
    report["fwproxy"]["exit_status"] = code
    report["fwproxy"]["stop_seconds"] = round(took, 2)
    report["fwproxy"]["log"] = {
        "lines": proxy.line_count,
        "levels": dict(proxy.levels),
        "tracebacks": proxy.tracebacks,
        "warnings_and_errors": dict(proxy.notable.most_common(20)),
    }
    verdict = report["criteria"]["clean_exit"]
    verdict["pass"] = verdict["pass"] and code == 0
    verdict["detail"] += f"; exited {code} on SIGTERM after {took:.1f}s"



def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def build_report(
    args: argparse.Namespace,
    load: Load,
    first: Snapshot,
    baseline: Snapshot,
    end: Snapshot,
    samples: list[Snapshot],
    metrics: dict[str, float],
    traffic_end: float,
    served_at_baseline: int,
    alive: bool,
) -> dict[str, Any]:
    tally = load.tally
    served = sum(tally.served.values())
    lost = sum(tally.lost.values())
    everything: list[float] = [x for values in tally.latency.values() for x in values]
    elapsed = traffic_end - load.started
    delays, stuck = load.recoveries(traffic_end)
    revokes = sum(event.kind == "revoke" for event in load.events)
    blips = sum(event.kind == "blip" for event in load.events)

    growth = (end.rss_kib - baseline.rss_kib) / baseline.rss_kib if baseline.rss_kib else 0.0
    pool_bound = load.peak_in_flight + 1
    fd_limit = baseline.fds + max(0, end.upstream - baseline.upstream) + FD_TOLERANCE
    criteria = {
        "no_lost_requests": {
            "pass": lost == 0 and served > 0 and revokes + blips > 0,
            "detail": f"{lost} lost of {served + lost + sum(tally.clear_errors.values())}; "
                      f"{revokes} revocations, {blips} blips",
        },
        "rss_growth": {
            "pass": growth <= RSS_GROWTH_LIMIT,
            "detail": f"{baseline.rss_kib} KiB -> {end.rss_kib} KiB ({growth:+.1%}, "
                      f"limit +{RSS_GROWTH_LIMIT:.0%})",
        },
        "fd_growth": {
            "pass": end.downstream == 0 and end.upstream <= pool_bound
            and end.other <= baseline.other + FD_TOLERANCE and end.fds <= fd_limit,
            "detail": f"{baseline.fds} -> {end.fds} (limit {fd_limit}); client connections "
                      f"{end.downstream} (must be 0); upstream pool {baseline.upstream} -> "
                      f"{end.upstream} (<= {pool_bound}); other {baseline.other} -> "
                      f"{end.other} (<= +{FD_TOLERANCE})",
        },
        "recovers_after_blips": {
            "pass": stuck == 0 and all(d <= BACKOFF_CAP for d in delays),
            "detail": f"{len(delays)} recovered, max {max(delays, default=0):.1f}s after "
                      f"the blip's end; {stuck} not within {BACKOFF_CAP:g}s",
        },
        "clean_exit": {"pass": alive, "detail": "running at the end" if alive else "died"},
    }
    per_kind = {
        kind: {
            "served": tally.served[kind],
            "p50_ms": _ms(percentile(tally.latency[kind], 50)),
            "p99_ms": _ms(percentile(tally.latency[kind], 99)),
            "max_ms": _ms(max(tally.latency[kind])),
        }
        for kind in sorted(tally.served)
    }
    return {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": round(elapsed, 1),
        "requests": {
            "served": served,
            "served_per_second": round(served / elapsed, 1) if elapsed else 0,
            "served_after_baseline": served - served_at_baseline,
            "clear_errors": dict(tally.clear_errors),
            "lost": dict(tally.lost),
            "lost_examples": tally.lost_examples,
            "aborted_on_purpose": tally.aborted,
            "bytes_uploaded": tally.bytes_up,
            "bytes_downloaded": tally.bytes_down,
            "peak_in_flight": load.peak_in_flight,
        },
        "latency": {
            "p50_ms": _ms(percentile(everything, 50)),
            "p99_ms": _ms(percentile(everything, 99)),
            "by_kind": per_kind,
        },
        "chaos": {
            "revocations": revokes,
            "blips": blips,
            "blip_recovery_seconds": [round(d, 2) for d in delays],
            "tokens_issued": len(load.tenant.issued_at),
            "token_requests_at_tenant": load.tenant.token_requests,
            "events": [
                {"kind": e.kind, "t": round(e.start - load.started, 2),
                 "seconds": round(e.end - e.start, 2)}
                for e in load.events
            ],
        },
        "fwproxy": {
            "at_start": first.as_dict(),
            "baseline": baseline.as_dict(),
            "end": end.as_dict(),
            "rss_growth": round(growth, 4),
            "metrics": metrics,
        },
        "timeline": [s.as_dict() for s in samples],
        "criteria": criteria,
    }


def print_report(report: dict[str, Any]) -> None:
    req, lat, chaos, fw = (report["requests"], report["latency"], report["chaos"],
                           report["fwproxy"])
    base, end = fw["baseline"], fw["end"]
    lines = [
        "",
        f"fwproxy soak: {report['seconds']:g} s of traffic "
        f"({report['args']['workers']} pooled + {report['args']['fresh_workers']} "
        f"fresh-connection workers, seed {report['args']['seed']})",
        "",
        f"{'requests served (correct)':34} {req['served']:>9}  "
        f"({req['served_per_second']:g}/s; up {req['bytes_uploaded'] / MIB:.0f} MiB, "
        f"down {req['bytes_downloaded'] / MIB:.0f} MiB)",
        f"{'  latency p50 / p99':34} {lat['p50_ms']} / {lat['p99_ms']} ms",
    ]
    for kind, row in lat["by_kind"].items():
        lines.append(f"{'    ' + kind:34} {row['served']:>9}  p50 {row['p50_ms']} ms, "
                     f"p99 {row['p99_ms']} ms, max {row['max_ms']} ms")
    lines.append(f"{'clear errors (allowed)':34} {sum(req['clear_errors'].values()):>9}")
    lines += [f"{'    ' + k:34} {v:>9}" for k, v in req["clear_errors"].items()]
    lines.append(f"{'aborted by the client (on purpose)':34} {req['aborted_on_purpose']:>9}")
    lines.append(f"{'LOST':34} {sum(req['lost'].values()):>9}")
    lines += [f"{'    ' + k:34} {v:>9}" for k, v in req["lost"].items()]
    lines += [f"      e.g. {example}" for example in req["lost_examples"][:10]]
    lines += [
        f"{'401 storms / token endpoint blips':34} {chaos['revocations']:>5} / {chaos['blips']}"
        f"  (recovered {max(chaos['blip_recovery_seconds'], default=0):.1f}s after a blip "
        f"at worst; {chaos['tokens_issued']} tokens issued)",
        "",
        f"{'fwproxy':34} {'start':>9} {'baseline':>9} {'end':>9}",
        f"{'  RSS MiB':34} {fw['at_start']['rss_kib'] / 1024:>9.1f} "
        f"{base['rss_kib'] / 1024:>9.1f} {end['rss_kib'] / 1024:>9.1f}"
        f"  ({fw['rss_growth']:+.1%} since baseline; peak {end['hwm_kib'] / 1024:.1f})",
        f"{'  fds (upstream pool / other)':34} {fw['at_start']['fds']:>9} "
        f"{base['fds']:>9} {end['fds']:>9}  ({base['upstream']}/{base['other']} -> "
        f"{end['upstream']}/{end['other']})",
        f"{'  CPU seconds':34} {fw['at_start']['cpu_seconds']:>9} {base['cpu_seconds']:>9} "
        f"{end['cpu_seconds']:>9}",
    ]
    metrics = fw["metrics"]
    if metrics:
        short = {k.replace("fwproxy_", ""): int(v) for k, v in metrics.items()
                 if not k.startswith("fwproxy_requests_total")}
        lines.append(f"{'  metrics':34} {short}")
    if "log" in fw:
        lines.append(f"{'  log lines by level':34} {fw['log']['levels']}; "
                     f"tracebacks {fw['log']['tracebacks']}")
    if report.get("tenant_log"):
        lines.append(f"{'  tenant-side log (counted)':34} {report['tenant_log']}")
    if "exit_status" in fw:
        lines.append(f"{'  exit on SIGTERM':34} {fw['exit_status']} after "
                     f"{fw['stop_seconds']}s")
    lines.append("")
    for name, verdict in report["criteria"].items():
        lines.append(f"{'PASS' if verdict['pass'] else 'FAIL'}  {name:22} {verdict['detail']}")
    print("\n".join(lines), flush=True)


