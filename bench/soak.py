#!/usr/bin/env python3
"""Soak test: mixed traffic through a real `fwproxy run` for N minutes, with faults injected.

    .venv/bin/python -m bench.soak --minutes 2          # what `make soak-ci` runs
    .venv/bin/python -m bench.soak --minutes 30         # `make soak`

Everything runs on loopback. This process runs the simulated tenant (`fwproxy.sim`, with
20 s tokens: fwproxy renews them in the background after 10 s, so renewals happen between
the revocations) and the load; `python -m fwproxy run` is a subprocess in its own session,
stopped by its PID (SIGTERM, then SIGKILL) however the run ends. Its stderr is drained all
along.

Traffic
-------
`--workers` tasks share one keep-alive client session; `--fresh-workers` tasks open a new
connection for every request. Each picks, at random (seeded): a small GET (`/fotoweb/me`,
`/fotoweb/archives/`, `/fotoweb/archives/5000/`), an upload to `/sim/upload` (200 KB to
6 MB of random bytes, half with Content-Length and half chunked, in three size classes: kept
in memory for replay, kept in a temp file, and too large to keep: `auth.replay_max_body` is
set to 4 MiB), a download of 1-10 MiB from `/sim/bytes/N`, or an intentional abort (the
client reads 256 KiB of an 8 MiB download and hangs up, which must cancel the upstream
request without leaking anything). A worker that gets a 503 waits its Retry-After (at most
2 s) before its next request, as a polite client does.

Faults, while the traffic runs
------------------------------
* 401 storms: `revoke_all()` about every `--revoke-every` s (jittered): every token the
  proxy holds is refused, so it must renew once and replay.
* Token endpoint blips: about every `--blip-every` s, for `--blip-seconds`, the token
  endpoint answers 503 text/html, and the tokens are revoked at the blip's start so the proxy
  really needs a new one during it.
* fwproxy does not drop a token that it got in answer to a 401 until it is 10 s old
  (`REJECTION_COOLDOWN` in fwproxy/tokens.py). A second revocation inside those 10 s is
  passed back to clients as 401 until they are over. So a revocation is made no sooner than
  `--cooldown-guard` s (11) after the token the tenant issued in answer to the previous one;
  `--cooldown-guard 0` turns that off and shows the behaviour (clients then get 401s,
  counted as lost).

The simulated tenant runs in this process, so its aiohttp server's error log (resets from
the intentional hang-ups: the proxy cancels the upstream download) is counted, not printed.

What counts
-----------
* correct (served): 200 and the right answer. Small GETs: exactly the JSON the simulated
  tenant serves. Uploads: the size and SHA-256 the tenant computed equal what was sent.
  Downloads: Content-Length and every byte equal `fwproxy.sim.PATTERN` repeated.
* clear error (allowed): 502, 503 or 504 with a JSON body {"error": str, "detail": str},
  for a request whose lifetime overlaps a fault window: from a blip's start until the tenant
  issues the next token (the proxy has recovered), plus 1 s.
* expected 401: only for an upload larger than `auth.replay_max_body` (it cannot be
  replayed, the README says its 401 is passed back) whose lifetime overlaps a revocation
  window: from a revocation (or blip) until the tenant issues the next token, plus 1 s.
* aborted: the intentional hang-ups; neither served nor lost.
* lost: anything else: a connection error or timeout, a wrong status, a wrong or short
  body, a 5xx outside a fault window or without the JSON body, a 401 anywhere else.

Measuring the process fairly
----------------------------
RSS and fds vary with what is in flight, so both are compared at two quiet points taken
the same way: traffic paused, every request finished, the client sessions closed and the
proxy seen to hold no client connection any more. The baseline is taken after the warm-up
(the first `--warmup` of the run, 15 %, which has already exercised every code path and
filled the upstream pool); the end point after the last request. fwproxy's fds are
classified through /proc/PID/fd and /proc/net/tcp{,6}: listening sockets, client
connections (local port = the proxy's), upstream connections (remote port = the tenant's:
aiohttp's keep-alive pool, up to one idle connection per request that was in flight at
once, kept 30 s), and the rest (files, pipes, eventfds, Unix sockets, temp files).

Pass criteria (exit 0; 1 if any fails; 2 if the harness itself could not run):
1. no request lost (and some served, and at least one revocation happened);
2. RSS at the end <= 1.2 x RSS at the baseline;
3. fds: at the end (a) no client connection is left, (b) the upstream pool holds at most
   peak-concurrency + 1 connections (the +1: a token request has its own), (c) the other
   fds have grown by at most 2 (they do not depend on the load once it has stopped, so even
   one leaked file, pipe or temp file per thousand requests shows here), hence in total
   fds_end <= fds_start + max(0, pool_end - pool_start) + 2. The pool is the only part that
   may legitimately differ between the two quiet points, and only within its bound;
4. after every blip the proxy got a token again within 60 s (its backoff cap) of the
   blip's end, if traffic went on that long;
5. fwproxy was still running at the end and exited 0 on SIGTERM.

Latency is the client's: from sending a request until its whole answer is received and
checked; p50/p99 are over the served (correct) requests.

A report table goes to stdout; the same figures, the git commit and a timeline (RSS, fds
every `--sample-every` s) go to JSON: `--json PATH`, default
bench/results/soak-<UTC time>.json.

The code: bench/soak_proxy.py (fwproxy's config, process and /proc figures),
bench/soak_load.py (the tenant, the traffic, the faults and the judging of each answer),
bench/soak_report.py (the criteria and the report); this file runs them. fwproxy is started
and read through tests/support, the harness the e2e tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bench.soak_load import (
    SETTLE_TIMEOUT,
    Load,
    SoakTenantState,
    count_aiohttp_logs,
)
from bench.soak_proxy import ProxyProcess, Snapshot, proxy_config, snapshot, start_proxy
from bench.soak_report import add_exit, build_report, print_report
from fwproxy.sim import create_tenant_app

ROOT = Path(__file__).resolve().parent.parent
TOKEN_LIFETIME = 20.0  # renewed in the background after 10 s: before the next revocation (11 s)


# --- the run -----------------------------------------------------------------------------


async def fetch_metrics(base: str) -> dict[str, float]:
    """A few fwproxy counters from /_fwproxy/metrics."""
    wanted = ("fwproxy_token_requests_total", "fwproxy_token_renewals_total",
              "fwproxy_replays_total", "fwproxy_token_failures_total",
              "fwproxy_requests_total")
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, session.get(
        base + "/_fwproxy/metrics"
    ) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.split("{")[0] in wanted:
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


async def sampler(
    load: Load, proxy: ProxyProcess, tenant_port: int, every: float, out: list[Snapshot]
) -> None:
    while True:
        with contextlib.suppress(OSError):
            out.append(snapshot(proxy.pid, proxy.port, tenant_port, load.started))
        await asyncio.sleep(every)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and await `tasks`, cancelling again whatever is still running after 5 s."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(3):
        for task in pending:
            task.cancel()
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=5)
    await asyncio.gather(*(task for task in tasks if task.done()), return_exceptions=True)


async def progress(load: Load, samples: list[Snapshot], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        t = time.monotonic() - load.started
        last = f", RSS {samples[-1].rss_kib / 1024:.1f} MiB, fds {samples[-1].fds}" * bool(
            samples)
        print(f"soak: t={t:.0f}s served {sum(load.tally.served.values())}, "
              f"lost {sum(load.tally.lost.values())}, in flight {load.in_flight}{last}",
              flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60.0
    tenant_log = count_aiohttp_logs()
    git = git_state()
    state = SoakTenantState(token_lifetime=TOKEN_LIFETIME)
    runner = web.AppRunner(create_tenant_app(state), access_log=None)
    await runner.setup()
    proxy: ProxyProcess | None = None
    load: Load | None = None
    tasks: list[asyncio.Task[None]] = []
    report: dict[str, Any] = {}
    tmp = tempfile.TemporaryDirectory(prefix="fwproxy-soak-")
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        tenant_port = runner.addresses[0][1]
        config = Path(tmp.name) / "fwproxy.yaml"
        config.write_text(yaml.safe_dump(proxy_config(tenant_port)), encoding="utf-8")
        config.chmod(0o600)  # fwproxy refuses an inline secret in a file others may read
        proxy = await start_proxy(config, args.log_level, args.proxy_log)
        base = f"http://127.0.0.1:{proxy.port}"
        print(f"soak: tenant 127.0.0.1:{tenant_port}, fwproxy pid {proxy.pid} on {base}, "
              f"{args.minutes:g} min, {args.workers}+{args.fresh_workers} workers", flush=True)
        load = Load(args, base, state)
        samples: list[Snapshot] = []
        first = snapshot(proxy.pid, proxy.port, tenant_port, load.started)
        until = load.started + duration
        tasks.append(asyncio.create_task(load.chaos(until)))
        tasks.append(asyncio.create_task(
            sampler(load, proxy, tenant_port, args.sample_every, samples)))
        workers = [asyncio.create_task(load.worker(fresh=False)) for _ in range(args.workers)]
        workers += [asyncio.create_task(load.worker(fresh=True))
                    for _ in range(args.fresh_workers)]
        tasks += workers

        progress_every = max(10.0, duration / 20)
        tasks.append(asyncio.create_task(progress(load, samples, progress_every)))
        await asyncio.sleep(duration * args.warmup)
        baseline, paused = await load.quiet(proxy, tenant_port)
        served_at_baseline = sum(load.tally.served.values())
        print(f"soak: baseline after warm-up at t={baseline.at:g}s: RSS "
              f"{baseline.rss_kib / 1024:.1f} MiB, {baseline.fds} fds "
              f"(pause {paused:.1f}s)", flush=True)
        load.gate.set()
        await asyncio.sleep(max(0.0, until - time.monotonic()))

        load.stopping = True
        traffic_end = time.monotonic()
        end, _ = await load.quiet(proxy, tenant_port)
        load.gate.set()  # the workers see `stopping` and return
        _, pending = await asyncio.wait(workers, timeout=SETTLE_TIMEOUT)
        for task in pending:  # still in a request after DRAIN_TIMEOUT: cannot happen
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if pending:
            load.tally.lost["hung at the end (cancelled)"] += len(pending)
        alive = proxy.process.returncode is None
        metrics: dict[str, float] = {}
        if alive:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                metrics = await asyncio.wait_for(fetch_metrics(base), 30)
        load.judge()
        report = build_report(args, load, first, baseline, end, samples, metrics,
                              traffic_end, served_at_baseline, alive)
        report["tenant_log"] = dict(tenant_log.counts)
        report["git"] = git
    finally:
        if load is not None:
            # Python 3.10/3.11's wait_for can swallow a cancellation that coincides with the
            # request's completion: such a worker must still stop at its next request.
            load.stopping = True
            load.gate.set()
        await cancel_all(tasks)
        if load is not None:
            await load.close_session()
        if proxy is not None:
            try:
                code, took = await proxy.stop_timed()
                if report:
                    add_exit(report, proxy, code, took)
                elif proxy.port == 0 and proxy.first_lines:  # it did not start
                    print("fwproxy log:\n" + "\n".join(proxy.first_lines), file=sys.stderr)
            finally:
                proxy.kill()  # interrupted while stopping: never leave fwproxy behind
        await runner.cleanup()
        tmp.cleanup()
    return report


def git_state() -> dict[str, Any]:
    """The commit under test and the files changed since (fwproxy may be edited meanwhile)."""
    def git(*argv: str) -> str:
        try:
            done = subprocess.run(  # noqa: S603
                ["git", *argv], cwd=ROOT, capture_output=True, text=True,  # noqa: S607
                timeout=10, check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "changed": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak fwproxy with mixed traffic and injected faults (see the docstring).")
    parser.add_argument("--minutes", type=float, default=2.0, help="traffic time (fractional)")
    parser.add_argument("--workers", type=int, default=32, help="pooled-connection workers")
    parser.add_argument("--fresh-workers", type=int, default=2,
                        help="workers that open a new connection for every request")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.15,
                        help="fraction of the run before the RSS/fd baseline")
    parser.add_argument("--revoke-every", type=float, default=10.0, help="seconds, jittered")
    parser.add_argument("--blip-every", type=float, default=30.0, help="seconds, jittered")
    parser.add_argument("--blip-seconds", type=float, default=2.0)
    parser.add_argument("--cooldown-guard", type=float, default=11.0,
                        help="revoke no sooner than this after a token was issued; 0: off")
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS/fd sampling")
    parser.add_argument("--log-level", default="info", help="fwproxy's --log-level")
    parser.add_argument("--proxy-log", type=Path, default=None,
                        help="write fwproxy's whole stderr here")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: bench/results/soak-<UTC time>.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or not 0 < args.warmup < 1 or args.workers < 1:
        parser.error("--minutes > 0, 0 < --warmup < 1 and --workers >= 1 please")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def terminate() -> None:  # once: a second SIGTERM must not cut fwproxy's stop short
        loop.remove_signal_handler(signal.SIGTERM)
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)  # stop fwproxy on the way out
    return await run(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(main_async(args))
    except (RuntimeError, OSError, asyncio.TimeoutError, AssertionError) as exc:
        print(f"soak: could not run: {exc!r}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted (fwproxy stopped)", file=sys.stderr)
        return 130
    print_report(report)
    path: Path = args.json or ROOT / "bench" / "results" / (
        "soak-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"soak: wrote {path}")
    return 0 if all(v["pass"] for v in report["criteria"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
