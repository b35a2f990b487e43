"""fwproxy benchmark: fwproxy against the alternatives, on one real nginx tenant over TLS.

    make bench          # the full run (about 15 minutes on 2 cores); installs what it needs
    make bench-smoke    # the same harness in seconds: tiny durations, 16 MiB files, no targets
    .venv/bin/python -m bench.bench --only ade   # from the repo root (imports tests/support)

The tenant is nginx on loopback with a CA made for this run: a static token endpoint
(POST /fotoweb/oauth2/token), a bearer check on /fotoweb/, a 1 KB JSON resource, a big file
served with sendfile, and an upload location where nginx takes the body itself (WebDAV PUT
into tmpfs).

Contenders, all on that tenant:
  (a) direct to nginx with the token (the limit)  (b) nginx as a reverse proxy adding the
  header  (c) mitmproxy in reverse mode with a header addon  (d) bench/bare_proxy.py, the
  aiohttp floor  (e) fwproxy  (f) fwproxy with listen.workers: 2 (n/a if unsupported)
  (g) the floor on uvloop; the 1 KB GET only: (h) fwproxy on asyncio, (i) with a local
  token, (j) with tenant.max_in_flight, (k) with no budget, retries or breaker

Figures: 1 KB GET req/s and p50/p99 (wrk, median of runs); p99 at a fixed rate
(bench/fixed_rate.py) and what each adds over direct; MB/s and peak RSS (VmHWM, summed over
the contender's processes, fresh processes per transfer kind) for a big download and upload
(curl, interleaved rounds, ratios to (a) per round, CPU seconds per GiB); the peak RSS of
fwproxy with 10,000 idle keep-alive connections (bench/idle.py); time from spawn to the
first proxied 200; the 20 ms RTT script scenario
(bench/rtt_relay.py, bench/script_scenario.py); a py-spy profile of fwproxy under wrk.

Settings come from options or the environment (options win): BENCH_RUNS, BENCH_DURATION,
BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_RATE, BENCH_RATE_DURATION, BENCH_SIZE,
BENCH_TRANSFER_RUNS, BENCH_IDLE_CONNECTIONS, BENCH_RTT_MS, BENCH_CALLS, BENCH_ONLY (e.g.
"ade"), BENCH_PROFILE (0/1),
BENCH_OUT, BENCH_WAIT_IDLE (seconds to wait for a quiet machine; 600, smoke 0), BENCH_KEEP=1
(keep the scratch directory). Every process it starts runs in its
own session and is stopped by its process group id at the end, whatever happens.
Exit status: 0, or 1 when a contender that should work did not work at all.
"""


from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    burst,  # the legacy burst against a rate-limited tenant
    fleet,  # three instances sharing Redis (issue 16)
)
from bench.contenders import Bench, Contender
from bench.report import machine, summarize, table, targets
from bench.tenant import BENCH, Failed
from tests.support.procfs import cpu_busy

# --- settings ------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[
        match.group(2).lower()]


def settings(argv: list[str] | None = None) -> argparse.Namespace:
    smoke = "--smoke" in (argv if argv is not None else sys.argv[1:])
    env = os.environ.get

    def default(name: str, full: str, quick: str) -> str:
        return env(f"BENCH_{name}", quick if smoke else full)

    p = argparse.ArgumentParser(description="fwproxy benchmark (see the module docstring)")
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes; no targets")
    p.add_argument("--runs", type=int, default=int(default("RUNS", "3", "1")))
    p.add_argument("--duration", type=float, default=float(default("DURATION", "10", "1")),
                   help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=float(default("WARMUP", "3", "0.5")))
    p.add_argument("--connections", type=int, default=int(default("CONNECTIONS", "50", "50")))
    p.add_argument("--threads", type=int, default=int(default("THREADS", "1", "1")))
    p.add_argument("--rate", type=float, default=float(default("RATE", "200", "100")))
    p.add_argument("--rate-duration", type=float,
                   default=float(default("RATE_DURATION", "10", "1")))
    p.add_argument("--size", type=parse_size, default=parse_size(default("SIZE", "1GiB", "16MiB")),
                   help="the big download and upload")
    p.add_argument("--transfer-runs", type=int, default=int(default("TRANSFER_RUNS", "5", "1")),
                   help="interleaved rounds of the big download and upload")
    p.add_argument("--idle-connections", type=int,
                   default=int(default("IDLE_CONNECTIONS", "10000", "200")),
                   help="idle keep-alive connections whose memory is measured (0: none)")
    p.add_argument("--rtt-ms", type=float, default=float(default("RTT_MS", "10", "10")),
                   help="delay each way in the RTT scenario")
    p.add_argument("--calls", type=int, default=int(default("CALLS", "200", "20")))
    p.add_argument("--only", default=env("BENCH_ONLY", "abcdgefhijk"), help="contenders, e.g. ade")
    p.add_argument("--profile", type=int, default=int(default("PROFILE", "1", "0")))
    p.add_argument("--wait-idle", type=float, default=float(default("WAIT_IDLE", "600", "0")),
                   help="wait up to this many seconds for the CPUs to be under 20%% busy")
    p.add_argument("--out", type=Path, default=Path(default(
        "OUT", str(BENCH / "results" / "latest.json"), str(BENCH / "results" / "smoke.json"))))
    return p.parse_args(argv)


# --- main ----------------------------------------------------------------------------------

def main() -> int:
    opts = settings()
    for tool in ("nginx", "wrk", "openssl", "curl"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing; run bash bench/setup.sh", file=sys.stderr)
            return 1

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, interrupted)
    deadline = time.monotonic() + opts.wait_idle
    quiet = 0
    while opts.wait_idle > 0 and time.monotonic() < deadline and quiet < 5:
        busy = cpu_busy()  # 2 s; five quiet samples in a row: 10 s with nothing else running
        quiet = quiet + 1 if busy <= 0.2 else 0
        if not quiet:
            print(f"bench: the CPUs are {busy:.0%} busy; waiting for them to calm down "
                  f"(up to {deadline - time.monotonic():.0f}s more)", flush=True)
            time.sleep(10)
    meta = machine()
    # 0700 as mkdtemp makes it: it holds the run's CA and server keys and the contenders'
    # configs. Every process reads it as this user (nginx as root: `user root root`).
    work = Path(tempfile.mkdtemp(prefix="fwproxy-bench-"))
    bench = Bench(opts, work)
    print(f"fwproxy benchmark{' (smoke)' if opts.smoke else ''}: scratch {work}", flush=True)
    if meta["cpu_busy_at_start"] > 0.2:
        bench.notes.append(f"the CPUs were {meta['cpu_busy_at_start']:.0%} busy before the run: "
                           "something else is using them; the figures will be low and noisy")
        print("bench: warning: " + bench.notes[-1], file=sys.stderr, flush=True)
    rtt = None
    bursts: dict[str, Any] | None = None
    fleets: dict[str, Any] | None = None
    failed_setup = ""
    try:
        try:
            bench.start_tenant()
            bench.define()
        except (Failed, subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            failed_setup = f"{exc} {detail}"
            tenant = getattr(bench, "tenant", None)
            print(f"bench: the tenant did not start: {failed_setup}\n"
                  f"{bench.procs.log_tail(tenant)}"
                  if tenant is not None else f"bench: setup failed: {failed_setup}",
                  file=sys.stderr)
            return 1
        for c in bench.contenders.values():
            if c.status in ("n/a", "skipped"):
                bench.say(f"  ({c.key}) {c.label}: {c.status}: {c.reason}")
        bench.phase_requests()
        bench.phase_transfers()
        bench.phase_idle()
        rtt = bench.phase_rtt()
        bursts = burst.scenario(work, opts.smoke, bench.say)
        fleets = fleet.scenario(work, bench.tenant_port, bench.procs, opts, bench.say)
    finally:
        bench.procs.stop_all()
        if not bench.puts.is_relative_to(work):  # the tenant's uploads, in tmpfs
            shutil.rmtree(bench.puts.parent, ignore_errors=True)
        if os.environ.get("BENCH_KEEP") != "1" and not failed_setup:
            shutil.rmtree(work, ignore_errors=True)
        elif failed_setup or os.environ.get("BENCH_KEEP") == "1":
            print(f"bench: scratch kept in {work}", file=sys.stderr)
    summary = summarize(bench, rtt)
    if summary["others"]["mean_cores"] > 0.1:
        bench.notes.append(
            f"other processes used {summary['others']['mean_cores']:.2f} cores on average "
            "while measuring: the figures are lower and noisier than on a quiet machine")
    rows = None if opts.smoke else targets(summary, bursts)
    text = table(meta, opts, summary, rows)
    if bursts is not None:
        text += "\n\n" + burst.table(bursts)
    if fleets is not None:
        text += "\n\n" + fleet.table(fleets, opts.smoke)
    print("\n" + text)
    for note in bench.notes:
        print("note: " + note)
    failed = [c for c in bench.contenders.values() if c.status == "failed"] + [
        Contender("burst", row["contender"], None, status="failed", reason=row["error"])
        for row in (bursts or {}).get("rows", []) if "error" in row] + [
        Contender("fleet", "fleet", None, status="failed", reason=fleets["error"])
        for _ in [1] if fleets is not None and "error" in fleets]
    for c in failed:
        print(f"FAILED ({c.key}) {c.label}: {c.reason}", file=sys.stderr)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    document = {"machine": meta, "params": params, **summary, "targets": rows,
                "profile": {k: bench.contenders[k].r.get("profile") for k in "de"},
                "burst": bursts, "fleet": fleets, "notes": bench.notes}
    opts.out.write_text(json.dumps(document, indent=2) + "\n")
    opts.out.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwrote {opts.out} and {opts.out.with_suffix('.txt')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
