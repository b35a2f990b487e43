"""Idle keep-alive connections: open N connections to a proxy, one request on each (read
to its end), then keep them all open and idle, and say when they are (one JSON line on
stdout); the caller then reads the proxy's memory. Raw asyncio streams: the client is not
what is measured. Closes everything on stdin EOF or SIGTERM.

    python bench/idle.py --url http://127.0.0.1:8080/fotoweb/bench/1k.json --connections 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit


async def one(host: str, port: int, request: bytes, gate: asyncio.Semaphore
              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if status != "200":
            writer.close()
            return f"HTTP {status}"
        return reader, writer


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=100, help="connections being opened at once")
    o = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < o.connections + 100 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (o.connections + 100, hard))
    parts = urlsplit(o.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    gate = asyncio.Semaphore(o.parallel)
    started = time.monotonic()
    results = await asyncio.gather(*(one(host, port, request, gate)
                                     for _ in range(o.connections)))
    open_ = [r for r in results if not isinstance(r, str)]
    errors = [r for r in results if isinstance(r, str)]
    print(json.dumps({"open": len(open_), "failed": len(errors),
                      "first_error": errors[0] if errors else None,
                      "seconds": time.monotonic() - started}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the caller closes stdin
    for _, writer in open_:
        writer.close()
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
