"""Admission: everything checked before a request may be forwarded, cheapest first.

Each check answers its own refusal (JSON ``{"error", "detail"}``) before the body is read
and before anything reaches the tenant. What passes is forwarded with the client's exact
bytes; the checks only ever look at a normalized copy of the path.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import chain
from typing import NamedTuple

from aiohttp import web
from yarl import URL

from .access import (
    BadPath,
    HostRefused,
    authority,
    client_allowed,
    decide_access,
    judge_host,
    normalize_path,
    peer_trusted,
    refuse_cross_site,
    target_authority,
)
from .config import LOOPBACK_NETWORKS, Settings
from .keys import HEADER as KEY_HEADER
from .keys import ApiKey, KeyStore
from .upstream import error_response

# TRACE (and IIS's TRACK, and DEBUG) would echo the token back; CONNECT would tunnel.
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK", "DEBUG"})
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Admitted(NamedTuple):
    """A request that may go upstream: its target split for forwarding."""

    path: str
    query: str
    key: ApiKey | None
    host: str  # the validated ``host[:port]`` the client reached fwproxy by
    trusted: bool  # the peer is in access.trust_forwarded_from: its X-Forwarded-* are kept


class Guard:
    """Admits or refuses requests according to ``access`` and ``limits``."""

    def __init__(self, settings: Settings) -> None:
        self._access = settings.access
        self._limits = settings.limits
        path = settings.access.api_keys_file
        self._keys = KeyStore(path) if path is not None else None
        # Verdicts on client addresses and Host values seen before (a Guard lives until the
        # next reload, so the settings they were made under cannot change underneath).
        self._clients: dict[str | None, bool] = {}
        self._hosts: dict[str, str | HostRefused] = {}
        self._trusted: dict[str | None, bool] = {}

    def admit_client(
        self, request: web.Request, loopback: bool = False
    ) -> web.Response | None:
        """The checks that apply to every path, the status pages included. `loopback`: the
        machine itself is always allowed (a container's HEALTHCHECK, a local scraper)."""
        verdict = self._admit_client(request, loopback)
        return verdict if isinstance(verdict, web.Response) else None

    def _admit_client(self, request: web.Request, loopback: bool = False
                      ) -> web.Response | str:
        """A refusal, or the validated ``host[:port]`` the client reached fwproxy by."""
        access = self._access
        remote = request.remote
        if loopback and client_allowed(remote, LOOPBACK_NETWORKS):
            pass
        elif not self._client_allowed(remote):
            return error_response(403, "forbidden",
                                  f"client address {remote} is not in access.allow_from")
        headers = request.headers
        host = headers.get("Host")
        raw = request.raw_path
        if host is not None and raw[:1] == "/":  # (the usual request: a memo look-up)
            verdict = self._judge_host(host)
        else:
            verdict = self._judge_rare(host, raw, request)
        if isinstance(verdict, HostRefused):
            return error_response(*verdict)
        if "Origin" in headers or "Sec-Fetch-Site" in headers:
            why = refuse_cross_site(headers.get("Origin"), headers.get("Sec-Fetch-Site"), host,
                                    access.allow_origins)
            if why is not None:
                return error_response(403, "forbidden", why)
        return verdict

    def _judge_host(self, host: str) -> str | HostRefused:
        try:
            return self._hosts[host]
        except KeyError:
            if len(self._hosts) >= MEMO_SIZE:
                self._hosts.clear()
            verdict = self._hosts[host] = _authority(
                judge_host(host, None, self._access.accept_hosts))
            return verdict

    def _judge_rare(self, host: str | None, raw_target: str, request: web.Request
                    ) -> str | HostRefused:
        """An absolute-form target (its authority is the host: RFC 9112 3.2.2), or no Host
        (HTTP/1.0: the address the connection arrived on). Not memoized."""
        verdict = judge_host(host, target_authority(raw_target), self._access.accept_hosts)
        if verdict is None:
            return _local_authority(request)
        return _authority(verdict)

    def admit_key(self, request: web.Request) -> web.Response | None:
        """With API keys configured, a valid one (read-only will do), or a 401."""
        if self._keys is None or self._keys.find(request.headers.get(KEY_HEADER)) is not None:
            return None
        return _key_required()

    def _client_allowed(self, remote: str | None) -> bool:
        verdict = self._clients.get(remote)
        if verdict is None:
            if len(self._clients) >= MEMO_SIZE:
                self._clients.clear()
            verdict = self._clients[remote] = client_allowed(remote, self._access.allow_from)
        return verdict

    def _peer_trusted(self, remote: str | None) -> bool:
        verdict = self._trusted.get(remote)
        if verdict is None:
            if len(self._trusted) >= MEMO_SIZE:
                self._trusted.clear()
            verdict = self._trusted[remote] = peer_trusted(
                remote, self._access.trust_forwarded_from)
        return verdict

    def admit(self, request: web.Request) -> Admitted | web.Response:
        """All checks, for a request to be forwarded."""
        access, limits = self._access, self._limits
        if request.method in REFUSED_METHODS:
            return error_response(405, "method_not_allowed",
                                  f"{request.method} is not forwarded by fwproxy",
                                  headers={"Allow": ALLOW})
        host = self._admit_client(request)
        if not isinstance(host, str):
            return host
        headers = request.headers
        why = smuggling_shape(request)
        if why is not None:
            refusal = error_response(400, "bad_request", why)
            refusal.force_close()  # where this message ends is in doubt: end the connection
            return refusal
        if limits.max_header_bytes and header_bytes(request) > limits.max_header_bytes:
            return error_response(431, "headers_too_large",
                                  f"request headers exceed limits.max_header_bytes "
                                  f"({limits.max_header_bytes} bytes)")
        key = None
        if self._keys is not None:
            key = self._keys.find(headers.get(KEY_HEADER))
            if key is None:
                return _key_required()
        target = origin_form(request.raw_path)
        if target is None:
            return error_response(400, "bad_request_target",
                                  "the request target must be a path such as /fotoweb/")
        path, _, query = target.partition("?")
        try:
            normalized = _normalized(path)
        except BadPath as exc:
            return error_response(400, "bad_path", f"refused: {exc}")
        read_only = access.read_only or (key is not None and key.read_only)
        allowed, rule = decide_access(access.rules, access.default, read_only,
                                      request.method, normalized)
        if not allowed:
            return error_response(403, "forbidden",
                                  f"{request.method} {normalized} is denied by access rule "
                                  f"{rule!r}")
        length = request.content_length if limits.max_body and request.body_exists else None
        if length is not None and length > limits.max_body:
            return error_response(413, "body_too_large",
                                  f"the body exceeds limits.max_body ({limits.max_body} bytes)")
        trusted = bool(access.trust_forwarded_from) and self._peer_trusted(request.remote)
        return Admitted(path, query, key, host, trusted)


def _key_required() -> web.Response:
    return error_response(401, "api_key_required",
                          f"send a valid API key in the {KEY_HEADER} header")


MEMO_SIZE = 1024  # distinct client addresses, Host values and paths remembered
_normalize_memo = lru_cache(maxsize=MEMO_SIZE)(normalize_path)  # a BadPath is not kept
MEMO_PATH = 512  # longer paths are normalized every time: the memo stays under 1 MiB


def _normalized(path: str) -> str:
    return _normalize_memo(path) if len(path) <= MEMO_PATH else normalize_path(path)


def _authority(verdict: tuple[str, int | None] | HostRefused | None) -> str | HostRefused:
    if verdict is None:  # neither Host nor an absolute-form target: callers see to that
        return HostRefused(400, "bad_host", "no Host")
    return verdict if isinstance(verdict, HostRefused) else authority(*verdict)


def _local_authority(request: web.Request) -> str:
    """``host:port`` of the socket the request arrived on; ``localhost`` on a Unix socket."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        address = str(sockname[0]).partition("%")[0]
        return authority(address.lower(), int(sockname[1]))
    return "localhost"


def header_bytes(request: web.Request) -> int:
    """The size of the request's header block, near enough (names, values, separators)."""
    raw = request.raw_headers
    return sum(map(len, chain.from_iterable(raw))) + 4 * len(raw)


_FRAMING = ("Content-Length", "Transfer-Encoding")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_BAD_NAME = re.compile(rb"[\r\n\x00 \t]")


def smuggling_shape(request: web.Request) -> str | None:
    """Framing a chain of HTTP parsers could read two ways. aiohttp's C parser refuses most
    of these itself; this holds whichever parser is in use."""
    headers = request.headers
    for name, value in request.raw_headers:
        if _BAD_VALUE.search(value) or _BAD_NAME.search(name):
            return "CR, LF or NUL in a header"
    if _FRAMING[0] not in headers and _FRAMING[1] not in headers:
        return None
    lengths = headers.getall("Content-Length", [])
    codings = headers.getall("Transfer-Encoding", [])
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not lengths[0].isdigit():
        return "Content-Length is not a non-negative number"
    if codings and [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
        return "Transfer-Encoding other than chunked"
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
