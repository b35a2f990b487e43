"""`limits` against hostile clients, on `fwproxy run`: what request heads may cost in
memory, and clients that stall an upload or stop reading a download."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import merge, tenant_config
from tests.support.procfs import status_kib as _status_kib

from .conftest import FwproxyProcess, StartProxy, curl, write_config

pytestmark = pytest.mark.e2e

HEAD = b"GET /fotoweb/me HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def rss(proxy: FwproxyProcess) -> int:
    return _status_kib(proxy.pid, "VmRSS") * 1024


async def flood(port: int, line: bytes, lines: int) -> bytes:
    """A request head of `lines` lines; the head of what the proxy answers to it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEAD)
        for _ in range(lines):
            writer.write(line)
            await writer.drain()
        writer.write(b"\r\n")
    except ConnectionError:
        pass
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_near_limit_header_lines_cannot_grow_memory(fwproxy: FwproxyProcess) -> None:
    """The report: 40 connections each sending 127 header lines of 65,000 bytes (each under
    the 64 KiB line limit) took RSS from 41 MB to 688 MB. Each head is now refused at
    max_header_bytes, while it arrives."""
    assert '"demo-app"' in (await curl(fwproxy.url("/fotoweb/me"))).text  # warm
    before = rss(fwproxy)
    line = b"X-Fill: " + b"a" * (65_000 - 10) + b"\r\n"
    answers = await asyncio.gather(*(flood(fwproxy.port, line, 127) for _ in range(40)))
    for answer in answers:  # 431, or closed if the client was still sending
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert any(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)
    grown = fwproxy.peak_rss() - before
    print(f"peak RSS growth under the header flood: {grown >> 20} MiB")
    assert grown < 48 * 1024 * 1024  # 40 heads at ~80 KiB each; it was 650 MB
    assert '"demo-app"' in (await curl(fwproxy.url("/fotoweb/me"))).text  # still serving


async def test_memory_per_connection_at_the_head_limit(fwproxy: FwproxyProcess) -> None:
    """The worst a connection can cost: a head just under what it may send (the default
    max_header_bytes, 64 KiB, plus 16 KiB for the request line), never ended. Measured for
    README's memory ceiling (this cost times limits.max_connections)."""
    assert '"demo-app"' in (await curl(fwproxy.url("/fotoweb/me"))).text  # warm
    count = 200
    line = b"X-Fill: " + b"a" * 8000 + b"\r\n"
    lines = (80 * 1024 - len(HEAD)) // len(line)  # up to the allowance, not past it
    before = rss(fwproxy)
    streams = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", fwproxy.port)
        writer.write(HEAD + line * lines)
        await writer.drain()
        streams.append((reader, writer))
    try:
        # a request after them is answered once the proxy's loop has read what was ready
        # before it: every head, into the parser
        assert '"demo-app"' in (await curl(fwproxy.url("/fotoweb/me"))).text
        per_connection = (rss(fwproxy) - before) // count
        print(f"RSS per connection holding a {lines * len(line) >> 10} KiB head: "
              f"{per_connection >> 10} KiB")
        assert per_connection < 200 * 1024  # README: about 155 KiB
        for reader, _ in streams:  # none refused: they are within the limit
            assert not reader.at_eof()
    finally:
        for _, writer in streams:
            writer.close()


async def test_sighup_applies_the_connection_and_client_limits(
    tenant: TestServer, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy()
    assert proxy.config_path is not None
    # a request answered: the loop has run past installing the signal handlers
    assert '"demo-app"' in (await curl(proxy.url("/fotoweb/me"))).text
    limits = {"max_connections": 1, "client_body_timeout": "1s"}
    write_config(proxy.config_path, merge(tenant_config(tenant), {"limits": limits}))
    os.kill(proxy.pid, signal.SIGHUP)
    await proxy.wait_for_line("reloaded")
    assert "only after a restart" not in proxy.log_text()

    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    idle_writer.write(HEAD + b"\r\n")
    await asyncio.wait_for(idle_reader.readuntil(b"demo-app"), 10)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    upload = b"POST /sim/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nx"
    writer.write(upload)  # and then nothing: owes 99 bytes
    answer = await asyncio.wait_for(reader.read(), 30)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]  # client_body_timeout: 1s
    await asyncio.wait_for(idle_reader.read(), 10)  # max_connections 1: the idle one went
    assert idle_reader.at_eof()
    writer.close()
    idle_writer.close()
