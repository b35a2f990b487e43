"""Sealing: what fwproxy keeps in shared storage (Redis) is encrypted and authenticated.

Theory of operation
-------------------
Someone who can read Redis (a backup, a replica, a too-wide ACL) must not be able to use
what is in it, and someone who can write it must not be able to make fwproxy use a token of
their choosing. So every secret record is sealed with AES-256-GCM (`cryptography`'s
``AESGCM``: never a home-made construction)::

    key    = HKDF-SHA256(ikm = state.encryption_key_file's text, else the client secret,
                         salt = "fwproxy state v1", info = the fleet's scope)   32 bytes
    sealed = FORMAT (1 byte) || nonce (12 random bytes) || AES-GCM(key, nonce, plaintext, aad)
    aad    = the record's name (its Redis key) || version (8 bytes, big-endian)

The associated data binds a sealed value to where it lives and to its version: a record
copied under another key, or a newer version's number put in front of an older value (to
make an old refresh token win a "newest wins" race), fails to open. `open_sealed` raises
`SealBroken` (in exceptions.py) for any of: wrong format, wrong key, tampered bytes; the
caller treats such a record as absent and says so once.

Pure: no I/O, no clock; the nonce's randomness is injected for tests.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .exceptions import SealBroken

FORMAT = 1
NONCE_BYTES = 12
KEY_BYTES = 32
SALT = b"fwproxy state v1"
_VERSION = struct.Struct(">Q")


@dataclass(frozen=True)
class SealingKey:
    """A derived AES-256 key. Never shows itself in a repr."""

    secret: bytes = field(repr=False)


def derive_key(material: str, scope: str) -> SealingKey:
    """The fleet's key from the encryption key file's text (or the client secret), for one
    scope (tenant + client + grant): two fleets sharing a Redis, or one secret used for two
    tenants, never open each other's records."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=SALT,
                info=b"fwproxy sealing " + scope.encode())
    return SealingKey(hkdf.derive(material.encode()))


def _aad(name: str, version: int) -> bytes:
    return name.encode() + b"\x00" + _VERSION.pack(version)


def seal(key: SealingKey, plaintext: bytes, name: str, version: int,
         rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """`plaintext` encrypted for the record `name` at `version` (0 <= version < 2**64)."""
    nonce = rng(NONCE_BYTES)
    return bytes([FORMAT]) + nonce + AESGCM(key.secret).encrypt(
        nonce, plaintext, _aad(name, version))


def open_sealed(key: SealingKey, sealed: bytes, name: str, version: int) -> bytes:
    """The plaintext of a `seal`ed value, or `SealBroken` (the reason, never the bytes)."""
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != FORMAT:
        raise SealBroken("not a sealed record of this version of fwproxy")
    if not 0 <= version < 2**64:  # read from Redis: anything may be there
        raise SealBroken("the record's version is out of range")
    nonce, body = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
    try:
        return AESGCM(key.secret).decrypt(nonce, body, _aad(name, version))
    except InvalidTag:
        raise SealBroken("cannot be opened with this fleet's key (another key, another "
                         "record's value, or changed)") from None
