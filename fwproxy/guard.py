"""Admission: everything checked before a request may be forwarded, cheapest first.
Longer than 400 lines because the checks are one ordered sequence with their memos, and
the request-parser hardening they rely on (smuggling shapes, the strict pure-Python
parser) belongs with them; local tokens' own decisions live in tokengate.py.

Each check answers its own refusal (JSON ``{"error", "detail"}``) before the body is read
and before anything reaches the tenant; the one check of the body itself, a form field
naming a method override, is a `FormScanner` handed to the body tee (`Admitted.scanner`).
What passes is forwarded with the client's exact
bytes; the checks only ever look at a normalized copy of the path.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

from aiohttp import HttpVersion10, HttpVersion11, http_parser, web, web_protocol
from aiohttp import http as aiohttp_http
from aiohttp.http_exceptions import BadStatusLine
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDictProxy, istr
from yarl import URL

from .access import (
    METHOD_OVERRIDES,
    HostRefused,
    authority,
    client_allowed,
    decide_access,
    decide_all,
    judge_host,
    overridden_methods,
    path_readings,
    peer_trusted,
    refuse_cross_site,
    target_authority,
)
from .answers import error_response
from .config import LOOPBACK_NETWORKS, Settings
from .exceptions import BadPath
from .keys import HEADER as KEY_HEADER
from .keys import ApiKey, KeyStore
from .localtokens import SigningKeys
from .params import (
    FormScanner,
    destination_path,
    form_override_denied,
    form_scanner,
    query_overrides,
)
from .tokengate import Counts, Gate, admit_credentials, key_required, signing_keys

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
    own_token: bool = True  # fwproxy's token goes in (and a 401 to it renews and replays)
    # the client's Authorization and access_token are not forwarded: a local token, or
    # client_authorization: replace (except on the special paths: they go as sent)
    drop_authorization: bool = False
    endpoint: bool = False  # the token path with local tokens on: fwproxy answers it
    scanner: FormScanner | None = None  # a form POST's body, read for a denied override


# The path of auth.token_url, and of auth.authorize_url: never given fwproxy's token
TOKEN_PATH, AUTHORIZE_PATH = 1, 2
# below or beside a special path (``…/token/x``, ``…/token.aspx``): it may be routed to the
# same endpoint, so it gets no token of fwproxy's either (but the gate does not answer it)
NEAR_SPECIAL = 3


class Guard:
    """Admits or refuses requests according to ``access`` and ``limits``."""

    def __init__(self, settings: Settings, counts: Counts | None = None,
                 fleet_keys: SigningKeys | None = None) -> None:
        self._access = settings.access
        self._limits = settings.limits
        path = settings.access.api_keys_file
        self._keys = KeyStore(path) if path is not None else None
        self._keep = settings.auth.client_authorization == "keep"
        self._replace = not self._keep
        self.gate: Gate | None = None
        signing = signing_keys(settings, fleet_keys)  # None: local tokens are off
        if signing is not None:
            self.gate = Gate(signing, settings.local_tokens.lifetime,
                             self._keys, counts if counts is not None else Counts())
        # the token and authorize paths, as path rules read paths (case folded, as IIS does)
        self._special = {reading.lower(): kind
                         for kind, url in ((AUTHORIZE_PATH, settings.auth.authorize_url),
                                           (TOKEN_PATH, settings.auth.token_url))
                         if url is not None for reading in _special_readings(url.raw_path)}
        self._near = tuple(f"{path}{after}" for path in self._special for after in "/.")
        self._routes: dict[str, tuple[tuple[str, ...], int]] = {}
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
        target = origin_form(request.raw_path)
        if target is None:
            return error_response(400, "bad_request_target",
                                  "the request target must be a path such as /fotoweb/")
        path, _, query = target.partition("?")
        try:
            readings, special = self._route(path)
        except BadPath as exc:
            return error_response(exc.status, exc.error, f"refused: {exc}")
        key = None
        local_read_only = drop_authorization = False
        own_token = True
        gate = self.gate
        if gate is not None:
            if special == TOKEN_PATH:  # answered by fwproxy: client credentials, no API key
                return Admitted(path, query, None, host, False, False, False, True)
            authorization = headers.get("Authorization")  # all a plain request pays
            if authorization is not None or query:
                passed = admit_credentials(gate, self._keys, self._keep, authorization, query,
                                           headers)
                if isinstance(passed, web.Response):
                    return passed
                key, local_read_only, own_token, drop_authorization, query = passed
            elif self._keys is not None:
                key = self._keys.find(headers.get(KEY_HEADER))
                if key is None:
                    return _key_required()
        elif self._keys is not None:
            key = self._keys.find(headers.get(KEY_HEADER))
            if key is None:
                return _key_required()
        if special:
            own_token = False
        elif self._replace:
            drop_authorization = True
        method = request.method
        overrides = _overrides(headers) + query_overrides(query)
        if overrides:
            refused = REFUSED_METHODS.intersection(overrides)
            if refused:
                return error_response(405, "method_not_allowed",
                                      f"{min(refused)} (named by a method-override header) "
                                      "is not forwarded by fwproxy", headers={"Allow": ALLOW})
        read_only = access.read_only or local_read_only or (key is not None and key.read_only)
        if len(readings) == 1 and not overrides:
            normalized = readings[0]
            allowed, rule = decide_access(access.rules, access.default, read_only, method,
                                          normalized)
        else:
            allowed, rule, method, normalized = decide_all(
                access.rules, access.default, read_only, (method, *overrides), readings)
        if not allowed:
            return error_response(403, "forbidden",
                                  f"{method} {normalized} is denied by access rule {rule!r}")
        if "Destination" in headers:  # WebDAV MOVE, COPY: a second path the method acts on
            denial = self._judge_destination(headers.getall("Destination"), request.method,
                                             overrides, read_only)
            if denial is not None:
                return denial
        scanner = None
        if access.rules and request.method == "POST" and request.body_exists and _form(headers):
            # ASP.NET MVC executes a method override named by a form field: the body is read
            # as it streams, and stopped before its end where such a field names one
            denied = form_override_denied(access.rules, access.default, read_only, readings)
            if denied is not None:
                _, rule, _, where = decide_all(access.rules, access.default, read_only,
                                               (denied,), readings)
                named = "a method no rule names" if denied == "UNNAMED" else denied
                scanner = form_scanner(headers.getall("Content-Type"),
                                       f"{named} {where} is denied by access rule {rule!r}",
                                       headers.getall("Content-Encoding", ()))
        length = request.content_length if limits.max_body and request.body_exists else None
        if length is not None and length > limits.max_body:
            return error_response(413, "body_too_large",
                                  f"the body exceeds limits.max_body ({limits.max_body} bytes)")
        trusted = bool(access.trust_forwarded_from) and self._peer_trusted(request.remote)
        return Admitted(path, query, key, host, trusted, own_token, drop_authorization,
                        scanner=scanner)

    def _route(self, path: str) -> tuple[tuple[str, ...], int]:
        """The path's readings (what rules judge) and whether it is a special path: one
        memo look-up for a path seen before."""
        try:
            return self._routes[path]
        except KeyError:
            readings = _readings(path)
            special = 0
            if self._special:
                lowered = [reading.lower() for reading in readings]
                special = max(self._special.get(low, 0) for low in lowered)
                if not special and any(low.startswith(self._near) for low in lowered):
                    special = NEAR_SPECIAL
            if len(path) <= MEMO_PATH:
                if len(self._routes) >= MEMO_SIZE:
                    self._routes.clear()
                self._routes[path] = (readings, special)
            return readings, special


    def _judge_destination(self, values: list[str], method: str, overrides: tuple[str, ...],
                           read_only: bool) -> web.Response | None:
        access = self._access
        try:
            readings = tuple(chain.from_iterable(
                _readings(destination_path(value)) for value in values))
        except BadPath as exc:
            return error_response(exc.status, exc.error, f"refused (Destination): {exc}")
        allowed, rule, method, normalized = decide_all(
            access.rules, access.default, read_only, (method, *overrides), readings)
        if allowed:
            return None
        return error_response(403, "forbidden", f"{method} to the Destination {normalized} "
                                                f"is denied by access rule {rule!r}")


def _form(headers: CIMultiDictProxy[str]) -> bool:
    """A body ASP.NET parses into form fields (application/x-www-form-urlencoded,
    multipart/form-data: it compares the start of Content-Type; any "form" is refused)."""
    return any("form" in value.lower() for value in headers.getall("Content-Type", ()))


def _special_readings(raw_path: str) -> tuple[str, ...]:
    try:
        return path_readings(raw_path)
    except BadPath:  # a configured URL no request can reach as such: nothing to match
        return ()


_key_required = key_required

MEMO_SIZE = 1024  # distinct client addresses, Host values and paths remembered
_readings_memo = lru_cache(maxsize=MEMO_SIZE)(path_readings)  # a BadPath is not kept
MEMO_PATH = 512  # longer paths are normalized every time: the memo stays under 1 MiB


def _readings(path: str) -> tuple[str, ...]:
    return _readings_memo(path) if len(path) <= MEMO_PATH else path_readings(path)


_OVERRIDE_1, _OVERRIDE_2, _OVERRIDE_3 = (istr(name) for name in METHOD_OVERRIDES)


def _overrides(headers: CIMultiDictProxy[str]) -> tuple[str, ...]:
    """Methods named by method-override headers: almost always none, found in three lookups
    of pre-folded names (about 0.1 us)."""
    if _OVERRIDE_1 not in headers and _OVERRIDE_2 not in headers and _OVERRIDE_3 not in headers:
        return ()
    return overridden_methods([value for name in METHOD_OVERRIDES
                               for value in headers.getall(name, ())])


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
_NAME, _VALUE = itemgetter(0), itemgetter(1)
HTTP_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
# The methods llhttp (aiohttp's C parser) accepts in an HTTP request; the pure-Python parser
# takes any token. Anything else is refused, whichever parser is in use.
KNOWN_METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "COPY",
    "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND",
    "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY",
    "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY",
})


def smuggling_shape(request: web.Request) -> str | None:
    """A request line or framing a chain of HTTP parsers could read two ways. aiohttp's C
    parser refuses most of these itself; this holds whichever parser is in use.

    The request line: only HTTP/1.0 and 1.1 (llhttp reads ``GET /a\\nX: y HTTP/1.1``, LF
    inside the target, as an HTTP/0.9 request line followed by headers; the Python parser
    takes HTTP/1.2 and 2.0), a known method, and an ASCII target (the C parser refuses
    raw bytes 0x80-0xFF, the Python parser lets them through). A few cheap checks on every
    request: a set lookup, a set lookup and ``str.isascii``.
    """
    if request.version not in HTTP_VERSIONS:
        return "HTTP version other than 1.0 and 1.1 (or LF inside the request target)"
    if request.method not in KNOWN_METHODS:
        return f"unknown method {request.method!r}"
    if not request.raw_path.isascii():
        return "raw bytes 0x80-0xFF in the request target (percent-encode them)"
    headers = request.headers
    raw = request.raw_headers
    values = b"".join(map(_VALUE, raw))  # one search of all: the usual request is clean
    if _BAD_VALUE.search(values) or _BAD_NAME.search(b"".join(map(_NAME, raw))) or (
            not values.isascii()):
        for name, value in raw:  # which header, and so which reason, comes first
            if _BAD_VALUE.search(value) or _BAD_NAME.search(name):
                return "CR, LF or NUL in a header"
            if not value.isascii() and not _utf8(value):  # the C parser drops such bytes
                return "a header value that is not UTF-8"
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
    if codings and request.version != HttpVersion11:  # RFC 9112 6.1: framing is faulty
        return "Transfer-Encoding in an HTTP/1.0 request"
    return None


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_CHUNK_SIZE = re.compile(rb"0*[0-9a-fA-F]{1,16}")  # below 2**64, as llhttp reads it
_REQUEST_LINE = re.compile(rb"[A-Z][A-Z-]* [!-~]+ HTTP/1\.[01]")


class _StrictRequestParser(http_parser.HttpRequestParserPy):
    """aiohttp's pure-Python request parser, made to refuse what the C parser refuses."""

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        if not _REQUEST_LINE.fullmatch(lines[0]):
            raise BadStatusLine(lines[0].decode("ascii", "backslashreplace")[:100])
        return super().parse_message(lines)


def strict_parser() -> None:
    """Make aiohttp's pure-Python parser read requests as its C parser (llhttp) does.

    It is in use under ``AIOHTTP_NO_EXTENSIONS=1`` or where the C extension is missing, and
    takes what llhttp refuses: a lower-case method (it upper-cases it), any ``HTTP/d.d``,
    raw bytes 0x80-0xFF in the target, a chunk size of any length (``fffffffffffffffff1``
    waits for 2**68 bytes). It now refuses them (400, connection closed), so a request
    means the same whichever parser reads it. Nothing changes with the C parser.
    """
    if aiohttp_http.HttpRequestParser is http_parser.HttpRequestParserPy:  # web_protocol's
        setattr(http_parser, "HEXDIGITS", _CHUNK_SIZE)  # noqa: B010 (a Final in aiohttp)
        setattr(web_protocol, "HttpRequestParser", _StrictRequestParser)  # noqa: B010


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
