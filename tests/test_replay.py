"""The body tee: stream once from the client, replay from the copy."""

from __future__ import annotations

import pytest

from fwproxy.exceptions import ReplayUnavailable
from fwproxy.replay import SPILL_AT, BodyTee


class Source:
    """A client body arriving in the given chunks; counts how often it is read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)
        self.reads = 0

    async def readany(self) -> bytes:
        self.reads += 1
        return self._chunks.pop(0) if self._chunks else b""

    def set_exception(self, exc: BaseException) -> None:
        raise AssertionError(f"not expected here: {exc}")


async def collect(tee: BodyTee, limit: int | None = None) -> bytes:
    out = b""
    async for chunk in tee.chunks():
        out += chunk
        if limit is not None and len(out) >= limit:
            break
    return out


async def test_streams_once_and_replays_identically() -> None:
    chunks = [b"alpha-", b"beta-", b"gamma"]
    source = Source(chunks)
    tee = BodyTee(source, max_size=1024)
    assert await collect(tee) == b"alpha-beta-gamma"
    reads = source.reads
    assert tee.replayable
    assert await collect(tee) == b"alpha-beta-gamma"
    assert source.reads == reads  # the replay came from the copy, not the client
    tee.close()


async def test_replay_after_a_partial_first_attempt_gets_the_whole_body() -> None:
    tee = BodyTee(Source([b"1" * 10, b"2" * 10, b"3" * 10]), max_size=1024)
    assert await collect(tee, limit=10) == b"1" * 10  # the tenant answered 401 early
    assert await collect(tee) == b"1" * 10 + b"2" * 10 + b"3" * 10
    tee.close()


async def test_large_copy_spills_to_a_temp_file() -> None:
    chunk = b"s" * (256 * 1024)
    count = SPILL_AT // len(chunk) + 2
    tee = BodyTee(Source([chunk] * count), max_size=64 * 2**20)
    assert len(await collect(tee)) == len(chunk) * count
    assert tee._copy is not None
    assert tee._copy._rolled  # type: ignore[attr-defined]
    assert await collect(tee) == chunk * count
    tee.close()


async def test_over_the_limit_still_streams_but_is_not_replayable() -> None:
    tee = BodyTee(Source([b"a" * 600, b"b" * 600]), max_size=1000)
    assert await collect(tee) == b"a" * 600 + b"b" * 600
    assert not tee.replayable
    with pytest.raises(ReplayUnavailable):
        await collect(tee)


async def test_declared_length_over_the_limit_keeps_no_copy() -> None:
    tee = BodyTee(Source([b"x" * 10]), max_size=5, expected=10)
    assert not tee.replayable
    assert await collect(tee) == b"x" * 10


async def test_limit_zero_disables_the_copy() -> None:
    tee = BodyTee(Source([b"x"]), max_size=0)
    assert not tee.replayable
    assert await collect(tee) == b"x"
    assert tee.size == 1
