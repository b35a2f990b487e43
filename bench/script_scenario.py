"""A script making N API calls, two ways, against a tenant 20 ms away (bench/rtt_relay.py).

approach1: what a script does without fwproxy when it follows Fotoware's "approach 1" (a
    token per call): for every call, a fresh HTTP session (so a fresh TCP and TLS
    connection), POST the token endpoint, then GET the resource with that token. This is
    the kind version: token and API call share the call's connection (``requests.post`` then
    ``requests.get`` without a Session would open two).
fwproxy: the same N calls as plain HTTP to fwproxy on loopback, also a fresh session per
    call; fwproxy keeps its token and a pooled keep-alive TLS connection to the tenant.

Calls run one after another, as in a script. Prints one JSON object.

    python bench/script_scenario.py --tenant https://127.0.0.1:9443 --cacert ca.crt \
        --proxy http://127.0.0.1:8080 --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time

import aiohttp

PATH = "/fotoweb/bench/1k.json"


async def approach1(tenant: str, context: ssl.SSLContext, calls: int) -> float:
    form = {"grant_type": "client_credentials", "client_id": "bench", "client_secret": "bench"}
    started = time.perf_counter()
    for _ in range(calls):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
            async with s.post(f"{tenant}/fotoweb/oauth2/token", data=form,
                              headers={"Accept": "application/json"}) as resp:
                resp.raise_for_status()
                token = (await resp.json(content_type=None))["access_token"]
            async with s.get(tenant + PATH, headers={"Authorization": f"Bearer {token}"}) as r:
                r.raise_for_status()
                await r.read()
    return time.perf_counter() - started


async def through_proxy(proxy: str, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        async with aiohttp.ClientSession() as s, s.get(proxy + PATH) as resp:
            resp.raise_for_status()
            await resp.read()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True, help="https://host:port (the relay)")
    parser.add_argument("--cacert", required=True)
    parser.add_argument("--proxy", required=True, help="http://host:port (fwproxy)")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.cacert)
    direct = await approach1(args.tenant, context, args.calls)
    proxied = await through_proxy(args.proxy, args.calls)
    print(json.dumps({
        "calls": args.calls,
        "approach1_s": direct,
        "fwproxy_s": proxied,
        "approach1_ms_per_call": direct / args.calls * 1000,
        "fwproxy_ms_per_call": proxied / args.calls * 1000,
        "speedup": direct / proxied,
    }))


if __name__ == "__main__":
    asyncio.run(main())
