"""A burst of requests from many parallel `curl` processes, as a legacy script fires them.

`burst(url, total, processes, headers)` starts `processes` curls at once, each making its
share of `total` GETs one after another on its own keep-alive connection, and counts what
came back: the status of each transfer, ``000`` for one that got no answer (a dropped
connection: curl's own one retry of a reused connection included). Runs through asyncio, so
a tenant in the test's own event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from tests.e2e.conftest import CURL, clean_env, complete

BURST_TIMEOUT = 120.0  # a hang guard for the whole burst


@dataclass(frozen=True)
class BurstResult:
    statuses: Counter[str]  # "200", "429", "000" (no answer), ...
    seconds: float  # from the first curl's start to the last one's exit

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    @property
    def failed(self) -> int:
        return self.total - self.ok


async def burst(url: str, total: int, processes: int, headers: Mapping[str, str] | None = None,
                timeout: float = BURST_TIMEOUT) -> BurstResult:
    """`total` GETs of `url` from `processes` parallel curls; what each transfer got."""
    shares = [total // processes + (i < total % processes) for i in range(processes)]
    header_args = [arg for name, value in (headers or {}).items()
                   for arg in ("-H", f"{name}: {value}")]
    started = time.monotonic()
    running: list[tuple[asyncio.subprocess.Process, int]] = []
    for share in shares:
        if not share:
            continue
        argv = [CURL, "-q", "--silent", "--max-time", "30", "-w", "%{http_code}\\n",
                *header_args]
        for _ in range(share):
            argv += [url, "-o", "/dev/null"]
        running.append((await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=clean_env()), share))
    outputs = await asyncio.gather(*(
        complete(process, timeout, f"curl burst of {share} at {url}")
        for process, share in running))
    seconds = time.monotonic() - started
    statuses: Counter[str] = Counter()
    for out, _ in outputs:
        statuses.update(out.decode("ascii", "replace").split())
    assert sum(statuses.values()) == total, f"curl reported {statuses}, expected {total}"
    return BurstResult(statuses, seconds)
