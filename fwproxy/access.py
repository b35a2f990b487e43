r"""Who may use the proxy, and for what: pure checks, each a function of the request's parts.
Longer than 400 lines because its docstring carries the table of how the tenant (IIS,
ASP.NET) reads a path, which the path checks below implement row by row.

Client address (``allow_from``), Host and browser origin, method and path rules.

A proxy on loopback is still reachable from every web page the user opens: by DNS
rebinding (the page's own hostname re-pointed at 127.0.0.1, so `Host` names the attacker's
domain) and by cross-site requests a browser sends without asking (a form POST, an image).
Both would act with the proxy's token. `Host` must name the proxy (``access.accept_hosts``),
and a browser request from another site needs its origin in ``access.allow_origins``.
`Host` is read strictly (`parse_host`): what passes is the only host fwproxy ever repeats
(X-Forwarded-Host, a rewritten Location), so a lenient reading would let a client choose it.

Paths are judged the way the tenant will read them. FotoWeb runs on IIS (http.sys, then
ASP.NET), which decodes and resolves more than RFC 3986 does. What is forwarded is always the
client's exact bytes, so every reading the tenant might make is judged, and a shape that
cannot be judged with certainty is refused (400) rather than guessed at:

=============================================  ===============================================
in the path (before ``?``)                     what fwproxy does
=============================================  ===============================================
``%XX``; ``\``, ``%5C``, ``%2F``               decoded once; ``\`` reads as ``/``
upper/lower case                               rules match case-insensitively, Unicode case
                                               pairs included (dotless i is I to .NET)
doubled slashes; trailing dots and spaces      folded away: ``admin. `` is ``admin``
of a name
other characters (accented, fullwidth          judged as written and ASCII-folded too (NFKD,
letters and digits, U+FF41...)                 accents dropped): both readings must pass
``%uNNNN``, ``%UNNNN`` (IIS decodes it),       refused: every ``%`` must start a ``%XX``
``%zz``, a lone ``%``
``%25XX``, ``%25uNNNN`` (double encoding)      refused
``%c0%af`` (overlong UTF-8), invalid UTF-8     refused
raw bytes 0x80-0xFF                            refused (percent-encode them)
``.``, ``..``, ``%2e``, ``.. ``, ``..%20``,    refused: a segment of only dots and spaces is a
``..%2e%20``, ``...``, ``%20``                 dot segment once Windows trims it
controls: ``%00``, ``%09``, ``%0a``, ``%0d``,  refused
``%7f``
``;`` (a path parameter: ``/admin;x/``)        refused before the last segment (``%3B`` is a
                                               literal character); in the last one (FotoWeb's
                                               listing pages ``…/;o=+;p=2``) judged both as
                                               written and without its parameters
``(S(x))``, ``(A(x))``, ... segments           refused: ASP.NET's cookieless state, removed
                                               from the path before routing
``:`` (``admin::$INDEX_ALLOCATION``,           refused: an NTFS stream name opens the
``admin:$DATA``), ``%3A``                      directory or file ``admin`` (ASP.NET's
                                               requestPathInvalidCharacters refuses it too)
``~`` then a digit (``ADMIN~1``)               refused: a Windows 8.3 short name reaches the
                                               long name it abbreviates
look-alikes of ``/ \ . ; % ( )`` (fullwidth    refused
solidus U+FF0F, full stop U+FF0E, ...)
=============================================  ===============================================

Methods are judged too: a ``X-HTTP-Method-Override``, ``X-HTTP-Method`` or
``X-Method-Override`` header names a method some frameworks execute instead of the request
line's, so each method named must be allowed as well (``read_only``, method rules), and one
that is never forwarded (TRACE, ...) gets 405. Overrides named elsewhere (the query string,
a form body) and WebDAV's ``Destination``: see the table in params.py.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import NamedTuple
from urllib.parse import unquote

from .exceptions import BadPath

DEFAULT_ACCEPT_HOSTS = ("localhost", "127.0.0.1", "::1")
_CROSS = frozenset({"cross-site", "same-site"})


# RFC 3986 host, held to what real names use: a reg-name of unreserved characters only (no
# percent-escapes, no sub-delims such as "," that would split X-Forwarded-Host, no "@"
# userinfo), dot-separated labels of 1-63 characters; or an IPv6 literal in brackets. An
# IPv4 address is a reg-name lexically. Then an optional ":port", 1-65535.
_HOST = re.compile(
    r"(?:(?P<name>[a-z0-9_~-]{1,63}(?:\.[a-z0-9_~-]{1,63})*\.?)|\[(?P<ip6>[0-9a-f:.]{2,45})\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
MAX_HOST = 253 + 1 + 6  # a DNS name, its trailing dot, ":65535"


def parse_host(value: str) -> tuple[str, int | None] | None:
    """A Host value (or an absolute-form target's authority) -> (host, port), or None.

    Strict: nothing but ``name``, ``IPv4`` or ``[IPv6]``, then an optional ``:port``.
    The host comes back lower-cased, a trailing dot removed, an IPv6 address unbracketed in
    its compressed form (``[0::1]`` -> ``::1``), so it compares with ``access.accept_hosts``.
    """
    if len(value) > MAX_HOST or not value.isascii():  # (and "\u212a".lower() is "k")
        return None
    match = _HOST.fullmatch(value.lower())
    if match is None:
        return None
    name, ip6, digits = match.group("name", "ip6", "port")
    port = int(digits) if digits is not None else None
    if port is not None and not 1 <= port <= 65535:
        return None
    if ip6 is not None:
        try:
            return str(IPv6Address(ip6)), port
        except ValueError:
            return None
    host = name.rstrip(".")
    return (host, port) if len(host) <= 253 else None


def authority(host: str, port: int | None) -> str:
    """The canonical ``host[:port]`` of a parsed Host: what is forwarded as X-Forwarded-Host
    and what ``Location`` headers are pointed at."""
    text = f"[{host}]" if ":" in host else host
    return text if port is None else f"{text}:{port}"


def target_authority(raw_target: str) -> tuple[str, str] | None:
    """(scheme, authority) of an absolute-form target (``HTTP://h:1/x`` -> ``http``,
    ``h:1``); None for any other form."""
    if raw_target[:1] == "/":
        return None
    scheme, sep, rest = raw_target.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return None
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1 and index < end:
            end = index
    return scheme, rest[:end]


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Exact names, ``*.example.com`` for subdomains, ``*`` for any."""
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class HostRefused(NamedTuple):
    """Why a request's host is refused: 400 malformed or disagreeing, 403 not accepted."""

    status: int
    error: str
    detail: str


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def judge_host(
    host_header: str | None,
    target: tuple[str, str] | None,
    accept_hosts: Sequence[str],
) -> tuple[str, int | None] | HostRefused | None:
    """The request's validated (host, port), or why it is refused.

    `target` is (scheme, authority) of an absolute-form request target, if there is one. RFC 9112
    3.2.2 makes it, not Host, name the target; fwproxy goes further and refuses (400) a Host
    that does not name the same host and port, so that no part of the request disagrees
    with what was checked. None: no Host and no absolute-form target (HTTP/1.0); the caller
    takes the address the connection arrived on.
    """
    parsed = None
    if host_header is not None:
        parsed = parse_host(host_header)
        if parsed is None:
            return HostRefused(400, "bad_host",
                               f"Host {_shown(host_header)} is not a host name or address "
                               "with an optional :port")
    if target is not None:
        scheme, text = target
        named = parse_host(text)
        if named is None:
            return HostRefused(400, "bad_request_target",
                               f"the request target's authority {_shown(text)} is not a "
                               "host name or address with an optional :port")
        if parsed is not None and _with_default_port(parsed, scheme) != _with_default_port(
                named, scheme):
            return HostRefused(400, "host_mismatch",
                               f"the request target names {authority(*named)!r} but Host "
                               f"names {authority(*parsed)!r}; they must agree")
        parsed = named
    if parsed is None:
        return None
    if matches(parsed[0], accept_hosts):
        return parsed
    return HostRefused(
        403, "forbidden",
        f"Host {parsed[0]!r} is not one of access.accept_hosts; if clients reach "
        "fwproxy by that name, add it there",
    )


def _with_default_port(parsed: tuple[str, int | None], scheme: str) -> tuple[str, int]:
    host, port = parsed
    return host, port if port is not None else (443 if scheme == "https" else 80)


def refuse_cross_site(
    origin: str | None,
    fetch_site: str | None,
    host_header: str | None,
    allow_origins: Sequence[str],
) -> str | None:
    """Why a browser request from another site is refused, or None to accept it.

    Non-browser clients send neither header and pass. A browser's own navigation
    (``Sec-Fetch-Site: none``) passes too, and so does a page of the proxy's own origin
    (scheme, host and port: another port on localhost is another site).
    """
    if origin is None and (fetch_site or "").lower() not in _CROSS:
        return None
    if origin is not None and _origin_allowed(origin, host_header, allow_origins):
        return None
    if origin is None and "*" in allow_origins:
        return None
    return (
        f"a browser page from {origin or 'another site'} may not use fwproxy; "
        "add its origin to access.allow_origins to allow it"
    )


def _origin_allowed(origin: str, host_header: str | None, allow_origins: Sequence[str]
                    ) -> bool:
    text = origin.strip().lower().rstrip("/")
    if "*" in allow_origins or text in allow_origins:
        return True
    return host_header is not None and text == f"http://{host_header.strip().lower()}"


# --- rules: which methods and paths may be forwarded -----------------------------------------

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Headers that name the method a framework should execute instead of the request line's
METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
_NOT_AN_ESCAPE = re.compile(r"%(?![0-9a-f]{2})", re.IGNORECASE)  # %uNNNN, %zz, a lone %
_DOUBLE_ENCODED = re.compile(r"%25(?:[0-9a-f]{2}|u)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COOKIELESS = re.compile(r"\([a-z]\(.*\)\)", re.IGNORECASE)  # ASP.NET's (S(...)), (A(...)), ...
_STRUCTURAL = "/\\.;%()"  # what a look-alike must not fold into
_SEPARATOR = re.compile(r"/|\\|%2f|%5c", re.IGNORECASE)  # what IIS reads as a slash
_SHORT_NAME = re.compile(r"~[0-9]")  # Windows 8.3 names: ADMIN~1


def normalize_path(raw_path: str) -> str:
    """The path rules are matched against: decoded, ``\\`` as ``/``, slashes folded.

    FotoWeb runs on IIS, which treats ``\\`` like ``/``, paths case-insensitively and
    ignores trailing dots and spaces in a name; rules are matched the same way (see `Rule`).
    Everything IIS or ASP.NET would decode or resolve further (the table in the module
    docstring) is refused rather than resolved: what is forwarded is always the client's
    exact bytes, so the proxy must not judge a path the tenant would read differently.
    """
    if not raw_path.isascii():
        raise BadPath("raw non-ASCII bytes in the path (percent-encode them)")
    if ";" in raw_path and any(";" in part for part in _SEPARATOR.split(raw_path)[:-1]):
        raise BadPath("';' (a path parameter) before the last segment of the path")
    path = raw_path
    if "%" in raw_path:
        if _NOT_AN_ESCAPE.search(raw_path):
            raise BadPath("a '%' that is not a %XX escape (such as IIS's %uNNNN) in the path")
        if _DOUBLE_ENCODED.search(raw_path):
            raise BadPath("double percent-encoding in the path")
        try:
            path = unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise BadPath("percent-encoded bytes that are not UTF-8 (such as an overlong "
                          "%c0%af) in the path") from None
    return _resolve(path)


def _resolve(path: str) -> str:
    path = path.replace("\\", "/")
    if _CONTROL.search(path):
        raise BadPath("a control character (NUL, tab, CR, LF, ...) in the path")
    if ":" in path:
        raise BadPath("':' (an NTFS stream name such as admin::$DATA) in the path")
    if "~" in path and _SHORT_NAME.search(path):
        raise BadPath("'~' and a digit (a Windows 8.3 short name such as ADMIN~1) in the path")
    kept_segments = []
    for segment in path.split("/"):
        kept = segment.rstrip(". ")  # Windows ignores trailing dots and spaces in a name
        if kept:
            if kept[0] == "(" and _COOKIELESS.fullmatch(kept):
                raise BadPath("an ASP.NET cookieless segment such as (S(...)) in the path")
            kept_segments.append(kept)
        elif segment:  # ".", "..", ". ", "..%20", "...": what Windows trims to a dot segment
            raise BadPath("'.' or '..' segments (or names of only dots and spaces) in the path")
    return "/" + "/".join(kept_segments)


def path_readings(raw_path: str) -> tuple[str, ...]:
    """Every way the tenant may read the path, normalized; each must be allowed.

    An ASCII path has one. A path with other characters is also read ASCII-folded
    (compatibility forms such as fullwidth letters, accents dropped), as Windows' best-fit
    mappings may; a look-alike of a character that structures the path is refused. A path
    with ``;`` parameters in its last segment (FotoWeb's listing pages, ``…/;o=+;p=2``;
    `normalize_path` refuses them anywhere else) is also read without them, as a server
    that strips path parameters would.
    """
    readings = _readings(raw_path)
    if ";" in raw_path:
        readings += _readings(raw_path[: raw_path.index(";")])
    return tuple(dict.fromkeys(readings))


def _readings(raw_path: str) -> tuple[str, ...]:
    path = normalize_path(raw_path)
    if path.isascii():
        return (path,)
    folded = "".join(c for c in unicodedata.normalize("NFKD", path)
                     if not unicodedata.combining(c))
    if any(folded.count(c) != path.count(c) for c in _STRUCTURAL):
        raise BadPath("a look-alike of '/', '\\', '.', ';', '%' or '(' in the path")
    folded = _resolve(folded)
    return (path,) if folded == path else (path, folded)


def overridden_methods(values: Sequence[str]) -> tuple[str, ...]:
    """The methods named by method-override header values (`METHOD_OVERRIDES`)."""
    return tuple(method for value in values for part in value.split(",")
                 if (method := part.strip().upper()))


def compile_glob(pattern: str) -> re.Pattern[str]:
    """``*`` within a segment, ``**`` across segments; ``/x/**`` also matches ``/x``."""
    body, tail = (pattern[:-3], "(?:/.*)?") if pattern.endswith("/**") else (pattern, "")
    out = []
    i = 0
    while i < len(body):
        if body.startswith("**", i):
            out.append(".*")
            i += 2
        elif body[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(body[i]))
            i += 1
    return re.compile("".join(out) + tail + "/?", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One entry of ``access.rules``: methods (None: any) and path globs, allow or deny."""

    name: str
    action: str
    methods: frozenset[str] | None
    paths: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...] = field(repr=False, compare=False)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return any(pattern.fullmatch(path) for pattern in self.patterns)


def decide_access(
    rules: Sequence[Rule], default: str, read_only: bool, method: str, path: str
) -> tuple[bool, str]:
    """(allowed, which rule decided) for a normalized path; first match wins."""
    if read_only and method not in READ_METHODS:
        return False, "read_only"
    for rule in rules:
        if rule.matches(method, path):
            return rule.action == "allow", rule.name
    return default == "allow", "default"


def decide_all(
    rules: Sequence[Rule], default: str, read_only: bool, methods: Sequence[str],
    paths: Sequence[str],
) -> tuple[bool, str, str, str]:
    """`decide_access` for every (method, path) reading: (allowed, rule, method, path) of the
    first denial, else of the first reading; allowed only when every reading is."""
    first: tuple[bool, str, str, str] | None = None
    for method in methods:
        for path in paths:
            allowed, rule = decide_access(rules, default, read_only, method, path)
            if not allowed:
                return False, rule, method, path
            first = first or (True, rule, method, path)
    assert first is not None, "no reading to decide"
    return first


def client_allowed(remote: str | None, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    """Whether the client address is in ``access.allow_from`` (a Unix socket has none: yes)."""
    if remote is None or remote == "":
        return True
    try:
        address = ip_address(remote.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def peer_trusted(remote: str | None, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    """Whether the socket peer is in ``access.trust_forwarded_from``, so that the forwarding
    headers it sends are kept. A Unix-socket peer has no address and is never trusted."""
    return bool(remote) and bool(networks) and client_allowed(remote, networks)
