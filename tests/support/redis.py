"""A real `redis-server` (the Debian package) for the fleet's tests: on a free loopback port
or a Unix socket in a temporary directory, no persistence (a restart comes back empty, as a
Redis without persistence does), optionally with a password, an ACL user or TLS; stopped
by its PID. `stop` and `start` again keep the address: "Redis went away and came back"."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 20.0  # for a hang, not a timing assertion


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class RedisServer:
    def __init__(self, directory: Path, *, unix: bool = False, password: str | None = None,
                 user: tuple[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        """`user`: (name, password) of an ACL user allowed only what fwproxy needs, the
        default user then disabled; `tls`: (certificate chain, key) PEM files."""
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.unix = unix
        self.password = password
        self.user = user
        self.tls = tls
        self.port = 0 if unix else free_port()
        self.socket_path = directory / "redis.sock"
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The state.redis_url for this server (no password: that goes elsewhere)."""
        if self.unix:
            return f"unix://{self.socket_path}"
        user = f"{self.user[0]}@" if self.user else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}127.0.0.1:{self.port}/0"

    def _arguments(self) -> list[str]:
        args = [redis_server_path() or "redis-server", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--bind", "127.0.0.1",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.directory / "redis.log")]
        if self.unix:
            args += ["--port", "0", "--unixsocket", str(self.socket_path),
                     "--unixsocketperm", "700"]
        elif self.tls:
            chain, key = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(chain),
                     "--tls-key-file", str(key), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.user is not None:
            name, secret = self.user
            acl = self.directory / "users.acl"
            acl.write_text(f"user default off\nuser {name} on >{secret} ~* &* "
                           "+@all -@dangerous +info\n")
            args += ["--aclfile", str(acl)]
        return args

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._arguments(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                log = self.directory / "redis.log"
                said = log.read_text() if log.exists() else ""
                raise RuntimeError(f"redis-server exited: {said}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def _answers(self) -> bool:
        """Whether the server accepts connections (its first reply is not awaited: TLS)."""
        try:
            if self.unix:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(self.socket_path))
            else:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
        except OSError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by its PID (SIGKILL after a while: `kill -9` for a crash)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def everything_in(client: Any) -> bytes:
    """Every key name and value (strings, hashes, lists, sets, sorted sets) a redis-py
    asyncio client (raw bytes) reads in its database, concatenated: to search for what
    must not be readable there (a token, a secret)."""
    out = bytearray()
    async for key in client.scan_iter(count=1000):
        out += key
        kind = await client.type(key)
        if kind == b"string":
            out += await client.get(key) or b""
        elif kind == b"hash":
            for name, value in (await client.hgetall(key)).items():
                out += name + value
        elif kind == b"list":
            out += b"".join(await client.lrange(key, 0, -1))
        elif kind == b"set":
            out += b"".join(await client.smembers(key))
        elif kind == b"zset":
            out += b"".join(await client.zrange(key, 0, -1))
    return bytes(out)
