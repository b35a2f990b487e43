"""The soak's traffic and faults: the simulated tenant that records when it issued tokens,
the workers and their checks of every answer, the 401 storms and token endpoint blips, the
fault windows and the judging of each outcome (see bench/soak.py for the rules).

Longer than 400 lines because `Load` is one piece of shared state (the traffic, the fault
windows it opens and the tally it judges against them); split, that state would be passed
around between modules instead of living in one class.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import random
import re
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.soak_proxy import KIB, MIB, REPLAY_MAX, ProxyProcess, Snapshot, snapshot
from fwproxy.sim import PATTERN, Catalog, TenantState
from fwproxy.sim.api import collection

WINDOW_SLACK = 1.0  # seconds a fault or revocation window stays open after recovery
BACKOFF_CAP = 60.0  # fwproxy's token backoff cap: recovery after a blip must come sooner
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


