"""A request body that streams upstream while a copy is kept, so it can be sent again.

The client's body is read once. Every attempt (original, replay, query probe) iterates
`BodyTee.chunks()`: it first re-reads what earlier attempts already pulled from the client
(the copy: memory, spilling to a temp file past `SPILL_AT`), then pulls new bytes from the
client, appending them to the copy. So a 401 that arrives before the body was fully sent
still replays the whole body. Past `max_size` the copy is dropped and the body stays
streamable but no longer replayable.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Protocol

SPILL_AT = 1024 * 1024
CHUNK = 256 * 1024


class BodySource(Protocol):
    async def readany(self) -> bytes: ...


class ReplayUnavailable(Exception):
    """The copy was dropped (body larger than the replay limit)."""


class BodyTee:
    """Tee the client's body into a bounded replay copy as it streams."""

    def __init__(self, source: BodySource, max_size: int, expected: int | None = None) -> None:
        self._source = source
        self._lock = asyncio.Lock()
        self._pulled = 0  # bytes read from the client so far
        self._eof = False
        self._copy: IO[bytes] | None = None
        keep = max_size > 0 and (expected is None or expected <= max_size)
        if keep:
            self._copy = tempfile.SpooledTemporaryFile(max_size=SPILL_AT)  # noqa: SIM115
        self._max_size = max_size

    @property
    def replayable(self) -> bool:
        """True while every byte pulled so far is still in the copy."""
        return self._copy is not None

    @property
    def size(self) -> int:
        return self._pulled

    async def chunks(self) -> AsyncIterator[bytes]:
        """One attempt's view of the body, from its first byte."""
        pos = 0
        while True:
            if pos < self._pulled:
                data = self._read_copy(pos)
                pos += len(data)
                yield data
                continue
            if self._eof:
                return
            async with self._lock:
                if pos < self._pulled or self._eof:
                    continue  # another attempt pulled meanwhile; take it from the copy
                data = await self._source.readany()
                if not data:
                    self._eof = True
                    return
                self._keep(data)
            pos += len(data)
            yield data

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
