"""Who may use the proxy: pure checks on a request's Host and browser-origin headers.

A proxy on loopback is still reachable from every web page the user opens: by DNS
rebinding (the page's own hostname re-pointed at 127.0.0.1, so `Host` names the attacker's
domain) and by cross-site requests a browser sends without asking (a form POST, an image).
Both would act with the proxy's token. `Host` must name the proxy (``access.accept_hosts``),
and a browser request from another site needs its origin in ``access.allow_origins``.
"""

from __future__ import annotations

from collections.abc import Sequence

from yarl import URL

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
    accept_hosts: Sequence[str],
    allow_origins: Sequence[str],
) -> str | None:
    """Why a browser request from another site is refused, or None to accept it.

    Non-browser clients send neither header and pass. A browser's own navigation
    (``Sec-Fetch-Site: none``) passes too.
    """
    if origin is None and (fetch_site or "").lower() not in _CROSS:
        return None
    if origin is not None and _origin_allowed(origin, accept_hosts, allow_origins):
        return None
    if origin is None and "*" in allow_origins:
        return None
    return (
        f"a browser page from {origin or 'another site'} may not use fwproxy; "
        "add its origin to access.allow_origins to allow it"
    )


def _origin_allowed(
    origin: str, accept_hosts: Sequence[str], allow_origins: Sequence[str]
) -> bool:
    text = origin.strip().lower().rstrip("/")
    if "*" in allow_origins or text in allow_origins:
        return True
    if text == "null":
        return False
    try:
        url = URL(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and matches(host_name(url.raw_host or ""),
                                                       accept_hosts)
