"""The simulated tenant's assets: listings and search results in pages, an asset, its
metadata update, its previews.

Theory of operation: an archive's assets (or the hits of ``q`` among them) are listed in
pages of `Catalog.page_size` at FotoWeb's listing paths ``/fotoweb/archives/{id}/;o=+;p=N``
(``o`` the order, ``+`` or ``-`` by filename; ``p`` the page from 0; ``?q=`` kept in
every link). ``paging.next`` names the next page and is empty on the last one; a page
past the last is 404. An asset (``…/Assets/{filename}.info``) has its ``href``,
``filename``, ``filesize``, ``metadata`` (field id -> ``{"value"}``), ``builtinFields``,
``previews`` and one ``original`` rendition; ``PATCH`` with an ``assetupdate`` changes its
metadata (fields of the archive's editor only) and answers the asset. A preview
(``/fotoweb/previews/{archive}/{filename}/{size}.jpg``) takes the tenant's bearer token or
its asset's own ``previewToken`` (`preview_token_ok`, asked by app.py's bearer check
through api.py) - the latter opens that asset's previews and nothing else.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from .catalog import (
    FIELDS,
    PREVIEW_SIZES,
    Archive,
    Asset,
    check_metadata,
    listing_url,
    page_of,
    parse_listing,
    preview_bytes,
)
from .media import (
    ASSET,
    ASSET_LIST,
    ASSET_UPDATE,
    JPEG,
    answer,
    choose,
    error,
    not_found,
    require,
)
from .state import TENANT

PREVIEW_PREFIX = "/fotoweb/previews/"


def add_routes(app: web.Application) -> None:
    app.router.add_get(r"/fotoweb/archives/{id}/{params:;[^/]*}", listing_page)
    app.router.add_get(r"/fotoweb/archives/{id}/Assets/{filename:[^/]+}.info", get_asset)
    app.router.add_patch(r"/fotoweb/archives/{id}/Assets/{filename:[^/]+}.info", patch_asset)
    app.router.add_get(r"/fotoweb/previews/{id}/{filename}/{size:\d+}.jpg", preview)


def entity(asset: Asset) -> dict[str, Any]:
    """An asset as FotoWeb's asset entity."""
    metadata = {fid: {"value": value} for fid, value in asset.metadata.items()}
    builtin = [{"field": name, "value": asset.metadata.get(fid, [] if multi else ""),
                "required": False}
               for fid, (_, multi, name) in FIELDS.items() if name is not None]
    return {
        "href": asset.href, "archiveHREF": f"/fotoweb/archives/{asset.archive}/",
        "filename": asset.filename, "filesize": len(asset.content),
        "metadata": metadata, "builtinFields": builtin,
        "previewToken": asset.preview_token,
        "previews": [{"size": size, "width": size, "height": size * 2 // 3, "square": False,
                      "href": asset.preview_href(size)} for size in PREVIEW_SIZES],
        "renditions": [{"display_name": "Original File", "description": "", "original": True,
                        "sizeFixed": True, "profile": "", "href": asset.rendition_href,
                        "default": True}],
    }


def archive_of(request: web.Request) -> Archive:
    """The archive the path names, or 404."""
    item = request.app[TENANT].catalog.archives.get(request.match_info["id"])
    if item is None:
        raise not_found("archive")
    return item


def listing(request: web.Request, item: Archive, params: str, kind: str) -> web.Response:
    """One page of the archive's assets, or of the hits of ``?q=`` among them."""
    catalog = request.app[TENANT].catalog
    parsed = parse_listing(params)
    if parsed is None:
        return error(400, "bad_request", "listing parameters are ;o=+ or ;o=- and ;p=N")
    order, page = parsed
    q = request.query.get("q", "")
    found = catalog.search(item.id, q)
    if order == "-":
        found.reverse()
    bounds = page_of(len(found), page, catalog.page_size)
    if bounds is None:
        return error(404, "not_found", f"page {page} is past the last page")
    start, stop = bounds
    last = max(0, (len(found) - 1) // catalog.page_size)
    paging = {
        "prev": listing_url(item.id, order, page - 1, q) if page > 0 else "",
        "next": listing_url(item.id, order, page + 1, q) if page < last else "",
        "first": listing_url(item.id, order, 0, q),
        "last": listing_url(item.id, order, last, q),
    }
    return answer({"data": [entity(a) for a in found[start:stop]], "paging": paging,
                   "searchString": q, "assetCount": len(found)}, kind)


async def listing_page(request: web.Request) -> web.Response:
    item = archive_of(request)
    return listing(request, item, request.match_info["params"], choose(request, [ASSET_LIST]))


def _asset(request: web.Request) -> Asset:
    found = request.app[TENANT].catalog.asset(request.match_info["id"],
                                              request.match_info["filename"])
    if found is None:
        raise not_found("asset")
    return found


async def get_asset(request: web.Request) -> web.Response:
    kind = choose(request, [ASSET])
    return answer(entity(_asset(request)), kind)


async def patch_asset(request: web.Request) -> web.Response:
    """PATCH an assetupdate: new values for fields of the archive's metadata editor."""
    asset = _asset(request)
    require(request, ASSET_UPDATE)
    kind = choose(request, [ASSET])
    try:
        update = json.loads(await request.read())
    except ValueError:
        return error(400, "bad_request", "the body is not JSON")
    checked = check_metadata(update, {fid: multi for fid, (_, multi, _) in FIELDS.items()})
    if isinstance(checked, str):
        return error(400, "bad_request", checked)
    asset.metadata.update(checked)
    return answer(entity(asset), kind)


def _preview_asset(request: web.Request) -> Asset | None:
    info = request.match_info
    if "size" not in info or not request.path.startswith(PREVIEW_PREFIX):
        return None
    return request.app[TENANT].catalog.asset(info["id"], info["filename"])


def preview_token_ok(request: web.Request, token: str | None) -> bool:
    """Whether `token` is the previewToken of the asset whose preview `request` asks."""
    asset = _preview_asset(request)
    return (asset is not None and token is not None
            and hmac.compare_digest(asset.preview_token.encode(), token.encode()))


async def preview(request: web.Request) -> web.Response:
    asset = _preview_asset(request)
    size = int(request.match_info["size"])
    if asset is None or size not in PREVIEW_SIZES:
        raise not_found("preview")
    return web.Response(body=preview_bytes(asset, size), content_type=choose(request, [JPEG]))
