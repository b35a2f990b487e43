"""The token store of user-context mode: refresh token, access token, expiry, user.

One JSON file, mode 0600 in a 0700 directory, replaced atomically (write a temp file,
fsync, rename, fsync the directory), so a crash never leaves half a refresh token. A lock
file serializes refreshes across processes (`fwproxy run`, `fwproxy token`, workers): a
rotated refresh token is never lost to a race.

`SessionStore` is what `oauth.RefreshTokenGrant` needs of a store: `hold()` the lock, then
`load` and `save` under it. `FileSessions` fills it in with this file; with
``state.backend: redis`` fleetsession.py's `FleetSessions` does, for a whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from .exceptions import ConfigError, MissingFile, TokenStoreBusy
from .private import read_private, write_private

LOCK_TIMEOUT = 45.0  # longer than one token request may take (oauth.TOKEN_TIMEOUT)


@dataclass(frozen=True)
class StoredSession:
    """What `fwproxy login` leaves behind. Secrets never show in a repr."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # wall clock (epoch seconds): it must survive restarts
    user: str | None = None
    lifetime: float | None = None  # seconds the access token was issued for, when known


def session_json(session: StoredSession) -> str:
    """The stored form of a session (the file's text, the fleet record's value)."""
    return json.dumps(asdict(session))


def session_from_json(text: str | bytes) -> StoredSession:
    """The session `session_json` made; ValueError when it is damaged."""
    try:
        data = json.loads(text)
        return StoredSession(
            refresh_token=str(data["refresh_token"]),
            access_token=data.get("access_token"),
            expires_at=data.get("expires_at"),
            user=data.get("user"),
            lifetime=_number(data.get("lifetime")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(type(exc).__name__) from None


class SessionHold(Protocol):
    """The session while its store's lock is held."""

    async def load(self) -> StoredSession | None:
        """The session, or None (never logged in, logged out). ConfigError: damaged."""

    async def save(self, session: StoredSession) -> StoredSession | None:
        """Store `session` (a rotation) before it is used; returns the session to use:
        `session`, or what the store holds when that is newer (fleetsession.py)."""


class SessionStore(Protocol):
    """Where the user session lives: a file (`FileSessions`) or the fleet's Redis."""

    def peek(self) -> StoredSession | None:
        """The session as known now, without waiting (to start with)."""

    def mark(self) -> object:
        """A mark of the store's present state, for `changed` (after a refusal)."""

    def changed(self, mark: object) -> bool:
        """The store changed since `mark` (a new `fwproxy login` may have fixed it)."""

    def hold(self) -> AbstractAsyncContextManager[SessionHold]:
        """The store's lock (across processes or the fleet), for one refresh."""


class FileSessions:
    """`SessionStore` on a `TokenStore` file."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return repr(self.store)

    def peek(self) -> StoredSession | None:
        return self.store.load()

    def mark(self) -> object:
        return self.store.mtime()

    def changed(self, mark: object) -> bool:
        return self.store.mtime() != mark

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[SessionHold]:
        async with self.store.locked():
            yield self

    async def load(self) -> StoredSession | None:
        return self.store.load()

    async def save(self, session: StoredSession) -> StoredSession:
        self.store.save(session)
        return session


class TokenStore:
    def __init__(self, path: Path, key: str = "auth.token_store") -> None:
        self.path = path
        self.key = key  # named in errors

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def load(self) -> StoredSession | None:
        """The stored session, or None when there is none (never logged in, logged out)."""
        try:
            text = read_private(self.path, self.key).text
        except MissingFile:
            return None
        try:
            return session_from_json(text)
        except ValueError:
            raise ConfigError(self.key, f"{self.path} is damaged; run fwproxy login") from None

    def save(self, session: StoredSession) -> None:
        """Replace the file atomically, 0600 in a 0700 directory."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        write_private(self.path, session_json(session))

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def logout(self) -> bool:
        """Remove the session and, with it, the lock file: nothing is left behind. Both under
        the lock, so no refresh is half done. (A process already waiting on the removed lock
        file then holds a lock a newcomer does not see; it finds no session to refresh, so
        this matters only for a `fwproxy login` run at the same moment.)"""
        if not self.path.parent.is_dir():
            return False  # never logged in here: create nothing
        with self.locked_sync():
            removed = self.remove()
            self.lock_path.unlink(missing_ok=True)
        return removed

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.asynccontextmanager
    async def locked(self, timeout: float = LOCK_TIMEOUT) -> AsyncIterator[None]:
        """Hold the store's lock file (across processes) without blocking the event loop;
        give up with a `TokenError` after `timeout` (a stuck process must not stall us)."""
        fd = self._open_lock()
        try:
            deadline = time.monotonic() + timeout
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise TokenStoreBusy(
                        f"{self.lock_path} is held by another process for over {timeout:g}s")
                await asyncio.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def locked_sync(self) -> Iterator[None]:
        """The same lock, for the command line (`fwproxy logout`)."""
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)


def _number(value: object) -> float | None:
    """A positive number from the file, else None (older files have no lifetime)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
