"""Who may use the proxy, and for what: pure checks, each a function of the request's parts.

Client address (``allow_from``), Host and browser origin, method and path rules.

A proxy on loopback is still reachable from every web page the user opens: by DNS
rebinding (the page's own hostname re-pointed at 127.0.0.1, so `Host` names the attacker's
domain) and by cross-site requests a browser sends without asking (a form POST, an image).
Both would act with the proxy's token. `Host` must name the proxy (``access.accept_hosts``),
and a browser request from another site needs its origin in ``access.allow_origins``.
`Host` is read strictly (`parse_host`): what passes is the only host fwproxy ever repeats
(X-Forwarded-Host, a rewritten Location), so a lenient reading would let a client choose it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import NamedTuple
from urllib.parse import unquote

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
_DOUBLE_ENCODED = re.compile(r"%25[0-9a-f]{2}", re.IGNORECASE)


class BadPath(ValueError):
    """A path that is refused (400) rather than guessed at."""


def normalize_path(raw_path: str) -> str:
    """The path rules are matched against: decoded, ``\\`` as ``/``, slashes folded.

    FotoWeb runs on IIS, which treats ``\\`` like ``/``, paths case-insensitively and
    ignores trailing dots and spaces in a name; rules are matched the same way (see `Rule`).
    Dot segments and double encoding are refused rather than resolved: what is forwarded is
    always the client's exact bytes, so the proxy must not judge a path the tenant would
    read differently.
    """
    if _DOUBLE_ENCODED.search(raw_path):
        raise BadPath("double percent-encoding in the path")
    path = unquote(raw_path, errors="replace").replace("\\", "/")
    if "\x00" in path:
        raise BadPath("NUL in the path")
    segments = path.split("/")
    if any(segment and not segment.strip(".") for segment in segments):
        raise BadPath("'.' or '..' segments in the path")
    # Windows ignores trailing dots and spaces in a name: "admin." is "admin" there
    return "/" + "/".join(kept for segment in segments if (kept := segment.rstrip(". ")))


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
