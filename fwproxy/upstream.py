"""The tenant side: the pooled session, header rules both ways, and the one error boundary."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from types import TracebackType
from urllib.parse import quote, unquote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import TenantConfig
from .direct import MAX_HEADER_LINE, READ_BUFSIZE, SKIP_AUTO_HEADERS, TenantRequest
from .encodings import Echo
from .exceptions import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .params import may_name, names_param
from .private import read_ca_file
from .retry import Failure

log = logging.getLogger("fwproxy.upstream")

# RFC 9110 7.6.1 hop-by-hop fields, plus the de-facto ones. Never forwarded either way.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
# Who the client is and where it connected: the tenant may log or believe these, so they
# come from fwproxy (the socket and the validated Host), never from the client. From a peer
# in access.trust_forwarded_from (a reverse proxy in front) these are kept, X-Forwarded-For
# extended with the peer's address.
FORWARDED_TRUSTED = frozenset({
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-real-ip", "x-client-ip", "true-client-ip",
})
# Dropped whoever sends them. The original-URL headers would have IIS (URL Rewrite) and
# frameworks on it serve another path than the one access.rules judged; Forwarded (RFC
# 7239) fwproxy does not maintain, so no value of it could be told from a forgery.
FORWARDED_NEVER = frozenset({
    "forwarded", "x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-uri",
    "x-forwarded-path", "x-envoy-original-path", "x-envoy-original-url",
})
# Not hop-by-hop, but the proxy sets these itself (or aiohttp answers Expect for us), and
# the client's API key is for fwproxy only.
_OWN = HOP_BY_HOP | {"host", "expect", "x-fwproxy-key"} | FORWARDED_NEVER
REQUEST_DROP = _OWN | FORWARDED_TRUSTED
_REQUEST_DROP_AUTH = REQUEST_DROP | {"authorization"}
_TRUSTED_DROP = _OWN
_TRUSTED_DROP_AUTH = _OWN | {"authorization"}
_LOCATIONS = frozenset({"location", "content-location"})
# A Connection header naming only these (keep-alive, te, ...) adds nothing to drop: the
# shared drop set serves, no per-request copy is built
_DROPPED_ANYWAY = HOP_BY_HOP
def create_session(tenant: TenantConfig) -> aiohttp.ClientSession:
    """One pooled session for the whole process: keep-alive, no cookies, no decompression."""
    ssl_context: ssl.SSLContext | bool = True
    if not tenant.verify_tls:
        ssl_context = False
    elif tenant.ca_file is not None:
        ssl_context = ssl.create_default_context()
        ssl_context.load_verify_locations(cadata=read_ca_file(tenant.ca_file))  # checked
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ssl=ssl_context, keepalive_timeout=30, enable_cleanup_closed=True
    )
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies must not reach another
        auto_decompress=False,
        # tenant.read_timeout is kept by the proxy's watchdog (watchdog.py), on one timer
        timeout=aiohttp.ClientTimeout(total=None, connect=tenant.connect_timeout),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        read_bufsize=READ_BUFSIZE,
        max_line_size=MAX_HEADER_LINE,  # tenants send long CSP, Link and Set-Cookie values
        max_field_size=MAX_HEADER_LINE,
        request_class=TenantRequest,
    )
    # aiohttp sends an idempotent request once more, silently, when a reused connection
    # breaks (client.py, ClientSession._request: `retry_persistent_connection`); fwproxy's
    # retries (attempts.py) are the only ones, so that every attempt the tenant sees is
    # counted and bounded (tests/test_attempts.py holds the attribute to its meaning)
    session._retry_connection = False
    return session


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in Connection: they are hop-by-hop for this message too."""
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        for part in value.split(","):
            name = part.strip().lower()
            if name:
                named.add(name)
    return named


def _drop_set(base: frozenset[str], headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """`base` plus what Connection names (usually nothing new: ``keep-alive``, ``close``)."""
    if "Connection" not in headers:
        return base
    named = _connection_named(headers)
    return base if named <= _DROPPED_ANYWAY else base | named


def request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    drop_authorization: bool,
    client_ip: str | None,
    proxy_host: str,
    trusted: bool = False,
) -> CIMultiDict[str]:
    """The client's headers, cleaned for the tenant; the token is added after this.

    `client_ip` is the socket peer, `proxy_host` the validated Host (``host[:port]``).
    The client's forwarding headers are replaced by fwproxy's X-Forwarded-For/-Proto/-Host,
    unless the peer is `trusted`: then X-Forwarded-For is extended with `client_ip` and the
    peer's other FORWARDED_TRUSTED values are kept (fwproxy's fill in what it left out).
    """
    if trusted:
        base = _TRUSTED_DROP_AUTH if drop_authorization else _TRUSTED_DROP
    else:
        base = _REQUEST_DROP_AUTH if drop_authorization else REQUEST_DROP
    drop = _drop_set(base, incoming)
    out: CIMultiDict[str] = CIMultiDict(
        [(name, value) for name, value in incoming.items()
         if name.lower() not in drop and "_" not in name]
    )
    if not _underscores_logged and len(out) < len(incoming) and "_" in "".join(incoming):
        _dropped_underscores(incoming)  # (Host is always dropped: the join says whether any)
    if trusted:
        previous = out.popall("X-Forwarded-For", None)
        if client_ip:
            previous = [*previous, client_ip] if previous else [client_ip]
        if previous:
            out.add("X-Forwarded-For", ", ".join(previous))
        out.setdefault("X-Forwarded-Proto", "http")
        out.setdefault("X-Forwarded-Host", proxy_host)
        return out
    if client_ip:  # (dropped above: adding is enough)
        out.add("X-Forwarded-For", client_ip)
    out.add("X-Forwarded-Proto", "http")
    out.add("X-Forwarded-Host", proxy_host)
    return out


_underscores_logged = False


def _dropped_underscores(incoming: CIMultiDictProxy[str]) -> None:
    """Say once per process that request headers with ``_`` in their names are dropped."""
    global _underscores_logged
    if _underscores_logged:
        return
    names = sorted({name for name in incoming if "_" in name})
    if names:
        _underscores_logged = True
        log.warning("request headers whose names hold '_' are dropped, as nginx does: IIS "
                    "reads X_Original_URL as X-Original-URL (first seen: %s; said once)",
                    ", ".join(repr(name[:40]) for name in names[:3]))


def response_headers(
    incoming: CIMultiDictProxy[str],
    tenant_origin: URL,
    proxy_origin: Callable[[], URL],
    query_token: str | None,
    echo: Echo | None = None,
) -> list[tuple[str, str]]:
    """The tenant's headers, cleaned for the client, with self-references pointed at us
    (`proxy_origin` is asked only when there is a Location to rewrite).

    `query_token`: the token went upstream in the query (None: in the header), so a
    ``Location`` loses its ``access_token`` parameter. `echo` (encodings.echo_pattern of the
    current and the previous access token) finds a token in any encoding, in whichever
    placement it went: any header that still carries one (`carries`; a login redirect's
    ``ReturnUrl``, a ``Link``, a ``Set-Cookie``, a debug header) is dropped, with a warning
    that names it. The headers are searched once, joined; only a hit looks at each.
    """
    drop = _drop_set(HOP_BY_HOP, incoming)
    strip_token = query_token is not None
    out: list[tuple[str, str]] = []
    texts: list[str] = []  # every name and value, for one search
    encoded: list[str] = []  # the values with a %, for the percent-decoding rounds
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or (not value.isprintable() and _UNSENDABLE.search(value)):
            continue
        if lower in _LOCATIONS:
            value = rewrite_location(value, tenant_origin, proxy_origin(), strip_token)
        out.append((name, value))
        texts += name, value
        if "%" in value:
            encoded.append(value)
    if echo is not None and (echo("\n".join(texts))
                             or (encoded and carries("\n".join(encoded), echo))):
        return _without_token(out, echo)
    return out


def _without_token(headers: list[tuple[str, str]], echo: Echo
                   ) -> list[tuple[str, str]]:
    kept = [(name, value) for name, value in headers
            if not carries(value, echo) and not carries(name, echo)]
    if len(kept) < len(headers):
        dropped = sorted({name for name, value in headers if (name, value) not in kept})
        log.warning("the tenant echoed the access token in the %s response header%s: "
                    "dropped", ", ".join(dropped), "s" * (len(dropped) > 1))
    return kept


def response_reason(reason: str | None, echo: Echo | None) -> str | None:
    """The tenant's reason phrase, or None (the standard one) when it echoes the token."""
    if reason and echo is not None and carries(reason, echo):
        log.warning("the tenant echoed the access token in the reason phrase of its status "
                    "line: replaced")
        return None
    return reason


DECODE_ROUNDS = 4  # percent-decodings looked through: raw, once, twice, ... nested


def carries(value: str, echo: Echo) -> bool:
    """Whether a token shows in `value`: in any of its encodings (`echo`, see
    encodings.echo_pattern), also once percent-decoded up to `DECODE_ROUNDS` times, as a
    parameter of a URL that is itself a parameter holds it. A value that still decodes
    further after that many rounds is taken to carry it: it hides something, and a header
    that hides something is not worth the risk."""
    for _ in range(DECODE_ROUNDS + 1):
        if echo(value):
            return True
        if "%" not in value or len(value) < echo.shortest:  # decoding only shortens
            return False
        decoded = unquote(value, errors="replace")
        if decoded == value:
            return False
        value = decoded
    return True


_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # aiohttp would refuse to send these


def rewrite_location(value: str, tenant: URL, proxy_origin: URL, strip_token: bool) -> str:
    """Point an absolute URL on the tenant at the proxy; anything else passes as it is."""
    try:
        url = URL(value, encoded=True)
        on_tenant = bool(url.absolute and url.scheme) and _same_origin(url, tenant)
    except ValueError:
        return value
    query = without_param(url.raw_query_string, "access_token") if strip_token else (
        url.raw_query_string
    )
    if not on_tenant and query == url.raw_query_string:
        return value
    if on_tenant:
        head, path = str(proxy_origin).rstrip("/"), url.raw_path or "/"
    elif url.absolute:
        head, path = f"{url.scheme}:" * bool(url.scheme) + "//" + url.raw_authority, url.raw_path
    else:
        head, path = "", url.raw_path
    tail = f"?{query}" * bool(query) + f"#{url.raw_fragment}" * bool(url.raw_fragment)
    return head + path + tail


def _same_origin(url: URL, tenant: URL) -> bool:
    host = (url.host or "").lower().rstrip(".")
    return (url.scheme.lower(), host, url.port) == (tenant.scheme, tenant.host, tenant.port)


def proxy_origin(host: str) -> URL:
    """Where the client reached us (the validated ``host[:port]``, never aiohttp's
    `request.host`, which an absolute-form target sets): the origin Location headers are
    rewritten to."""
    try:
        return URL.build(scheme="http", authority=host, encoded=True)
    except ValueError:
        return URL("http://127.0.0.1")


def has_param(query: str, name: str) -> bool:
    """Whether the raw query string carries parameter `name` (lower-case ASCII), its name
    read as the tenant reads it: percent-decoded, case-insensitively (`names_param`), so
    ``ACCESS_TOKEN`` and ``access%5Ftoken`` are ``access_token`` too."""
    if not may_name(query, name):
        return False
    return any(names_param(part, name) for part in query.split("&"))


def without_param(query: str, name: str) -> str:
    """Remove every `name` parameter (as `has_param` finds them), leaving the other bytes
    exactly as they were."""
    if not may_name(query, name):
        return query
    return "&".join(part for part in query.split("&") if not names_param(part, name))


def add_param(query: str, name: str, value: str) -> str:
    pair = f"{name}={quote(value, safe='')}"
    return f"{query}&{pair}" if query else pair


class map_upstream_errors:  # a context manager, named and used like a function
    """Translate aiohttp's exceptions about the tenant into `UpstreamError` (the one boundary).

    A class rather than a `contextlib.contextmanager`: it is entered for every read.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, UpstreamError) and isinstance(
            exc, (asyncio.TimeoutError, aiohttp.ClientError)
        ):
            raise translate(exc) from exc


def failure_of(error: UpstreamError) -> Failure | None:
    """How an attempt that raised `error` ended, for the retry and breaker decisions; None
    when the tenant answered, but not in HTTP (not worth asking again)."""
    if isinstance(error, UpstreamTimeout):
        cause = error.__cause__
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            return Failure.CONNECT_REFUSED  # the connection never opened: nothing was sent
        return Failure.TIMEOUT
    if isinstance(error, UpstreamConnectError):
        return Failure.CONNECT_REFUSED
    cause = error.__cause__
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return Failure.CLOSED_BEFORE_RESPONSE
    if isinstance(cause, aiohttp.ClientOSError):
        return Failure.RESET_BEFORE_RESPONSE
    return None


def translate(exc: BaseException) -> UpstreamError:
    """The `UpstreamError` that says what `exc` means for the client."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("the tenant did not answer within the configured timeout")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return UpstreamConnectError(f"TLS certificate of the tenant rejected: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to the tenant: {exc.strerror or exc}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamProtocolError("the tenant's response body was cut short or malformed")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return UpstreamProtocolError("the tenant closed the connection mid-exchange")
    if isinstance(exc, aiohttp.ClientResponseError):  # its message quotes the tenant's bytes
        return UpstreamProtocolError("the tenant sent a malformed response")
    return UpstreamProtocolError(f"exchange with the tenant failed: {type(exc).__name__}")
