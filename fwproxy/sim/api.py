"""The simulated tenant's FotoWeb API resources: the API descriptor, ``/fotoweb/me``, and
the archives.

Theory of operation: every resource here sits behind the bearer check of app.py, so a
handler only answers. A resource reads the tenant's data from `TenantState` (state.py);
fixed catalogue data (`ARCHIVES`) lives here until the simulator keeps archives and assets
in its state. A new API area (assets, renditions, uploads) gets a module of its own with
an ``add_routes(app)``, wired in app.py.
"""

from __future__ import annotations

from aiohttp import web

from .state import TENANT

ARCHIVES = [
    {"id": "5000", "name": "Photos", "href": "/fotoweb/archives/5000/"},
    {"id": "5001", "name": "Logos", "href": "/fotoweb/archives/5001/"},
]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/fotoweb/", api_descriptor)
    app.router.add_get("/fotoweb/me", me)
    app.router.add_get("/fotoweb/archives/", archives)
    app.router.add_get("/fotoweb/archives/{id}/", archive)


async def api_descriptor(request: web.Request) -> web.Response:
    return web.json_response({
        "server": "fwproxy simulated tenant",
        "archives": "/fotoweb/archives/",
        "me": "/fotoweb/me",
    }, content_type="application/vnd.fotoware.full-api-descriptor+json")


async def me(request: web.Request) -> web.Response:
    """The user the token acts for, or the application itself (client credentials)."""
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


async def archives(request: web.Request) -> web.Response:
    return web.json_response({"data": ARCHIVES})


async def archive(request: web.Request) -> web.Response:
    for item in ARCHIVES:
        if item["id"] == request.match_info["id"]:
            return web.json_response(item)
    raise web.HTTPNotFound()
