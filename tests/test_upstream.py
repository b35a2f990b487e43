"""upstream.py's pure functions as tables (no event loop): the header rules both ways,
Location rewriting, the query-parameter helpers, and finding the token a tenant echoed."""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from fwproxy import upstream
from fwproxy.encodings import echo_pattern
from fwproxy.upstream import (
    add_param,
    carries,
    has_param,
    request_headers,
    response_headers,
    response_reason,
    rewrite_location,
    without_param,
)

# --- request headers: what the client sent, cleaned for the tenant ---------------------------

FORGED = {
    "X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "443", "X-Real-IP": "10.9.8.7",
    "Forwarded": "for=10.9.8.7;host=evil.example;proto=https", "X-Client-IP": "10.9.8.7",
    "True-Client-IP": "10.9.8.7", "X-Original-URL": "/fotoweb/admin/",
    "X-Rewrite-URL": "/fotoweb/admin/", "X-Forwarded-Uri": "/fotoweb/admin/",
}
UNDERSCORED = {**{name.replace("-", "_"): value for name, value in FORGED.items()},
               "X_Fwproxy_Key": "k", "X_HTTP_Method_Override": "DELETE", "_": "x"}
OURS = {"x-forwarded-for": ["127.0.0.1"], "x-forwarded-proto": ["http"],
        "x-forwarded-host": ["localhost:8080"]}


@pytest.mark.parametrize(
    ("sent", "trusted", "expected"),
    [
        ({}, False, OURS),
        ({}, True, OURS),
        (FORGED, False, OURS),  # every forged value replaced or dropped
        ({name.upper(): value for name, value in FORGED.items()}, False, OURS),
        # a trusted proxy in front: its values are kept, X-Forwarded-For extended; the
        # original-URL headers and Forwarded still go (they would move the request past
        # access.rules, and fwproxy keeps no Forwarded)
        (FORGED, True, {
            "x-forwarded-for": ["10.9.8.7, 127.0.0.1"], "x-forwarded-proto": ["https"],
            "x-forwarded-host": ["evil.example"], "x-forwarded-port": ["443"],
            "x-real-ip": ["10.9.8.7"], "x-client-ip": ["10.9.8.7"],
            "true-client-ip": ["10.9.8.7"]}),
        ({"X-Forwarded-For": "10.0.0.1, 10.0.0.2"}, True, {
            **OURS, "x-forwarded-for": ["10.0.0.1, 10.0.0.2, 127.0.0.1"]}),
        (CIMultiDict([("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")]),
         True, {**OURS, "x-forwarded-for": ["10.0.0.1, 10.0.0.2, 127.0.0.1"]}),
        ({"X-Forwarded-Proto": "https"}, True, {**OURS, "x-forwarded-proto": ["https"]}),
        # a header the client names in Connection is hop-by-hop even from a trusted peer
        ({"Connection": "X-Forwarded-Host", "X-Forwarded-Host": "evil.example"}, True, OURS),
        # '_' for '-' (IIS reads X_Original_URL as X-Original-URL): every name with '_' goes,
        # whoever sends it (red team)
        (UNDERSCORED, False, OURS),
        (UNDERSCORED, True, OURS),
        ({"X_Custom": "1", "X-Custom": "2"}, False, {**OURS, "x-custom": ["2"]}),
    ],
)
def test_request_headers_replace_forwarding_headers(
    sent: Any, trusted: bool, expected: dict[str, list[str]]
) -> None:
    incoming = CIMultiDictProxy(CIMultiDict(sent))
    out = request_headers(incoming, drop_authorization=False, client_ip="127.0.0.1",
                          proxy_host="localhost:8080", trusted=trusted)
    got: dict[str, list[str]] = {}
    for name, value in out.items():
        got.setdefault(name.lower(), []).append(value)
    got.pop("connection", None)
    assert got == expected


def test_underscore_headers_are_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "_underscores_logged", False)
    for name in ("X_Original_URL", "X_Other", "X_Third"):
        request_headers(CIMultiDictProxy(CIMultiDict({name: "1", "Host": "h"})),
                        drop_authorization=False, client_ip=None, proxy_host="h")
    said = [r.getMessage() for r in caplog.records if "'_'" in r.getMessage()]
    assert len(said) == 1
    assert "'X_Original_URL'" in said[0]


def test_request_headers_without_a_peer_address() -> None:
    # a Unix socket: no address to forward, and no peer to trust
    out = request_headers(CIMultiDictProxy(CIMultiDict(FORGED)), drop_authorization=True,
                          client_ip=None, proxy_host="localhost")
    assert dict(out) == {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "localhost"}


def test_request_headers_drop_hop_by_hop_and_what_fwproxy_sets_itself() -> None:
    incoming = CIMultiDictProxy(CIMultiDict([
        ("Authorization", "Basic Zm9vOmJhcg=="), ("Host", "localhost:8080"),
        ("Expect", "100-continue"), ("X-Fwproxy-Key", "k3y"),
        ("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret-hop"), ("Keep-Alive", "5"),
        ("TE", "trailers"), ("Upgrade", "websocket"), ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"), ("Transfer-Encoding", "chunked"),
        ("X-End-To-End", "kept"), ("Accept", "*/*"),
    ]))
    forwarding = [("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-Proto", "http"),
                  ("X-Forwarded-Host", "localhost:8080")]
    for drop_authorization, authorization in ((True, []),
                                              (False, [("Authorization", "Basic Zm9vOmJhcg==")])):
        out = request_headers(incoming, drop_authorization=drop_authorization,
                              client_ip="127.0.0.1", proxy_host="localhost:8080")
        assert list(out.items()) == [
            *authorization, ("X-End-To-End", "kept"), ("Accept", "*/*"), *forwarding]


# --- response headers: what the tenant sent, cleaned for the client --------------------------

TENANT = URL("http://tenant.example")
PROXY = URL("http://127.0.0.1:8080")


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def never_asked() -> URL:
    raise AssertionError("the proxy origin is asked only for a Location to rewrite")


def test_response_headers_drop_hop_by_hop_and_unsendable_values() -> None:
    incoming = headers(
        ("Connection", "X-Hop"), ("X-Hop", "1"), ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"), ("Upgrade", "h2c"), ("X-Bad", "a\x01b"),
        ("X-Split", "a\r\nX-Injected: 1"), ("X-Tab", "a\tb"), ("X-Good", "fine"),
        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
    )
    assert response_headers(incoming, TENANT, never_asked, None) == [
        ("X-Tab", "a\tb"), ("X-Good", "fine"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


def test_response_headers_point_locations_on_the_tenant_at_the_proxy() -> None:
    incoming = headers(("Location", "http://tenant.example/fotoweb/me"),
                       ("content-location", "http://tenant.example/a?b=1"),
                       ("Link", "<http://tenant.example/x>"))  # not a Location: as it is
    assert response_headers(incoming, TENANT, lambda: PROXY, None) == [
        ("Location", "http://127.0.0.1:8080/fotoweb/me"),
        ("content-location", "http://127.0.0.1:8080/a?b=1"),
        ("Link", "<http://tenant.example/x>")]


# --- Location: a URL on the tenant points at the proxy; the query token never goes back ------


@pytest.mark.parametrize(
    ("value", "strip_token", "expected"),
    [
        ("http://tenant.example/fotoweb/me", False, "http://127.0.0.1:8080/fotoweb/me"),
        ("http://tenant.example", False, "http://127.0.0.1:8080/"),
        ("http://tenant.example:80/x", False, "http://127.0.0.1:8080/x"),  # the default port
        ("HTTP://Tenant.Example./x?y=1#f", False, "http://127.0.0.1:8080/x?y=1#f"),
        ("http://tenant.example/a%2Fb?q=%41&r=+", False, "http://127.0.0.1:8080/a%2Fb?q=%41&r=+"),
        # not the tenant's origin: passed as it is
        ("http://tenant.example:8443/x", False, "http://tenant.example:8443/x"),
        ("https://tenant.example/x", False, "https://tenant.example/x"),
        ("http://evil.example/x", False, "http://evil.example/x"),
        ("http://tenant.example.evil.example/x", False, "http://tenant.example.evil.example/x"),
        ("//tenant.example/x", False, "//tenant.example/x"),  # scheme-relative
        ("/fotoweb/me?x=1", False, "/fotoweb/me?x=1"),
        ("me", False, "me"),
        ("http://[::1", False, "http://[::1"),  # not a URL: as it is
        ("/a?access_token=T", False, "/a?access_token=T"),  # the header placement
        # the token went in the query: the parameter goes, the rest stays byte for byte
        ("http://tenant.example/a/?x=1&access_token=T", True, "http://127.0.0.1:8080/a/?x=1"),
        ("/a?access_token=T", True, "/a"),
        ("/a?access_token=T#frag", True, "/a#frag"),
        ("/a?x=%2F&access_token=T&y", True, "/a?x=%2F&y"),
        ("https://cdn.example/?access_token=T&y=2", True, "https://cdn.example/?y=2"),
        ("//cdn.example/p?access_token=T", True, "//cdn.example/p"),
        ("/a?access_tokens=1", True, "/a?access_tokens=1"),  # another parameter
        ("/a?x=1", True, "/a?x=1"),
    ],
)
def test_rewrite_location(value: str, strip_token: bool, expected: str) -> None:
    assert rewrite_location(value, TENANT, PROXY, strip_token) == expected


# --- the query-parameter helpers: other bytes exactly as they were ---------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("access_token=x", True),
        ("a=1&access_token=x", True),
        ("access_token", True),  # a bare name
        ("access_token=", True),
        ("", False),
        ("access_tokens=1", False),
        ("x_access_token=1", False),
        ("a=access_token", False),
        # names read as ASP.NET reads them: case-insensitive, percent-decoded (red team)
        ("ACCESS_TOKEN=x", True),
        ("Access_Token=x", True),
        ("access%5Ftoken=x", True),
        ("%61ccess_token=x", True),
        ("access%u005ftoken=x", True),  # HttpUtility.UrlDecode's %uNNNN
        ("acce%C5%BFs_token=x", True),  # U+017F long s: case-folds to s
        ("access-token=x", False),
        ("access+token=x", False),  # "access token"
        ("access_token%3Dx", False),
    ],
)
def test_has_param(query: str, expected: bool) -> None:
    assert has_param(query, "access_token") is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a=1&access_token=x&b=2", "a=1&b=2"),
        ("access_token=x", ""),
        ("access_token", ""),
        ("access_token=1&access_token=2&c", "c"),  # every one of them
        ("a=%2F&b=+&c=caf%C3%A9&access_token=x", "a=%2F&b=+&c=caf%C3%A9"),
        ("flag&access_token=", "flag"),
        ("access_tokens=1&x_access_token=2", "access_tokens=1&x_access_token=2"),
        ("b=2&a=1", "b=2&a=1"),  # nothing to remove: the order and bytes stay
        ("", ""),
        ("a=1&ACCESS_TOKEN=mine&access%5Ftoken=x&b=%2F", "a=1&b=%2F"),  # as has_param finds
        ("access-token=1&a=%5F", "access-token=1&a=%5F"),
    ],
)
def test_without_param(query: str, expected: str) -> None:
    assert without_param(query, "access_token") == expected


@pytest.mark.parametrize(
    ("query", "value", "expected"),
    [
        ("", "abc", "access_token=abc"),
        ("x=1", "abc", "x=1&access_token=abc"),
        ("x=%2F", "Tk/+=%&?~x9", "x=%2F&access_token=Tk%2F%2B%3D%25%26%3F~x9"),  # encoded
    ],
)
def test_add_param(query: str, value: str, expected: str) -> None:
    assert add_param(query, "access_token", value) == expected


# --- the token a tenant echoed (sent in the query): found in every encoding ------------------


def low(value: str) -> str:
    """`value` with its percent-escapes in lower case (as ASP.NET writes them)."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), value)


TOKEN = "Tk/+=%&?~x9"  # visible ASCII with what a URL encodes
ONCE = quote(TOKEN, safe="")  # as add_param sends it
ECHO = echo_pattern((TOKEN,))
TWICE = quote(ONCE, safe="")  # e.g. a ReturnUrl holding the target fwproxy sent


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TOKEN, True),
        (f"/x?access_token={TOKEN}", True),
        (f"/x?access_token={ONCE}", True),
        (f"/x?access_token={low(ONCE)}", True),  # hex in lower case
        (f"/x?access_token={TWICE}", True),
        (f"/x?access_token={low(TWICE)}", True),
        (f"/login?ReturnUrl={quote('/fotoweb/me?access_token=' + ONCE, safe='')}", True),
        (low(f"/login?ReturnUrl={quote('/fotoweb/me?access_token=' + ONCE, safe='')}"), True),
        # a URL in a parameter of a URL in a parameter
        ("/a?next=" + quote("https://sso/?r=" + quote(f"/m?access_token={ONCE}", safe=""),
                            safe=""), True),
        ("0; url=/login?ReturnUrl=" + quote(f"/m?access_token={ONCE}", safe=""), True),
        (f'<https://t/x?access_token={ONCE}>; rel="next"', True),
        (quote(quote(quote(TWICE, safe=""), safe=""), safe=""), True),  # five times
        ("%" + "25" * 8 + "41", True),  # still decoding after the bounded rounds: refused
        ("/x?access_token=someone-elses", False),
        ("/login?ReturnUrl=%2ffotoweb%2fme%3fx%3d1", False),
        ("100%", False),
        ("%zz", False),
        ("", False),
        ("Tk/+=%&?~x", False),  # a prefix is not the token
    ],
)
def test_carries(value: str, expected: bool) -> None:
    assert carries(value, ECHO) is expected


def test_headers_that_echo_the_query_token_are_dropped() -> None:
    incoming = headers(
        ("Location", f"/fotoweb/views/login?ReturnUrl=%2ffotoweb%2fme%3faccess_token%3d"
                     f"{low(TWICE)}"),
        ("CONTENT-LOCATION", f"https://cdn.example/?next={TWICE}"),
        ("refresh", f"0; url=/login?r={ONCE}"),
        ("Link", f'<http://tenant.example/x?access_token={ONCE}>; rel="next"'),
        ("X-Original-Url", f"/fotoweb/me?access_token={ONCE}"),
        ("Link", '</other>; rel="next"'),
        ("X-Good", "fine"),
    )
    out = response_headers(incoming, TENANT, lambda: PROXY, TOKEN, ECHO)
    assert out == [("Link", '</other>; rel="next"'), ("X-Good", "fine")]


def test_location_keeps_its_use_without_the_token() -> None:
    incoming = headers(("Location", f"http://tenant.example/a/?x=1&access_token={ONCE}"))
    out = response_headers(incoming, TENANT, lambda: PROXY, TOKEN, ECHO)
    assert out == [("Location", "http://127.0.0.1:8080/a/?x=1")]


def test_header_placement_leaves_other_access_tokens_alone() -> None:
    """With the token in the header, a Location's access_token parameter is not ours: it
    stays; only a header that carries one of our tokens goes."""
    incoming = headers(("Link", "<http://cdn.example/x?access_token=someone-elses>"),
                       ("Location", "https://cdn.example/?access_token=someone-elses"))
    out = response_headers(incoming, TENANT, lambda: PROXY, None, ECHO)
    assert out == list(incoming.items())
    assert response_headers(incoming, TENANT, lambda: PROXY, None, None) == out


B64 = base64.b64encode(TOKEN.encode()).decode()
BEARER_B64 = base64.b64encode(f"Bearer {TOKEN}".encode()).decode()


@pytest.mark.parametrize("value", [
    TOKEN, f"HTTP/1.1 200 OK {TOKEN}", f"Bearer {TOKEN}", f"s={TOKEN}; path=/",
    B64, B64.rstrip("="), B64.translate(str.maketrans("+/", "-_")).rstrip("="),
    BEARER_B64, base64.urlsafe_b64encode(f"Bearer {TOKEN}".encode()).decode().rstrip("="),
    # inside longer base64 text, at each of the three alignments
    *(base64.b64encode(prefix.encode() + TOKEN.encode() + b"!suffix").decode()
      for prefix in ("", "a", "ab", "abc", '{"t":"')),
    TOKEN.encode().hex(), TOKEN.encode().hex().upper(),
    "".join(f"&#{ord(c)};" for c in TOKEN), "".join(f"&#x{ord(c):x};" for c in TOKEN),
    "".join(f"&#X{ord(c):X};" for c in TOKEN).replace("&#X", "&#x"),
    html.escape(TOKEN), json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
    "".join(f"\\u{ord(c):04x}" for c in TOKEN), "".join(f"\\u{ord(c):04X}" for c in TOKEN),
    quote(B64, safe=""),  # base64, then percent-encoded
])
def test_carries_finds_every_encoding(value: str) -> None:
    assert carries(f"x {value} y", ECHO)


@pytest.mark.parametrize("value", [
    base64.b64encode(b"someone else's token value").decode(), "deadbeef" * 4,
    "&#84;&#107;", "\\u0054\\u006b", "Tk/+=%&?~x",
])
def test_carries_ignores_what_is_not_the_token(value: str) -> None:
    assert not carries(value, ECHO)


def test_headers_that_echo_the_token_are_dropped_in_any_placement() -> None:
    incoming = headers(
        ("Set-Cookie", f"s={TOKEN}; path=/"),
        ("X-Debug-Auth", f"Bearer {TOKEN}"),
        ("X-B64", B64),
        ("X-Json", json.dumps(TOKEN)[1:-1].replace("/", "\\/")),
        ("X-Html", "".join(f"&#{ord(c)};" for c in TOKEN)),
        ("X-Good", "fine"),
    )
    assert response_headers(incoming, TENANT, lambda: PROXY, None, ECHO) == [
        ("X-Good", "fine")]


def test_the_previous_token_is_scrubbed_too() -> None:
    both = echo_pattern(("new-t0ken-value", TOKEN))
    incoming = headers(("X-Old", B64), ("X-New", "new-t0ken-value"), ("X-Good", "fine"))
    assert response_headers(incoming, TENANT, lambda: PROXY, None, both) == [
        ("X-Good", "fine")]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [(None, None), ("", ""), ("OK", "OK"), (f"Found {ONCE}", None), (f"Moved {TOKEN}", None)],
)
def test_response_reason(reason: str | None, expected: str | None) -> None:
    assert response_reason(reason, ECHO) == expected

