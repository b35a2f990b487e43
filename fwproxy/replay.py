"""A request body that streams upstream while a copy is kept, so it can be sent again.

The client's body is read once. Every attempt (original, replay, query probe) iterates
`BodyTee.chunks()`: it first re-reads what earlier attempts already pulled from the client
(the copy: memory, spilling to a temp file past `SPILL_AT`), then pulls new bytes from the
client, appending them to the copy. So a 401 that arrives before the body was fully sent
still replays the whole body. Past `max_size` the copy is dropped and the body stays
streamable but no longer replayable.

A body that breaks a rule while it streams (`limits.max_body`; a form field naming a method
override that is denied there, found by its `FormScanner`) fails the read that pulled the
offending chunk, before that chunk goes anywhere: the upload to the tenant is aborted (its
connection closed, so it never has the whole body) and `fault` tells the handler what to
answer (413, 403).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import AsyncIterator
from typing import IO, Protocol

from .exceptions import (
    BodyTooLarge,
    ClientBodyTimeout,
    ClientFault,
    FormOverride,
    ReplayUnavailable,
)
from .params import FormScanner
from .watchdog import Owed, Stall

SPILL_AT = 1024 * 1024
CHUNK = 256 * 1024


class BodySource(Protocol):
    async def readany(self) -> bytes: ...

    def set_exception(self, exc: BaseException) -> None: ...


class BodyTee:
    """Tee the client's body into a bounded replay copy as it streams."""

    def __init__(
        self, source: BodySource, max_size: int, expected: int | None = None, limit: int = 0,
        scanner: FormScanner | None = None,
    ) -> None:
        self._source = source
        self.limit = limit  # limits.max_body; 0: none
        self._scanner = scanner  # a form POST where an override could be denied (guard.py)
        self.fault: ClientFault | None = None  # why the upload was stopped: the answer
        self.client: Owed | None = None  # limits.client_body_timeout: set by the handler
        self.timed_out = False
        self._lock = asyncio.Lock()
        self._pulled = 0  # bytes read from the client so far
        self._eof = False
        self._copy: IO[bytes] | None = None
        keep = max_size > 0 and (expected is None or expected <= max_size)
        if keep:
            self._copy = tempfile.SpooledTemporaryFile(max_size=SPILL_AT)  # noqa: SIM115
        self._max_size = max_size
        self.sent = False  # an attempt has handed the tenant the whole body

    @property
    def replayable(self) -> bool:
        """True while every byte pulled so far is still in the copy."""
        return self._copy is not None

    @property
    def size(self) -> int:
        return self._pulled

    async def chunks(self, stall: Stall | None = None, attempt: int = 0
                     ) -> AsyncIterator[bytes]:
        """One attempt's view of the body, from its first byte. `stall` is told when the
        tenant is the one being waited for: while it takes a chunk, and once the body is
        all sent (the client's own pace does not count)."""
        pos = 0
        self.sent = False
        while data := await self._next(pos):
            pos += len(data)
            if stall is not None:
                stall.waiting(attempt)
            try:
                yield data  # suspended here while aiohttp drains the chunk to the tenant
            finally:
                if stall is not None:
                    stall.idle(attempt)
        self.sent = True
        if stall is not None:
            stall.waiting(attempt)  # for the answer

    async def _next(self, pos: int) -> bytes:
        """The bytes at `pos`: from the copy if an earlier attempt pulled them, else new."""
        while True:
            if self.fault is not None:
                raise self.fault  # no attempt sends more of a body that broke a rule
            if pos < self._pulled:
                return self._read_copy(pos)
            if self._eof:
                return b""
            async with self._lock:
                if pos < self._pulled or self._eof:
                    continue  # another attempt pulled meanwhile; take it from the copy
                client = self.client
                if client is None:
                    data = await self._source.readany()
                else:  # waiting for the client, for its ClientWatch
                    client.since = time.monotonic()
                    try:
                        data = await self._source.readany()
                    finally:
                        client.since = math.inf
                if not data:
                    self._eof = True
                    return b""
                scanner = self._scanner
                if scanner is not None and scanner.feed(data):  # before it goes anywhere
                    self.fault = FormOverride(scanner.refusal)
                    raise self.fault
                self._keep(data)
                if self.limit and self._pulled > self.limit:
                    # abort the upload: a clean end would truncate it
                    self.fault = BodyTooLarge(
                        f"the body exceeds limits.max_body ({self.limit} bytes)")
                    raise self.fault
                return data

    def stalled(self, timeout: float) -> None:
        """From the ClientWatch: the client has owed the next bytes for `timeout` seconds;
        the read waiting for them (and so the upload) fails."""
        self.timed_out = True
        self._source.set_exception(ClientBodyTimeout(
            f"the client sent no byte of its request body for {timeout:g}s"))

    def close(self) -> None:
        if self._copy is not None:
            self._copy.close()
            self._copy = None

    def _keep(self, data: bytes) -> None:
        self._pulled += len(data)
        if self._copy is None:
            return
        if self._pulled > self._max_size:
            self.close()
            return
        self._copy.seek(0, 2)
        self._copy.write(data)

    def _read_copy(self, pos: int) -> bytes:
        if self._copy is None:
            raise ReplayUnavailable("the request body was too large to keep for a replay")
        self._copy.seek(pos)
        return self._copy.read(min(CHUNK, self._pulled - pos))
