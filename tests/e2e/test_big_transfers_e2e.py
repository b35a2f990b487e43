"""500 MB each way through the proxy with bounded memory: bodies stream, they are not held.

The peak resident set (VmHWM) of the fwproxy process is read after the transfer: a proxy
that buffered the body would be far above the bound. Sizes and SHA-256 digests are checked
at both ends, so a truncated or altered body fails too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fwproxy.sim import PATTERN, TenantState

from .conftest import CURL, FwproxyProcess, StartProxy, clean_env, curl

pytestmark = pytest.mark.e2e

SIZE = 500 * 1024 * 1024
MAX_RSS = 150 * 1024 * 1024
BLOCK = 1024 * 1024
TRANSFER_TIMEOUT = 600.0  # a hang guard for 500 MB on a slow machine, not a timing assertion


def pattern_sha256(size: int) -> str:
    """Digest of what /sim/bytes/<size> sends: PATTERN repeated, cut at `size`."""
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(PATTERN))
    for _ in range(whole):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


def write_random_file(path: Path, size: int) -> str:
    """`size` real bytes (random, not sparse) written in blocks; returns their SHA-256."""
    digest = hashlib.sha256()
    seed = os.urandom(BLOCK)
    with path.open("wb") as out:
        for index in range(size // BLOCK):
            block = index.to_bytes(8, "big") + seed[8:]  # every block differs
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Piped:
    producer_status: int
    producer_stderr: bytes
    consumer_status: int
    consumer_stdout: bytes
    consumer_stderr: bytes


async def run_piped(producer: list[str], consumer: list[str]) -> Piped:
    """`producer | consumer`, both as subprocesses: the bytes never pass through this process
    (whose event loop is busy serving the tenant)."""
    read_end, write_end = os.pipe()
    started: list[asyncio.subprocess.Process] = []
    try:
        started.append(await asyncio.create_subprocess_exec(
            *consumer, stdin=read_end, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=clean_env(),
        ))
        started.append(await asyncio.create_subprocess_exec(
            *producer, stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
            stderr=asyncio.subprocess.PIPE, env=clean_env(),
        ))
    except BaseException:
        for process in started:
            kill(process)
        raise
    finally:
        os.close(read_end)
        os.close(write_end)
    reader, writer = started
    try:
        (_, producer_err), (consumer_out, consumer_err) = await asyncio.wait_for(
            asyncio.gather(writer.communicate(), reader.communicate()), TRANSFER_TIMEOUT
        )
    except BaseException:
        for process in started:
            kill(process)
        raise
    assert writer.returncode is not None
    assert reader.returncode is not None
    return Piped(writer.returncode, producer_err, reader.returncode, consumer_out, consumer_err)


def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


async def test_500mb_download_streams_with_bounded_memory(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    expected = asyncio.ensure_future(asyncio.to_thread(pattern_sha256, SIZE))
    piped = await run_piped(
        [CURL, "-q", "--silent", "--show-error", "-w", "%{stderr}%{http_code} %{size_download}",
         fwproxy.url(f"/sim/bytes/{SIZE}")],
        ["sha256sum"],
    )
    assert piped.producer_status == 0, piped.producer_stderr
    assert piped.producer_stderr.decode().split() == ["200", str(SIZE)]
    assert piped.consumer_status == 0, piped.consumer_stderr
    assert piped.consumer_stdout.split()[0].decode() == await expected
    peak = fwproxy.peak_rss()
    print(f"fwproxy VmHWM after a {SIZE >> 20} MiB download: {peak / 2**20:.1f} MiB")
    assert peak < MAX_RSS
    await fwproxy.stop()  # the whole log, up to EOF
    access = [line for line in fwproxy.lines if f'"GET /sim/bytes/{SIZE}"' in line]
    assert len(access) == 1
    assert f" 200 in=0 out={SIZE} " in access[0]


async def test_500mb_upload_streams_with_bounded_memory(
    fwproxy: FwproxyProcess, tenant_state: TenantState, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    try:
        expected = await asyncio.to_thread(write_random_file, big, SIZE)
        # -T: a PUT with Content-Length, read from the file as it is sent. The size is far
        # beyond auth.replay_max_body (64 MiB), so no replay copy may be kept at all.
        result = await curl(
            "-T", str(big), "-H", "Content-Type: application/octet-stream",
            "-w", "\n%{http_code} %{size_upload}",
            fwproxy.url("/sim/upload"),
            timeout=TRANSFER_TIMEOUT,
        )
    finally:
        big.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr
    body, _, tail = result.text.rpartition("\n")
    assert tail.split() == ["200", str(SIZE)]
    assert json.loads(body) == {"body_size": SIZE, "body_sha256": expected}
    assert tenant_state.upload_sizes == [SIZE]
    peak = fwproxy.peak_rss()
    print(f"fwproxy VmHWM after a {SIZE >> 20} MiB upload: {peak / 2**20:.1f} MiB")
    assert peak < MAX_RSS


GENERATOR = (
    "import sys\n"
    "from fwproxy.sim import PATTERN\n"
    "block = PATTERN * 16\n"
    f"for _ in range({SIZE} // len(block)):\n"
    "    sys.stdout.buffer.write(block)\n"
)


async def test_500mb_chunked_upload_from_stdin_streams_with_bounded_memory(
    start_proxy: StartProxy, tenant_state: TenantState
) -> None:
    # `curl -T -` sends stdin chunked, without a Content-Length: the proxy keeps a replay
    # copy until the body passes replay_max_body, then must drop it and stream on. The limit
    # is raised past MAX_RSS so that a copy held in memory instead of spilled to a temporary
    # file would show in the peak.
    proxy = await start_proxy({"auth": {"replay_max_body": "256MiB"}})
    expected = asyncio.ensure_future(asyncio.to_thread(pattern_sha256, SIZE))
    piped = await run_piped(
        [sys.executable, "-c", GENERATOR],
        [CURL, "-q", "--silent", "--show-error", "-T", "-",
         "-H", "Content-Type: application/octet-stream",
         "-w", "\n%{http_code} %{size_upload}", proxy.url("/sim/upload")],
    )
    assert piped.producer_status == 0, piped.producer_stderr
    assert piped.consumer_status == 0, piped.consumer_stderr
    body, _, tail = piped.consumer_stdout.decode().rpartition("\n")
    assert tail.split()[0] == "200"  # size_upload counts the chunk framing too
    assert json.loads(body) == {"body_size": SIZE, "body_sha256": await expected}
    assert tenant_state.upload_sizes == [SIZE]
    peak = proxy.peak_rss()
    print(f"fwproxy VmHWM after a {SIZE >> 20} MiB chunked upload: {peak / 2**20:.1f} MiB")
    assert peak < MAX_RSS
