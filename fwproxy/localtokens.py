"""Local tokens: bearer tokens fwproxy hands out itself and verifies at admission.

Theory of operation
-------------------
A client that cannot send ``X-Fwproxy-Key`` (a tool that only speaks OAuth) gets a local
token from fwproxy's own token endpoint and sends it as ``Authorization: Bearer``. Admission
verifies it like an API key and replaces it with fwproxy's real token; it never reaches the
tenant. A local token is stateless: everything needed to verify it is in it, signed::

    fwpl_ BASE64URL(payload) "." BASE64URL(HMAC-SHA256(signing key, "fwpl_" + payload))

    payload (big-endian, exactly this long, nothing after it):
      version   1 byte   = 1
      kid       1 byte   which signing key (a list may verify: rotation)
      issued    8 bytes  wall-clock seconds (Unix time)
      expires   8 bytes  wall-clock seconds, issued < expires <= issued + MAX_LIFETIME
      nonce    16 bytes  random: two tokens issued in the same second differ
      binding  16 bytes  the key's fingerprint (`fingerprint`), or OPEN without API keys
      length    1 byte   of the name, 1..255
      name     ASCII     the API key's name (the client ID), printable (RFC 6749 A.1)

Base64url is unpadded and canonical (the unused low bits of the last character are zero),
so one token has exactly one spelling and any changed character is refused.

* Rights come from the live key, never from the token: `verify` looks the name up (the
  `lookup` passed in) and takes ``read_only`` from what it finds. A key removed, or added
  again under the same name (a new key, so a new fingerprint), revokes every token bound to
  the old one. The fingerprint is a hash of the stored hash: the key is 256 random bits, so
  nothing about it can be learnt from the token, which is readable by whoever holds it.
* Times are wall-clock seconds, not the monotonic clock: a token must outlive the process
  that issued it (a restart, a reload), be accepted by every worker and, later, every
  instance of a fleet, and the monotonic clock's zero is per boot and per machine. The
  wall clock may step; the damage is bounded: a token is never valid for more than
  MAX_LIFETIME after it was issued, and one issued more than MAX_SKEW in the verifier's
  future (a peer's clock ahead, or ours set back) is refused.
* The signing key is 32 random bytes shared by all workers: `file_signing_keys` keeps it in a
  private file, created once (the first worker to publish it wins, the others read it back).
  A fleet (``state.backend: redis``) shares no file: `derived_signing_keys` gives every
  instance the same key from the fleet's key material (HKDF, its own label), so a token
  from any instance verifies at every other with no Redis call, Redis up or not.
  `SigningKeys` is the small interface both implement.
* Verification does only constant-time comparisons (`hmac.compare_digest`) on secrets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from .exceptions import ConfigError, MissingFile
from .private import read_private

if TYPE_CHECKING:
    from .keys import ApiKey

PREFIX = "fwpl_"
VERSION = 1
MAX_LIFETIME = 86400  # seconds; local_tokens.lifetime is 1 s to a day
MIN_LIFETIME = 1
MAX_SKEW = 60  # seconds a token's issue time may lie in the verifier's future
NONCE_BYTES = 16
FINGERPRINT_BYTES = 16
OPEN = bytes(FINGERPRINT_BYTES)  # the binding of a token issued without API keys
KEY_BYTES = 32
MAX_NAME = 255
_HEAD = struct.Struct(f">BBQQ{NONCE_BYTES}s{FINGERPRINT_BYTES}sB")
_MAC_CHARS = 43  # unpadded base64url of 32 bytes
MAX_TOKEN = len(PREFIX) + -(-(_HEAD.size + MAX_NAME) * 4 // 3) + 1 + _MAC_CHARS
_SHAPE = re.compile(r"fwpl_([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")  # 43: _MAC_CHARS
_NAME = re.compile(rb"[\x20-\x7e]{1,255}")  # VSCHAR, RFC 6749 appendix A.1
_FINGERPRINT_LABEL = b"fwproxy local token binding v1\x00"
DERIVED_KID = 2  # a fleet's derived key (a file's first key is kid 1)
_DERIVE_SALT = b"fwproxy local tokens v1"  # not sealing.py's: the two keys are unrelated

Reason = Literal["malformed", "bad_signature", "expired", "not_yet_valid", "revoked"]


@dataclass(frozen=True)
class SigningKey:
    kid: int  # 0..255, the byte that names it in a token
    secret: bytes = field(repr=False)


class SigningKeys(Protocol):
    """Where signing keys come from: one to sign with, any of several to verify."""

    def current(self) -> SigningKey: ...

    def find(self, kid: int) -> SigningKey | None: ...


@dataclass(frozen=True)
class StaticKeys:
    """A fixed list of keys; the first signs. What `file_signing_keys` loads, and tests use."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys or len({k.kid for k in self.keys}) != len(self.keys):
            raise ValueError("signing keys: at least one, kids distinct")
        if any(not 0 <= k.kid <= 255 or len(k.secret) < KEY_BYTES for k in self.keys):
            raise ValueError("signing keys: kid 0..255, at least 32 bytes")

    def current(self) -> SigningKey:
        return self.keys[0]

    def find(self, kid: int) -> SigningKey | None:
        for key in self.keys:
            if key.kid == kid:
                return key
        return None


@dataclass(frozen=True)
class Holder:
    """Who a token is for, as the live key store sees it now."""

    name: str
    fingerprint: bytes = field(repr=False)
    read_only: bool = False
    key: ApiKey | None = None  # the API key, when API keys are configured

    @classmethod
    def of_key(cls, key: ApiKey) -> Holder:
        return cls(key.name, fingerprint(key.digest), key.read_only, key)

    @classmethod
    def open(cls, client_id: str) -> Holder:
        """Without API keys: anyone may have a token, with full rights."""
        return cls(client_id, OPEN)


def fingerprint(stored_digest: bytes) -> bytes:
    """Binds a token to one key (the SHA-256 the keys file stores), not just its name."""
    return hashlib.sha256(_FINGERPRINT_LABEL + stored_digest).digest()[:FINGERPRINT_BYTES]


@dataclass(frozen=True)
class Claims:
    holder: Holder  # the live holder: its rights apply
    issued_at: int
    expires_at: int
    kid: int

    @property
    def read_only(self) -> bool:
        return self.holder.read_only


_DETAILS: dict[str, str] = {
    "malformed": "the local token is malformed",
    "bad_signature": "the local token was not issued by this proxy",
    "expired": "the local token has expired",
    "not_yet_valid": "the local token was issued in the future",
    "revoked": "the local token was revoked (its API key was removed or replaced)",
}


@dataclass(frozen=True)
class Refused:
    reason: Reason

    @property
    def detail(self) -> str:
        return _DETAILS[self.reason]


def looks_local(value: str) -> bool:
    """A bearer value fwproxy issued (or one forged to look so): never forwarded."""
    return value.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Strict: `text` is already base64url characters; it must be the canonical spelling."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None


def issue(signing: SigningKey, holder: Holder, now: float, lifetime: float,
          rng: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A new token for `holder`, valid from `now` (wall clock) for `lifetime` seconds."""
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"lifetime must be {MIN_LIFETIME} to {MAX_LIFETIME} seconds")
    name = holder.name.encode("ascii") if holder.name.isascii() else b""
    if not _NAME.fullmatch(name) or len(holder.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError("a token holder's name is 1 to 255 printable ASCII characters")
    nonce = rng(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError("rng returned the wrong number of bytes")
    issued = int(now)
    payload = _HEAD.pack(VERSION, signing.kid, issued, issued + int(lifetime), nonce,
                         holder.fingerprint, len(name)) + name
    return PREFIX + _b64(payload) + "." + _b64(_mac(signing, payload))


def _mac(signing: SigningKey, payload: bytes) -> bytes:
    return hmac.new(signing.secret, PREFIX.encode() + payload, hashlib.sha256).digest()


def verify(keys: SigningKeys, token: str, now: float,
           lookup: Callable[[str], Holder | None]) -> Claims | Refused:
    """The claims of a token this proxy issued and that still holds, or why it does not.
    `lookup(name)` is the live key store: the holder named so now, or None."""
    vouched = signed(keys, token)
    return vouched if isinstance(vouched, Refused) else holds(vouched, now, lookup)


class Signed(NamedTuple):
    """What a token's signature vouches for: the same for the same keys and token at any
    time, so a verifier may keep it (tokengate.py `Gate`) and ask only `holds` again."""

    name: str
    issued: int
    expires: int
    kid: int
    bound: bytes


def signed(keys: SigningKeys, token: str) -> Signed | Refused:
    """`verify`'s first part: the shape, the signature, and what only a bad issue breaks."""
    if len(token) > MAX_TOKEN:
        return Refused("malformed")
    shape = _SHAPE.fullmatch(token)
    if shape is None:
        return Refused("malformed")
    payload, mac = _unb64(shape.group(1)), _unb64(shape.group(2))
    if payload is None or mac is None or not _HEAD.size < len(payload) <= _HEAD.size + MAX_NAME:
        return Refused("malformed")
    version, kid, issued, expires, _, bound, length = _HEAD.unpack_from(payload)
    if version != VERSION:
        return Refused("malformed")
    signing = keys.find(kid)
    if signing is None or not hmac.compare_digest(_mac(signing, payload), mac):
        return Refused("bad_signature")
    # Signed by us: what follows only fails if this proxy issued something it should not.
    name = payload[_HEAD.size:]
    if (length != len(name) or not _NAME.fullmatch(name)
            or not issued < expires <= issued + MAX_LIFETIME):
        return Refused("malformed")
    return Signed(name.decode("ascii"), issued, expires, kid, bound)


def holds(vouched: Signed, now: float, lookup: Callable[[str], Holder | None]
          ) -> Claims | Refused:
    """`verify`'s second part: the time and the live key store, asked every time."""
    if now >= vouched.expires:
        return Refused("expired")
    if vouched.issued > now + MAX_SKEW:
        return Refused("not_yet_valid")
    holder = lookup(vouched.name)
    if holder is None or not hmac.compare_digest(holder.fingerprint, vouched.bound):
        return Refused("revoked")
    return Claims(holder, vouched.issued, vouched.expires, vouched.kid)


# -- the signing key of a fleet ---------------------------------------------------------------

def derived_signing_keys(material: str, context: str) -> StaticKeys:
    """The signing key every instance of a fleet derives alike: HKDF-SHA256 of the fleet's
    key material (state.encryption_key_file's text, else the client secret) with a salt of
    its own and `context` (key prefix and scope: another fleet or tenant gets another key).
    Pure; the same inputs give the same key on every instance, at every start and reload."""
    # (cryptography: imported only for a fleet, which alone derives its key)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_DERIVE_SALT,
                info=b"fwproxy local token signing " + context.encode())
    return StaticKeys((SigningKey(DERIVED_KID, hkdf.derive(material.encode())),))


# -- the signing key in a file ------------------------------------------------------------

def format_keys(keys: Sequence[SigningKey]) -> str:
    lines = ["# fwproxy local token signing keys: KID HEX; the first signs. Keep private."]
    return "\n".join(lines + [f"{k.kid} {k.secret.hex()}" for k in keys]) + "\n"


def parse_keys(text: str, source: str, setting: str) -> StaticKeys:
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        try:
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError
            key = SigningKey(int(parts[0]), bytes.fromhex(parts[1]))
            if key.kid > 255 or len(key.secret) != KEY_BYTES:
                raise ValueError
        except ValueError:
            raise ConfigError(setting, f"{source} line {number}: expected KID (0-255) and "
                                       f"{KEY_BYTES * 2} hex digits") from None
        keys.append(key)
    try:
        return StaticKeys(tuple(keys))
    except ValueError:
        raise ConfigError(setting, f"{source}: no key, or a KID used twice") from None


def publish(path: Path, content: str) -> bool:
    """Create `path` with `content`, 0600, only if it does not exist: True if we did.

    The file is written and synced under a temporary name, then hard-linked into place:
    link(2) fails if the name exists (like O_CREAT|O_EXCL), and unlike an O_EXCL create
    followed by a write, nobody can ever read the file half written. Two workers racing:
    one links, the other gets EEXIST and reads the winner's key."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        Path(temp).unlink(missing_ok=True)


def file_signing_keys(path: Path, setting: str = "local_tokens",
                      rng: Callable[[int], bytes] = secrets.token_bytes) -> StaticKeys:
    """The signing keys in a private file (owner-only, no symbolic link: checked as
    `config.read_private` checks every secret file), created with one fresh key if missing.
    Its directory must exist: a typo in a path should not quietly make directories."""
    try:
        read = read_private(path, setting)
    except MissingFile:
        if not path.parent.is_dir():
            raise ConfigError(setting, f"cannot create {path}: directory "
                                       f"{path.parent} does not exist") from None
        try:
            publish(path, format_keys([SigningKey(1, rng(KEY_BYTES))]))
        except OSError as exc:
            raise ConfigError(setting, f"cannot create {path}: {exc.strerror}") from None
        read = read_private(path, setting)  # ours or the winner's: the one all use
    return parse_keys(read.text, str(path), setting)
