"""fwproxy benchmark: fwproxy against the alternatives, on one real nginx tenant over TLS.

    make bench          # the full run (about 15 minutes on 2 cores); installs what it needs
    make bench-smoke    # the same harness in seconds: tiny durations, 16 MiB files, no targets

The tenant is nginx on loopback with a CA made for this run: a static token endpoint
(POST /fotoweb/oauth2/token), a bearer check on /fotoweb/, a 1 KB JSON resource, a big file
served with sendfile, and an upload location that streams the body to bench/sink.py.

Contenders, all on that tenant:
  (a) direct to nginx with the token (the limit)  (b) nginx as a reverse proxy adding the
  header  (c) mitmproxy in reverse mode with a header addon  (d) bench/bare_proxy.py, the
  aiohttp floor  (e) fwproxy  (f) fwproxy with listen.workers: 2 (n/a if unsupported)

Figures: 1 KB GET req/s and p50/p99 (wrk, median of runs); p99 at a fixed rate
(bench/fixed_rate.py) and what each adds over direct; MB/s and peak RSS (VmHWM, summed over
the contender's processes, fresh processes per transfer kind) for a big download and upload
(curl); time from spawn to the first proxied 200; the 20 ms RTT script scenario
(bench/rtt_relay.py, bench/script_scenario.py); a py-spy profile of fwproxy under wrk.

Settings come from options or the environment (options win): BENCH_RUNS, BENCH_DURATION,
BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_RATE, BENCH_RATE_DURATION, BENCH_SIZE,
BENCH_TRANSFER_RUNS, BENCH_RTT_MS, BENCH_CALLS, BENCH_ONLY (e.g. "ade"), BENCH_PROFILE (0/1),
BENCH_OUT, BENCH_WAIT_IDLE (seconds to wait for a quiet machine; 600, smoke 0), BENCH_KEEP=1
(keep the scratch directory). Every process it starts runs in its
own session and is stopped by its process group id at the end, whatever happens.
Exit status: 0, or 1 when a contender that should work did not work at all.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import burst  # bench/burst.py: the legacy burst against a rate-limited tenant

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
FWPROXY = str(Path(sys.executable).parent / "fwproxy")
TOKEN = "bench-token"
JSON_PATH = "/fotoweb/bench/1k.json"
BIG_PATH = "/fotoweb/bench/big.bin"
UPLOAD_PATH = "/fotoweb/bench/upload"
MIB = 1 << 20

LABELS = {
    "a": "direct to nginx (limit)",
    "b": "nginx reverse proxy",
    "c": "mitmproxy reverse",
    "d": "bare aiohttp proxy",
    "g": "bare aiohttp, uvloop",
    "e": "fwproxy",
    "f": "fwproxy workers=2",
}


def _uvloop_version() -> str | None:
    try:
        return importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        return None


UVLOOP = _uvloop_version()  # in the project venv: fwproxy (e, f) and (g) run on it


class Failed(Exception):
    """A contender did not work; the message says why."""


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
    p.add_argument("--transfer-runs", type=int, default=int(default("TRANSFER_RUNS", "3", "1")))
    p.add_argument("--rtt-ms", type=float, default=float(default("RTT_MS", "10", "10")),
                   help="delay each way in the RTT scenario")
    p.add_argument("--calls", type=int, default=int(default("CALLS", "200", "20")))
    p.add_argument("--only", default=env("BENCH_ONLY", "abcdgef"), help="contenders, e.g. ade")
    p.add_argument("--profile", type=int, default=int(default("PROFILE", "1", "0")))
    p.add_argument("--wait-idle", type=float, default=float(default("WAIT_IDLE", "600", "0")),
                   help="wait up to this many seconds for the CPUs to be under 20%% busy")
    p.add_argument("--out", type=Path, default=Path(default(
        "OUT", str(BENCH / "results" / "latest.json"), str(BENCH / "results" / "smoke.json"))))
    return p.parse_args(argv)


# --- processes -----------------------------------------------------------------------------

class Procs:
    """Every process the bench starts: own session (setsid), stdin /dev/null, log file."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.live: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.count = 0

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        self.count += 1
        log = self.logs / f"{self.count:02d}-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(  # noqa: S603
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=ROOT,
            )
        proc.log = log  # type: ignore[attr-defined]
        self.live[proc.pid] = (name, proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes] | None, grace: float = 15) -> None:
        """SIGTERM the process group (its id is the pid we started), then SIGKILL."""
        if proc is None:
            return
        pgid = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(5)
        for _ in range(50):  # children that outlive the leader (workers) share its group
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.live.pop(proc.pid, None)

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.live.values())):
            self.stop(proc, grace=5)


def log_tail(proc: subprocess.Popen[bytes] | None, lines: int = 15) -> str:
    if proc is None:
        return ""
    try:
        text = Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(root: int) -> list[int]:
    """root and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def foreign_cpu_seconds() -> float:
    """CPU seconds used so far by every process outside this benchmark's own process tree
    (with the children they have reaped): how much else ran on the machine meanwhile."""
    mine = set(tree(os.getpid()))
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Others:
    """Measures what other processes used while a measurement ran, in cores."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []  # (what, seconds, cores)

    @contextlib.contextmanager
    def watch(self, what: str) -> Any:
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


def peak_rss_mib(root: int) -> float:
    """Sum of VmHWM (peak resident set) over the process tree, in MiB."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


# --- HTTP probes ---------------------------------------------------------------------------

def get_status(url: str, headers: dict[str, str], cafile: str | None, timeout: float = 5
               ) -> int:
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_200(url: str, headers: dict[str, str], cafile: str | None,
             proc: subprocess.Popen[bytes] | None, started: float, limit: float = 60) -> float:
    """Poll until `url` answers 200; seconds since `started`. Raises Failed."""
    last = "no answer"
    while time.perf_counter() - started < limit:
        if proc is not None and proc.poll() is not None:
            raise Failed(f"exited with status {proc.returncode} before answering\n"
                         + log_tail(proc))
        try:
            status = get_status(url, headers, cafile, timeout=5)
            if status == 200:
                return time.perf_counter() - started
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.005)
    raise Failed(f"no 200 from {url} within {limit:g}s (last: {last})\n" + log_tail(proc))


# --- the tenant ----------------------------------------------------------------------------

def make_ca(work: Path) -> None:
    """A CA made for this run and a server certificate for 127.0.0.1 and localhost."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=work, check=True,  # noqa: S603, S607
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    (work / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
        "-subj", "/CN=fwproxy bench CA", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key")
    run("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "server.ext",
        "-out", "server.crt")


def make_data(work: Path, size: int) -> Path:
    """Document root: the 1 KB JSON, /fotoweb/me, the big file (sparse); the upload file."""
    bench = work / "www" / "fotoweb" / "bench"
    bench.mkdir(parents=True)
    items = []
    doc = ""
    while True:
        candidate = json.dumps({"data": items, "paging": None})
        if len(candidate) > 1024 - 40:
            break
        doc = candidate
        items.append({"href": f"/fotoweb/archives/{5000 + len(items)}/", "name": "Archive"})
    doc = doc[:-1] + ', "pad": "' + "x" * (1024 - len(doc) - 11) + '"}'
    assert len(doc) == 1024, len(doc)
    (bench / "1k.json").write_text(doc)
    (work / "www" / "fotoweb" / "me").write_text(
        json.dumps({"fullName": "Bench User", "userName": "bench"}))
    with open(bench / "big.bin", "wb") as f:
        f.truncate(size)
    upload = work / "upload.bin"
    with open(upload, "wb") as f:
        f.truncate(size)
    return upload


NGINX_COMMON = """\
{user}worker_processes {workers};
pid {work}/{name}.pid;
error_log {work}/logs/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {work}/tmp/{name}-body;
    proxy_temp_path {work}/tmp/{name}-proxy;
    fastcgi_temp_path {work}/tmp/{name}-fastcgi;
    uwsgi_temp_path {work}/tmp/{name}-uwsgi;
    scgi_temp_path {work}/tmp/{name}-scgi;
{body}
}}
"""

TENANT_BODY = """\
    upstream sink {{ server 127.0.0.1:{sink}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {work}/server.crt;
        ssl_certificate_key {work}/server.key;
        root {work}/www;
        location = /fotoweb/oauth2/token {{
            return 200 '{{"access_token":"{token}","token_type":"bearer","expires_in":3600}}';
        }}
        location = {upload} {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            client_max_body_size 0;
            client_body_buffer_size 256k;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://sink;
        }}
        location /fotoweb/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
        }}
    }}
"""

PROXY_BODY = """\
    upstream tenant {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass https://tenant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
            proxy_ssl_trusted_certificate {work}/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
"""


def nginx_conf(work: Path, name: str, body: str, **values: Any) -> Path:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    text = NGINX_COMMON.format(user=user, workers="auto", work=work, name=name,
                               body=body.format(work=work, token=TOKEN, upload=UPLOAD_PATH,
                                                **values))
    path = work / f"{name}.conf"
    path.write_text(text)
    return path


def nginx_argv(work: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(work), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]


# --- contenders ----------------------------------------------------------------------------

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


def fwproxy_config(work: Path, name: str, port: int, tenant_port: int, workers: int = 0
                   ) -> Path:
    listen = f"  host: 127.0.0.1\n  port: {port}\n"
    if workers:
        listen += f"  workers: {workers}\n"
    path = work / f"{name}.yaml"
    path.write_text(
        f"listen:\n{listen}"
        f"tenant:\n  url: https://127.0.0.1:{tenant_port}\n  ca_file: {work}/ca.crt\n"
        "auth:\n  client_id: bench\n  client_secret: bench-secret\n")
    path.chmod(0o600)  # fwproxy refuses an inline secret in a file others may read
    return path


class Bench:
    def __init__(self, opts: argparse.Namespace, work: Path) -> None:
        self.o = opts
        self.work = work
        (work / "logs").mkdir()
        (work / "tmp").mkdir()
        self.procs = Procs(work / "logs")
        self.tenant_port = 0
        self.contenders: dict[str, Contender] = {}
        self.upload_file = work / "upload.bin"
        self.notes: list[str] = []
        self.others = Others()

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- setup --

    def start_tenant(self) -> None:
        make_ca(self.work)
        self.upload_file = make_data(self.work, self.o.size)
        sink_port, self.tenant_port = free_port(), free_port()
        self.sink = self.procs.start("sink", [PY, str(BENCH / "sink.py"), "--port",
                                              str(sink_port)])
        conf = nginx_conf(self.work, "tenant", TENANT_BODY, port=self.tenant_port,
                          sink=sink_port)
        self.tenant = self.procs.start("tenant-nginx", nginx_argv(self.work, conf))
        url = f"https://127.0.0.1:{self.tenant_port}{JSON_PATH}"
        wait_200(url, {"Authorization": f"Bearer {TOKEN}"}, str(self.work / "ca.crt"),
                 self.tenant, time.perf_counter(), limit=20)
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

        def fw(workers: int) -> Callable[[int], list[str]]:
            def argv(port: int) -> list[str]:
                conf = fwproxy_config(work, f"fwproxy-{port}", port, self.tenant_port, workers)
                return [FWPROXY, "run", "--config", str(conf)]
            return argv

        launchers: dict[str, Callable[[int], list[str]] | None] = {
            "a": None, "b": nginx_proxy, "c": mitm, "d": bare, "g": bare_uvloop, "e": fw(0),
            "f": fw(2)}
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
        seconds = wait_200(c.url + JSON_PATH, {}, None, c.proc, started)
        c.r.setdefault("startup_s", []).append(seconds)
        return seconds

    def stop(self, c: Contender) -> None:
        self.procs.stop(c.proc)
        c.proc = None

    def active(self) -> list[Contender]:
        return [c for c in self.contenders.values() if c.active]

    def guarded(self, c: Contender, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Failed as exc:
            c.fail(f"{what}: {exc}")
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            c.fail(f"{what}: {type(exc).__name__}: {exc}")
        if c.proc is not None and c.proc.poll() is not None:
            c.fail(f"{what}: the process died (status {c.proc.returncode})\n"
                   + log_tail(c.proc))

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
        done = subprocess.run(argv, capture_output=True, text=True, timeout=960)  # noqa: S603
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 6:
            raise Failed(f"curl exited {done.returncode}: {done.stderr.strip()[-300:]}")
        code, up, down, speed_up, speed_down, total = fields
        if code != "200":
            raise Failed(f"HTTP {code}")
        if upload:
            received = json.loads(out.read_text()).get("received")
            if int(float(up)) != self.o.size or received != self.o.size:
                raise Failed(f"upload: sent {up}, the tenant received {received}, "
                             f"expected {self.o.size}")
            speed = float(speed_up)
        else:
            if int(float(down)) != self.o.size:
                raise Failed(f"download: got {down} bytes, expected {self.o.size}")
            speed = float(speed_down)
        return {"mb_s": speed / 1e6, "seconds": float(total)}

    # -- phases --

    def phase_requests(self) -> None:
        o = self.o
        self.say(f"\n== 1 KB GET: wrk -t{o.threads} -c{o.connections}, {o.runs} x "
                 f"{o.duration:g}s; fixed rate {o.rate:g}/s x {o.rate_duration:g}s ==")
        for c in self.active():
            self.guarded(c, "start", lambda c=c: self.start(c) and None)
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
                def rate(c: Contender = c, run: int = run) -> None:
                    with self.others.watch(f"fixed rate {run + 1} ({c.key})"):
                        c.r.setdefault("fixed", []).append(self.fixed_rate(c))
                self.guarded(c, "fixed rate", rate)
                if c.active:
                    f = c.r["fixed"][-1]
                    self.say(f"  run {run + 1}/{o.runs} ({c.key}) at {o.rate:g}/s: "
                             f"p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  "
                             f"max {f['max_ms']:.2f} ms")
        for key, name in (("e", "fwproxy"), ("d", "bare")):  # (d): what the floor spends
            c = self.contenders[key]
            if o.profile and c.active:
                self.guarded(c, "profile", lambda c=c, name=name: self.profile(c, name))
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
                "--latency", c.url + JSON_PATH]
        load = self.procs.start("wrk-profile", argv)
        time.sleep(1)
        try:
            subprocess.run([  # noqa: S603
                str(spy), "record", "--pid", str(c.proc.pid), "--duration", str(duration),
                "--rate", "200", "--format", "raw", "--function",
                "--output", str(raw)], capture_output=True, timeout=duration + 60)
            load.wait(duration + 60)
        finally:
            self.procs.stop(load)
        result = parse_wrk(Path(load.log).read_text())  # type: ignore[attr-defined]
        if not raw.exists():
            self.notes.append("profile: py-spy wrote nothing")
            return
        summary = summarize_profile(raw.read_text())
        summary["wrk_rps_while_profiling"] = result["rps"]
        summary["seconds"] = duration
        c.r["profile"] = summary
        write_profile(summary, f"({c.key}) {c.label}", BENCH / "results" / f"profile-{name}.md")

    def phase_transfers(self) -> None:
        o = self.o
        size = human_size(o.size)
        self.say(f"\n== {size} download and upload: curl, {o.transfer_runs} run(s) each, "
                 "fresh processes per kind ==")
        for upload in (False, True):
            kind = "upload" if upload else "download"
            for c in self.active():
                def transfer(c: Contender = c, kind: str = kind, upload: bool = upload
                             ) -> None:
                    self.start(c)
                    for i in range(o.transfer_runs):
                        with self.others.watch(f"{kind} {i + 1} ({c.key})"):
                            c.r.setdefault(kind, []).append(self.curl(c, upload))
                    if c.proc is not None:
                        c.r[f"{kind}_rss_mib"] = peak_rss_mib(c.proc.pid)
                self.guarded(c, kind, transfer)
                self.stop(c)
                if c.active:
                    speeds = " ".join(f"{t['mb_s']:.0f}" for t in c.r[kind])
                    rss = c.r.get(f"{kind}_rss_mib")
                    self.say(f"  ({c.key}) {kind}: {speeds} MB/s"
                             + (f", peak RSS {rss:.1f} MiB" if rss is not None else ""))

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
            wait_200(f"http://127.0.0.1:{proxy_port}/_fwproxy/ready", {}, None, proxy,
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


# --- parsing and reporting ----------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    result: dict[str, Any] = {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": to_ms(lat["50"]) if "50" in lat else None,
        "p99_ms": to_ms(lat["99"]) if "99" in lat else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0],
        "error": "",
    }
    if not result["requests"] or result["p99_ms"] is None:
        result["error"] = "no requests completed: " + out.strip()[-300:]
    elif result["non_2xx"] > 0.01 * result["requests"]:
        result["error"] = f"{result['non_2xx']} of {result['requests']} answers not 2xx"
    elif sum(result["socket_errors"]) > 0.01 * result["requests"]:
        result["error"] = f"socket errors {result['socket_errors']}"
    return result


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> self and total shares per function and per area."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    areas: dict[str, int] = {}
    areas_total: dict[str, int] = {}
    ours: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        leaf = short_frame(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
        for name in {short_frame(f) for f in frames}:
            total[name] = total.get(name, 0) + count
            if name.split("(", 1)[-1].startswith("fwproxy/"):
                ours[name] = ours.get(name, 0) + count
        area = frame_area(frames[-1])
        areas[area] = areas.get(area, 0) + count
        start = next((i + 1 for i, f in enumerate(frames) if f.startswith("Handle._run ")), 1)
        for name in {frame_area(f) for f in frames[start:]}:  # below the event loop
            areas_total[name] = areas_total.get(name, 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": k, "samples": v, "pct": 100 * v / samples} for k, v in rows]

    return {"samples": samples, "self": ranked(own), "total": ranked(total),
            "areas": ranked(areas), "areas_total": ranked(areas_total),
            "fwproxy_total": ranked(ours)}


def short_frame(frame: str) -> str:
    """'handle (fwproxy/proxy.py:97)' with site-packages and stdlib paths shortened."""
    match = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not match:
        return frame
    func, path = match.group(1), match.group(2)
    for marker in ("site-packages/", "/lib/python3.", ):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[1] if "/" in path else path
    path = path.replace(str(ROOT) + "/", "")
    return f"{func} ({path}:{match.group(3)})" if match.group(3) else f"{func} ({path})"


def frame_area(frame: str) -> str:
    """The package a frame belongs to (TLS: the ssl module and asyncio's sslproto)."""
    checks = [("fwproxy/", "fwproxy"), ("aiohttp/", "aiohttp"), ("multidict/", "multidict"),
              ("yarl/", "yarl"), ("prometheus_client/", "prometheus_client"),
              ("logging/", "logging"), ("sslproto.py", "ssl"), ("ssl.py", "ssl"),
              ("asyncio/", "asyncio"), ("cachetools/", "cachetools")]
    for needle, name in checks:
        if needle in frame:
            return name
    return "other"


def write_profile(summary: dict[str, Any], label: str, path: Path) -> None:
    lines = [f"# {label} under wrk ({summary['wrk_rps_while_profiling']:.0f} req/s): py-spy, "
             f"{summary['samples']} samples in {summary['seconds']} s at 200 Hz "
             "(idle samples left out)", ""]
    for title, key in (("By package, own time (the innermost frame's package)", "areas"),
                       ("By package, total time (the package anywhere on the stack)",
                        "areas_total"),
                       ("Own time (innermost frame)", "self"),
                       ("fwproxy's functions, total time", "fwproxy_total"),
                       ("Total time (frame anywhere on the stack)", "total")):
        lines += [f"## {title}", "", "| % | samples | function |", "|---:|---:|---|"]
        lines += [f"| {row['pct']:.1f} | {row['samples']} | `{row['function']}` |"
                  for row in summary[key]]
        lines.append("")
    path.write_text("\n".join(lines))


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat), before the bench does anything."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str], pattern: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)  # noqa: S603
        except (OSError, subprocess.SubprocessError):
            return "absent"
        match = re.search(pattern, done.stdout + done.stderr)
        return match.group(1) if match else "unknown"

    import aiohttp  # the project venv's: what fwproxy and the bare proxy run on

    return {
        "cpu_busy_at_start": cpu_busy(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        # listen.event_loop: auto, as fwproxy runs in (e) and (f)
        "fwproxy_loop": f"uvloop {UVLOOP}" if UVLOOP else "asyncio",
        "fwproxy": version([FWPROXY, "--version"], r"fwproxy (\S+)"),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
        "openssl": version(["openssl", "version"], r"OpenSSL (\S+)"),
        "mitmproxy": version([str(BENCH / ".venv-mitm" / "bin" / "mitmdump"), "--version"],
                             r"Mitmproxy: (\S+)"),
    }


def summarize(bench: Bench, rtt: dict[str, Any] | None) -> dict[str, Any]:
    cs = bench.contenders
    out: dict[str, Any] = {}
    for key, c in cs.items():
        wrk = c.r.get("wrk", [])
        fixed = c.r.get("fixed", [])
        s = {
            "label": c.label, "status": c.status, "reason": c.reason,
            "rps": median([w["rps"] for w in wrk]),
            "p50_ms": median([w["p50_ms"] for w in wrk]),
            "p99_ms": median([w["p99_ms"] for w in wrk]),
            "fixed_p50_ms": median([f["p50_ms"] for f in fixed]),
            "fixed_p99_ms": median([f["p99_ms"] for f in fixed]),
            "download_mb_s": median([t["mb_s"] for t in c.r.get("download", [])]),
            "download_rss_mib": c.r.get("download_rss_mib"),
            "upload_mb_s": median([t["mb_s"] for t in c.r.get("upload", [])]),
            "upload_rss_mib": c.r.get("upload_rss_mib"),
            "startup_ms": (median(c.r["startup_s"]) or 0) * 1000 if c.r.get("startup_s")
            else None,
            "runs": {k: v for k, v in c.r.items() if k != "profile"},
        }
        out[key] = s
    direct_p99 = out["a"]["fixed_p99_ms"]
    for s in out.values():
        s["fixed_added_p99_ms"] = (s["fixed_p99_ms"] - direct_p99
                                   if s["fixed_p99_ms"] is not None and direct_p99 is not None
                                   else None)
    ratios: dict[str, dict[str, float | None]] = {}
    for mine in ("e", "f"):
        ratios[mine] = {}
        for other in cs:
            a, b = out[mine]["rps"], out[other]["rps"]
            ratios[mine][other] = a / b if a and b else None
    return {"contenders": out, "rps_ratios": ratios, "rtt": rtt,
            "others": bench.others.summary()}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    s = summary["contenders"]

    def ratio(x: str, y: str, metric: str) -> float | None:
        a, b = s[x][metric], s[y][metric]
        return a / b if a and b else None

    def why_missing(*keys: str) -> str:
        for k in keys:
            if s[k]["status"] != "ok":
                return f"({k}) {s[k]['status']}"
        return "not measured"

    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, higher: bool, fmt: str,
            keys: tuple[str, ...]) -> None:
        if value is None:
            rows.append({"target": name, "result": "n/a", "value": None,
                         "shown": why_missing(*keys)})
            return
        ok = value >= goal if higher else value <= goal
        rows.append({"target": name, "result": "PASS" if ok else "FAIL", "value": value,
                     "shown": fmt.format(value)})

    add("(e) req/s >= 0.9x (d) bare aiohttp", ratio("e", "d", "rps"), 0.9, True, "{:.3f}x",
        ("e", "d"))
    value = ratio("e", "g", "rps")
    rows.append({"target": "(e) req/s vs (g), the floor on uvloop too", "result": "info",
                 "value": value, "shown": f"{value:.3f}x" if value else why_missing("e", "g")})
    add("(e) req/s >= 7x (c) mitmproxy", ratio("e", "c", "rps"), 7, True, "{:.1f}x", ("e", "c"))
    add("(f) req/s >= 1.7x (e)", ratio("f", "e", "rps"), 1.7, True, "{:.2f}x", ("f", "e"))
    add("(f) req/s >= 0.2x (b) nginx", ratio("f", "b", "rps"), 0.2, True, "{:.2f}x", ("f", "b"))
    add("(e) added p99 at fixed rate <= 1 ms over (a)", s["e"]["fixed_added_p99_ms"], 1.0,
        False, "{:+.2f} ms", ("e", "a"))
    add("(e) download >= 0.6x (a) MB/s", ratio("e", "a", "download_mb_s"), 0.6, True,
        "{:.3f}x", ("e", "a"))
    add("(e) upload >= 0.6x (a) MB/s", ratio("e", "a", "upload_mb_s"), 0.6, True, "{:.3f}x",
        ("e", "a"))
    add("(e) peak RSS download <= 80 MiB", s["e"]["download_rss_mib"], 80, False,
        "{:.1f} MiB", ("e",))
    add("(e) peak RSS upload <= 80 MiB", s["e"]["upload_rss_mib"], 80, False, "{:.1f} MiB",
        ("e",))
    rtt = summary["rtt"]
    add("20 ms RTT script: fwproxy >= 3x approach 1", rtt["speedup"] if rtt else None, 3, True,
        "{:.1f}x", ("e",))
    return rows


def ratio_of(s: dict[str, Any], x: str, y: str, metric: str) -> float | None:
    a, b = s[x][metric], s[y][metric]
    return a / b if a and b else None


def fmt(value: float | None, spec: str, width: int) -> str:
    return (format(value, spec) if value is not None else "-").rjust(width)


def table(meta: dict[str, Any], opts: argparse.Namespace, summary: dict[str, Any],
          rows: list[dict[str, Any]] | None) -> str:
    s = summary["contenders"]
    others = summary["others"]
    size = human_size(opts.size)
    out = [
        f"fwproxy benchmark, {meta['date']}: nproc {meta['nproc']}, {meta['cpu']}, "
        f"Linux {meta['kernel']}, CPU {meta['cpu_busy_at_start']:.0%} busy before the run",
        f"  other processes used {others['mean_cores']:.2f} cores on average while measuring "
        f"(most: {others['max_cores']:.2f} during {others['max_during'] or '-'})",
        f"  Python {meta['python']}, aiohttp {meta['aiohttp']}, fwproxy {meta['fwproxy']} on "
        f"{meta.get('fwproxy_loop', 'asyncio')} ((d) on asyncio, (g) on uvloop), "
        f"nginx {meta['nginx']}, wrk {meta['wrk']}, mitmproxy {meta['mitmproxy']}, "
        f"OpenSSL {meta['openssl']}",
        f"  1 KB GET: wrk -t{opts.threads} -c{opts.connections}, median of {opts.runs} x "
        f"{opts.duration:g}s | fixed rate {opts.rate:g} req/s x {opts.rate_duration:g}s "
        f"(median of {opts.runs}) | {size} down/up: curl, median of {opts.transfer_runs}, "
        "peak RSS = VmHWM summed over the contender's processes",
        "",
        f"{'':28}|{'1 KB GET, c=' + str(opts.connections):^26}|"
        f"{'fixed ' + format(opts.rate, 'g') + '/s':^18}|{size + ' download':^18}|"
        f"{size + ' upload':^18}| start",
        f"{'contender':28}|{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8} |{'p99 ms':>8}{'+p99':>9} |"
        f"{'MB/s':>7}{'RSS MiB':>10} |{'MB/s':>7}{'RSS MiB':>10} |{'ms':>6}",
        "-" * 28 + "+" + "-" * 26 + "+" + "-" * 18 + "+" + "-" * 18 + "+" + "-" * 18 + "+"
        + "-" * 7,
    ]
    for key, c in s.items():
        name = f"({key}) {c['label']}"
        if c["status"] != "ok":
            out.append(f"{name:28}| {c['status']}: {c['reason'].splitlines()[0][:110]}")
            continue
        out.append(
            f"{name:28}|{fmt(c['rps'], '.0f', 9)}{fmt(c['p50_ms'], '.2f', 8)}"
            f"{fmt(c['p99_ms'], '.2f', 8)} |{fmt(c['fixed_p99_ms'], '.2f', 8)}"
            f"{fmt(c['fixed_added_p99_ms'], '+.2f', 9)} |{fmt(c['download_mb_s'], '.0f', 7)}"
            f"{fmt(c['download_rss_mib'], '.1f', 10)} |{fmt(c['upload_mb_s'], '.0f', 7)}"
            f"{fmt(c['upload_rss_mib'], '.1f', 10)} |{fmt(c['startup_ms'], '.0f', 6)}")
    out += ["", f"{'ratios':24}" + "".join(f"{'vs (' + k + ')':>9}" for k in s)]
    lines = [(f"({m}) {'fwproxy' if m == 'e' else 'workers=2'} req/s", m, "rps")
             for m in ("e", "f")]
    lines += [("(e) download MB/s", "e", "download_mb_s"),
              ("(e) upload MB/s", "e", "upload_mb_s")]
    for title, mine, metric in lines:
        values = [ratio_of(s, mine, k, metric) for k in s]
        out.append(f"{title:24}" + "".join(
            fmt(v, ".2f", 8) + ("x" if v is not None else " ") for v in values))
    rtt = summary["rtt"]
    out.append("")
    if rtt:
        out.append(
            f"script, {rtt['calls']} calls at {2 * opts.rtt_ms:g} ms RTT: approach 1 (token + "
            f"fresh TLS per call) {rtt['approach1_s']:.2f} s, through fwproxy "
            f"{rtt['fwproxy_s']:.2f} s: {rtt['speedup']:.1f}x faster")
    else:
        out.append("script scenario: not run")
    if rows is not None:
        out += ["", "targets (reported, not asserted)"]
        out += [f"  {r['result']:4}  {r['target']:48} {r['shown']}" for r in rows]
    return "\n".join(out)


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
    work = Path(tempfile.mkdtemp(prefix="fwproxy-bench-"))
    os.chmod(work, 0o755)
    bench = Bench(opts, work)
    print(f"fwproxy benchmark{' (smoke)' if opts.smoke else ''}: scratch {work}", flush=True)
    if meta["cpu_busy_at_start"] > 0.2:
        bench.notes.append(f"the CPUs were {meta['cpu_busy_at_start']:.0%} busy before the run: "
                           "something else is using them; the figures will be low and noisy")
        print("bench: warning: " + bench.notes[-1], file=sys.stderr, flush=True)
    rtt = None
    bursts: dict[str, Any] | None = None
    failed_setup = ""
    try:
        try:
            bench.start_tenant()
            bench.define()
        except (Failed, subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            failed_setup = f"{exc} {detail}"
            print(f"bench: the tenant did not start: {failed_setup}\n{log_tail(bench.tenant)}"
                  if hasattr(bench, "tenant") else f"bench: setup failed: {failed_setup}",
                  file=sys.stderr)
            return 1
        for c in bench.contenders.values():
            if c.status in ("n/a", "skipped"):
                bench.say(f"  ({c.key}) {c.label}: {c.status}: {c.reason}")
        bench.phase_requests()
        bench.phase_transfers()
        rtt = bench.phase_rtt()
        bursts = burst.scenario(work, opts.smoke, bench.say)
    finally:
        bench.procs.stop_all()
        if os.environ.get("BENCH_KEEP") != "1" and not failed_setup:
            shutil.rmtree(work, ignore_errors=True)
        elif failed_setup or os.environ.get("BENCH_KEEP") == "1":
            print(f"bench: scratch kept in {work}", file=sys.stderr)
    summary = summarize(bench, rtt)
    if summary["others"]["mean_cores"] > 0.1:
        bench.notes.append(
            f"other processes used {summary['others']['mean_cores']:.2f} cores on average "
            "while measuring: the figures are lower and noisier than on a quiet machine")
    rows = None if opts.smoke else targets(summary)
    text = table(meta, opts, summary, rows)
    if bursts is not None:
        text += "\n\n" + burst.table(bursts)
    print("\n" + text)
    for note in bench.notes:
        print("note: " + note)
    failed = [c for c in bench.contenders.values() if c.status == "failed"] + [
        Contender("burst", row["contender"], None, status="failed", reason=row["error"])
        for row in (bursts or {}).get("rows", []) if "error" in row]
    for c in failed:
        print(f"FAILED ({c.key}) {c.label}: {c.reason}", file=sys.stderr)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    document = {"machine": meta, "params": params, **summary, "targets": rows,
                "profile": {k: bench.contenders[k].r.get("profile") for k in "de"},
                "burst": bursts, "notes": bench.notes}
    opts.out.write_text(json.dumps(document, indent=2) + "\n")
    opts.out.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwrote {opts.out} and {opts.out.with_suffix('.txt')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
