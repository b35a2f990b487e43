"""Who may use the proxy, and for what: pure checks, each a function of the request's parts.

Client address (``allow_from``), Host and browser origin, method and path rules.

A proxy on loopback is still reachable from every web page the user opens: by DNS
rebinding (the page's own hostname re-pointed at 127.0.0.1, so `Host` names the attacker's
domain) and by cross-site requests a browser sends without asking (a form POST, an image).
Both would act with the proxy's token. `Host` must name the proxy (``access.accept_hosts``),
and a browser request from another site needs its origin in ``access.allow_origins``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import unquote

DEFAULT_ACCEPT_HOSTS = ("localhost", "127.0.0.1", "::1")
_CROSS = frozenset({"cross-site", "same-site"})


def host_name(host_header: str) -> str:
    """``[::1]:8080`` -> ``::1``; ``Example.COM.:80`` -> ``example.com``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Exact names, ``*.example.com`` for subdomains, ``*`` for any."""
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def refuse_host(host_header: str | None, accept_hosts: Sequence[str]) -> str | None:
    """Why this Host is refused, or None to accept it.

    No Host at all (HTTP/1.0 tools) is accepted: every browser sends one.
    """
    if host_header is None:
        return None
    name = host_name(host_header)
    if matches(name, accept_hosts):
        return None
    return (
        f"Host {name or '(none)'!r} is not one of access.accept_hosts; if clients reach "
        "fwproxy by that name, add it there"
    )


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
