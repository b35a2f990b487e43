"""``listen.workers: N``: N processes serving one port, sharing one token.

The supervisor binds N listening sockets to the same address with SO_REUSEPORT (so the
kernel spreads connections over the workers), forks one worker per socket, and then only
supervises: it tells systemd when all are ready, feeds the watchdog, forwards SIGHUP,
turns SIGTERM/SIGINT into a drain of every worker, and replaces a worker that dies. The
workers share their token through a file in a private directory (`oauth.SharedGrant`):
a renewal is one token request for the whole proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from . import eventloop
from .config import Settings
from .exceptions import ConfigError
from .reload import reload_plan
from .server import Reloader, WorkerRole, serve
from .systemd import Notifier

log = logging.getLogger("fwproxy")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
READY_TIMEOUT = 60.0
RESPAWN_PAUSE = 1.0  # doubled for each death within DEATH_WINDOW
DEATH_WINDOW = 60.0
MAX_DEATHS = 5


def _free_port(host: str, port: int) -> int:
    """Bind once without SO_REUSEPORT: fails if anything (another fwproxy too) holds the
    port; the port chosen for 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, port))
        chosen: int = probe.getsockname()[1]
    return chosen


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket in the port's SO_REUSEPORT group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Reaped(NamedTuple):
    """What one collection of exited workers found."""

    died: int  # workers that exited (not asked to)
    give_up: bool = False  # they die too often to keep restarting them


class Supervisor:
    def __init__(self, settings: Settings, reload: Reloader | None) -> None:
        self.settings = settings
        self.reload = reload
        self.count = settings.listen.workers
        self.notifier = Notifier()
        self.children: dict[int, int] = {}  # pid -> worker index
        self.pending: list[tuple[float, int]] = []  # (when, index) of restarts to make
        self.deaths: list[float] = []
        self.stopping = False
        self.port = settings.listen.port

    def run(self) -> int:
        host = self.settings.listen.host
        try:
            self.port = _free_port(host, self.settings.listen.port)
            sockets = [reuseport_socket(host, self.port) for _ in range(self.count)]
        except OSError as exc:
            print(f"fwproxy: cannot listen on {host}:{self.settings.listen.port}: {exc}",
                  file=sys.stderr)
            return 1
        self.shared = Path(tempfile.mkdtemp(prefix="fwproxy-", dir=_runtime_dir()))
        self.token_file = self.shared / "token.json"
        self.ready_r, self.ready_w = os.pipe()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # from here on: sigtimedwait
        log.info("listening on http://%s:%d -> %s (%s, %d workers)",
                 f"[{host}]" if ":" in host else host, self.port, self.settings.tenant.url,
                 self.settings.source, self.count)
        try:
            for index, sock in enumerate(sockets):
                self._spawn(index, sock, sockets)
            for sock in sockets:
                sock.close()  # each worker holds its own now
            if not self._await_ready():
                self._stop_all()
                return 1
            self.notifier.notify(f"READY=1\nSTATUS=serving with {self.count} workers")
            return self._supervise()
        finally:
            shutil.rmtree(self.shared, ignore_errors=True)

    def _spawn(self, index: int, sock: socket.socket, others: list[socket.socket]) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = index
            return
        code = 1
        try:  # the worker: its own signals, its own socket, its own event loop
            os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the supervisor, which drains us
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            for other in others:
                if other is not sock:
                    other.close()
            os.close(self.ready_r)
            os.environ.pop("NOTIFY_SOCKET", None)
            role = WorkerRole(index, sock, self.token_file, self.ready_w)
            code = eventloop.run(serve(self.settings, self.reload, worker=role),
                                 self.settings.listen.event_loop)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)

    def _await_ready(self) -> bool:
        """Wait for every worker's ready byte; False if one dies first or we are stopped."""
        deadline = time.monotonic() + READY_TIMEOUT
        ready = 0
        while ready < self.count:
            readable, _, _ = select.select([self.ready_r], [], [], 0)
            if readable:
                ready += len(os.read(self.ready_r, self.count))
                continue
            info = signal.sigtimedwait(SIGNALS, 0.1)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return False
            if self._reap(during_start=True).died:
                log.error("a worker failed while starting; stopping")
                return False
            if time.monotonic() > deadline:
                log.error("workers did not start within %gs; stopping", READY_TIMEOUT)
                return False
        return True

    def _supervise(self) -> int:
        interval = self.notifier.watchdog_interval
        while self.children or self.pending:
            now = time.monotonic()
            waits = [interval or 3600.0] + [max(0.0, when - now) for when, _ in self.pending]
            info = signal.sigtimedwait(SIGNALS, min(waits))
            if interval:
                self.notifier.notify("WATCHDOG=1")
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    self.notifier.notify("STOPPING=1")
                    log.info("stopping %d workers", len(self.children))
                    self._stop_all()
            elif info is not None and info.si_signo == signal.SIGHUP:
                self._reload()
            if self._reap(during_start=False).give_up:
                self._stop_all()
                return 1
            self._restart_due()
        log.info("stopped")
        return 0

    def _reload(self) -> None:
        """Workers reload themselves; the supervisor keeps the settings they run with (the
        new ones, but the running value of each key that needs a restart) for the workers
        it may have to start later."""
        if self.reload is not None:
            with contextlib.suppress(ConfigError):  # each worker logs the refusal
                self.settings = reload_plan(self.settings, self.reload()).settings
        self._tell_all(signal.SIGHUP)

    def _stop_all(self) -> None:
        self.stopping = True
        self.pending.clear()
        self._tell_all(signal.SIGTERM)

    def _tell_all(self, sig: signal.Signals) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self, during_start: bool) -> Reaped:
        """Collect exited workers and plan their replacement: how many died, and whether
        they die too often to keep trying."""
        died = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            died += 1
            log.error("worker %d (pid %d) died (%s)", index, pid, _exit_text(status))
            if during_start:
                continue
            now = time.monotonic()
            self.deaths = [t for t in self.deaths if now - t < DEATH_WINDOW] + [now]
            if len(self.deaths) > MAX_DEATHS:
                log.error("workers died %d times within %gs; giving up", len(self.deaths),
                          DEATH_WINDOW)
                return Reaped(died, give_up=True)
            pause = RESPAWN_PAUSE * 2 ** (len(self.deaths) - 1)
            self.pending.append((now + pause, index))
        return Reaped(died)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for when, index in [p for p in self.pending if p[0] <= now]:
            self.pending.remove((when, index))
            try:
                sock = reuseport_socket(self.settings.listen.host, self.port)
            except OSError as exc:
                log.error("cannot rebind worker %d: %s", index, exc)
                continue
            self._spawn(index, sock, [sock])
            sock.close()
            log.info("worker %d restarted", index)


def run_workers(settings: Settings, reload: Reloader | None) -> int:
    return Supervisor(settings, reload).run()


def _runtime_dir() -> str:
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    for candidate in (runtime, "/dev/shm"):  # noqa: S108 (mkdtemp makes a private dir)
        if candidate and os.access(candidate, os.W_OK):
            return candidate
    return tempfile.gettempdir()


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
