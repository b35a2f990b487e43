"""FotoWeb's vendor media types, and how the simulated tenant negotiates them.

Theory of operation: every FotoWeb resource has one JSON representation with a vendor
media type (``application/vnd.fotoware.<kind>+json``); a few also offer a second one
(an archive is a collection, or, asked for an asset list, its first page of assets).
`negotiate` is the pure decision: given the request's ``Accept`` and the types the
resource offers (the first is its default), it names the type to answer, or None. The
rules: no ``Accept`` (or an empty one), ``*/*`` and ``application/*`` get the default;
``application/json`` matches every ``+json`` vendor type (RFC 6839 structured suffix)
and gets the default; ``q`` weights count, ``q=0`` excludes; the most specific range that
matches a type gives its weight. When nothing offered is acceptable the tenant answers
``406 Not Acceptable`` with a JSON ``{"error", "detail"}`` naming what it offers, as
FotoWeb does (it has no HTML or XML form of these resources to fall back on).

A request body has exactly one acceptable ``Content-Type`` per resource (`content_type_is`
compares the media type, ignoring parameters such as ``charset``); anything else is
``415 Unsupported Media Type``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

VND = "application/vnd.fotoware."
FULL_API_DESCRIPTOR = VND + "full-api-descriptor+json"
API_DESCRIPTOR = VND + "api-descriptor+json"
COLLECTION_LIST = VND + "collectionlist+json"
COLLECTION_INFO = VND + "collectioninfo+json"
ASSET_LIST = VND + "assetlist+json"
ASSET = VND + "asset+json"
ASSET_UPDATE = VND + "assetupdate+json"
RENDITION_REQUEST = VND + "rendition-request+json"
RENDITION_RESPONSE = VND + "rendition-response+json"
UPLOAD_INFO = VND + "upload-info+json"
UPLOAD_STATUS = VND + "upload-status+json"
JPEG = "image/jpeg"


def _ranges(accept: str) -> list[tuple[str, float]]:
    """The media ranges of an Accept header with their weights; a bad weight counts as 0."""
    ranges = []
    for item in accept.split(","):
        parts = [part.strip() for part in item.split(";")]
        if not parts[0]:
            continue
        weight = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        ranges.append((parts[0].lower(), weight))
    return ranges


def _specificity(media_range: str, offered: str) -> int:
    """How specifically `media_range` names `offered`: 3 exactly, 2 as application/json
    for a +json type, 1 as type/*, 0 as */*; -1 if it does not match."""
    if media_range == offered:
        return 3
    if media_range == "application/json" and offered.endswith("+json"):
        return 2
    if media_range.endswith("/*") and offered.startswith(media_range[:-1]):
        return 1
    return 0 if media_range == "*/*" else -1


def negotiate(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered type to answer with for `accept`, or None (then: 406)."""
    if accept is None or not accept.strip():
        return offered[0]
    ranges = _ranges(accept)
    if not ranges:
        return offered[0]
    best: tuple[float, str] | None = None
    for kind in offered:
        matches = [(_specificity(r, kind), w) for r, w in ranges if _specificity(r, kind) >= 0]
        if not matches:
            continue
        weight = max(matches)[1]
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, kind)
    return None if best is None else best[1]


def content_type_is(header: str | None, expected: str) -> bool:
    """Whether a Content-Type header names `expected` (parameters ignored)."""
    return (header or "").split(";")[0].strip().lower() == expected


def error(status: int, error_: str, detail: str) -> web.Response:
    return web.json_response({"error": error_, "detail": detail}, status=status)


def not_found(what: str) -> web.HTTPNotFound:
    """The 404 a handler raises for a resource the tenant does not have."""
    return web.HTTPNotFound(text=json.dumps({"error": "not_found", "detail": f"no such {what}"}),
                            content_type="application/json")


def choose(request: web.Request, offered: Sequence[str]) -> str:
    """The negotiated type for `request`, or raise 406 naming what is offered."""
    chosen = negotiate(request.headers.get("Accept"), offered)
    if chosen is None:
        raise web.HTTPNotAcceptable(
            text=json.dumps({"error": "not_acceptable",
                             "detail": "this resource is available as " + ", ".join(offered)}),
            content_type="application/json")
    return chosen


def require(request: web.Request, expected: str) -> None:
    """Raise 415 unless the request body is of type `expected`."""
    if not content_type_is(request.headers.get("Content-Type"), expected):
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": "unsupported_media_type",
                             "detail": f"send Content-Type: {expected}"}),
            content_type="application/json")


def answer(document: Any, content_type: str, status: int = 200,
           headers: dict[str, str] | None = None) -> web.Response:
    """A JSON document under its vendor media type."""
    return web.Response(text=json.dumps(document), status=status, headers=headers,
                        content_type=content_type)
