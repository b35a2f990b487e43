"""(d) The floor: the least an aiohttp pass-through proxy can do. One ClientSession (pooled,
keep-alive), bodies streamed both ways, hop-by-hop headers dropped, the token added. No
token handling, no guard, no logging, no metrics.

    python bench/bare_proxy.py --port 8081 --upstream https://127.0.0.1:8443 --ca ca.crt

--uvloop runs it on uvloop: (g), the same floor on the loop fwproxy uses when it can.
"""

import argparse
import asyncio
import ssl

import aiohttp
from aiohttp import web
from yarl import URL

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
       "upgrade", "proxy-authorization", "proxy-authenticate", "host"}


def build(upstream: str, ca: str, token: str) -> web.Application:
    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        context = ssl.create_default_context(cafile=ca)
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=context),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        yield
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Authorization"] = f"Bearer {token}"
        async with app["session"].request(
            request.method, URL(upstream + request.raw_path, encoded=True), headers=headers,
            data=request.content if request.body_exists else None, allow_redirects=False,
        ) as up:
            out = web.StreamResponse(status=up.status, reason=up.reason, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(build(args.upstream, args.ca, args.token), host="127.0.0.1", port=args.port,
                access_log=None, print=None)
