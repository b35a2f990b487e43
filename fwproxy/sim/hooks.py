"""The simulated tenant's test hooks under ``/sim/``: resources no FotoWeb has, for
driving the proxy from tests, the benchmarks and a person with curl.

Theory of operation: each hook answers one question about the transport between the proxy
and the tenant. ``/sim/echo`` says what arrived (method, raw target, headers, body size and
digest); ``/sim/bytes/{n}`` streams ``n`` bytes of `PATTERN` with a Content-Length;
``/sim/upload`` consumes a body as it streams and records its size; ``/sim/gzip`` answers
`GZIP_PAYLOAD` compressed; ``/sim/redirect`` points at the tenant's own absolute URL (or
``?elsewhere=``); ``/sim/forbidden`` is a 403; ``/sim/limits`` reads and switches the
tenant's request limits (limits.py). Like the API, they want a bearer token.
"""

from __future__ import annotations

import gzip
import hashlib
import json

from aiohttp import web

from . import limits
from .state import TENANT

PATTERN = bytes(range(256)) * 256  # 64 KiB of known bytes for downloads
GZIP_PAYLOAD = json.dumps({"compressed": True, "data": ["x" * 64] * 32}).encode()


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", "/sim/echo", echo)
    app.router.add_get("/sim/bytes/{n}", download)
    app.router.add_route("*", "/sim/upload", upload)
    app.router.add_get("/sim/gzip", gzipped)
    app.router.add_get("/sim/redirect", redirect)
    app.router.add_get("/sim/forbidden", forbidden)
    app.router.add_route("*", limits.HOOK_PATH, limits.hook(lambda app: app[TENANT].limits))


async def echo(request: web.Request) -> web.Response:
    """What the tenant received: method, raw target, headers, body size and digest."""
    body = await request.read()
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    return web.json_response({
        "method": request.method,
        "path_qs": request.raw_path,
        "headers": headers,
        "body_size": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    })


async def download(request: web.Request) -> web.StreamResponse:
    """``n`` bytes of a known pattern, streamed with a Content-Length."""
    total = int(request.match_info["n"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = total
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    left = total
    while left > 0:
        chunk = PATTERN[: min(left, len(PATTERN))]
        await resp.write(chunk)
        left -= len(chunk)
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    """Consume the body as it streams; answer its size and digest."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    request.app[TENANT].upload_sizes.append(size)
    return web.json_response({"body_size": size, "body_sha256": digest.hexdigest()})


async def gzipped(request: web.Request) -> web.Response:
    body = gzip.compress(GZIP_PAYLOAD, mtime=0)
    return web.Response(
        body=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def redirect(request: web.Request) -> web.Response:
    """302 to the tenant's own absolute URL (the proxy must point it at itself)."""
    target = str(request.url.origin().with_path("/fotoweb/me"))
    location = request.query.get("elsewhere", target)
    return web.Response(status=302, headers={"Location": location, "Content-Location": target})


async def forbidden(request: web.Request) -> web.Response:
    return web.json_response({"error": "forbidden"}, status=403)
