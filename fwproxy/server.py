"""Serving: sockets, signals and systemd. ``fwproxy run`` and ``fwproxy demo`` end up here.

SIGTERM/SIGINT stop accepting, let in-flight requests finish for ``listen.shutdown_timeout``
and exit 0. SIGHUP re-reads the config (and so the secret file) and applies it without
dropping a connection or the token; a bad new config is refused with a log line and the
old one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from . import eventloop
from .app import PROXY, TOKENS, create_app, handler_args, reconfigure
from .config import Settings
from .connections import Runner
from .exceptions import ConfigError, TokenError
from .log import setup_logging
from .systemd import Notifier, listen_fds

log = logging.getLogger("fwproxy")
Reloader = Callable[[], Settings]


def raise_fd_limit() -> int:
    """A proxy holds two fds per proxied connection: take all the fds we are allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
    return soft


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process (workers.py) gets from its supervisor."""

    index: int
    sock: socket.socket  # its listening socket, in the port's SO_REUSEPORT group
    shared_token: Path
    ready_fd: int  # one byte written here once listening


async def serve(
    settings: Settings, reload: Reloader | None = None, worker: WorkerRole | None = None
) -> int:
    """Run until SIGTERM or SIGINT; `reload` re-reads the config on SIGHUP."""
    raise_fd_limit()
    app = create_app(settings, worker.shared_token if worker else None)
    runner = Runner(
        app,
        settings.limits,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.listen.shutdown_timeout,
    )
    await runner.setup()
    notifier = Notifier({} if worker else None)  # a worker's supervisor talks to systemd
    try:
        try:
            await _start_sites(runner, settings, worker)
        except OSError as exc:
            print(f"fwproxy: cannot listen: {exc}", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        if worker is None:
            for address in runner.addresses:
                log.info("listening on %s -> %s (%s; %s)", _address_text(address),
                         settings.tenant.url, settings.source, eventloop.loop_name(loop))
        else:
            log.info("worker %d serving (%s)", worker.index, eventloop.loop_name(loop))
            os.write(worker.ready_fd, b"r")
        app[TOKENS].start()  # renew on time; not before listening: a failed start asks none
        background = [loop.create_task(_warm_up(app)), loop.create_task(notifier.watchdog())]
        # Everything made at startup (modules, config, the app) lives until exit: out of the
        # collector's way, so a full collection scans what requests made, not 40,000 objects
        # it scanned at every previous one (about 6 ms each time, a pause every client sees).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload, runner, reload, notifier)
        notifier.notify("READY=1\nSTATUS=serving")  # after the handlers: reload may follow
        await stop.wait()
        notifier.notify("STOPPING=1")
        log.info("shutting down: finishing requests in flight (up to %gs)",
                 app[PROXY].settings.listen.shutdown_timeout)
        for task in background:
            task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


async def _start_sites(
    runner: web.AppRunner, settings: Settings, worker: WorkerRole | None
) -> None:
    if worker is not None:  # the supervisor bound the port
        await web.SockSite(runner, worker.sock).start()
        return
    inherited = listen_fds()
    for sock in inherited:  # socket activation: systemd bound them
        await web.SockSite(runner, sock).start()
    if not inherited:
        await web.TCPSite(runner, settings.listen.host, settings.listen.port).start()
    path = settings.listen.unix_socket
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()  # a stale socket from a previous run
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, 0o660)


def _address_text(address: object) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return f"unix:{address}"


async def _warm_up(app: web.Application) -> None:
    """Fetch the first token at once; a failure is logged by the manager and retried later."""
    with contextlib.suppress(TokenError):
        await app[TOKENS].get()


def _reload(runner: Runner, reload: Reloader, notifier: Notifier) -> None:
    notifier.notify("RELOADING=1")
    try:
        plan = reconfigure(runner.app, reload())
        _reconfigure_connections(runner, plan.settings)
        runner.connections.configure(plan.settings.limits)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
    except Exception:  # a bug must not leave systemd waiting for READY
        log.exception("reload failed, keeping the running configuration")
    else:
        settings = plan.settings
        setup_logging(settings.log.level, settings.log.format)
        applied = f"applied {', '.join(plan.applied)}" if plan.applied else "no change applied"
        if plan.needs_restart:  # key names only, never values: some are secrets
            log.warning("reloaded %s: %s; these changes take effect only after a restart: %s",
                        settings.source, applied, ", ".join(plan.needs_restart))
        else:
            log.info("reloaded %s: %s", settings.source, applied)
    finally:
        notifier.notify("READY=1")


def _reconfigure_connections(runner: Runner, settings: Settings) -> None:
    """What aiohttp keeps outside the app: each new connection's handler is made from the
    server's keyword arguments (client_idle_timeout, max_header_bytes), and the drain
    on shutdown waits the runner's timeout. Connections already open keep theirs."""
    server = runner.server
    assert server is not None
    server._kwargs.update(handler_args(settings.limits))
    runner._shutdown_timeout = settings.listen.shutdown_timeout
