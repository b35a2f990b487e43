"""The simulated tenant as one aiohttp application: the middlewares and the route tables.

Theory of operation: a request first meets the tenant's limits (limits.py: refused
requests go no further), then is recorded (`TenantState.seen`, all but the token
endpoint), then authenticated: everything except the OAuth endpoints (oauth.PUBLIC_PATHS)
wants a valid bearer token, in the Authorization header or the ``access_token`` query
parameter ("Using application access tokens for OAuth 2.0 authorization"); with
`strip_authorization` the header is ignored, as behind an NGINX that drops it. Then the
route of its area answers: oauth.py, api.py, hooks.py, each adding its own routes.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from . import api, hooks, oauth
from .limits import Limiter, Limits
from .limits import middleware as limiting
from .state import TENANT, SeenRequest, TenantState


def create_tenant_app(state: TenantState | None = None, limits: Limits | None = None
                      ) -> web.Application:
    """The simulated tenant as an aiohttp application; `limits`: switch its limits on."""
    app = web.Application(middlewares=[limiting(_limiter), _record, _authenticate])
    app[TENANT] = state or TenantState()
    if limits is not None:
        app[TENANT].limits.switch(limits)
    oauth.add_routes(app)
    api.add_routes(app)
    hooks.add_routes(app)
    return app


def _limiter(app: web.Application) -> Limiter:
    return app[TENANT].limits


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path != oauth.TOKEN_PATH:
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
    if request.path in oauth.PUBLIC_PATHS:
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
