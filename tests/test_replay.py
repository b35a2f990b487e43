"""The body tee: stream once from the client, replay from the copy."""

from __future__ import annotations

import pytest

from fwproxy.exceptions import FormOverride, ReplayUnavailable
from fwproxy.params import FormScanner
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


async def test_a_form_override_stops_the_body_before_its_chunk_and_for_every_attempt() -> None:
    source = Source([b"a=1&x-http-", b"method=DELETE&b=2", b"&c=3"])
    tee = BodyTee(source, max_size=1024, scanner=FormScanner(
        "application/x-www-form-urlencoded", "DELETE /x is denied by access rule 'r'"))
    sent: list[bytes] = []

    async def send() -> None:
        async for chunk in tee.chunks():
            sent.append(chunk)

    with pytest.raises(FormOverride):
        await send()
    assert sent == [b"a=1&x-http-"]  # the chunk naming the override never went
    assert isinstance(tee.fault, FormOverride)
    assert "'x-http-method'" in str(tee.fault)
    assert "access rule 'r'" in str(tee.fault)
    with pytest.raises(FormOverride):  # a replay from the copy sends nothing more either
        await collect(tee)
    assert source.reads == 2
    tee.close()


async def test_a_form_without_an_override_streams_whole() -> None:
    chunks = [b'--b\r\nContent-Disposition: form-data; name="chunk"\r\n\r\n', b"\0" * 9000,
              b"\r\n--b--\r\n"]
    tee = BodyTee(Source(chunks), max_size=0, scanner=FormScanner(
        "multipart/form-data; boundary=b", "denied"))
    assert await collect(tee) == b"".join(chunks)
    assert tee.fault is None
