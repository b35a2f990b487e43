"""A simulated FotoWeb tenant: the token endpoint of seed 002 and a few API resources.

`fwproxy demo` runs it on loopback behind the proxy; the tests run the very same app. It
checks what a real tenant checks (form encoding, client credentials, bearer tokens in the
header or the ``access_token`` query parameter) and can be told to misbehave: strip the
Authorization header like a badly configured NGINX (seed 001), revoke tokens, refuse them.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from .demo_login import (
    DEMO_NATIVE_CLIENT,
    DEMO_PASSWORD,
    DEMO_REDIRECT,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    LOGIN_PATHS,
    InteractiveApp,
    PendingCode,
    add_login_routes,
    default_apps,
    exchange_code,
    oauth_error,
    refresh,
)

TOKEN_PATH = "/fotoweb/oauth2/token"
DEMO_PORT, DEMO_TENANT_PORT = 8080, 8081  # `fwproxy demo --port N --tenant-port N`
DEMO_CLIENT_ID = "fwproxy-demo"
DEMO_CLIENT_SECRET = "demo-secret-not-for-production"
PATTERN = bytes(range(256)) * 256  # 64 KiB of known bytes for downloads


def demo_config_text(port: int, tenant_port: int, keys_file: Path | None = None) -> str:
    """The configuration of `fwproxy demo`'s proxy as a YAML file, for trying the other
    commands against the demo (`--write-config PATH`): the secret is inline, so the file
    is written 0600. `keys_file`: an `access.api_keys_file` for `fwproxy key`."""
    lines = [
        "# Written by `fwproxy demo`: its proxy and simulated tenant, for trying the other",
        "# commands while the demo runs, e.g. fwproxy check --config THIS-FILE",
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        "tenant:",
        f"  url: http://127.0.0.1:{tenant_port}",
        "  allow_insecure_http: true   # the demo tenant speaks plain http on loopback",
        "auth:",
        f"  client_id: {DEMO_CLIENT_ID}",
        f"  client_secret: {DEMO_CLIENT_SECRET}   # the demo's own; keep this file 0600",
    ]
    if keys_file is not None:
        lines += [
            "access:",
            f"  api_keys_file: {keys_file}   # for `fwproxy key`; the running demo asks no key",
        ]
    return "\n".join(lines) + "\n"


def demo_banner(port: int, tenant_port: int, token_lifetime: int, written: Path | None
                ) -> str:
    """What `fwproxy demo` prints before it serves."""
    base = f"http://127.0.0.1:{port}"
    tenant = f"http://127.0.0.1:{tenant_port}"
    if written is not None:
        config = (f"The other commands, against the demo (config written to {written}):\n"
                  f"  fwproxy check --config {written}\n"
                  f"  fwproxy token --config {written}\n"
                  f"  fwproxy health --config {written}\n"
                  f"  fwproxy key add NAME --config {written}\n")
    else:
        config = ("The other commands, against the demo: this config (fwproxy demo "
                  "--write-config PATH writes it, 0600):\n\n"
                  + "".join(f"  {line}\n" for line in demo_config_text(port, tenant_port)
                            .splitlines()[2:]))
    return (
        f"\nfwproxy demo: simulated tenant on {tenant} "
        f"(tokens live {token_lifetime}s), proxy on {base}\n\n"
        "Try, in another terminal (no token needed):\n"
        f"  curl -s {base}/fotoweb/me\n"
        f"  curl -s {base}/fotoweb/archives/\n"
        f"  curl -s -X POST --data-binary 'hello' {base}/sim/echo\n"
        f"  curl -s {tenant}/fotoweb/me   # direct: 401, no token\n\n"
        f"{config}\n"
        f"The demo tenant: client credentials {DEMO_CLIENT_ID} / {DEMO_CLIENT_SECRET}; "
        f"user login (fwproxy login) as {DEMO_USER} / {DEMO_PASSWORD} through the "
        f"authorization_code application {DEMO_WEB_CLIENT} / {DEMO_WEB_SECRET} (or the "
        f"public {DEMO_NATIVE_CLIENT}), redirect URI {DEMO_REDIRECT}.\n\n"
        "Watch the log below renew the token, requests or not. Ctrl-C stops.\n"
    )


@dataclass
class SeenRequest:
    method: str
    path_qs: str
    headers: dict[str, list[str]]
    body_size: int


@dataclass
class TenantState:
    """The simulated tenant's knobs and its record of what it saw."""

    clients: dict[str, str] = field(
        default_factory=lambda: {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}
    )
    token_lifetime: float = 3600
    strip_authorization: bool = False  # play the NGINX of seed 001
    token_endpoint_fault: tuple[int, str, bytes] | None = None  # (status, type, body)
    token_endpoint_gate: asyncio.Event | None = None  # while set and not open: a slow endpoint
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    token_requests: int = 0
    token_times: list[float] = field(default_factory=list)  # monotonic, one per request
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[dict[str, str]] = field(default_factory=list)
    seen: deque[SeenRequest] = field(default_factory=lambda: deque(maxlen=1000))
    upload_sizes: list[int] = field(default_factory=list)
    # the interactive side (seed 003): see demo_login.py
    users: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {DEMO_USER: (DEMO_PASSWORD, "Alice Liddell")}
    )
    apps: dict[str, InteractiveApp] = field(default_factory=default_apps)
    token_users: dict[str, str] = field(default_factory=dict)  # access token -> user
    refresh_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> client, user
    rotate_refresh_tokens: bool = True
    codes: dict[str, PendingCode] = field(default_factory=dict)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # login in progress

    def issue(self, user: str | None = None) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.token_lifetime
        if user is not None:
            self.token_users[token] = user
        return token, self.token_lifetime

    def revoke_all(self) -> None:
        self.tokens.clear()

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    def valid(self, token: str | None) -> bool:
        expiry = self.tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry


TENANT = web.AppKey("tenant", TenantState)


def create_tenant_app(state: TenantState | None = None) -> web.Application:
    """The simulated tenant as an aiohttp application."""
    app = web.Application(middlewares=[_record, _authenticate])
    app[TENANT] = state or TenantState()
    app.router.add_post(TOKEN_PATH, token_endpoint)
    add_login_routes(app, app[TENANT])
    app.router.add_get("/fotoweb/", api_descriptor)
    app.router.add_get("/fotoweb/me", me)
    app.router.add_get("/fotoweb/archives/", archives)
    app.router.add_get("/fotoweb/archives/{id}/", archive)
    app.router.add_route("*", "/sim/echo", echo)
    app.router.add_get("/sim/bytes/{n}", download)
    app.router.add_route("*", "/sim/upload", upload)
    app.router.add_get("/sim/gzip", gzipped)
    app.router.add_get("/sim/redirect", redirect)
    app.router.add_get("/sim/forbidden", forbidden)
    return app


async def token_endpoint(request: web.Request) -> web.Response:
    """POST /fotoweb/oauth2/token as seed 002 describes it."""
    state = request.app[TENANT]
    if state.token_endpoint_gate is not None:
        await state.token_endpoint_gate.wait()
    state.token_requests += 1
    state.token_times.append(time.monotonic())
    state.token_headers.append(dict(request.headers))
    if state.token_endpoint_fault is not None:
        status, content_type, body = state.token_endpoint_fault
        return web.Response(status=status, body=body, content_type=content_type)
    if request.content_type != "application/x-www-form-urlencoded":
        return oauth_error(400, "invalid_request", "expected application/x-www-form-urlencoded")
    form = {key: str(value) for key, value in (await request.post()).items()}
    state.token_forms.append(form)
    grant = form.get("grant_type")
    if grant == "authorization_code":
        return exchange_code(state, form)
    if grant == "refresh_token":
        return refresh(state, form)
    if grant != "client_credentials":
        return oauth_error(400, "unsupported_grant_type", f"unknown grant_type {grant!r}")
    expected = state.clients.get(form.get("client_id", ""))
    if expected is None or not hmac.compare_digest(
        expected.encode(), form.get("client_secret", "").encode()
    ):
        return oauth_error(401, "invalid_client", "Client authentication failed")
    token, lifetime = state.issue()
    return web.json_response(
        {"access_token": token, "token_type": "bearer", "expires_in": int(lifetime)},
        headers={"Cache-Control": "no-store"},
    )


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path != TOKEN_PATH:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        request.app[TENANT].seen.append(
            SeenRequest(request.method, request.raw_path, headers, request.content_length or 0)
        )
    return await handler(request)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every API resource wants a valid bearer token, in the header or the query."""
    if request.path == TOKEN_PATH or request.path in LOGIN_PATHS:
        return await handler(request)
    state = request.app[TENANT]
    token = request.query.get("access_token")
    header = "" if state.strip_authorization else request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    if not state.valid(token):
        return web.json_response(
            {"error": "invalid_token", "error_description": "missing, expired or revoked token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return await handler(request)


async def api_descriptor(request: web.Request) -> web.Response:
    return web.json_response({
        "server": "fwproxy simulated tenant",
        "archives": "/fotoweb/archives/",
        "me": "/fotoweb/me",
    }, content_type="application/vnd.fotoware.full-api-descriptor+json")


async def me(request: web.Request) -> web.Response:
    state = request.app[TENANT]
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else (
        request.query.get("access_token", "")
    )
    user = state.token_users.get(token)
    if user is not None:
        return web.json_response({"userName": user, "fullName": state.users[user][1],
                                  "isGuest": False})
    return web.json_response({
        "userName": "demo-app",
        "fullName": "fwproxy demo application (client credentials)",
        "isGuest": False,
    })


ARCHIVES = [
    {"id": "5000", "name": "Photos", "href": "/fotoweb/archives/5000/"},
    {"id": "5001", "name": "Logos", "href": "/fotoweb/archives/5001/"},
]


async def archives(request: web.Request) -> web.Response:
    return web.json_response({"data": ARCHIVES})


async def archive(request: web.Request) -> web.Response:
    for item in ARCHIVES:
        if item["id"] == request.match_info["id"]:
            return web.json_response(item)
    raise web.HTTPNotFound()


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


GZIP_PAYLOAD = json.dumps({"compressed": True, "data": ["x" * 64] * 32}).encode()


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
