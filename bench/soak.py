#!/usr/bin/env python3
"""Soak test: mixed traffic through a real `fwproxy run` for N minutes, with faults injected.

    .venv/bin/python bench/soak.py --minutes 2          # what `make soak-ci` runs
    .venv/bin/python bench/soak.py --minutes 30         # `make soak`

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
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from fwproxy.sim import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    PATTERN,
    Catalog,
    TenantState,
    create_tenant_app,
)
from fwproxy.sim.api import collection

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
LOG_LEVEL = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}

KIB = 1024
MIB = 1024 * 1024
REPLAY_MAX = 4 * MIB  # auth.replay_max_body for the run: bigger uploads cannot be replayed
TOKEN_LIFETIME = 20.0  # renewed in the background after 10 s: before the next revocation (11 s)
WINDOW_SLACK = 1.0  # seconds a fault or revocation window stays open after recovery
BACKOFF_CAP = 60.0  # fwproxy's token backoff cap: recovery after a blip must come sooner
FD_TOLERANCE = 2
RSS_GROWTH_LIMIT = 0.20
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
REQUEST_DEADLINE = 180.0  # a request still unanswered after this is lost ("hung")
DRAIN_TIMEOUT = 200.0  # waiting for the last requests at a quiet point
SETTLE_TIMEOUT = 10.0  # waiting for the proxy to close client connections
RETRY_AFTER_CAP = 2.0  # a worker that got a 503 waits its Retry-After, at most this long

# What the simulated tenant answers (fwproxy/sim/api.py: me, archives, archive): each
# answer must hold these fields with these values (me holds more: the API descriptor).
_CATALOG = Catalog.seeded()
EXPECTED_JSON: dict[str, Any] = {
    "/fotoweb/me": {
        "userName": "demo-app",
        "fullName": "fwproxy demo application (client credentials)",
        "isGuest": False,
    },
    "/fotoweb/archives/": {
        "data": [collection(_CATALOG, item) for item in _CATALOG.archives.values()]},
    "/fotoweb/archives/5000/": collection(_CATALOG, _CATALOG.archives["5000"]),
}
DOWNLOAD_MAX = 10 * MIB
EXPECTED_BYTES = memoryview(PATTERN * (DOWNLOAD_MAX // len(PATTERN) + 1))
ABORT_SIZE = 8 * MIB
ABORT_AFTER = 256 * KIB
UPLOAD_CLASSES = (  # (low, high): in memory / temp file / too large to replay
    (200 * 1000, 1 * MIB),
    (1 * MIB + 1, REPLAY_MAX),
    (REPLAY_MAX + 1, 6 * 1000 * 1000),
)
KIND_WEIGHTS = {"small_get": 55, "upload": 20, "download": 20, "abort": 5}


# --- the simulated tenant, with a record of when it issued tokens -----------------------


@dataclass
class SoakTenantState(TenantState):
    """TenantState that remembers when each token was issued (monotonic clock)."""

    issued_at: list[float] = field(default_factory=list)

    def issue(self, user: str | None = None) -> tuple[str, float]:
        issued = super().issue(user)
        self.issued_at.append(time.monotonic())
        return issued

    def first_issue_since(self, moment: float) -> float | None:
        index = bisect.bisect_left(self.issued_at, moment)
        return self.issued_at[index] if index < len(self.issued_at) else None


@dataclass
class Event:
    kind: str  # "revoke" or "blip" (a blip revokes too)
    start: float
    end: float  # the blip's end; a revocation is instantaneous


class CountingHandler(logging.Handler):
    """The in-process tenant's aiohttp log: counted by message and exception, not printed."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        what = record.getMessage()[:80] + (f": {type(exc).__name__}" if exc else "")
        self.counts[re.sub(r"\d+", "#", what)] += 1


def count_aiohttp_logs() -> CountingHandler:
    handler = CountingHandler()
    logger = logging.getLogger("aiohttp")
    logger.addHandler(handler)
    logger.propagate = False
    return handler


# --- fwproxy's process: /proc ----------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    rss_kib: int
    hwm_kib: int
    threads: int
    fds: int
    listening: int
    downstream: int  # client connections (local port: the proxy's)
    upstream: int  # connections to the tenant (the pool, and token requests)
    other_tcp: int
    other: int  # not TCP: files, pipes, eventfds, epoll, Unix sockets
    cpu_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _status_fields(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            out[name] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket in this namespace."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(name).read_text(encoding="ascii").splitlines()[1:]:
                parts = line.split()
                local = int(parts[1].rsplit(":", 1)[1], 16)
                remote = int(parts[2].rsplit(":", 1)[1], 16)
                table[int(parts[9])] = (local, remote, parts[3])
    return table


def snapshot(pid: int, proxy_port: int, tenant_port: int, started: float) -> Snapshot:
    status = _status_fields(pid)
    tcp = _tcp_sockets()
    counts: Counter[str] = Counter()
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except FileNotFoundError:  # closed meanwhile
            counts["other"] += 1
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        entry = tcp.get(int(match.group(1))) if match else None
        if entry is None:
            counts["other"] += 1
        elif entry[2] == "0A":
            counts["listening"] += 1
        elif entry[0] == proxy_port:
            counts["downstream"] += 1
        elif entry[1] == tenant_port:
            counts["upstream"] += 1
        else:
            counts["other_tcp"] += 1
    return Snapshot(
        at=round(time.monotonic() - started, 1),
        rss_kib=status.get("VmRSS", 0),
        hwm_kib=status.get("VmHWM", 0),
        threads=status.get("Threads", 0),
        fds=len(names),
        listening=counts["listening"],
        downstream=counts["downstream"],
        upstream=counts["upstream"],
        other_tcp=counts["other_tcp"],
        other=counts["other"],
        cpu_seconds=round(_cpu_seconds(pid), 2),
    )


# --- fwproxy's process: start, log, stop -------------------------------------------------


def clean_env() -> dict[str, str]:
    """The environment minus proxies and FWPROXY_* (they would override the config)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in _PROXY_VARS and not name.upper().startswith("FWPROXY_")
    }


class ProxyProcess:
    """`python -m fwproxy run --config PATH` in its own session; stderr drained and summed."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path | None) -> None:
        self.process = process
        self.port = 0
        self.lines = 0
        self.levels: Counter[str] = Counter()
        self.tracebacks = 0
        self.notable: Counter[str] = Counter()  # WARNING and above, digits folded
        self.first_lines: list[str] = []  # for a failed start
        self._listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._log = log_path.open("w", encoding="utf-8") if log_path is not None else None
        assert process.stderr is not None
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(process.stderr))

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        try:
            while raw := await stream.readline():
                self._take(raw.decode("utf-8", "replace").rstrip("\r\n"))
        finally:
            if not self._listening.done():
                self._listening.set_exception(
                    RuntimeError("fwproxy exited before it was listening")
                )
            if self._log is not None:
                self._log.close()

    def _take(self, line: str) -> None:
        self.lines += 1
        if self._log is not None:
            self._log.write(line + "\n")
        if len(self.first_lines) < 40:
            self.first_lines.append(line)
        if not self._listening.done():
            found = LISTENING.search(line)
            if found:
                self._listening.set_result(int(found.group(1)))
        if line.startswith("Traceback"):
            self.tracebacks += 1
        level = LOG_LEVEL.match(line)
        if level is None:
            return
        self.levels[level.group(1)] += 1
        if level.group(1) in ("WARNING", "ERROR", "CRITICAL"):
            text = re.sub(r"\d+(\.\d+)?", "#", line[level.end():])[:200]
            if text in self.notable or len(self.notable) < 50:
                self.notable[text] += 1

    async def listening(self) -> int:
        self.port = await asyncio.wait_for(asyncio.shield(self._listening), START_TIMEOUT)
        return self.port

    async def stop(self) -> tuple[int, float]:
        """SIGTERM by PID, wait, SIGKILL by PID; returns (exit status, seconds to exit)."""
        started = time.monotonic()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                await self.process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain_task, STOP_TIMEOUT)
        assert self.process.returncode is not None
        return self.process.returncode, time.monotonic() - started


    def kill(self) -> None:
        """SIGKILL by PID if it still runs (the last resort of an interrupted stop)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


async def start_proxy(config: Path, log_level: str, log_path: Path | None) -> ProxyProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fwproxy", "run", "--config", str(config),
        "--log-level", log_level,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
        cwd=str(config.parent),
        start_new_session=True,
    )
    proxy = ProxyProcess(process, log_path)
    try:
        await proxy.listening()
    except BaseException:
        await proxy.stop()
        raise
    return proxy


def proxy_config(tenant_port: int) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": 10},
        "tenant": {"url": f"http://127.0.0.1:{tenant_port}", "allow_insecure_http": True},
        "auth": {
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "replay_max_body": REPLAY_MAX,
        },
    }


# --- outcomes ----------------------------------------------------------------------------


@dataclass
class Answer:
    """What one request got back, before it is judged against the fault windows."""

    status: int | None  # None: no HTTP answer at all
    correct: bool = False
    problem: str = ""  # why it is not correct
    error: str | None = None  # the "error" of a {"error", "detail"} JSON body
    retry_after: float = 0.0  # a 503's Retry-After, honoured (up to RETRY_AFTER_CAP)


@dataclass
class Pending:
    """A 401 or 5xx: judged at the end, when every window is known."""

    kind: str
    start: float
    end: float
    status: int
    upload_size: int
    error: str | None


@dataclass
class Tally:
    served: Counter[str] = field(default_factory=Counter)
    clear_errors: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    aborted: int = 0
    latency: dict[str, array[float]] = field(default_factory=dict)  # served, seconds
    pending: list[Pending] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0

    def serve(self, kind: str, seconds: float) -> None:
        self.served[kind] += 1
        self.latency.setdefault(kind, array("d")).append(seconds)

    def lose(self, why: str, example: str) -> None:
        self.lost[why] += 1
        if len(self.lost_examples) < 30:
            self.lost_examples.append(example)


def percentile(values: list[float] | array[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _error_field(body: bytes) -> str | None:
    """The "error" of a JSON {"error": str, "detail": str} body, else None."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if (
        isinstance(document, dict)
        and isinstance(document.get("error"), str)
        and isinstance(document.get("detail"), str)
    ):
        return str(document["error"])
    return None


async def _not_ok(resp: aiohttp.ClientResponse) -> Answer:
    body = await resp.read()
    retry_after = 0.0
    with contextlib.suppress(ValueError):
        retry_after = float(resp.headers.get("Retry-After", "0"))
    return Answer(resp.status, problem=f"status {resp.status}", error=_error_field(body),
                  retry_after=retry_after)


# --- the load ----------------------------------------------------------------------------


class Blob:
    """Random upload bodies: slices of one random buffer."""

    def __init__(self, rng: random.Random) -> None:
        self.data = rng.randbytes(UPLOAD_CLASSES[-1][1] + MIB)

    def pick(self, rng: random.Random) -> bytes:
        low, high = rng.choice(UPLOAD_CLASSES)
        size = rng.randint(low, high)
        offset = rng.randint(0, len(self.data) - size)
        return self.data[offset:offset + size]


async def _chunked(body: bytes, size: int = 256 * KIB) -> AsyncIterator[bytes]:
    for offset in range(0, len(body), size):
        yield body[offset:offset + size]
        await asyncio.sleep(0)


class Load:
    """Workers, the chaos schedule, the quiet points, and the tally."""

    def __init__(self, args: argparse.Namespace, base: str, tenant: SoakTenantState) -> None:
        self.args = args
        self.base = base
        self.tenant = tenant
        self.rng = random.Random(args.seed)
        self.blob = Blob(self.rng)
        self.tally = Tally()
        self.events: list[Event] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.stopping = False
        self.in_flight = 0
        self.peak_in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.session: aiohttp.ClientSession | None = None
        self.started = time.monotonic()

    # sessions

    def new_session(self, fresh: bool = False) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=fresh),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            auto_decompress=False,
        )

    async def close_session(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    # workers

    async def worker(self, fresh: bool) -> None:
        rng = random.Random(self.rng.random())
        kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
        while True:
            await self.gate.wait()
            if self.stopping:
                return
            kind = rng.choices(kinds, weights)[0]
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.idle.clear()
            try:
                if fresh:
                    async with self.new_session(fresh=True) as session:
                        pause = await self.one(session, kind, rng, "fresh_")
                else:
                    if self.session is None:
                        self.session = self.new_session()
                    pause = await self.one(self.session, kind, rng, "")
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()
            if pause > 0:  # a polite client: it honours a 503's Retry-After
                await asyncio.sleep(pause)

    async def one(
        self, session: aiohttp.ClientSession, kind: str, rng: random.Random, prefix: str
    ) -> float:
        """One request, tallied; returns how long to wait before the next one."""
        upload_size = 0
        attempt: Awaitable[Answer]
        label = prefix + kind
        if kind == "small_get":
            path = rng.choice(list(EXPECTED_JSON))
            attempt = self.small_get(session, path)
        elif kind == "upload":
            body = self.blob.pick(rng)
            upload_size = len(body)
            attempt = self.upload(session, body, chunked=rng.random() < 0.5)
        elif kind == "download":
            attempt = self.download(session, rng.randint(MIB, DOWNLOAD_MAX))
        else:
            attempt = self.abort(session)
        start = time.monotonic()
        try:
            answer = await asyncio.wait_for(attempt, REQUEST_DEADLINE)
        except asyncio.TimeoutError:
            answer = Answer(None, problem=f"hung (no complete answer in {REQUEST_DEADLINE:g}s)")
        except (aiohttp.ClientError, OSError) as exc:
            answer = Answer(None, problem=f"connection error: {type(exc).__name__}")
        end = time.monotonic()
        where = f"t={start - self.started:.1f}s {label}"
        if kind == "abort" and answer.correct:
            self.tally.aborted += 1
        elif answer.correct:
            self.tally.serve(label, end - start)
        elif answer.status == 401 or (answer.status is not None and answer.status >= 500):
            self.tally.pending.append(
                Pending(label, start, end, answer.status, upload_size, answer.error)
            )
        elif answer.status is None:
            self.tally.lose(answer.problem, f"{where}: {answer.problem}")
        else:
            self.tally.lose(f"{answer.problem} ({label})", f"{where}: {answer.problem}")
        return min(answer.retry_after, RETRY_AFTER_CAP) if answer.status == 503 else 0.0

    async def small_get(self, session: aiohttp.ClientSession, path: str) -> Answer:
        async with session.get(self.base + path) as resp:
            if resp.status != 200:
                return await _not_ok(resp)
            body = await resp.read()
        try:
            document = json.loads(body)
        except ValueError:
            return Answer(200, problem="200 with a body that is not JSON")
        expected = EXPECTED_JSON[path]
        if not isinstance(document, dict) or {k: document.get(k) for k in expected} != expected:
            return Answer(200, problem=f"200 with the wrong JSON for {path}")
        return Answer(200, correct=True)

    async def upload(self, session: aiohttp.ClientSession, body: bytes, chunked: bool) -> Answer:
        digest = hashlib.sha256(body).hexdigest()
        data: Any = _chunked(body) if chunked else body
        async with session.post(self.base + "/sim/upload", data=data) as resp:
            if resp.status != 200:
                return await _not_ok(resp)
            answer = await resp.read()
        self.tally.bytes_up += len(body)
        try:
            document = json.loads(answer)
        except ValueError:
            return Answer(200, problem="upload: 200 with a body that is not JSON")
        if not isinstance(document, dict) or document.get("body_size") != len(body):
            return Answer(200, problem="upload: the tenant got the wrong size")
        if document.get("body_sha256") != digest:
            return Answer(200, problem="upload: the tenant got different bytes (sha256)")
        return Answer(200, correct=True)

    async def download(self, session: aiohttp.ClientSession, size: int) -> Answer:
        async with session.get(f"{self.base}/sim/bytes/{size}") as resp:
            if resp.status != 200:
                return await _not_ok(resp)
            if resp.content_length != size:
                return Answer(200, problem="download: wrong Content-Length")
            offset = 0
            async for chunk in resp.content.iter_any():
                end = offset + len(chunk)
                if end > size or EXPECTED_BYTES[offset:end] != chunk:
                    return Answer(200, problem="download: wrong bytes")
                offset = end
        self.tally.bytes_down += offset
        if offset != size:
            return Answer(200, problem="download: short body")
        return Answer(200, correct=True)

    async def abort(self, session: aiohttp.ClientSession) -> Answer:
        async with session.get(f"{self.base}/sim/bytes/{ABORT_SIZE}") as resp:
            if resp.status != 200:
                return await _not_ok(resp)
            got = 0
            while got < ABORT_AFTER:
                chunk = await resp.content.read(64 * KIB)
                if not chunk:
                    return Answer(200, problem="abort: the download ended early")
                got += len(chunk)
            resp.close()  # hang up mid-body: the proxy must cancel its upstream request
        return Answer(200, correct=True)

    # chaos

    async def chaos(self, until: float) -> None:
        """Revocations and token endpoint blips until `until` (monotonic)."""
        args, rng = self.args, random.Random(self.args.seed + 1)
        duration = until - self.started

        def jitter(period: float) -> float:
            return float(period * rng.uniform(0.8, 1.2))

        next_revoke = self.started + min(args.revoke_every / 2, duration * 0.2)
        next_blip = self.started + min(args.blip_every, duration * 0.5)
        while True:
            blip_due = next_blip <= next_revoke
            due = next_blip if blip_due else next_revoke
            guard = self._cooldown_ends()
            at = max(due, guard)
            last_start = until - (args.blip_seconds + 2 if blip_due else 2)
            if at > last_start:
                if blip_due:  # no room for another blip; revocations may go on
                    next_blip = float("inf")
                    if next_revoke == float("inf"):
                        return
                    continue
                next_revoke = float("inf")
                if next_blip == float("inf"):
                    return
                continue
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if self._cooldown_ends() > time.monotonic():  # a token came meanwhile
                continue
            now = time.monotonic()
            if blip_due:
                self.tenant.token_endpoint_fault = (
                    503, "text/html", b"<html><body>503 Service Unavailable</body></html>"
                )
                self.tenant.revoke_all()
                await asyncio.sleep(args.blip_seconds)
                self.tenant.token_endpoint_fault = None
                self.events.append(Event("blip", now, time.monotonic()))
                next_blip = now + jitter(args.blip_every)
                next_revoke = max(next_revoke, now + args.blip_seconds + 1)
            else:
                self.tenant.revoke_all()
                self.events.append(Event("revoke", now, now))
                next_revoke = now + jitter(args.revoke_every)

    def _cooldown_ends(self) -> float:
        """When the proxy's token is again one it may drop after a 401: the token issued in
        answer to the last revocation is `--cooldown-guard` seconds old (0.0: now)."""
        if not self.events or self.args.cooldown_guard <= 0:
            return 0.0
        answer = self.tenant.first_issue_since(self.events[-1].start)
        if answer is None:  # not renewed yet: a revocation now changes nothing for it
            return 0.0
        return answer + float(self.args.cooldown_guard)

    # quiet points

    async def quiet(self, proxy: ProxyProcess, tenant_port: int) -> tuple[Snapshot, float]:
        """Pause, let every request finish, close the client session, wait until the proxy
        holds no client connection, then measure. Returns the snapshot and the pause."""
        paused = time.monotonic()
        self.gate.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), DRAIN_TIMEOUT)
        await self.close_session()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            snap = snapshot(proxy.pid, proxy.port, tenant_port, self.started)
            if snap.downstream == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let closed connections finish closing
        snap = snapshot(proxy.pid, proxy.port, tenant_port, self.started)
        return snap, time.monotonic() - paused

    # judging

    def windows(self, kinds: tuple[str, ...]) -> list[tuple[float, float]]:
        """(start, end) of the windows after events of `kinds`: until the next token was
        issued, plus WINDOW_SLACK; open-ended when none was issued yet."""
        out = []
        for event in self.events:
            if event.kind in kinds:
                recovered = self.tenant.first_issue_since(event.start)
                end = float("inf") if recovered is None else recovered + WINDOW_SLACK
                out.append((event.start, end))
        return out

    def judge(self) -> None:
        fault = self.windows(("blip",))
        auth = self.windows(("blip", "revoke"))

        def overlaps(item: Pending, windows: list[tuple[float, float]]) -> bool:
            return any(item.start <= end and item.end >= start for start, end in windows)

        for item in self.tally.pending:
            where = f"t={item.start - self.started:.1f}s {item.kind} -> {item.status}"
            if item.status == 401:
                if item.upload_size > REPLAY_MAX and overlaps(item, auth):
                    self.tally.clear_errors["401 for an upload too large to replay"] += 1
                else:
                    self.tally.lose(f"401 ({item.kind})", where)
            elif item.status in (502, 503, 504) and item.error is None:
                self.tally.lose(f"{item.status} without a JSON error body", where)
            elif item.status in (502, 503, 504) and overlaps(item, fault):
                self.tally.clear_errors[f"{item.status} {item.error} in a fault window"] += 1
            else:
                self.tally.lose(f"{item.status} {item.error} outside a fault window", where)
        self.tally.pending.clear()

    def recoveries(self, traffic_end: float) -> tuple[list[float], int]:
        """Seconds from each blip's end to the next token; and how many never recovered
        although traffic went on for BACKOFF_CAP after them."""
        delays, stuck = [], 0
        for event in self.events:
            if event.kind != "blip":
                continue
            recovered = self.tenant.first_issue_since(event.start)
            if recovered is not None:
                delays.append(recovered - event.end)
            elif traffic_end - event.end > BACKOFF_CAP:
                stuck += 1
        return delays, stuck


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
                code, took = await proxy.stop()
                if report:
                    add_exit(report, proxy, code, took)
                elif proxy.port == 0 and proxy.first_lines:  # it did not start
                    print("fwproxy log:\n" + "\n".join(proxy.first_lines), file=sys.stderr)
            finally:
                proxy.kill()  # interrupted while stopping: never leave fwproxy behind
        await runner.cleanup()
        tmp.cleanup()
    return report


def add_exit(report: dict[str, Any], proxy: ProxyProcess, code: int, took: float) -> None:
    """fwproxy's exit and log summary, known only once it stopped."""
    report["fwproxy"]["exit_status"] = code
    report["fwproxy"]["stop_seconds"] = round(took, 2)
    report["fwproxy"]["log"] = {
        "lines": proxy.lines,
        "levels": dict(proxy.levels),
        "tracebacks": proxy.tracebacks,
        "warnings_and_errors": dict(proxy.notable.most_common(20)),
    }
    verdict = report["criteria"]["clean_exit"]
    verdict["pass"] = verdict["pass"] and code == 0
    verdict["detail"] += f"; exited {code} on SIGTERM after {took:.1f}s"


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
    except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
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
