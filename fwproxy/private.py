"""Private files: one home for every file that holds a secret.

Reading: `open_private` opens a file once and checks what it opened (owner, mode, file
type, no symbolic link, directories up to ``/`` nobody else may change), so nothing can be
swapped in between; `read_private` and `read_secret_file` read from that one fd. Writing:
`write_private` replaces a file atomically, 0600. `Secret` is a string that never shows
itself. Used by config loading (the client secret, the CA file, systemd's credential),
keys.py (the API keys file), store.py (the token store) and the workers' shared token.
"""

from __future__ import annotations

import errno
import hmac
import os
import pwd
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import ConfigError, MissingFile


class Secret:
    """A string that never shows itself in repr, str or logs; `reveal()` gets it out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)



def owner_ok(st_uid: int, my_uid: int) -> bool:
    """A secret file must belong to the user fwproxy runs as, or to root."""
    return st_uid in (my_uid, 0)


# The permission bits a file may not have (see `file_problem`).
PRIVATE = 0o077  # a secret: nobody else may read or write it
CREDENTIAL = 0o007  # a systemd credential: its group bits are the mask of the ACL by which
#                     systemd lets the service user read root's file; others' bits count
TRUSTED = 0o022  # a CA bundle: anyone may read it, nobody else may write it


def file_problem(info: os.stat_result, my_uid: int, path: str, me: str,
                 forbidden: int = PRIVATE) -> str | None:
    """What is wrong with an open file (its fstat), or None: not a regular file, owned by
    someone other than us or root, or with a permission bit in `forbidden`."""
    if not stat.S_ISREG(info.st_mode):
        return (f"{path} is not a regular file ({_kind(info.st_mode)}); point the key at "
                "a file")
    if not owner_ok(info.st_uid, my_uid):
        return (f"{path} is owned by uid {info.st_uid}, not by {me} (uid {my_uid}, whom "
                f"fwproxy runs as) or root; run: chown {me} {path}")
    if info.st_mode & forbidden and forbidden & 0o044:  # a secret
        return (f"permissions {stat.S_IMODE(info.st_mode):04o} for {path} are too open "
                f"(group or others may use it); run: chmod 600 {path}")
    if info.st_mode & forbidden:
        return (f"{path} can be written by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run: chmod go-w {path}")
    return None


def directory_problem(info: os.stat_result, my_uid: int, path: str, me: str, name: str
                      ) -> str | None:
    """What is wrong with the directory a secret file `name` is in, or None: whoever else
    owns it or may write in it could put another file in its place. A sticky directory of
    root's (or ours), such as /tmp, lets nobody else replace our file."""
    if not owner_ok(info.st_uid, my_uid):
        return (f"the directory {path} is owned by uid {info.st_uid}, not by {me} or root, "
                f"who could replace {name}; move the file, or run: chown {me} {path}")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        return (f"the directory {path} can be written by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}), who could replace {name}; run: "
                f"chmod go-w {path} (or move the file to a private directory)")
    return None


def path_problem(directories: list[tuple[str, os.stat_result]], my_uid: int, me: str,
                 name: str) -> str | None:
    """`directory_problem` of the first of `directories` (every directory from ``/`` down to
    the one `name` is in) that has one, or None. Whoever may change an ancestor can rename
    the directory below it and put another in its place, so each is held to the same rule
    (as ssh does for its keys)."""
    for path, info in directories:
        problem = directory_problem(info, my_uid, path, me, name)
        if problem is not None:
            return problem
    return None


def _open_directory(directory: Path, key: str, my_uid: int, name: str) -> int:
    """Open `directory` component by component from ``/`` (its real path; O_NOFOLLOW for
    each, so nothing can be swapped in between) and check every one (`path_problem`)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_DIRECTORY
    real = os.path.realpath(directory)
    fd = os.open("/", flags)
    try:
        current = "/"
        seen = [(current, os.fstat(fd))]
        for part in [p for p in real.split("/") if p]:
            inner = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
            current = os.path.join(current, part)
            seen.append((current, os.fstat(fd)))
        problem = path_problem(seen, my_uid, _user_name(my_uid), name)
        if problem is not None:
            raise ConfigError(key, problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a file"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name (a container's)
        return str(uid)


def open_private(path: Path, key: str, forbidden: int = PRIVATE) -> int:
    """Open a secret file for reading, once, and check what was opened (the fd, so nothing
    can be swapped in between): no symbolic link (O_NOFOLLOW), a regular file (O_NONBLOCK:
    a FIFO cannot hang us), owned by us or root, no access for group or others, in a
    directory that only we or root may change. Returns the fd; errors name `key` and say
    how to fix the file. Every directory above it is held to the same rule."""
    my_uid = os.geteuid()
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
    directory = path.parent
    try:
        dir_fd = _open_directory(directory, key, my_uid, path.name)
    except FileNotFoundError:
        raise MissingFile(key, f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot open the directory of {path}: {exc.strerror}") from None
    try:
        try:
            fd = os.open(path.name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            raise MissingFile(key, f"no such file: {path}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(
                    key, f"{path} is a symbolic link; it must not be one (it could be "
                         f"pointed elsewhere): set {key} to the file itself, "
                         f"{os.path.realpath(path)}") from None
            raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        problem = file_problem(os.fstat(fd), my_uid, str(path), _user_name(my_uid),
                               forbidden)
    except BaseException:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        raise ConfigError(key, problem)
    return fd


@dataclass(frozen=True)
class PrivateFile:
    text: str = field(repr=False)
    info: os.stat_result  # of the file read, e.g. its st_mtime_ns


def read_private(path: Path, key: str, forbidden: int = PRIVATE) -> PrivateFile:
    """A secret file's UTF-8 text, read from the one fd `open_private` checked."""
    fd = open_private(path, key, forbidden)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        data = file.read()
    try:
        return PrivateFile(data.decode("utf-8"), info)
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"{path} is not UTF-8 (byte {exc.start})") from None


def read_ca_file(path: Path, key: str = "tenant.ca_file") -> str:
    """``tenant.ca_file``'s PEM text. Anyone may read a CA bundle, but whoever may change it
    can vouch for any server, and so read the client secret and the tokens: it is checked
    like a secret, except that it may be readable, and a symbolic link (as bundles under
    /etc/ssl/certs are) is resolved and its target checked."""
    return read_private(Path(os.path.realpath(path)), key, TRUSTED).text


def ensure_private(path: Path, key: str) -> os.stat_result:
    """Refuse a secret file `open_private` would refuse; its stat otherwise."""
    fd = open_private(path, key)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def read_secret_file(path: Path, key: str, forbidden: int = PRIVATE) -> str:
    """The secret in a file, checked by `open_private`, without surrounding whitespace."""
    text = read_private(path, key, forbidden).text.strip()
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


def write_private(path: Path, text: str) -> None:
    """Replace (or create) `path` with `text` atomically, readable by the owner only: a
    temporary file (created 0600) in the same directory, fsynced, renamed over `path`, and
    the directory fsynced, so a crash leaves the old file or the new one, never half."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
