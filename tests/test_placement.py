"""Pure decisions about the token in the query: when a probe proves it, where it is echoed."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from fwproxy.placement import Probe, weigh
from fwproxy.upstream import carries, response_headers

A, B = "/fotoweb/me", "/fotoweb/archives"


@pytest.mark.parametrize(
    ("header", "query", "proves"),
    [
        (401, 200, True),
        (401, 204, True),
        (401, 299, True),
        (401, 300, False),
        (401, 301, False),
        (401, 302, False),  # the forms-auth login redirect: proves nothing
        (401, 303, False),
        (401, 304, False),
        (401, 307, False),
        (401, 308, False),
        (401, 400, False),
        (401, 401, False),
        (401, 403, False),
        (401, 404, False),
        (401, 414, False),
        (401, 500, False),
        (401, 503, False),
        (403, 200, False),  # the header was not refused as unauthenticated
        (200, 200, False),
        (302, 200, False),
    ],
)
def test_one_probe_proves_only_401_then_2xx(header: int, query: int, proves: bool) -> None:
    assert Probe(A, header, query).proves is proves


def ok(path: str, status: int = 200) -> Probe:
    return Probe(path, 401, status)


@pytest.mark.parametrize(
    ("probes", "learned_at"),
    [
        ([ok(A)], None),  # one path: no
        ([ok(A), ok(A)], None),  # the same path twice: no
        ([ok(A), ok(A), ok(A)], None),
        ([ok(A), ok(B)], 1),  # two paths: yes
        ([ok(A), ok(A), ok(B)], 2),
        ([ok(A, 302), ok(B)], None),  # a redirect is no evidence
        ([ok(A, 302), ok(B, 302)], None),
        ([ok(A, 404), ok(B), ok(B)], None),
        ([ok(A, 302), ok(B), ok(A)], 2),
        ([ok(A), ok(B, 500)], None),
        ([Probe(A, 403, 200), ok(B)], None),
    ],
)
def test_two_paths_prove_the_query(probes: list[Probe], learned_at: int | None) -> None:
    seen: tuple[Probe, ...] = ()
    learned = []
    for i, probe in enumerate(probes):
        seen, proven = weigh(seen, probe)
        if proven:
            learned.append(i)
        assert len(seen) <= 2
        assert len({p.path for p in seen}) == len(seen)  # one a path
        assert all(p.proves for p in seen)
    assert learned[:1] == ([] if learned_at is None else [learned_at])


def test_probe_shows_path_and_statuses_only() -> None:
    assert str(Probe("/fotoweb/a b\x1b", 401, 204)) == (
        "/fotoweb/a%20b%1B: 401 with the header, 204 in the query"
    )
    assert len(str(Probe("/" + "x" * 5000, 401, 200))) < 300


def low(value: str) -> str:
    """`value` with its percent-escapes in lower case (as ASP.NET writes them)."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), value)


TOKEN = "Tk/+=%&?~x9"  # visible ASCII with what a URL encodes
ONCE = quote(TOKEN, safe="")  # as add_param sends it
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
    assert carries(value, TOKEN) is expected


TENANT = URL("http://tenant.example")
PROXY = URL("http://127.0.0.1:8080")


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


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
    out = response_headers(incoming, TENANT, lambda: PROXY, TOKEN)
    assert out == [("Link", '</other>; rel="next"'), ("X-Good", "fine")]


def test_location_keeps_its_use_without_the_token() -> None:
    incoming = headers(("Location", f"http://tenant.example/a/?x=1&access_token={ONCE}"))
    out = response_headers(incoming, TENANT, lambda: PROXY, TOKEN)
    assert out == [("Location", "http://127.0.0.1:8080/a/?x=1")]


def test_header_placement_scrubs_nothing() -> None:
    """With the token in the header nothing in the query can be echoed: no cost, no change."""
    incoming = headers(("Link", f"<http://cdn.example/x?access_token={ONCE}>"),
                       ("Location", f"https://cdn.example/?access_token={ONCE}"))
    out = response_headers(incoming, TENANT, lambda: PROXY, None)
    assert out == list(incoming.items())
