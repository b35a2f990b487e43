"""Property-based tests and a bounded fuzz run against a live proxy over real sockets.

One tenant and one proxy run for the whole module on an event loop in a background thread;
hypothesis drives them with plain blocking sockets, so each example costs one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import socket
import threading
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwproxy.access import Rule, compile_glob, decide_all, path_readings
from fwproxy.app import create_app
from fwproxy.config import parse_config
from fwproxy.exceptions import BadPath
from fwproxy.keys import add_key
from fwproxy.sim import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TenantState, create_tenant_app
from fwproxy.upstream import HOP_BY_HOP

DENY = "/fotoweb/admin"
HOP = sorted(HOP_BY_HOP)


class Live:
    """The running pair: the proxy's port, an API key, the tenant's record, logged errors."""

    def __init__(self, port: int, key: str, state: TenantState,
                 errors: list[logging.LogRecord]) -> None:
        self.port, self.key, self.state, self.errors = port, key, state, errors

    def __repr__(self) -> str:
        return f"Live(port={self.port})"


class _Errors(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Tenant + proxy (deny rule, API keys) on loopback, in a thread; stopped at the end."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    key = add_key(keys_file, "prop")
    state = TenantState()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        tenant = web.AppRunner(create_tenant_app(state))
        await tenant.setup()
        tenant_site = web.TCPSite(tenant, "127.0.0.1", 0)
        await tenant_site.start()
        tenant_port = tenant.addresses[0][1]
        proxy_settings = parse_config({
            "tenant": {"url": f"http://127.0.0.1:{tenant_port}", "allow_insecure_http": True},
            "auth": {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET},
            "access": {"api_keys_file": str(keys_file),
                       "rules": [{"name": "no-admin", "paths": [DENY + "/**"],
                                  "action": "deny"}]},
        }, environ={})
        proxy = web.AppRunner(create_app(proxy_settings), handler_cancellation=True)
        await proxy.setup()
        proxy_site = web.TCPSite(proxy, "127.0.0.1", 0)
        await proxy_site.start()
        holder["port"] = proxy.addresses[0][1]
        ready.set()
        await stop.wait()
        await proxy.cleanup()
        await tenant.cleanup()

    errors: list[logging.LogRecord] = []
    handler = _Errors(errors)
    logging.getLogger().addHandler(handler)
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield Live(holder["port"], key, state, errors)
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()
    logging.getLogger().removeHandler(handler)


def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read the answer until the proxy closes (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def tenant_view(raw_path: str) -> str:
    """How an IIS-hosted tenant reads a path: decoded once, \\ as /, case-folded, dot
    segments resolved, slashes folded, trailing dots and spaces of a name ignored."""
    path = unquote(raw_path).replace("\\", "/").lower()
    path = re.sub("/+", "/", path)
    path = posixpath.normpath(path) if path else "/"
    return "/".join(s if not s.strip(".") else s.rstrip(". ") for s in path.split("/"))


SEGMENT = st.one_of(
    st.sampled_from(["fotoweb", "admin", "ADMIN", "%61dmin", "adm%69n", "archives", ".", "..",
                     "%2e", "%2E%2e", "", "me", "%2561dmin", "admin%2f", "x\\admin",
                     "%5cadmin", "a;b", "%20", "~", "é"]),
    st.text(alphabet="abcdmin%2Ff5c.-_~", min_size=1, max_size=8),
)


def encode_path(segments: list[str]) -> str:
    path = "/" + "/".join(segments)
    return "".join(c if c.isascii() and c.isprintable() and c != " "
                   else "".join(f"%{b:02X}" for b in c.encode()) for c in path)


FOTOWEB = st.sampled_from(["fotoweb", "FotoWeb", "%66otoweb", "fotoweb\\", "", "."])
ADMIN = st.sampled_from(["admin", "ADMIN", "Admin", "%61dmin", "adm%69n", "%2561dmin",
                         "admin%2fusers", "admin%2F", "%41DMIN", "admin.", "admin. ",
                         "admin%20", "admin\\x"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.lists(SEGMENT, max_size=2), fotoweb=FOTOWEB,
       middle=st.lists(st.sampled_from(["", ".", "..", "x", "%2e", "%2e%2e"]), max_size=2),
       admin=st.one_of(ADMIN, SEGMENT), tail=st.lists(SEGMENT, max_size=2))
def test_rule_decision_and_forwarded_bytes_agree(
    live: Live, head: list[str], fotoweb: str, middle: list[str], admin: str, tail: list[str]
) -> None:
    raw_path = encode_path([*head, fotoweb, *middle, admin, *tail])
    before = len(live.state.seen)
    answer = exchange(live.port, f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"X-Fwproxy-Key: {live.key}\r\nConnection: close\r\n\r\n".encode())
    status = int(answer.split(b" ", 2)[1])
    forwarded = len(live.state.seen) > before
    view = tenant_view(raw_path)
    if view == DENY or view.startswith(DENY + "/"):
        assert not forwarded, f"{raw_path!r} reached the tenant as {view!r}"
        assert status in (400, 403)
    if forwarded:
        assert live.state.seen[-1].path_qs == raw_path  # the client's exact bytes
    else:
        assert status in (400, 403)


# --- paths: whatever IIS/ASP.NET would read under /fotoweb/admin is never forwarded ---------

_IIS_ESCAPE = re.compile(r"%u([0-9a-f]{4})|%([0-9a-f]{2})", re.IGNORECASE)
_COOKIELESS = re.compile(r"\([A-Za-z]\(.*\)\)")


def _lenient_utf8(data: bytes) -> str:
    """UTF-8 as an old or lenient decoder reads it: overlong forms decode (``c0 af`` is
    ``/``), anything else invalid falls back to Latin-1 (http.sys's EnableNonUTF8)."""
    out, i = [], 0
    while i < len(data):
        lead = data[i]
        extra = 1 if 0xC0 <= lead < 0xE0 else 2 if 0xE0 <= lead < 0xF0 else 0
        tail = data[i + 1:i + 1 + extra]
        if extra and len(tail) == extra and all(0x80 <= b < 0xC0 for b in tail):
            code = lead & (0x3F >> extra)
            for b in tail:
                code = code << 6 | (b & 0x3F)
            out.append(chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd")
            i += 1 + extra
        else:
            out.append(chr(lead))
            i += 1
    return "".join(out)


def iis_view(raw_path: str) -> str:
    """The most any server in the tenant's chain could make of a path: %uNNNN and %XX
    decoded in one pass (overlong UTF-8 too), best-fit folded (NFKD, marks dropped), \\ as
    /, ;parameters and ASP.NET cookieless segments removed, trailing dots and spaces
    trimmed before dot segments resolve, upper-cased as .NET compares."""
    data = bytearray()
    last = 0
    for match in _IIS_ESCAPE.finditer(raw_path):
        data += raw_path[last:match.start()].encode("utf-8", "surrogateescape")
        if match.group(1):
            data += chr(int(match.group(1), 16)).encode("utf-8", "surrogatepass")
        else:
            data.append(int(match.group(2), 16))
        last = match.end()
    data += raw_path[last:].encode("utf-8", "surrogateescape")
    text = unicodedata.normalize("NFKD", _lenient_utf8(bytes(data)))
    text = "".join(c for c in text if not unicodedata.combining(c)).replace("\\", "/")
    out: list[str] = []
    for segment in text.split("/"):
        segment = segment.partition(";")[0]
        if _COOKIELESS.fullmatch(segment):
            continue
        if segment and not segment.strip(". "):
            if segment.count(".") >= 2 and out:
                out.pop()
            continue
        if segment.rstrip(". "):
            out.append(segment.rstrip(". "))
    return "/" + "/".join(out).upper()


PATH_TOKEN = st.sampled_from([
    "fotoweb", "FotoWeb", "admin", "ADMIN", "archives", "x", "", ".", "..", "...", "%2e%2e",
    "%61dmin", "%u0061dmin", "%U0041DMIN", "%u002f", "%u002e%u002e", "adm%C4%B1n",
    "%EF%BD%81dmin", "a%CC%81dmin", "admin.", "admin%20", "admin;x", ";", ";o=+;p=1", "(S(x))",
    "%28S%28x%29%29", "..%20", "..%2e%20", ". .", "%c0%ae%c0%ae", "%c0%af", "%e0%80%af",
    "%EF%BC%8F", "%EF%BC%8E%EF%BC%8E", "%2f", "%2F", "%5c", "\\", "%00", "%09", "%2561dmin",
    "%25u0061dmin", "%zz", "%", "caf%C3%A9", "%E2%80%A5",
])
PATH_SEGMENT = st.lists(PATH_TOKEN, min_size=1, max_size=3).map("".join)
NO_ADMIN = Rule("no-admin", "deny", None, ("/fotoweb/admin/**",),
                (compile_glob("/fotoweb/admin/**"),))
ONLY_ARCHIVES = Rule("archives", "allow", None, ("/fotoweb/archives/**",),
                     (compile_glob("/fotoweb/archives/**"),))


@settings(max_examples=3000, deadline=None)
@given(segments=st.lists(PATH_SEGMENT, min_size=1, max_size=5))
def test_what_iis_reads_as_admin_is_never_forwarded(segments: list[str]) -> None:
    raw_path = "/" + "/".join(segments)
    view = iis_view(raw_path)
    try:
        readings = path_readings(raw_path)
    except BadPath:
        return  # refused with 400: never forwarded
    if view == "/FOTOWEB/ADMIN" or view.startswith("/FOTOWEB/ADMIN/"):
        allowed, *_ = decide_all([NO_ADMIN], "allow", False, ["GET"], readings)
        assert not allowed, (raw_path, view, readings)
    allowed, *_ = decide_all([ONLY_ARCHIVES], "deny", False, ["GET"], readings)
    if allowed:  # an allow-list cannot be escaped either
        assert view == "/FOTOWEB/ARCHIVES" or view.startswith("/FOTOWEB/ARCHIVES/"), (
            raw_path, view, readings)


HEADER_NAME = st.one_of(
    st.sampled_from([*HOP, "X-Fwproxy-Key", "X-Custom", "Accept", "Cookie", "X-Named"]),
    st.from_regex(r"\AX-[A-Za-z0-9-]{1,12}\Z"),
)
HEADER_VALUE = st.from_regex(r"\A[ -~]{0,40}\Z").map(str.strip)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=8),
       named=st.lists(st.sampled_from(["X-Named", "X-Custom", "Accept", "Authorization"]),
                      max_size=3))
def test_hop_by_hop_and_key_headers_never_reach_the_tenant(
    live: Live, headers: list[tuple[str, str]], named: list[str]
) -> None:
    lines = [f"{name}: {value}" for name, value in headers
             if name.lower() not in ("x-fwproxy-key", "connection", "transfer-encoding",
                                     "content-length", "upgrade")]
    connection = ", ".join(["close", *named])
    request = "\r\n".join([
        "GET /sim/echo HTTP/1.1", "Host: 127.0.0.1", f"X-Fwproxy-Key: {live.key}",
        f"Connection: {connection}", *lines, "", "",
    ]).encode()
    before = len(live.state.seen)
    answer = exchange(live.port, request)
    if len(live.state.seen) == before:
        assert int(answer.split(b" ", 2)[1]) < 500  # refused cleanly (e.g. TE: chunked)
        return
    seen = live.state.seen[-1].headers
    for name in (*HOP, "x-fwproxy-key", *(n.lower() for n in named if n != "Authorization")):
        assert name not in seen, name
    # a client cannot make "Connection: Authorization" strip the proxy's token
    assert seen["authorization"][0].startswith("Bearer ")


REQUEST_LINE = st.one_of(
    st.tuples(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE",
                               "PROPFIND", "get", "G ET", ""]),
              st.one_of(st.sampled_from(["/", "*", "http://evil.example/x", "evil:443",
                                         "/sim/echo?a=%zz", "/%00", "//x", "/\\x"]),
                        st.text(max_size=30)),
              st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]))
    .map(lambda t: " ".join(t)),
    st.text(max_size=60),
)
HEADER_LINE = st.one_of(
    st.tuples(st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Expect",
                               "Connection", "Authorization", "X-Fwproxy-Key", "Origin",
                               "Sec-Fetch-Site", "X"]),
              st.text(max_size=30)).map(lambda t: f"{t[0]}: {t[1]}"),
    st.text(max_size=40),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=REQUEST_LINE, headers=st.lists(HEADER_LINE, max_size=6),
       body=st.binary(max_size=64))
def test_fuzz_request_handling_never_breaks_the_proxy(
    live: Live, line: str, headers: list[str], body: bytes
) -> None:
    request = "\r\n".join([line, *headers, "Connection: close", "", ""])
    data = request.encode("utf-8", "surrogateescape") + body
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # no more bytes will come: nothing may hang
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:
        assert re.match(rb"HTTP/\d\.\d \d{3} ", answer), answer[:80]
        assert int(answer[9:12]) != 500, answer[:300]
    assert not [r for r in live.errors if r.name.startswith(("fwproxy", "aiohttp"))], \
        [r.getMessage() for r in live.errors]


def test_the_proxy_is_healthy_after_all_that(live: Live) -> None:
    answer = exchange(live.port, f"GET /fotoweb/me HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"X-Fwproxy-Key: {live.key}\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200")
    assert not live.errors
