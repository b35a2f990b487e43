"""API keys: clients prove themselves with ``X-Fwproxy-Key``; the file holds only hashes.

File format, one key a line (``#`` starts a comment)::

    NAME sha256:HEX [read_only]

Keys are 256 random bits, so a plain SHA-256 is as good as a slow hash and costs nothing
per request. Every stored hash is compared, in constant time, whatever the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .exceptions import ConfigError, KeyExists, MissingFile, MissingKeysFile
from .private import read_private, write_private

HEADER = "X-Fwproxy-Key"
PREFIX = "fwp_"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
RELOAD_EVERY = 2.0  # seconds between checks of the file's modification time


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    read_only: bool = False

    def __repr__(self) -> str:
        return f"ApiKey(name={self.name!r}, read_only={self.read_only})"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_keys(text: str, source: str) -> list[ApiKey]:
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        where = f"{source} line {number}"
        if len(parts) not in (2, 3) or not parts[1].startswith("sha256:"):
            raise ConfigError("access.api_keys_file", f"{where}: expected NAME sha256:HEX")
        if len(parts) == 3 and parts[2] != "read_only":
            raise ConfigError("access.api_keys_file", f"{where}: unknown flag {parts[2]!r}")
        try:
            value = bytes.fromhex(parts[1][7:])
        except ValueError:
            value = b""
        if len(value) != 32:
            raise ConfigError("access.api_keys_file", f"{where}: not a SHA-256 hex digest")
        keys.append(ApiKey(parts[0], value, read_only=len(parts) == 3))
    return keys


def format_keys(keys: list[ApiKey]) -> str:
    lines = ["# fwproxy API keys: NAME sha256:HEX [read_only]. Manage with `fwproxy key`."]
    lines += [f"{k.name} sha256:{k.digest.hex()}" + " read_only" * k.read_only for k in keys]
    return "\n".join(lines) + "\n"


def load_keys(path: Path) -> list[ApiKey]:
    return _read_keys(path)[0]


def _read_keys(path: Path) -> tuple[list[ApiKey], int]:
    """The keys and the file's modification time, from one checked open (private.py)."""
    try:
        read = read_private(path, "access.api_keys_file")
    except MissingFile:
        raise MissingKeysFile(path) from None
    return parse_keys(read.text, str(path)), read.info.st_mtime_ns


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Atomically replace (or create) the file, 0600. Its directory must exist: a typo in
    the path should not quietly make directories."""
    if not path.parent.is_dir():
        raise ConfigError("access.api_keys_file",
                          f"cannot create {path}: directory {path.parent} does not exist")
    write_private(path, format_keys(keys))


def add_key(path: Path, name: str, read_only: bool = False) -> str:
    """Create a key named `name`, and the file with the first key; returns the key (the
    only time it is ever shown). `KeyExists` if the name is taken."""
    if not _NAME.match(name):
        raise ConfigError("NAME", "use letters, digits and . _ @ - (at most 64)")
    try:
        keys = load_keys(path)
    except MissingKeysFile:
        keys = []
    if any(k.name == name for k in keys):
        raise KeyExists(name)
    key = PREFIX + secrets.token_urlsafe(32)
    write_keys(path, [*keys, ApiKey(name, digest(key), read_only)])
    return key


def remove_key(path: Path, name: str) -> bool:
    try:
        keys = load_keys(path)
    except MissingKeysFile:
        return False
    kept = [k for k in keys if k.name != name]
    if len(kept) == len(keys):
        return False
    write_keys(path, kept)
    return True


class KeyStore:
    """The keys file, re-read when it changes (so `fwproxy key add` needs no restart)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._keys, self._mtime = _read_keys(path)
        self._checked = time.monotonic()

    def find(self, presented: str | None) -> ApiKey | None:
        """The key `presented` belongs to, or None."""
        self._maybe_reload()
        if not presented:
            return None
        wanted = digest(presented)
        found = None
        for key in self._keys:  # no early exit: the time taken says nothing
            if hmac.compare_digest(key.digest, wanted):
                found = key
        return found

    def by_name(self, name: str) -> ApiKey | None:
        """The key named `name` now (a local token names its key: localtokens.py)."""
        self._maybe_reload()
        for key in self._keys:
            if key.name == name:
                return key
        return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY:
            return
        self._checked = now
        try:
            if self._path.stat().st_mtime_ns != self._mtime:
                self._keys, self._mtime = _read_keys(self._path)
        except (OSError, ConfigError):
            pass  # keep the keys we have; a broken edit must not open or close the door
