"""Readers of /proc (Linux): memory, fds, CPU time and TCP sockets of a process or the machine.

`pid` is a process id or "self". Every reader returns what the kernel reports at the moment
of the call; a process that is gone raises OSError (FileNotFoundError).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

Pid = int | str


def status_fields(pid: Pid, names: tuple[str, ...]) -> dict[str, int]:
    """The first number of each `names` line of /proc/PID/status (kB for the Vm* lines)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, value = line.partition(":")
        if name in names:
            out[name] = int(value.split()[0])
    return out


def status_kib(pid: Pid, field: str) -> int:
    """One /proc/PID/status field in KiB, e.g. "VmRSS" or "VmHWM" (peak resident set)."""
    value = status_fields(pid, (field,)).get(field)
    if value is None:
        raise LookupError(f"/proc/{pid}/status has no {field}")
    return value


def rss(pid: Pid = "self") -> int:
    """Resident set size in bytes."""
    return status_kib(pid, "VmRSS") * 1024


def open_fds(pid: Pid = "self") -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: Pid) -> float:
    """User plus system CPU time the process used so far (not its reaped children)."""
    return sum(_stat_fields(pid)[11:13]) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: Pid) -> list[int]:
    """/proc/PID/stat after the command name (field 3 on: state is left out as -1)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    fields = stat[stat.rindex(")") + 2:].split()
    return [-1, *(int(x) for x in fields[1:])]


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str  # hex as the kernel writes it: "01" ESTABLISHED, "0A" LISTEN
    inode: int  # 0 for a connection nobody has accepted yet (or in TIME_WAIT)


ESTABLISHED = "01"
LISTEN = "0A"


def tcp_sockets() -> list[TcpSocket]:
    """Every TCP socket in this network namespace (IPv4 and IPv6)."""
    found: list[TcpSocket] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                parts = line.split()
                found.append(TcpSocket(
                    local_port=int(parts[1].rsplit(":", 1)[1], 16),
                    remote_port=int(parts[2].rsplit(":", 1)[1], 16),
                    state=parts[3],
                    inode=int(parts[9]),
                ))
    return found


def established_connections(port: int) -> int:
    """ESTABLISHED TCP connections accepted on local `port` (loopback, this namespace)."""
    return sum(s.state == ESTABLISHED and s.local_port == port for s in tcp_sockets())


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = _stat_fields(entry)[1]
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def tree_peak_rss_kib(root: int) -> int:
    """VmHWM (peak resident set) summed over `root` and its descendants, in KiB."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, LookupError):
            total += status_kib(pid, "VmHWM")
    return total


def foreign_cpu_seconds() -> float:
    """CPU seconds used so far by every process outside this process's own tree (with the
    children they have reaped): how much else ran on the machine meanwhile."""
    mine = set(process_tree(os.getpid()))
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            ticks += sum(_stat_fields(entry)[11:15])  # utime stime cutime cstime
        except (OSError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat); blocks for `seconds`."""
    def sample() -> tuple[int, int]:
        line = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0]
        fields = [int(x) for x in line.split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def connection_owner(local_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the ESTABLISHED TCP connection whose local port is
    `local_port` (e.g. the client side of a request a test server saw), if any."""
    inodes = {s.inode for s in tcp_sockets()
              if s.local_port == local_port and s.state == ESTABLISHED and s.inode}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        return pid
    return None
