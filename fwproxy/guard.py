"""Admission: everything checked before a request may be forwarded, cheapest first.

Each check answers its own refusal (JSON ``{"error", "detail"}``) before the body is read
and before anything reaches the tenant. What passes is forwarded with the client's exact
bytes; the checks only ever look at a normalized copy of the path.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from .access import (
    BadPath,
    client_allowed,
    decide_access,
    normalize_path,
    refuse_cross_site,
    refuse_host,
)
from .config import LOOPBACK_NETWORKS, Settings
from .keys import HEADER as KEY_HEADER
from .keys import ApiKey, KeyStore
from .upstream import error_response

# TRACE (and IIS's TRACK, and DEBUG) would echo the token back; CONNECT would tunnel.
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK", "DEBUG"})
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@dataclass(frozen=True)
class Admitted:
    """A request that may go upstream: its target split for forwarding."""

    path: str
    query: str
    key: ApiKey | None


class Guard:
    """Admits or refuses requests according to ``access`` and ``limits``."""

    def __init__(self, settings: Settings) -> None:
        self._access = settings.access
        self._limits = settings.limits
        path = settings.access.api_keys_file
        self._keys = KeyStore(path) if path is not None else None

    def admit_client(
        self, request: web.Request, loopback: bool = False
    ) -> web.Response | None:
        """The checks that apply to every path, the status pages included. `loopback`: the
        machine itself is always allowed (a container's HEALTHCHECK, a local scraper)."""
        access = self._access
        if loopback and client_allowed(request.remote, LOOPBACK_NETWORKS):
            pass
        elif not client_allowed(request.remote, access.allow_from):
            return error_response(403, "forbidden",
                                  f"client address {request.remote} is not in access.allow_from")
        headers = request.headers
        why = refuse_host(headers.get("Host"), access.accept_hosts) or refuse_cross_site(
            headers.get("Origin"), headers.get("Sec-Fetch-Site"), headers.get("Host"),
            access.allow_origins,
        )
        return error_response(403, "forbidden", why) if why is not None else None

    def admit(self, request: web.Request) -> Admitted | web.Response:
        """All checks, for a request to be forwarded."""
        access, limits = self._access, self._limits
        if request.method in REFUSED_METHODS:
            return error_response(405, "method_not_allowed",
                                  f"{request.method} is not forwarded by fwproxy",
                                  headers={"Allow": ALLOW})
        refusal = self.admit_client(request)
        if refusal is not None:
            return refusal
        headers = request.headers
        why = smuggling_shape(request)
        if why is not None:
            refusal = error_response(400, "bad_request", why)
            refusal.force_close()  # where this message ends is in doubt: end the connection
            return refusal
        size = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        if limits.max_header_bytes and size > limits.max_header_bytes:
            return error_response(431, "headers_too_large",
                                  f"request headers exceed limits.max_header_bytes "
                                  f"({limits.max_header_bytes} bytes)")
        key = None
        if self._keys is not None:
            key = self._keys.find(headers.get(KEY_HEADER))
            if key is None:
                return error_response(401, "api_key_required",
                                      f"send a valid API key in the {KEY_HEADER} header")
        target = origin_form(request.raw_path)
        if target is None:
            return error_response(400, "bad_request_target",
                                  "the request target must be a path such as /fotoweb/")
        path, _, query = target.partition("?")
        try:
            normalized = normalize_path(path)
        except BadPath as exc:
            return error_response(400, "bad_path", f"refused: {exc}")
        read_only = access.read_only or (key is not None and key.read_only)
        allowed, rule = decide_access(access.rules, access.default, read_only,
                                      request.method, normalized)
        if not allowed:
            return error_response(403, "forbidden",
                                  f"{request.method} {normalized} is denied by access rule "
                                  f"{rule!r}")
        length = request.content_length
        if limits.max_body and length is not None and length > limits.max_body:
            return error_response(413, "body_too_large",
                                  f"the body exceeds limits.max_body ({limits.max_body} bytes)")
        return Admitted(path, query, key)


def smuggling_shape(request: web.Request) -> str | None:
    """Framing a chain of HTTP parsers could read two ways. aiohttp's C parser refuses most
    of these itself; this holds whichever parser is in use."""
    lengths = request.headers.getall("Content-Length", [])
    codings = request.headers.getall("Transfer-Encoding", [])
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not lengths[0].isdigit():
        return "Content-Length is not a non-negative number"
    if codings and [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
        return "Transfer-Encoding other than chunked"
    for name, value in request.raw_headers:
        if any(c in value for c in b"\r\n\x00") or any(c in name for c in b"\r\n\x00 \t"):
            return "CR, LF or NUL in a header"
    return None


def origin_form(raw_target: str) -> str | None:
    """The path and query to forward; an absolute-form target keeps only those parts.

    A fragment is not part of a request target; it is cut off rather than sent upstream.
    """
    target = raw_target.partition("#")[0]
    if target.startswith("/"):
        return target
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        try:
            url = URL(target, encoded=True)
        except ValueError:
            return None
        return (url.raw_path or "/") + f"?{url.raw_query_string}" * bool(url.raw_query_string)
    return None
