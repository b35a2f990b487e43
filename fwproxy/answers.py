"""What fwproxy itself answers a client when it does not forward: JSON ``{"error",
"detail"}``, where ``error`` is a fixed code (see exceptions.py) and ``detail`` a sentence
for a person. The detail goes out through `log.outward` (no secret, no control character,
bounded length) like every other text a client or a scraper sees."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from .log import outward


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Every error fwproxy answers through aiohttp."""
    return web.json_response({"error": error, "detail": outward(detail)}, status=status,
                             headers=headers)


def raw_error_response(status: int, reason: str, error: str, detail: str,
                       extra: str = "") -> bytes:
    """The same answer as bytes, for the connection layer, which answers before aiohttp has
    parsed a request (`extra`: more header lines, each ending in CRLF); it closes the
    connection."""
    body = json.dumps({"error": error, "detail": outward(detail)}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
