"""Interleaved A/B of 1 KB GET req/s: fwproxy builds (source trees) and the bare proxy on
the bench's nginx tenant over TLS, each measured in turn, round after round, so that the
drift of a shared machine spreads over all of them (bench/PROFILE.md, the ledger).

    .venv/bin/python -m bench.ab --tree old=/tmp/old-tree --tree new=. --bare \\
        --loop asyncio --rounds 5 --duration 8

A tree is run as ``python -m fwproxy run`` with the tree as the working directory (so an
exported old commit runs with this venv). ``--set KEY=YAML`` adds a config key to every
fwproxy (``--set tenant.max_in_flight=64``); ``--variant NAME:KEY=YAML`` adds a contender,
the last tree with that key (several keys: repeat the option with the same NAME). Prints
each run (the order within a round rotates, round after round) and, per contender, the
median req/s, p99 and CPU time a request (the process's, from /proc: steadier than req/s
on a shared machine), and the median ratios to the first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.contenders import Bench, local_token
from bench.parsing import parse_wrk, summarize_profile
from bench.tenant import BENCH, JSON_PATH, PY, ROOT, free_port, wait_200


def fwproxy_yaml(port: int, tenant_port: int, work: Path, loop: str,
                 keys: list[tuple[str, str]]) -> str:
    """The bench's fwproxy config, with the loop and `keys` (dotted) set."""
    sections: dict[str, dict[str, str]] = {
        "listen": {"host": "127.0.0.1", "port": str(port), "event_loop": loop},
        "tenant": {"url": f"https://127.0.0.1:{tenant_port}", "ca_file": str(work / "ca.crt")},
        "auth": {"client_id": "bench", "client_secret": "bench-secret"},
    }
    for dotted, value in keys:
        section, _, key = dotted.partition(".")
        sections.setdefault(section, {})[key] = value
    return "".join(f"{name}:\n" + "".join(f"  {k}: {v}\n" for k, v in body.items())
                   for name, body in sections.items())


def cpu_seconds(pid: int) -> float:
    """User and system CPU of `pid` and its children so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def profile(proc: subprocess.Popen[bytes], url: str, seconds: float, work: Path,
            headers: list[str]) -> None:
    """py-spy (200 Hz, --function) on `proc` under wrk; the top own and fwproxy rows."""
    raw = work / "profile.raw"
    load = subprocess.Popen(["wrk", "-t1", "-c50", f"-d{seconds + 3:g}s",  # noqa: S603, S607
                             *headers, url + JSON_PATH], stdout=subprocess.DEVNULL)
    time.sleep(1)
    subprocess.run([str(BENCH / ".venv-tools" / "bin" / "py-spy"), "record",  # noqa: S603
                    "--pid", str(proc.pid), "--duration", str(round(seconds)), "--rate", "200",
                    "--format", "raw", "--function", "--output", str(raw)], capture_output=True)
    load.wait()
    summary = summarize_profile(raw.read_text(), top=40)
    for title, key in (("own, by package", "areas"), ("own", "self"),
                       ("fwproxy, total", "fwproxy_total"),
                       ("total", "total")):
        print(f"\n-- {title} ({summary['samples']} samples)")
        for row in summary[key]:
            print(f"{row['pct']:5.1f}  {row['function']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--bare", action="store_true", help="the bare aiohttp proxy too")
    p.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=YAML")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--profile", metavar="NAME", help="then py-spy this contender under wrk")
    p.add_argument("--local-token", action="append", default=[], metavar="NAME",
                   help="this variant's client uses a local token (local_tokens.enabled)")
    o = p.parse_args()
    keys = [(item.partition("=")[0], item.partition("=")[2]) for item in o.set]
    work = Path(tempfile.mkdtemp(prefix="fwproxy-ab-"))
    opts = argparse.Namespace(size=1 << 20, threads=1, connections=o.connections)
    bench = Bench(opts, work)
    argvs: dict[str, tuple[list[str], str]] = {}
    try:
        bench.start_tenant()
        for item in o.tree:
            name, _, tree = item.partition("=")
            argvs[name] = ([PY, "-m", "fwproxy", "run", "--config", "{conf}"],
                           str(Path(tree).resolve()))
        variants: dict[str, list[tuple[str, str]]] = {}
        for item in o.variant:
            name, _, assignment = item.partition(":")
            key, _, value = assignment.partition("=")
            variants.setdefault(name, []).append((key, value))
        last = list(argvs.values())[-1] if argvs else None
        for name in variants:
            assert last is not None, "a variant needs a tree"
            argvs[name] = last
        if o.bare:
            argvs["bare"] = ([PY, str(BENCH / "bare_proxy.py"), "--port", "{port}",
                              "--upstream", f"https://127.0.0.1:{bench.tenant_port}",
                              "--ca", str(work / "ca.crt")]
                             + (["--uvloop"] if o.loop == "uvloop" else []), "")
        urls, procs, headers = {}, {}, {}
        for name, (argv, tree) in argvs.items():
            port = free_port()
            conf = work / f"{name}.yaml"
            local = [("local_tokens.enabled", "true"),
                     ("auth.token_store", f"{work}/state-{name}/token.json")]
            conf.write_text(fwproxy_yaml(port, bench.tenant_port, work, o.loop,
                                         [*keys, *variants.get(name, []),
                                          *(local if name in o.local_token else [])]))
            conf.chmod(0o600)
            bench.procs.cwd = Path(tree) if tree else ROOT
            proc = bench.procs.start(name, [a.format(conf=conf, port=port) for a in argv])
            procs[name] = proc
            urls[name] = f"http://127.0.0.1:{port}"
            wait_200(urls[name] + JSON_PATH, {}, None, bench.procs, proc, time.perf_counter())
            if name in o.local_token:
                headers[name] = ["-H", f"Authorization: Bearer {local_token(urls[name])}"]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        for rnd in range(o.rounds):
            order = list(urls.items())
            shift = rnd % len(order)  # each contender takes each place in the round in turn
            for name, url in order[shift:] + order[:shift]:
                def wrk(seconds: float, url: str = url, name: str = name) -> str:
                    argv = ["wrk", "-t1", f"-c{o.connections}", f"-d{seconds:g}s", "--latency",
                            *headers.get(name, []), url + JSON_PATH]
                    return subprocess.run(argv, capture_output=True,  # noqa: S603
                                          text=True).stdout
                wrk(o.warmup)
                cpu0 = cpu_seconds(procs[name].pid)
                r = parse_wrk(wrk(o.duration))
                r["cpu_us"] = ((cpu_seconds(procs[name].pid) - cpu0) * 1e6
                               / max(r["requests"], 1))
                if r["error"]:
                    print(f"  {name}: {r['error']}")
                    continue
                results[name].append(r)
                print(f"round {rnd + 1} {name:>10}: {r['rps']:8.0f} req/s  p99 "
                      f"{r['p99_ms']:.2f} ms  {r['cpu_us']:.0f} us CPU a request", flush=True)
        first = next(iter(results))
        previous = first
        print(f"\nloop {o.loop}, {o.rounds} rounds x {o.duration:g}s, c={o.connections}")
        for name, runs in results.items():
            ratios = [r["rps"] / f["rps"] for r, f in zip(runs, results[first], strict=False)]
            cpu = [r["cpu_us"] / f["cpu_us"] for r, f in zip(runs, results[first], strict=False)]
            print(f"{name:>10}: median {statistics.median(r['rps'] for r in runs):8.0f} req/s "
                  f"(runs {', '.join(str(round(r['rps'])) for r in runs)}), p99 median "
                  f"{statistics.median(r['p99_ms'] for r in runs):.2f} ms; ratio to {first}: "
                  f"median {statistics.median(ratios):.3f} "
                  f"(spread {min(ratios):.3f}-{max(ratios):.3f}); CPU a request median "
                  f"{statistics.median(r['cpu_us'] for r in runs):.0f} us, ratio median "
                  f"{statistics.median(cpu):.3f} (spread {min(cpu):.3f}-{max(cpu):.3f})")
            if name != first and name in argvs and argvs[name][1] and argvs[previous][1]:
                steps = [(r["rps"] / p["rps"], r["cpu_us"] / p["cpu_us"])
                         for r, p in zip(runs, results[previous], strict=False)]
                print(f"{'':>12}vs {previous}: req/s median "
                      f"{statistics.median(a for a, _ in steps):.3f} (spread "
                      f"{min(a for a, _ in steps):.3f}-{max(a for a, _ in steps):.3f}), CPU "
                      f"median {statistics.median(b for _, b in steps):.3f} (spread "
                      f"{min(b for _, b in steps):.3f}-{max(b for _, b in steps):.3f})")
            previous = name
        if o.profile:
            profile(procs[o.profile], urls[o.profile], o.duration, work,
                    headers.get(o.profile, []))
    finally:
        bench.procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
