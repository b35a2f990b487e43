"""Latency at a fixed request rate (open loop: wrk has no fixed-rate mode).

Requests start on a fixed schedule (``rate`` per second) whether or not earlier ones have
finished, over a pool of keep-alive connections. Latency is from the moment a request is
started to its last body byte. A warm-up at the same rate opens the pool first and is not
counted. Prints one JSON object.

    python bench/fixed_rate.py --url http://127.0.0.1:8080/fotoweb/bench/1k.json \
        --rate 200 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import ssl
import time

import aiohttp


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def phase(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                rate: float, duration: float) -> dict[str, object]:
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []

    async def one(scheduled: float) -> None:
        started = time.perf_counter()
        lags.append(started - scheduled)
        try:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            errors.append(repr(exc))
            return
        latencies.append(time.perf_counter() - started)

    count = max(1, int(rate * duration))
    interval = 1 / rate
    origin = time.perf_counter() + 0.005
    tasks = []
    for i in range(count):
        scheduled = origin + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    ok = statuses.get(200, 0)
    ms = [v * 1000 for v in latencies]
    return {
        "rate": rate, "duration": duration, "sent": count, "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()}, "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": percentile(ms, 50) if ms else None,
        "p90_ms": percentile(ms, 90) if ms else None,
        "p99_ms": percentile(ms, 99) if ms else None,
        "max_ms": max(ms) if ms else None,
        "start_lag_p99_ms": percentile([v * 1000 for v in lags], 99) if lags else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--header", action="append", default=[], metavar="NAME: VALUE")
    parser.add_argument("--cacert")
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    connector = aiohttp.TCPConnector(limit=args.connections, ssl=context or True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.warmup > 0:
            await phase(session, args.url, headers, args.rate, args.warmup)
        gc.collect()
        gc.disable()  # the client's own collector pauses are not the server's latency
        result = await phase(session, args.url, headers, args.rate, args.duration)
        gc.enable()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
