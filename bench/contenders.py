"""The contenders and the measurements: start each on the tenant, load it (wrk, the fixed-rate
client, curl transfers, the RTT script scenario, a py-spy profile) and record the figures in
`Contender.r`. Every process runs in its own session (tests/support `Sessions`) and is
stopped by its process group."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import resource
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.parsing import human_size, parse_wrk, summarize_profile, write_profile
from bench.tenant import (
    BENCH,
    BIG_PATH,
    FWPROXY,
    JSON_PATH,
    MIB,
    PROXY_BODY,
    PY,
    ROOT,
    TENANT_BODY,
    TOKEN,
    UPLOAD_PATH,
    Failed,
    free_port,
    fwproxy_config,
    get_status,
    make_ca,
    make_data,
    nginx_argv,
    nginx_conf,
    put_root,
    wait_200,
)
from tests.support.processes import Sessions
from tests.support.procfs import (
    cpu_seconds,
    foreign_cpu_seconds,
    process_tree,
    status_kib,
    tree_peak_rss_kib,
)

LABELS = {
    "a": "direct to nginx (limit)",
    "b": "nginx reverse proxy",
    "c": "mitmproxy reverse",
    "d": "bare aiohttp proxy",
    "g": "bare aiohttp, uvloop",
    "e": "fwproxy",
    "f": "fwproxy workers=2",
    "h": "fwproxy on asyncio",
    "i": "fwproxy, local token",
    "j": "fwproxy, max_in_flight",
    "k": "fwproxy, no protection",
}
# Issue 17's variants of (e): the 1 KB GET only (no fixed rate, transfers or RTT scenario).
# (h) is (e) on asyncio's loop, to compare with (d) on the same loop; (i) a client using a
# local token (fwproxy's own token endpoint); (j) tenant.max_in_flight set (above wrk's
# connections: the line's bookkeeping, never a wait); (k) nothing of the tenant's
# protection configured (no budget, no retries, no breaker).
VARIANTS: dict[str, dict[str, dict[str, str]]] = {
    "h": {"listen": {"event_loop": "asyncio"}},
    "i": {"local_tokens": {"enabled": "true"}},
    "j": {"tenant": {"max_in_flight": "64"}},
    "k": {"tenant": {"retries": "0", "breaker_failures": "0"}},
}
RPS_ONLY = frozenset(VARIANTS)
LOCAL_TOKEN_CLIENT = "bench-tool"


def _uvloop_version() -> str | None:
    try:
        return importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        return None


UVLOOP = _uvloop_version()  # in the project venv: fwproxy (e, f) and (g) run on it


class Others:
    """Measures what other processes used while a measurement ran, in cores."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []  # (what, seconds, cores)

    @contextlib.contextmanager
    def watch(self, what: str) -> Iterator[None]:
        cpu0, t0 = foreign_cpu_seconds(), time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - t0
            self.spans.append((what, seconds,
                               (foreign_cpu_seconds() - cpu0) / max(seconds, 1e-3)))

    def summary(self) -> dict[str, Any]:
        total = sum(s for _, s, _ in self.spans)
        mean = sum(s * c for _, s, c in self.spans) / total if total else 0.0
        worst = max(self.spans, key=lambda s: s[2], default=("", 0.0, 0.0))
        return {"mean_cores": mean, "max_cores": worst[2], "max_during": worst[0],
                "spans": [{"what": w, "seconds": s, "cores": c} for w, s, c in self.spans]}



@dataclass
class Contender:
    key: str
    label: str
    launch: Callable[[int], list[str]] | None  # port -> argv; None: nothing to start (a)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cafile: str | None = None
    status: str = "ok"  # ok | n/a | skipped | failed
    reason: str = ""
    r: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status == "ok"

    def fail(self, why: str) -> None:
        if self.status == "ok":
            self.status, self.reason = "failed", why
            print(f"  ({self.key}) FAILED: {why}", flush=True)


def local_token(base: str) -> str:
    """A local token from fwproxy's own token endpoint (local tokens on, no API keys: any
    client ID gets one)."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                   "client_id": LOCAL_TOKEN_CLIENT}).encode()
    request = urllib.request.Request(base + "/fotoweb/oauth2/token", data=form, headers={  # noqa: S310
        "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (loopback)
        token: str = json.load(answer)["access_token"]
    return token


class Bench:
    def __init__(self, opts: argparse.Namespace, work: Path) -> None:
        self.o = opts
        self.work = work
        (work / "logs").mkdir()
        (work / "tmp").mkdir()
        self.procs = Sessions(work / "logs", cwd=ROOT)
        self.tenant_port = 0
        self.contenders: dict[str, Contender] = {}
        self.upload_file = work / "upload.bin"
        self.puts = work / "put"  # where the tenant stores an upload (put_root)
        self.notes: list[str] = []
        self.others = Others()

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- setup --

    def start_tenant(self) -> None:
        make_ca(self.work)
        self.upload_file = make_data(self.work, self.o.size)
        self.puts = put_root(self.work)
        self.tenant_port = free_port()
        conf = nginx_conf(self.work, "tenant", TENANT_BODY, port=self.tenant_port,
                          puts=self.puts)
        self.tenant = self.procs.start("tenant-nginx", nginx_argv(self.work, conf))
        url = f"https://127.0.0.1:{self.tenant_port}{JSON_PATH}"
        wait_200(url, {"Authorization": f"Bearer {TOKEN}"}, str(self.work / "ca.crt"),
                 self.procs, self.tenant, time.perf_counter(), limit=20)
        if get_status(url, {}, str(self.work / "ca.crt")) != 401:
            raise Failed("the tenant does not check the bearer token")
        buffer = bytearray(MIB)  # both big files into the page cache: no run pays for it
        for path in (self.work / "www" / BIG_PATH.lstrip("/"), self.upload_file):
            with open(path, "rb") as f:
                while f.readinto(buffer):
                    pass

    def define(self) -> None:
        work, o = self.work, self.o
        ca = str(work / "ca.crt")
        mitmdump = BENCH / ".venv-mitm" / "bin" / "mitmdump"

        def nginx_proxy(port: int) -> list[str]:
            conf = nginx_conf(work, f"proxy-{port}", PROXY_BODY, port=port,
                              upstream=self.tenant_port)
            return nginx_argv(work, conf)

        def mitm(port: int) -> list[str]:
            return [str(mitmdump), "-q", "--mode",
                    f"reverse:https://127.0.0.1:{self.tenant_port}@127.0.0.1:{port}",
                    "--ssl-insecure", "-s", str(BENCH / "mitm_addon.py"),
                    "--set", f"confdir={work}/mitm", "--set", "stream_large_bodies=1m",
                    "--set", "termlog_verbosity=error", "--set", "flow_detail=0"]

        def bare(port: int) -> list[str]:
            return [PY, str(BENCH / "bare_proxy.py"), "--port", str(port), "--upstream",
                    f"https://127.0.0.1:{self.tenant_port}", "--ca", ca]

        def bare_uvloop(port: int) -> list[str]:
            return [*bare(port), "--uvloop"]

        def fw(workers: int, key: str = "") -> Callable[[int], list[str]]:
            def argv(port: int) -> list[str]:
                more = {section: dict(keys) for section, keys in VARIANTS.get(key, {}).items()}
                if key == "i":  # the signing key lives next to the token store
                    more["auth"] = {"token_store": f"{work}/state-{port}/token.json"}
                conf = fwproxy_config(work, f"fwproxy-{port}", port, self.tenant_port, workers,
                                      more)
                return [FWPROXY, "run", "--config", str(conf)]
            return argv

        launchers: dict[str, Callable[[int], list[str]] | None] = {
            "a": None, "b": nginx_proxy, "c": mitm, "d": bare, "g": bare_uvloop, "e": fw(0),
            "f": fw(2), **{key: fw(0, key) for key in VARIANTS}}
        for key, launch in launchers.items():
            c = Contender(key, LABELS[key], launch)
            self.contenders[key] = c
            if key not in o.only:
                c.status, c.reason = "skipped", "not in --only"
            elif key == "a":
                c.url = f"https://127.0.0.1:{self.tenant_port}"
                c.headers = {"Authorization": f"Bearer {TOKEN}"}
                c.cafile = ca
        g = self.contenders["g"]
        if g.active and UVLOOP is None:
            g.status, g.reason = "skipped", "uvloop not installed (make installs it)"
        c = self.contenders["c"]
        if c.active and not mitmdump.exists():
            c.status = "skipped"
            c.reason = "mitmproxy not installed (bench/setup.sh full installs it)"
        f = self.contenders["f"]
        if f.active:
            ok, why = self.workers_supported()
            if not ok:
                f.status, f.reason = "n/a", why

    def workers_supported(self) -> tuple[bool, str]:
        """Does this fwproxy know listen.workers? Ask `fwproxy check` with such a config."""
        conf = fwproxy_config(self.work, "fwproxy-check", free_port(), self.tenant_port, 2)
        try:
            done = subprocess.run([FWPROXY, "check", "--config", str(conf)],  # noqa: S603
                                  capture_output=True, text=True, timeout=60, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return False, "fwproxy check timed out"
        text = (done.stderr + done.stdout).strip()
        if done.returncode == 0:
            return True, ""
        if "workers" in text:
            line = next((ln for ln in text.splitlines() if "workers" in ln), text)
            return False, "listen.workers not supported: " + line.strip()[:150]
        return False, f"fwproxy check failed (exit {done.returncode}): {text[-200:]}"

    def start(self, c: Contender) -> float | None:
        """Start a fresh contender process; seconds from spawn to the first proxied 200."""
        if c.launch is None:
            return None
        port = free_port()
        argv = c.launch(port)
        started = time.perf_counter()
        c.proc = self.procs.start(f"{c.key}", argv)
        c.url = f"http://127.0.0.1:{port}"
        seconds = wait_200(c.url + JSON_PATH, {}, None, self.procs, c.proc, started)
        c.r.setdefault("startup_s", []).append(seconds)
        if c.key == "i":
            c.headers = {"Authorization": f"Bearer {local_token(c.url)}"}
            if get_status(c.url + JSON_PATH, c.headers, None) != 200:
                raise Failed("the local token was not taken")
        return seconds

    def stop(self, c: Contender) -> None:
        self.procs.stop(c.proc)
        c.proc = None

    def active(self) -> list[Contender]:
        return [c for c in self.contenders.values() if c.active]

    def movers(self) -> list[Contender]:
        """The active contenders that take part in the transfers (not the rps variants)."""
        return [c for c in self.active() if c.key not in RPS_ONLY]

    def guarded(self, c: Contender, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Failed as exc:
            c.fail(f"{what}: {exc}")
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            c.fail(f"{what}: {type(exc).__name__}: {exc}")
        if c.proc is not None and c.proc.poll() is not None:
            c.fail(f"{what}: the process died (status {c.proc.returncode})\n"
                   + self.procs.log_tail(c.proc))

    # -- measurements --

    def wrk(self, c: Contender, duration: float) -> dict[str, Any]:
        argv = ["wrk", f"-t{self.o.threads}", f"-c{self.o.connections}",
                f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s"]
        for name, value in c.headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(c.url + JSON_PATH)
        done = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603
                              timeout=duration + 60)
        return parse_wrk(done.stdout + done.stderr)

    def fixed_rate(self, c: Contender) -> dict[str, Any]:
        argv = [PY, str(BENCH / "fixed_rate.py"), "--url", c.url + JSON_PATH,
                "--rate", str(self.o.rate), "--duration", str(self.o.rate_duration),
                "--warmup", str(min(2.0, max(0.5, self.o.rate_duration / 5)))]
        for name, value in c.headers.items():
            argv += ["--header", f"{name}: {value}"]
        if c.cafile:
            argv += ["--cacert", c.cafile]
        done = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603
                              timeout=self.o.rate_duration + 120)
        if done.returncode != 0:
            raise Failed(f"fixed_rate.py exited {done.returncode}: {done.stderr[-300:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        if result["ok"] != result["sent"]:
            raise Failed(f"fixed rate: {result['ok']}/{result['sent']} answered 200 "
                         f"({result['statuses']}, {result['first_error']})")
        return result

    def curl(self, c: Contender, upload: bool) -> dict[str, Any]:
        out = self.work / "tmp" / "curl-body"
        argv = ["curl", "-sS", "--max-time", "900", "-w",
                "%{http_code} %{size_upload} %{size_download} %{speed_upload} "
                "%{speed_download} %{time_total}"]
        if c.cafile:
            argv += ["--cacert", c.cafile]
        for name, value in c.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if upload:
            argv += ["-T", str(self.upload_file), "-H", "Expect:", "-o", str(out),
                     c.url + UPLOAD_PATH]
        else:
            argv += ["-o", "/dev/null", c.url + BIG_PATH]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=960)  # noqa: S603
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        curl_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 6:
            raise Failed(f"curl exited {done.returncode}: {done.stderr.strip()[-300:]}")
        code, up, down, speed_up, speed_down, total = fields
        if code not in (("200", "201", "204") if upload else ("200",)):
            raise Failed(f"HTTP {code}")
        if upload:
            stored = self.puts / UPLOAD_PATH.lstrip("/")
            received = stored.stat().st_size if stored.exists() else None
            stored.unlink(missing_ok=True)
            if int(float(up)) != self.o.size or received != self.o.size:
                raise Failed(f"upload: sent {up}, the tenant stored {received}, "
                             f"expected {self.o.size}")
            speed = float(speed_up)
        else:
            if int(float(down)) != self.o.size:
                raise Failed(f"download: got {down} bytes, expected {self.o.size}")
            speed = float(speed_down)
        return {"mb_s": speed / 1e6, "seconds": float(total),
                "curl_cpu_s_per_gib": curl_cpu / (self.o.size / (1 << 30))}

    # -- phases --

    def phase_requests(self) -> None:
        o = self.o
        self.say(f"\n== 1 KB GET: wrk -t{o.threads} -c{o.connections}, {o.runs} x "
                 f"{o.duration:g}s; fixed rate {o.rate:g}/s x {o.rate_duration:g}s ==")
        for c in self.active():
            self.guarded(c, "start", functools.partial(self.start, c))
            if c.active:
                self.say(f"  ({c.key}) {c.label}: up at {c.url}"
                         + (f" in {c.r['startup_s'][-1] * 1000:.0f} ms"
                            if c.r.get("startup_s") else ""))
        for run in range(o.runs):
            for c in self.active():
                def one(c: Contender = c, run: int = run) -> None:
                    # warm up every run: rounds interleave the contenders (so slow drifts of
                    # a shared machine spread over all), and idle pooled connections expire
                    self.wrk(c, o.warmup)
                    with self.others.watch(f"wrk run {run + 1} ({c.key})"):
                        result = self.wrk(c, o.duration)
                    c.r.setdefault("wrk", []).append(result)
                    if result["error"]:
                        raise Failed("wrk: " + result["error"])
                self.guarded(c, "wrk", one)
                if c.active:
                    w = c.r["wrk"][-1]
                    self.say(f"  run {run + 1}/{o.runs} ({c.key}) {w['rps']:10.0f} req/s  "
                             f"p50 {w['p50_ms']:.2f} ms  p99 {w['p99_ms']:.2f} ms")
        for run in range(o.runs):
            for c in self.active():
                if c.key in RPS_ONLY:
                    continue

                def rate(c: Contender = c, run: int = run) -> None:
                    with self.others.watch(f"fixed rate {run + 1} ({c.key})"):
                        c.r.setdefault("fixed", []).append(self.fixed_rate(c))
                self.guarded(c, "fixed rate", rate)
                if c.active:
                    f = c.r["fixed"][-1]
                    self.say(f"  run {run + 1}/{o.runs} ({c.key}) at {o.rate:g}/s: "
                             f"p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  "
                             f"max {f['max_ms']:.2f} ms")
        # (d): what the floor spends; (h): fwproxy on the floor's loop
        profiled = [("e", "fwproxy"), ("d", "bare"), ("h", "fwproxy-asyncio")]
        plain = self.contenders["e"].r.get("wrk", [])
        for key in ("i", "j"):  # a variant that missed its target: where its time went
            runs = self.contenders[key].r.get("wrk", [])
            if plain and runs and (statistics.median(r["rps"] for r in runs)
                                   < 0.95 * statistics.median(r["rps"] for r in plain)):
                profiled.append((key, f"fwproxy-{key}"))
        for key, name in profiled:
            c = self.contenders[key]
            if o.profile and c.active:
                self.guarded(c, "profile", functools.partial(self.profile, c, name))
        for c in self.active():
            self.stop(c)

    def profile(self, c: Contender, name: str) -> None:
        spy = BENCH / ".venv-tools" / "bin" / "py-spy"
        if not spy.exists():
            self.notes.append("profile skipped: py-spy not installed")
            return
        raw = BENCH / "results" / f"profile-{name}.raw"
        assert c.proc is not None
        duration = max(2, round(self.o.duration))
        self.say(f"  profiling ({c.key}) with py-spy for {duration}s under wrk")
        raw.unlink(missing_ok=True)
        # wrk runs 2 s longer than py-spy, which starts 1 s in: the samples are steady state
        # (no connection set-up, no cancelled requests as wrk stops)
        argv = ["wrk", f"-t{self.o.threads}", f"-c{self.o.connections}", f"-d{duration + 2}s",
                "--latency"]
        for header, value in c.headers.items():  # (i)'s local token
            argv += ["-H", f"{header}: {value}"]
        load = self.procs.start("wrk-profile", [*argv, c.url + JSON_PATH])
        time.sleep(1)
        try:
            subprocess.run([  # noqa: S603
                str(spy), "record", "--pid", str(c.proc.pid), "--duration", str(duration),
                "--rate", "200", "--format", "raw", "--function",
                "--output", str(raw)], capture_output=True, timeout=duration + 60)
            load.wait(duration + 60)
        finally:
            self.procs.stop(load)
        result = parse_wrk(self.procs.log(load).read_text())
        if not raw.exists():
            self.notes.append("profile: py-spy wrote nothing")
            return
        summary = summarize_profile(raw.read_text())
        summary["wrk_rps_while_profiling"] = result["rps"]
        summary["seconds"] = duration
        c.r["profile"] = summary
        write_profile(summary, f"({c.key}) {c.label}", BENCH / "results" / f"profile-{name}.md")

    def tree_cpu(self, proc: subprocess.Popen[bytes] | None) -> float:
        """CPU seconds used so far by `proc` and its descendants (0 for none)."""
        total = 0.0
        for pid in process_tree(proc.pid) if proc is not None else ():
            with contextlib.suppress(OSError, ValueError):
                total += cpu_seconds(pid)
        return total

    def phase_transfers(self) -> None:
        """Each kind (download, then upload) in fresh processes; the runs interleave the
        contenders (round 1: a b c ..., round 2: a b c ...), so that each contender's
        ratio to (a) is taken against the direct run of its own round, a minute or less
        apart on a shared machine. Per run: MB/s, and the CPU seconds the contender and
        the tenant spent on it (the figure that the machine's load distorts least)."""
        o = self.o
        size = human_size(o.size)
        gib = o.size / (1 << 30)
        self.say(f"\n== {size} download and upload: curl, {o.transfer_runs} interleaved "
                 "round(s), fresh processes per kind ==")
        for upload in (False, True):
            kind = "upload" if upload else "download"
            for c in self.movers():
                self.guarded(c, f"{kind} start", functools.partial(self.start, c))
            for i in range(o.transfer_runs):
                line = []
                for c in self.movers():
                    def transfer(c: Contender = c, kind: str = kind, upload: bool = upload,
                                 i: int = i) -> None:
                        cpu0, tenant0 = self.tree_cpu(c.proc), self.tree_cpu(self.tenant)
                        with self.others.watch(f"{kind} {i + 1} ({c.key})"):
                            result = self.curl(c, upload)
                        result["cpu_s_per_gib"] = (self.tree_cpu(c.proc) - cpu0) / gib
                        result["tenant_cpu_s_per_gib"] = (
                            self.tree_cpu(self.tenant) - tenant0) / gib
                        c.r.setdefault(kind, []).append(result)
                    self.guarded(c, kind, transfer)
                    if c.active:
                        line.append(f"({c.key}) {c.r[kind][-1]['mb_s']:.0f}")
                self.say(f"  {kind} round {i + 1}/{o.transfer_runs}: " + "  ".join(line)
                         + " MB/s")
            for c in self.movers():
                if c.proc is not None:
                    c.r[f"{kind}_rss_mib"] = tree_peak_rss_kib(c.proc.pid) / 1024
                self.stop(c)
            a = self.contenders["a"]
            for c in self.movers():
                runs = c.r.get(kind, [])
                if not runs:
                    continue
                speeds = [t["mb_s"] for t in runs]
                rss = c.r.get(f"{kind}_rss_mib")

                def cpu(what: str, runs: list[dict[str, Any]] = runs) -> float:
                    return float(statistics.median(t[what] for t in runs))

                ratios = ""
                if c.key != "a" and a.active and len(a.r.get(kind, [])) == len(runs):
                    pairs = zip(runs, a.r[kind], strict=True)
                    ratios = ", per round vs (a) " + " ".join(
                        f"{t['mb_s'] / d['mb_s']:.2f}x" for t, d in pairs)
                self.say(f"  ({c.key}) {kind}: {min(speeds):.0f}-{max(speeds):.0f} MB/s "
                         f"(spread {(max(speeds) - min(speeds)) / max(speeds):.0%})"
                         + ratios
                         + ", CPU s/GiB: " + (f"own {cpu('cpu_s_per_gib'):.2f}, "
                                              if c.launch is not None else "")
                         + f"tenant {cpu('tenant_cpu_s_per_gib'):.2f}, "
                         f"curl {cpu('curl_cpu_s_per_gib'):.2f}"
                         + (f", peak RSS {rss:.1f} MiB" if rss is not None else ""))

    def phase_idle(self) -> None:
        """`--idle-connections` keep-alive connections, one request on each, then idle: the
        peak RSS of fwproxy (e) and of the bare aiohttp floor (g, else d), what each held
        before (after one request) and what a connection costs."""
        o = self.o
        n = o.idle_connections
        if n <= 0:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = n + 512  # the proxy's own fds besides: its upstream pool, logs, the loop
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        if hard < need:
            n = hard - 512
            self.notes.append(f"idle connections: the fd limit ({hard}) allows {n}, "
                              f"not {o.idle_connections}")
        self.say(f"\n== {n} idle keep-alive connections: peak RSS ==")
        floor = "g" if self.contenders["g"].active else "d"
        for c in self.active():
            if c.key not in ("e", floor):
                continue

            def idle(c: Contender = c) -> None:
                self.start(c)
                assert c.proc is not None
                base = status_kib(c.proc.pid, "VmRSS")
                client = subprocess.Popen(  # noqa: S603
                    [PY, str(BENCH / "idle.py"), "--url", c.url + JSON_PATH,
                     "--connections", str(n)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                try:
                    assert client.stdout is not None
                    line = client.stdout.readline()
                    if not line:
                        raise Failed(f"idle.py exited {client.wait(60)} before opening")
                    opened = json.loads(line)
                    if opened["failed"]:
                        raise Failed(f"idle: {opened['failed']} of {n} connections failed "
                                     f"({opened['first_error']})")
                    peak = tree_peak_rss_kib(c.proc.pid)
                finally:
                    if client.stdin is not None:
                        client.stdin.close()
                    client.wait(60)
                c.r["idle"] = {"connections": n, "base_mib": base / 1024,
                               "peak_mib": peak / 1024,
                               "kib_per_connection": (peak - base) / n,
                               "open_seconds": opened["seconds"]}
            self.guarded(c, "idle connections", idle)
            self.stop(c)
            if c.active and "idle" in c.r:
                r = c.r["idle"]
                self.say(f"  ({c.key}) {c.label}: {r['base_mib']:.1f} MiB after one request, "
                         f"peak {r['peak_mib']:.1f} MiB with {n} idle "
                         f"({r['kib_per_connection']:.2f} KiB a connection)")

    def phase_rtt(self) -> dict[str, Any] | None:
        o = self.o
        e = self.contenders["e"]
        if not e.active:
            return None
        self.say(f"\n== script scenario: {o.calls} calls, {2 * o.rtt_ms:g} ms RTT ==")
        relay_port, proxy_port = free_port(), free_port()
        relay = self.procs.start("rtt-relay", [
            PY, str(BENCH / "rtt_relay.py"), "--port", str(relay_port),
            "--target", f"127.0.0.1:{self.tenant_port}", "--delay-ms", str(o.rtt_ms)])
        proxy = None
        try:
            conf = fwproxy_config(self.work, "fwproxy-rtt", proxy_port, relay_port)
            proxy = self.procs.start("fwproxy-rtt", [FWPROXY, "run", "--config", str(conf)])
            wait_200(f"http://127.0.0.1:{proxy_port}/_fwproxy/ready", {}, None, self.procs, proxy,
                     time.perf_counter())
            with self.others.watch("script scenario"):
                done = subprocess.run([  # noqa: S603
                    PY, str(BENCH / "script_scenario.py"),
                    "--tenant", f"https://127.0.0.1:{relay_port}",
                    "--cacert", str(self.work / "ca.crt"),
                    "--proxy", f"http://127.0.0.1:{proxy_port}", "--calls", str(o.calls)],
                    capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise Failed(f"script_scenario.py exited {done.returncode}: "
                             f"{done.stderr[-400:]}")
            result: dict[str, Any] = json.loads(done.stdout)
        except (Failed, subprocess.SubprocessError, ValueError) as exc:
            e.fail(f"RTT scenario: {exc}")
            return None
        finally:
            self.procs.stop(proxy)
            self.procs.stop(relay)
        self.say(f"  approach 1: {result['approach1_s']:.2f} s "
                 f"({result['approach1_ms_per_call']:.1f} ms/call); through fwproxy: "
                 f"{result['fwproxy_s']:.2f} s ({result['fwproxy_ms_per_call']:.1f} ms/call); "
                 f"{result['speedup']:.1f}x")
        return result


