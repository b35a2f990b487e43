"""The two systemd protocols fwproxy speaks, in a few lines each, without a dependency.

- sd_notify: datagrams like ``READY=1`` to the ``$NOTIFY_SOCKET`` unix socket (a path, or
  an abstract name starting with ``@``), plus ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``.
- sd_listen_fds: sockets passed as fds 3.. when ``$LISTEN_PID`` is our pid (socket units).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping

LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages; does nothing when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if watched else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, message: str) -> bool:
        """Send one message; False when there is nobody to tell or sending failed."""
        if not self._address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.connect(self._address)
                sock.sendall(message.encode())
            except OSError:
                return False
        return True

    async def watchdog(self) -> None:
        """Feed the watchdog until cancelled (only while the event loop is responsive)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


def listen_fds(environ: Mapping[str, str] | None = None) -> list[socket.socket]:
    """Listening sockets handed over by systemd (socket activation), else []."""
    environ = os.environ if environ is None else environ
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(environ.get("LISTEN_FDS", "0") or 0)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        with contextlib.suppress(OSError):
            sock.setblocking(False)
        sockets.append(sock)
    return sockets
