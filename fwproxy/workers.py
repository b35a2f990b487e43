"""``listen.workers: N``: N processes serving one port, sharing one token.

The supervisor binds N listening sockets to the same address with SO_REUSEPORT (so the
kernel spreads connections over the workers), forks one worker per socket, and then only
supervises: it tells systemd when all are ready, feeds the watchdog, forwards SIGHUP,
turns SIGTERM/SIGINT into a drain of every worker, and replaces a worker that dies. The
workers share their token through a file in a private directory (`oauth.SharedGrant`):
a renewal is one token request for the whole proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from .config import Settings
from .server import Reloader, WorkerRole, serve
from .systemd import Notifier

log = logging.getLogger("fwproxy")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
READY_TIMEOUT = 60.0
RESPAWN_PAUSE = 1.0


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


class Supervisor:
    def __init__(self, settings: Settings, reload: Reloader | None) -> None:
        self.settings = settings
        self.reload = reload
        self.count = settings.listen.workers
        self.notifier = Notifier()
        self.shared = Path(tempfile.mkdtemp(prefix="fwproxy-", dir=_runtime_dir()))
        self.token_file = self.shared / "token.json"
        self.ready_r, self.ready_w = os.pipe()
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.port = settings.listen.port

    def run(self) -> int:
        first = reuseport_socket(self.settings.listen.host, self.settings.listen.port)
        self.port = first.getsockname()[1]
        sockets = [first] + [reuseport_socket(self.settings.listen.host, self.port)
                             for _ in range(self.count - 1)]
        host = self.settings.listen.host
        log.info("listening on http://%s:%d -> %s (%s, %d workers)",
                 f"[{host}]" if ":" in host else host, self.port, self.settings.tenant.url,
                 self.settings.source, self.count)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for index, sock in enumerate(sockets):
                self._spawn(index, sock, sockets)
            for sock in sockets:
                sock.close()  # each worker holds its own now
            self._await_ready()
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
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            for other in others:
                if other is not sock:
                    other.close()
            os.close(self.ready_r)
            os.environ.pop("NOTIFY_SOCKET", None)
            role = WorkerRole(index, sock, self.token_file, self.ready_w)
            code = asyncio.run(serve(self.settings, self.reload, worker=role))
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)

    def _await_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        ready = 0
        while ready < self.count and time.monotonic() < deadline:
            readable, _, _ = select.select([self.ready_r], [], [], 0.5)
            if readable:
                ready += len(os.read(self.ready_r, self.count))
        if ready < self.count:
            log.warning("only %d of %d workers reported ready", ready, self.count)

    def _supervise(self) -> int:
        interval = self.notifier.watchdog_interval
        while self.children:
            info = signal.sigtimedwait(SIGNALS, interval or 3600.0)
            if interval:
                self.notifier.notify("WATCHDOG=1")
            if info is None:
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.stopping = True
                self.notifier.notify("STOPPING=1")
                log.info("stopping %d workers", len(self.children))
                self._tell_all(signal.SIGTERM)
            elif info.si_signo == signal.SIGHUP:
                self._tell_all(signal.SIGHUP)
            self._reap()
        log.info("stopped")
        return 0

    def _tell_all(self, sig: signal.Signals) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            log.error("worker %d (pid %d) died (%s); starting a new one", index, pid,
                      _describe_status(status))
            time.sleep(RESPAWN_PAUSE)  # a worker that dies at once must not spin the CPU
            sock = reuseport_socket(self.settings.listen.host, self.port)
            self._spawn(index, sock, [sock])
            sock.close()


def run_workers(settings: Settings, reload: Reloader | None) -> int:
    return Supervisor(settings, reload).run()


def _runtime_dir() -> str:
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    for candidate in (runtime, "/dev/shm"):  # noqa: S108 (mkdtemp makes a private dir)
        if candidate and os.access(candidate, os.W_OK):
            return candidate
    return tempfile.gettempdir()


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
