"""An HTTP/1.1 sink behind the bench tenant's /fotoweb/bench/upload: reads a whole request
body (Content-Length or chunked), throws it away, then answers ``{"received": N}``.

nginx cannot read and discard a large body before answering by itself (``return`` answers
first and discards afterwards), so it proxies the upload here with request buffering off.
Raw asyncio, a reused 1 MiB receive buffer: it costs far less CPU than any contender.

    python bench/sink.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal

BUFFER = 1 << 20


class Sink(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buffer = bytearray(BUFFER)
        self.view = memoryview(self.buffer)
        self.transport: asyncio.Transport | None = None
        self.reset()

    def reset(self) -> None:
        self.state = "head"  # head | body | chunk-size | chunk-data | chunk-crlf | trailer
        self.pending = b""  # an unfinished header or chunk-size line
        self.remaining = 0
        self.received = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        pos = 0
        while pos < nbytes:
            if self.state in ("body", "chunk-data"):
                take = min(self.remaining, nbytes - pos)
                pos += take
                self.remaining -= take
                self.received += take
                if self.remaining == 0:
                    if self.state == "body":
                        self.answer()
                    else:
                        self.state, self.remaining = "chunk-crlf", 2
                continue
            if self.state == "chunk-crlf":
                take = min(self.remaining, nbytes - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "chunk-size"
                continue
            end = bytes(data[pos:]).find(b"\r\n\r\n" if self.state == "head" else b"\r\n")
            if end < 0:
                self.pending += bytes(data[pos:])
                if len(self.pending) > 65536:
                    self.fail()
                return
            line = self.pending + bytes(data[pos:pos + end])
            self.pending = b""
            pos += end + (4 if self.state == "head" else 2)
            if self.state == "head":
                self.start(line)
            elif self.state == "chunk-size":
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size:
                    self.state, self.remaining = "chunk-data", size
                else:
                    self.state = "trailer"
            elif self.state == "trailer" and line == b"":
                self.answer()

    def start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self.close_after = headers.get(b"connection") == b"close"
        if headers.get(b"transfer-encoding", b"") == b"chunked":
            self.state = "chunk-size"
            return
        self.remaining = int(headers.get(b"content-length", b"0") or 0)
        self.state = "body"
        if self.remaining == 0:
            self.answer()

    def answer(self) -> None:
        body = b'{"received": %d}' % self.received
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        close = self.close_after
        self.reset()
        if close:
            self.transport.close()

    def fail(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, args.host, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
