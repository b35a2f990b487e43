"""The soak's fwproxy: its config, its process (tests/support's FwproxyProcess, the log summed
rather than kept) and what /proc says about it (RSS, fds classified by TCP port, CPU)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from tests.support.processes import FwproxyProcess, spawn_fwproxy, started
from tests.support.procfs import cpu_seconds, status_fields, tcp_sockets

LOG_LEVEL = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
KIB = 1024
MIB = 1024 * 1024
REPLAY_MAX = 4 * MIB  # auth.replay_max_body for the run: bigger uploads cannot be replayed
START_TIMEOUT = 30.0


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


def snapshot(pid: int, proxy_port: int, tenant_port: int, started: float) -> Snapshot:
    status = status_fields(pid, ("VmRSS", "VmHWM", "Threads"))
    tcp = {sock.inode: (sock.local_port, sock.remote_port, sock.state)
           for sock in tcp_sockets() if sock.inode}
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
        cpu_seconds=round(cpu_seconds(pid), 2),
    )


# --- fwproxy's process: start, log, stop -------------------------------------------------


class ProxyProcess(FwproxyProcess):
    """`python -m fwproxy run` (tests/support) whose stderr is summed, not kept: a run of
    hours logs too much to hold. The lines go to `log_path` if given."""

    def __init__(self, process: asyncio.subprocess.Process, config_path: Path | None,
                 log_path: Path | None = None) -> None:
        self.line_count = 0
        self.levels: Counter[str] = Counter()
        self.tracebacks = 0
        self.notable: Counter[str] = Counter()  # WARNING and above, digits folded
        self.first_lines: list[str] = []  # for a failed start
        self._log = log_path.open("w", encoding="utf-8") if log_path is not None else None
        super().__init__(process, config_path)

    def log_text(self) -> str:
        return "\n".join(self.first_lines)

    def take(self, line: str) -> None:
        self.line_count += 1
        if self._log is not None:
            self._log.write(line + "\n")
        if len(self.first_lines) < 40:
            self.first_lines.append(line)
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

    async def stop(self) -> int:
        try:
            return await super().stop()
        finally:
            if self._log is not None:
                self._log.close()

    async def stop_timed(self) -> tuple[int, float]:
        """SIGTERM by PID, wait, SIGKILL by PID; returns (exit status, seconds to exit)."""
        begun = time.monotonic()
        code = await self.stop()
        return code, time.monotonic() - begun


async def start_proxy(config: Path, log_level: str, log_path: Path | None) -> ProxyProcess:
    """fwproxy in its own session (a ^C in the terminal reaches only this process, which
    stops fwproxy by its PID)."""
    process = await spawn_fwproxy(config, ["--log-level", log_level], new_session=True)
    proxy = ProxyProcess(process, config, log_path)
    await started(proxy, START_TIMEOUT)
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


