"""10,000 idle keep-alive connections to `fwproxy run`: it keeps serving, and lets them go."""

from __future__ import annotations

import asyncio
import os
import resource

import pytest

from tests.conftest import wait_until

from .conftest import FwproxyProcess, curl

pytestmark = pytest.mark.e2e
CONNECTIONS = 10_000


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_ten_thousand_idle_keepalive_connections(fwproxy: FwproxyProcess) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CONNECTIONS + 1000:
        pytest.skip(f"this machine allows {hard} open files; the test needs {CONNECTIONS}+")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = fds_of(fwproxy.pid)
    request = b"GET /_fwproxy/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    gate = asyncio.Semaphore(500)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", fwproxy.port)
            writer.write(request)  # one request, then the connection idles, kept alive
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            streams.append((reader, writer))

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(CONNECTIONS))), 300)
        assert fds_of(fwproxy.pid) >= before + CONNECTIONS  # all of them held open
        rss_kib = fwproxy.peak_rss() >> 10
        result = await curl(fwproxy.url("/fotoweb/me"))  # and still serving
        assert '"demo-app"' in result.text
    finally:
        for _, writer in streams:
            writer.close()
    await wait_until(lambda: fds_of(fwproxy.pid) <= before + 8, "the fds to be released",
                     timeout=60)
    print(f"peak RSS with {CONNECTIONS} connections: {rss_kib >> 10} MiB")
    assert rss_kib < 512 * 1024  # ~10k connections fit in well under 512 MiB
