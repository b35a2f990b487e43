"""Starting and stopping the processes a test or a bench run needs.

* `clean_env`: the environment minus what could redirect curl or override fwproxy's config.
* `FwproxyProcess` / `launch_fwproxy`: `python -m fwproxy run` under asyncio, its stderr
  drained from the first byte (the pipe never fills), its "listening on" port, stopped by
  its PID (SIGTERM, then SIGKILL if it does not exit in time). Everything that waits does it
  through asyncio: a simulated tenant in the same event loop keeps answering.
* `Sessions`: blocking starts for the bench's servers (nginx, the sink, relays, contenders):
  each in its own session (setsid) with its output in a log file, stopped by its process
  group, so children that outlive the leader (workers) go too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.support.procfs import status_kib

START_TIMEOUT = 20.0  # for a hang, not a timing assertion
STOP_TIMEOUT = 30.0
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus anything that could redirect curl or override fwproxy's config."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in _PROXY_VARS and not name.upper().startswith("FWPROXY_")
    }
    env.update(extra or {})
    return env


def kill(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to `pid` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class FwproxyProcess:
    """One fwproxy subprocess (or anything that logs "listening on" to stderr), its port and
    its log.

    `take(line)` sees every stderr line in order; by default it keeps them all in `lines`
    (`log_text`, `log_count`, `wait_for_line` read them). A long run overrides it to count
    instead of keeping. `lines` holds what was read so far: a line written just before a
    response can still be in the pipe when the client has the response; after `stop()` the
    log is complete.
    """

    def __init__(self, process: asyncio.subprocess.Process, config_path: Path | None) -> None:
        self.process = process
        self.config_path = config_path
        self.lines: list[str] = []
        self.port = 0
        self.eof = False
        self._changed = asyncio.Condition()
        assert process.stderr is not None
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(process.stderr))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def take(self, line: str) -> None:
        self.lines.append(line)

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def log_count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)

    def peak_rss(self) -> int:
        """VmHWM (peak resident set) of the process, in bytes."""
        return status_kib(self.pid, "VmHWM") * 1024

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            async with self._changed:
                if not raw:
                    self.eof = True
                else:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not self.port and (found := LISTENING.search(line)):
                        self.port = int(found.group(1))
                    self.take(line)
                self._changed.notify_all()
            if not raw:
                return

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float,
                          what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"fwproxy logged no line {what} within {timeout}s; "
                    f"log so far:\n{self.log_text()}"
                ) from None

    async def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """The port of the first "listening on" line; AssertionError if it exits first."""
        await self._wait_until(lambda: bool(self.port) or self.eof, timeout,
                               f"matching {LISTENING.pattern!r}")
        if not self.port:
            raise AssertionError(
                f"fwproxy exited ({self.process.returncode}) before logging "
                f"{LISTENING.pattern!r}; log:\n{self.log_text()}"
            )
        return self.port

    async def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = START_TIMEOUT
                            ) -> re.Match[str]:
        """The first log line (already seen or still to come) containing `pattern` (a plain
        string) or matching it (a compiled regex)."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self.lines:
                match = regex.search(line)
                if match:
                    found.append(match)
                    return True
            return self.eof

        await self._wait_until(seen, timeout, f"matching {regex.pattern!r}")
        if not found:
            raise AssertionError(
                f"fwproxy exited ({self.process.returncode}) before logging "
                f"{regex.pattern!r}; log:\n{self.log_text()}"
            )
        return found[0]

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own (after a signal the test sent)."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"fwproxy (pid {self.pid}) did not exit within {timeout}s"
                                 ) from None
        return await self.stop()

    async def stop(self) -> int:
        """SIGTERM by PID, wait, SIGKILL by PID if it hangs; returns the exit status."""
        if self.process.returncode is None:
            kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                kill(self.pid, signal.SIGKILL)
                await self.process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain_task, STOP_TIMEOUT)
        assert self.process.returncode is not None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL by PID if it still runs (the last resort of an interrupted stop)."""
        if self.process.returncode is None:
            kill(self.pid, signal.SIGKILL)


async def spawn_fwproxy(
    config_path: Path | None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    cwd: Path | None = None,
    *,
    new_session: bool = False,
) -> asyncio.subprocess.Process:
    """`fwproxy run [--config PATH]` behind `wrapper`, with `env` added to the clean
    environment, in its own session if `new_session`; stderr is a pipe for FwproxyProcess."""
    config = ["--config", str(config_path)] if config_path is not None else []
    return await asyncio.create_subprocess_exec(
        *wrapper, sys.executable, "-m", "fwproxy", "run", *config, *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
        cwd=cwd or (config_path.parent if config_path is not None else None),
        pass_fds=tuple(pass_fds),
        start_new_session=new_session,
    )


async def started(proxy: FwproxyProcess, timeout: float = START_TIMEOUT) -> None:
    """Wait for `proxy`'s "listening on" line; stop it if that fails (or is cancelled)."""
    try:
        await proxy.wait_listening(timeout)
    except BaseException:
        await proxy.stop()
        raise


async def launch_fwproxy(
    config_path: Path | None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    cwd: Path | None = None,
) -> FwproxyProcess:
    """Start `fwproxy run [--config PATH]` (behind `wrapper`, with `env` added) and wait for
    its "listening on" line."""
    process = await spawn_fwproxy(config_path, args, env, wrapper, pass_fds, cwd)
    proxy = FwproxyProcess(process, config_path)
    await started(proxy)
    return proxy


async def complete(
    process: asyncio.subprocess.Process, timeout: float, what: str
) -> tuple[bytes, bytes]:
    """Wait for a subprocess's output; a hang is a failure, and the process is killed."""
    try:
        return await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise AssertionError(f"{what} hung for {timeout}s") from None
    except BaseException:
        kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise


class Sessions:
    """Blocking starts: each process in its own session (setsid), stdin /dev/null, stdout and
    stderr to a numbered log file under `logs`; stopped by process group."""

    def __init__(self, logs: Path, cwd: Path | None = None) -> None:
        self.logs = logs
        self.cwd = cwd
        self.live: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.log_files: dict[int, Path] = {}
        self.count = 0

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        self.count += 1
        log = self.logs / f"{self.count:02d}-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=self.cwd,
            )
        self.live[proc.pid] = (name, proc)
        self.log_files[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> Path:
        return self.log_files[proc.pid]

    def log_tail(self, proc: subprocess.Popen[bytes] | None, lines: int = 15) -> str:
        """The last `lines` of the process's log, indented for an error message."""
        if proc is None or proc.pid not in self.log_files:
            return ""
        try:
            text = self.log_files[proc.pid].read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text.splitlines()[-lines:])

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
