"""A TCP relay that adds latency: ``--delay-ms`` each way (10 ms each way = 20 ms RTT).

The kernel's netem is not available here, so this stands in for a distant tenant. Every
chunk is delivered ``delay`` after it arrived, in order, in both directions. A new
connection's first bytes to the server wait one more round trip, which is what the TCP
handshake costs a real client (on loopback the relay accepts at once). Bandwidth is not
limited; backpressure is kept by pausing the reader while much data is in flight.

    python bench/rtt_relay.py --port 9443 --target 127.0.0.1:8443 --delay-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

MAX_IN_FLIGHT = 4 << 20


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
               first_extra: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    in_flight = 0
    drained = asyncio.Event()
    drained.set()

    async def deliver() -> None:
        nonlocal in_flight
        while True:
            when, data = await queue.get()
            wait = when - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            in_flight -= len(data)
            if in_flight < MAX_IN_FLIGHT:
                drained.set()

    sender = loop.create_task(deliver())
    last = 0.0
    extra = first_extra
    try:
        while True:
            data = await reader.read(256 * 1024)
            when = max(time.monotonic() + delay + extra, last + 1e-6)
            extra = 0.0
            last = when
            await queue.put((when, data))
            if not data:
                break
            in_flight += len(data)
            if in_flight >= MAX_IN_FLIGHT:
                drained.clear()
                await drained.wait()
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()
        raise


async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                host: str, port: int, delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    up = asyncio.ensure_future(pump(client_reader, server_writer, delay, 2 * delay))
    down = asyncio.ensure_future(pump(server_reader, client_writer, delay, 0.0))
    try:
        await asyncio.gather(up, down, return_exceptions=True)
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one way")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    delay = args.delay_ms / 1000
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(
        lambda r, w: relay(r, w, host, int(port), delay), args.host, args.port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
