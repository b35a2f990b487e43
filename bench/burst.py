"""Scenario: a legacy burst against a rate-limited tenant (issue 15).

A script fires N requests from P connections at once, as fast as it can, at a tenant that
allows R requests per second (burst B) and drops the connection of every request over that
(fwproxy/sim/limits.py: FotoWeb's behaviour; BENCH_BURST_ACTION=429|503 for the others).
The tenant is the simulated tenant (plain HTTP on loopback), not the bench's nginx: nginx's
limit_req can only answer a status (503 by default), never drop a connection, and the
simulator counts what it admitted and refused. The same burst runs three ways:

  direct          curl at the tenant with a bearer token
  nginx           through nginx as a reverse proxy setting the header
  fwproxy         through `fwproxy run`, with the tenant budget `fwproxy_budget` when this
                  fwproxy knows its keys (`fwproxy check` decides), else without, and says so

The client is P curl processes, each making N/P GETs one after another on its keep-alive
connection (a dropped connection is ``000``; curl retries a reused one once). A row: requests
answered 200, failed, time from the first curl's start to the last one's exit, and that as a
ratio to the fastest the limit allows, (N - B) / R seconds. Goal: 0 failed within 1.2x.

Knobs (environment): BENCH_BURST_REQUESTS (2000; smoke 300), BENCH_BURST_CONNECTIONS (50),
BENCH_BURST_RATE (200; smoke 150), BENCH_BURST_BURST (10), BENCH_BURST_ACTION (drop).
`python bench/burst.py serve --port P ...` is the tenant process itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState, create_tenant_app

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
FWPROXY = str(Path(sys.executable).parent / "fwproxy")
TOKEN = "bench-burst-token"
PATH = "/fotoweb/archives/"
GOAL_RATIO = 1.2


def fwproxy_budget(rate: float, burst: int) -> dict[str, Any]:
    """fwproxy's `tenant` keys for a tenant allowing `rate`/s with `burst` at once (issue 15's
    tenant budget). Tried first; a fwproxy that refuses them runs without (and says so)."""
    return {"max_in_flight": burst, "max_rate": rate, "max_burst": burst}


@dataclass(frozen=True)
class Setup:
    requests: int
    connections: int
    rate: float
    burst: int
    action: str

    @property
    def fastest(self) -> float:
        """Seconds the limit allows at best: B at once, then one every 1/R."""
        return max(self.requests - self.burst, 0) / self.rate

    @classmethod
    def from_env(cls, smoke: bool) -> Setup:
        env = os.environ.get
        return cls(int(env("BENCH_BURST_REQUESTS", "300" if smoke else "2000")),
                   int(env("BENCH_BURST_CONNECTIONS", "50")),
                   float(env("BENCH_BURST_RATE", "150" if smoke else "200")),
                   int(env("BENCH_BURST_BURST", "10")),
                   env("BENCH_BURST_ACTION", "drop"))


class Processes:
    """What the scenario starts: own session, stdin /dev/null, a log file; stopped by its
    process group id."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.live: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"burst-{len(self.live):02d}-{name}.log", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,  # noqa: S603
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        self.live.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.live):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.live.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, token: bool = True
         ) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_200(url: str, proc: subprocess.Popen[bytes], token: bool, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering")
        try:
            status, _ = http("GET", url, token=token)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"no 200 from {url} within {limit:g}s (last: {last})")


def run_burst(url: str, setup: Setup, headers: dict[str, str]) -> tuple[Counter[str], float]:
    """N GETs from P parallel curls; the status of each (000: no answer) and the seconds."""
    per = [setup.requests // setup.connections + (i < setup.requests % setup.connections)
           for i in range(setup.connections)]
    head = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    started = time.monotonic()
    procs = []
    for share in per:
        if share:
            argv = ["curl", "-q", "-s", "--max-time", "60", "-w", "%{http_code}\\n", *head]
            for _ in range(share):
                argv += [url, "-o", "/dev/null"]
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # noqa: S603
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
    statuses: Counter[str] = Counter()
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            statuses.update(out.decode("ascii", "replace").split())
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return statuses, time.monotonic() - started


NGINX = """\
{user}worker_processes 1;
pid {work}/burst-nginx.pid;
error_log {work}/logs/burst-nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/burst-body;
    proxy_temp_path {work}/tmp/burst-proxy;
    fastcgi_temp_path {work}/tmp/burst-fastcgi;
    uwsgi_temp_path {work}/tmp/burst-uwsgi;
    scgi_temp_path {work}/tmp/burst-scgi;
    upstream tenant {{ server 127.0.0.1:{tenant}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tenant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
}}
"""


def fwproxy_config(work: Path, port: int, tenant: int, budget: dict[str, Any]) -> Path:
    config = {"listen": {"host": "127.0.0.1", "port": port},
              "tenant": {"url": f"http://127.0.0.1:{tenant}", "allow_insecure_http": True,
                         **budget},
              "auth": {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}}
    path = work / f"burst-fwproxy-{port}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def budget_supported(work: Path, tenant: int, budget: dict[str, Any]) -> tuple[bool, str]:
    """Does this fwproxy take the budget keys? Ask `fwproxy check`."""
    conf = fwproxy_config(work, free_port(), tenant, budget)
    done = subprocess.run([FWPROXY, "check", "--config", str(conf)],  # noqa: S603
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    if done.returncode == 0:
        return True, ""
    text = (done.stderr + done.stdout).strip()
    line = next((ln for ln in text.splitlines() if any(k in ln for k in budget)),
                text.splitlines()[-1] if text else f"exit {done.returncode}")
    return False, line.split(" (known:")[0].strip()[:160]


def scenario(work: Path, smoke: bool, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the scenario in `work` (which has logs/ and tmp/); every process it starts is
    stopped before it returns. The result is JSON-ready; `table` prints it."""
    setup = Setup.from_env(smoke)
    say(f"\n== legacy burst against a rate-limited tenant: {setup.requests} GETs from "
        f"{setup.connections} curls; the tenant allows {setup.rate:g}/s (burst {setup.burst}), "
        f"{setup.action} over that ==")
    procs = Processes(work / "logs")
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"setup": setup.__dict__, "fastest_s": setup.fastest,
                              "rows": rows, "notes": []}
    tenant_port = free_port()
    tenant_url = f"http://127.0.0.1:{tenant_port}"
    limits = json.dumps({"max_rate": setup.rate, "burst": setup.burst,
                         "action": setup.action}).encode()
    try:
        tenant = procs.start("tenant", [PY, str(BENCH / "burst.py"), "serve", "--port",
                                        str(tenant_port)])
        wait_200(tenant_url + "/sim/limits", tenant, token=True)
        budget = fwproxy_budget(setup.rate, setup.burst)
        ok, why = budget_supported(work, tenant_port, budget)
        if not ok:
            budget = {}
            result["notes"].append(f"fwproxy ran without a tenant budget: {why}")
        nginx_port, fw_port = free_port(), free_port()
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = work / "burst-nginx.conf"
        conf.write_text(NGINX.format(user=user, work=work, tenant=tenant_port, port=nginx_port,
                                     token=TOKEN))
        contenders = [
            ("direct", tenant_url, {"Authorization": f"Bearer {TOKEN}"}, None),
            ("nginx reverse proxy", f"http://127.0.0.1:{nginx_port}", {},
             ["nginx", "-p", str(work), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]),
            ("fwproxy" + (", tenant budget" if budget else " (no tenant budget)"),
             f"http://127.0.0.1:{fw_port}", {},
             [FWPROXY, "run", "--config", str(fwproxy_config(work, fw_port, tenant_port,
                                                             budget))]),
        ]
        for label, base, headers, argv in contenders:
            row: dict[str, Any] = {"contender": label}
            rows.append(row)
            try:
                if argv is not None:
                    proc = procs.start(label.split()[0], argv)
                    wait_200(base + PATH, proc, token=False)
                http("POST", tenant_url + "/sim/limits", limits)  # a fresh window and record
                statuses, seconds = run_burst(base + PATH, setup, headers)
                _, record = http("GET", tenant_url + "/sim/limits")
                seen = json.loads(record)
                http("POST", tenant_url + "/sim/limits", b"{}")  # off between contenders
                row.update(ok=statuses["200"], failed=sum(statuses.values()) - statuses["200"],
                           statuses=dict(statuses), seconds=seconds,
                           ratio=seconds / setup.fastest if setup.fastest else None,
                           tenant_admitted=seen["admitted"], tenant_refused=seen["refused"],
                           tenant_peak=seen["peak"])
                say(f"  {label}: {row['ok']} ok, {row['failed']} failed "
                    f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}) in "
                    f"{seconds:.2f} s")
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                say(f"  {label}: FAILED: {row['error']}")
    finally:
        procs.stop_all()
    return result


def table(result: dict[str, Any]) -> str:
    setup = result["setup"]
    out = [f"legacy burst against a rate-limited tenant: {setup['requests']} GETs from "
           f"{setup['connections']} curls; the tenant allows {setup['rate']:g}/s (burst "
           f"{setup['burst']}) and answers more with {setup['action']}; the fastest the "
           f"limit allows: {result['fastest_s']:.2f} s (goal: 0 failed, <= {GOAL_RATIO}x)",
           f"{'contender':34}|{'ok':>7}{'failed':>8} |{'seconds':>9}{'x limit':>9} | goal"]
    out.append("-" * 34 + "+" + "-" * 16 + "+" + "-" * 19 + "+" + "-" * 6)
    for row in result["rows"]:
        if "error" in row:
            out.append(f"{row['contender']:34}| failed: {row['error'][:100]}")
            continue
        met = row["failed"] == 0 and row["ratio"] is not None and row["ratio"] <= GOAL_RATIO
        out.append(f"{row['contender']:34}|{row['ok']:7d}{row['failed']:8d} |"
                   f"{row['seconds']:9.2f}{row['ratio'] or 0:8.2f}x | "
                   f"{'PASS' if met else 'FAIL'}")
    out += [f"note: {note}" for note in result["notes"]]
    return "\n".join(out)


def serve(argv: list[str]) -> int:
    """The tenant process: the simulated tenant with a token the bench knows; its limits are
    switched through /sim/limits."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    opts = p.parse_args(argv)
    state = TenantState()
    state.tokens[TOKEN] = float("inf")
    web.run_app(create_tenant_app(state), host="127.0.0.1", port=opts.port, access_log=None,
                print=None)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(serve(sys.argv[2:]))
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/fwproxy-burst")  # noqa: S108
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    print(table(scenario(work, smoke="--smoke" in sys.argv)))
