"""The simulated tenant's FotoWeb API entry points: the API descriptors, ``/fotoweb/me``,
the archive lists and an archive; and the wiring of the other API areas.

Theory of operation: every resource sits behind the bearer check of app.py, so a handler
only negotiates (media.py), reads the catalogue (catalog.py, held by `TenantState`) and
answers. ``GET /fotoweb/me`` is the full API descriptor: who the token acts for (a user of
the authorization_code flow or the application itself), where the archives are
(``archives``), the search service and its URI template (``services.search``,
``searchURL``), the rendition service and the upload service. ``/fotoweb/archives/`` and
``/fotoweb/me/archives/`` list the archives; with ``?q=`` the former is the cross-archive
search: the archives with hits, each with its ``data`` pointing at its own search result.
``/fotoweb/archives/{id}`` redirects to ``…/{id}/``, the archive (a collection: ``data``,
a ``searchURL`` template ``{?q}``, its ``metadataEditor``); asked for an asset list, or
with ``?q=``, that URL is the archive's first page of assets (assets.py). `add_routes`
also wires assets.py, renditions.py and uploads.py; `accepts_preview_token` is the
middleware's one question about preview URLs (they also take their asset's
``previewToken`` as bearer).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from . import assets, renditions, uploads
from .catalog import FIELDS, Archive, Catalog
from .media import (
    API_DESCRIPTOR,
    ASSET_LIST,
    COLLECTION_INFO,
    COLLECTION_LIST,
    FULL_API_DESCRIPTOR,
    answer,
    choose,
)
from .state import TENANT

SEARCH_URL = "/fotoweb/archives/{?q}"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/fotoweb/", api_descriptor)
    app.router.add_get("/fotoweb/me", me)
    app.router.add_get("/fotoweb/me/archives/", my_archives)
    app.router.add_get("/fotoweb/archives/", archives)
    app.router.add_get("/fotoweb/archives/{id}", to_archive)
    app.router.add_get("/fotoweb/archives/{id}/", archive)
    assets.add_routes(app)
    renditions.add_routes(app)
    uploads.add_routes(app)


def accepts_preview_token(request: web.Request, token: str | None) -> bool:
    """Whether `token` is the previewToken of the asset whose preview `request` asks."""
    return assets.preview_token_ok(request, token)


def services() -> dict[str, str]:
    return {"search": "/fotoweb/archives/", "rendition_request": renditions.SERVICE,
            "upload": uploads.SERVICE, "me": "/fotoweb/me"}


async def api_descriptor(request: web.Request) -> web.Response:
    kind = choose(request, [API_DESCRIPTOR])
    return answer({"server": "fwproxy simulated tenant", "archives": "/fotoweb/archives/",
                   "me": "/fotoweb/me", "services": services(), "searchURL": SEARCH_URL},
                  kind)


async def me(request: web.Request) -> web.Response:
    """The full API descriptor: the user the token acts for, or the application itself
    (client credentials), and where everything is."""
    kind = choose(request, [FULL_API_DESCRIPTOR])
    state = request.app[TENANT]
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else (
        request.query.get("access_token", "")
    )
    user = state.token_users.get(token)
    if user is not None:
        who: dict[str, Any] = {"userName": user, "fullName": state.users[user][1],
                               "isGuest": False}
    else:
        who = {"userName": "demo-app",
               "fullName": "fwproxy demo application (client credentials)", "isGuest": False}
    return answer({**who, "href": "/fotoweb/me",
                   "archives": "/fotoweb/me/archives/", "services": services(),
                   "searchURL": SEARCH_URL, "server": "fwproxy simulated tenant"}, kind)


def collection(catalog: Catalog, item: Archive, q: str = "") -> dict[str, Any]:
    """An archive as FotoWeb's collection entity; with `q`, as the collection of its hits."""
    search = f"?q={quote(q, safe='')}" if q else ""
    count = len(catalog.search(item.id, q)) if q else len(catalog.assets[item.id])
    return {
        "id": item.id, "name": item.name, "description": item.description,
        "href": item.href, "type": "archive", "data": item.href + ";o=+" + search,
        "searchURL": item.href + "{?q}", "searchString": q, "assetCount": count,
        "isSearchable": True, "uploadable": True,
        "metadataEditor": {"name": f"{item.name} editor", "fields": [
            {"id": fid, "label": label, "multiValue": multi}
            for fid, (label, multi, _) in FIELDS.items()]},
    }


def collection_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": entries, "paging": {"prev": "", "next": "", "first": "", "last": ""}}


async def archives(request: web.Request) -> web.Response:
    """The archives; with ``?q=``, the cross-archive search: the archives with hits."""
    kind = choose(request, [COLLECTION_LIST])
    catalog = request.app[TENANT].catalog
    q = request.query.get("q", "")
    entries = [collection(catalog, item, q) for item in catalog.archives.values()]
    return answer(collection_list([e for e in entries if not q or e["assetCount"]]), kind)


async def my_archives(request: web.Request) -> web.Response:
    kind = choose(request, [COLLECTION_LIST])
    catalog = request.app[TENANT].catalog
    return answer(collection_list([collection(catalog, a) for a in catalog.archives.values()]),
                  kind)


async def to_archive(request: web.Request) -> web.Response:
    """``/fotoweb/archives/{id}`` -> ``/fotoweb/archives/{id}/`` (query kept)."""
    item = assets.archive_of(request)
    query = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPMovedPermanently(item.href + query)


async def archive(request: web.Request) -> web.Response:
    """The archive as a collection; its first page of assets when asked for an asset list
    or searched (``?q=``)."""
    item = assets.archive_of(request)
    searched = "q" in request.query
    kind = choose(request, [ASSET_LIST] if searched else [COLLECTION_INFO, ASSET_LIST])
    if kind == ASSET_LIST:
        return assets.listing(request, item, "", kind)
    return answer(collection(request.app[TENANT].catalog, item), kind)
