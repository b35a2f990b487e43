"""Pure access checks: Host and browser origin (DNS rebinding, cross-site requests), and
paths read the way IIS reads them."""

from __future__ import annotations

from typing import Any

import pytest

from fwproxy.access import (
    DEFAULT_ACCEPT_HOSTS,
    HostRefused,
    Rule,
    authority,
    compile_glob,
    decide_access,
    decide_all,
    judge_host,
    matches,
    normalize_path,
    overridden_methods,
    parse_host,
    path_readings,
    peer_trusted,
    refuse_cross_site,
    target_authority,
)
from fwproxy.config import parse_config
from fwproxy.exceptions import BadPath, ConfigError
from fwproxy.values import parse_networks


@pytest.mark.parametrize(
    ("header", "parsed"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:8080", ("::1", 8080)),
     ("[::1]", ("::1", None)), ("LocalHost.", ("localhost", None)),
     ("example.com:80", ("example.com", 80)), ("Example.COM.:443", ("example.com", 443)),
     ("[0:0:0:0:0:0:0:1]", ("::1", None)), ("[::FFFF:127.0.0.1]:1", ("::ffff:7f00:1", 1)),
     ("a-b_c~d.example", ("a-b_c~d.example", None)), ("x:65535", ("x", 65535)),
     ("x:00080", ("x", 80)), ("a" * 63 + ".example", ("a" * 63 + ".example", None))],
)
def test_parse_host_accepts_names_addresses_and_ports(
    header: str, parsed: tuple[str, int | None]
) -> None:
    assert parse_host(header) == parsed


@pytest.mark.parametrize(
    "header",
    [
        "[::1].evil.example", "[::1]@evil.example", "[::1]garbage", "[::1]:", "[::1]:x",
        "[::1", "::1",  # an IPv6 address without brackets is not a Host
        "[fe80::1%25eth0]", "[v1.x]", "[127.0.0.1]", "[::1]]",
        "a b", " localhost", "localhost ", "local\thost",
        "x:99999", "x:65536", "x:0", "x:", "x:-1", "x:+80", "x:8o", "x:80:80", ":80",
        "u@h", "user:pass@localhost", "@localhost",
        "local%68ost", "%6cocalhost", "localhost%00",
        "", ".", "..", "a..b", ".a", "localhost/", "localhost/x", "localhost?x", "localhost#x",
        "a,b", "a;b", "a=b", "a!b", "a*b", "a'b", "(a)", "a+b", "a$b", "a&b", "a\\b",
        "évil.example", "xn--vil-bma.example\u00a0", "\u212aiosk",
        "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54",  # fullwidth "localhost"
        "a" * 64 + ".example", ("a" * 62 + ".") * 4 + "example", "x" * 5000,
        "localhost\r\nX-Injected: 1", "localhost\x00",
    ],
)
def test_parse_host_refuses_everything_else(header: str) -> None:
    assert parse_host(header) is None


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("localhost", None, "localhost"), ("::1", 8080, "[::1]:8080"), ("::1", None, "[::1]"),
     ("127.0.0.1", 80, "127.0.0.1:80")],
)
def test_authority(host: str, port: int | None, text: str) -> None:
    assert authority(host, port) == text
    assert parse_host(text) == (host, port)


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/x", None), ("*", None), ("example.org:443", None), ("ftp://h/x", None),
     ("http://evil.example/x?y", ("http", "evil.example")),
     ("HTTPS://Evil.example:8443?y", ("https", "Evil.example:8443")),
     ("http://evil.example#f", ("http", "evil.example")),
     ("http://u@evil.example/x", ("http", "u@evil.example")),
     ("http:///x", ("http", ""))],
)
def test_target_authority(target: str, expected: tuple[str, str] | None) -> None:
    assert target_authority(target) == expected


def test_matches() -> None:
    assert matches("a.example.com", ["*.example.com"])
    assert not matches("example.com.evil", ["*.example.com"])
    assert not matches("badexample.com", ["*.example.com"])
    assert matches("anything", ["*"])
    assert not matches("127.0.0.1.evil.example", DEFAULT_ACCEPT_HOSTS)


ANY = ("*",)


@pytest.mark.parametrize(
    ("header", "target", "accept", "verdict"),
    [
        # no Host, no absolute-form target (HTTP/1.0): the caller uses the socket's address
        (None, None, DEFAULT_ACCEPT_HOSTS, None),
        ("127.0.0.1:8080", None, DEFAULT_ACCEPT_HOSTS, ("127.0.0.1", 8080)),
        ("LOCALHOST.", None, DEFAULT_ACCEPT_HOSTS, ("localhost", None)),
        ("[::1]:9", None, DEFAULT_ACCEPT_HOSTS, ("::1", 9)),
        ("rebind.evil.example:8080", None, DEFAULT_ACCEPT_HOSTS, 403),
        ("127.0.0.1.evil.example", None, DEFAULT_ACCEPT_HOSTS, 403),
        # shapes the old lenient reading took for ::1 (or anything) even with "*" accepted
        ("[::1].evil.example", None, DEFAULT_ACCEPT_HOSTS, 400),
        ("[::1]@evil.example", None, DEFAULT_ACCEPT_HOSTS, 400),
        ("[::1]garbage", None, DEFAULT_ACCEPT_HOSTS, 400),
        ("[::1]garbage", None, ANY, 400),
        ("evil.example:notaport", None, ANY, 400),
        ("a,b", None, ANY, 400),
        ("", None, ANY, 400),
        # absolute form: the target's authority names the host, and Host must agree
        ("localhost", ("http", "localhost"), DEFAULT_ACCEPT_HOSTS, ("localhost", None)),
        ("localhost:80", ("http", "localhost"), DEFAULT_ACCEPT_HOSTS, ("localhost", None)),
        ("localhost", ("http", "localhost:80"), DEFAULT_ACCEPT_HOSTS, ("localhost", 80)),
        ("localhost:443", ("https", "localhost"), DEFAULT_ACCEPT_HOSTS, ("localhost", None)),
        ("LocalHost.", ("http", "localhost:8080"), DEFAULT_ACCEPT_HOSTS, 400),  # ports differ
        ("localhost", ("http", "evil.example"), DEFAULT_ACCEPT_HOSTS, 400),
        ("localhost", ("http", "evil.example"), ANY, 400),  # even where any name is accepted
        ("evil.example", ("http", "evil.example"), DEFAULT_ACCEPT_HOSTS, 403),
        (None, ("http", "evil.example"), DEFAULT_ACCEPT_HOSTS, 403),  # HTTP/1.0
        (None, ("http", "127.0.0.1:8080"), DEFAULT_ACCEPT_HOSTS, ("127.0.0.1", 8080)),
        ("localhost", ("http", "u@localhost"), DEFAULT_ACCEPT_HOSTS, 400),  # userinfo
        ("localhost", ("http", ""), DEFAULT_ACCEPT_HOSTS, 400),
        ("localhost", ("http", "[::1]garbage"), ANY, 400),
    ],
)
def test_judge_host(
    header: str | None, target: tuple[str, str] | None, accept: tuple[str, ...],
    verdict: tuple[str, int | None] | int | None,
) -> None:
    judged = judge_host(header, target, accept)
    if isinstance(verdict, int):
        assert isinstance(judged, HostRefused)
        assert judged.status == verdict
        assert judged.detail
    else:
        assert judged == verdict


def test_judge_host_explains_refusals() -> None:
    refused = judge_host("rebind.evil.example:8080", None, DEFAULT_ACCEPT_HOSTS)
    assert isinstance(refused, HostRefused)
    assert (refused.status, refused.error) == (403, "forbidden")
    assert "'rebind.evil.example'" in refused.detail
    assert "access.accept_hosts" in refused.detail
    refused = judge_host("x" * 5000, None, ANY)
    assert isinstance(refused, HostRefused)
    assert (refused.status, refused.error) == (400, "bad_host")
    assert len(refused.detail) < 200  # a hostile value is not echoed whole
    refused = judge_host("localhost", ("http", "evil.example"), ANY)
    assert isinstance(refused, HostRefused)
    assert refused.error == "host_mismatch"
    assert "'evil.example'" in refused.detail
    assert "'localhost'" in refused.detail


@pytest.mark.parametrize(
    ("remote", "trusted"),
    [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("10.2.0.1", False),
     ("127.0.0.1", False), ("fd00::5", True), ("fd01::5", False),
     (None, False), ("", False), ("not-an-address", False)],
)
def test_peer_trusted(remote: str | None, trusted: bool) -> None:
    networks = parse_networks(["10.1.0.0/16", "fd00::/16"], "k")
    assert peer_trusted(remote, networks) is trusted
    assert peer_trusted(remote, ()) is False  # the default trusts nobody


@pytest.mark.parametrize(
    ("origin", "site", "allow", "refused"),
    [
        (None, None, (), False),
        (None, "none", (), False),
        (None, "same-origin", (), False),
        (None, "cross-site", (), True),
        (None, "same-site", (), True),
        ("https://evil.example", "cross-site", (), True),
        ("https://evil.example", None, (), True),  # old browsers: Origin alone
        ("https://intranet.example", "cross-site", ("https://intranet.example",), False),
        ("https://evil.example", "cross-site", ("*",), False),
        (None, "cross-site", ("*",), False),
        ("null", "cross-site", (), True),
        ("http://localhost:8080", "same-origin", (), False),  # the proxy's own pages
        ("http://localhost:3000", "same-site", (), True),  # another port: another site
        ("https://localhost:8080", "same-site", (), True),
    ],
)
def test_refuse_cross_site(
    origin: str | None, site: str | None, allow: tuple[str, ...], refused: bool
) -> None:
    reason = refuse_cross_site(origin, site, "localhost:8080", allow)
    assert (reason is not None) == refused


def test_specific_listen_address_is_accepted_by_default() -> None:
    base: dict[str, Any] = {
        "tenant": {"url": "https://t.example"},
        "auth": {"client_id": "a", "client_secret": "b"},
        "access": {"allow_public": True},
    }
    settings = parse_config({**base, "listen": {"host": "10.1.2.3"}}, environ={})
    assert "10.1.2.3" in settings.access.accept_hosts
    settings = parse_config({**base, "listen": {"host": "0.0.0.0"}}, environ={})  # noqa: S104
    assert settings.access.accept_hosts == DEFAULT_ACCEPT_HOSTS
    environ = {"FWPROXY_ACCESS_ACCEPT_HOSTS": "a.example, B.example"}
    settings = parse_config(base, environ=environ)
    assert settings.access.accept_hosts == ("a.example", "b.example")


def test_trust_forwarded_from_is_configured() -> None:
    base: dict[str, Any] = {
        "tenant": {"url": "https://t.example"},
        "auth": {"client_id": "a", "client_secret": "b"},
    }
    assert parse_config(base, environ={}).access.trust_forwarded_from == ()
    settings = parse_config({**base, "access": {"trust_forwarded_from": ["10.0.0.0/8", "::1"]}},
                            environ={})
    assert [str(n) for n in settings.access.trust_forwarded_from] == ["10.0.0.0/8", "::1/128"]
    environ = {"FWPROXY_ACCESS_TRUST_FORWARDED_FROM": "192.168.1.0/24, 10.1.2.3"}
    settings = parse_config(base, environ=environ)
    assert [str(n) for n in settings.access.trust_forwarded_from] == ["192.168.1.0/24",
                                                                       "10.1.2.3/32"]
    assert parse_config(base, environ={"FWPROXY_ACCESS_TRUST_FORWARDED_FROM": ""}
                        ).access.trust_forwarded_from == ()
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "access": {"trust_forwarded_from": ["nginx.internal"]}},
                     environ={})
    assert caught.value.key == "access.trust_forwarded_from"


# --- paths as IIS reads them: refused or normalized (the table in access.py's docstring) ------

NORMALIZED = [
    ("/fotoweb/me", ("/fotoweb/me",)),
    ("/fotoweb/%61dmin/users", ("/fotoweb/admin/users",)),
    ("/fotoweb/admin%2Fusers", ("/fotoweb/admin/users",)),
    ("/fotoweb\\admin/%5cusers", ("/fotoweb/admin/users",)),
    ("/fotoweb//admin.. /users.", ("/fotoweb/admin/users",)),  # trailing dots and spaces
    ("/fotoweb/100%25.jpg", ("/fotoweb/100%.jpg",)),  # a literal % is fine
    ("/fotoweb/a%3Bb", ("/fotoweb/a;b",)),  # an encoded ; is a character, not a parameter
    # FotoWeb's listing pages: parameters in the last segment, read with and without them
    ("/fotoweb/archives/5000/;o=+;p=2", ("/fotoweb/archives/5000/;o=+;p=2",
                                         "/fotoweb/archives/5000")),
    ("/fotoweb/admin;x", ("/fotoweb/admin;x", "/fotoweb/admin")),
    ("/fotoweb/a%3Bb;p=1", ("/fotoweb/a;b;p=1", "/fotoweb/a;b")),
    ("/fotoweb/(draft)/x", ("/fotoweb/(draft)/x",)),  # parentheses, but not cookieless
    ("/fotoweb/adm%C4%B1n", ("/fotoweb/adm\u0131n",)),  # dotless i: the rule matches it
    ("/fotoweb/caf%C3%A9", ("/fotoweb/caf\u00e9", "/fotoweb/cafe")),
    ("/fotoweb/%EF%BD%81dmin/x", ("/fotoweb/\uff41dmin/x", "/fotoweb/admin/x")),  # fullwidth a
    ("/fotoweb/%E5%86%99%E7%9C%9F%EF%BC%91.jpg",  # a Japanese name with a fullwidth digit
     ("/fotoweb/\u5199\u771f\uff11.jpg", "/fotoweb/\u5199\u771f1.jpg")),
]


@pytest.mark.parametrize(("raw", "readings"), NORMALIZED)
def test_path_readings(raw: str, readings: tuple[str, ...]) -> None:
    assert path_readings(raw) == readings


FOLDED = ["/fotoweb/admin%EF%BC%9A$DATA/x", "/fotoweb/admin~%EF%BC%91/x"]  # refused once folded
REFUSED = [
    ("/fotoweb/%u0061dmin/x", "%uNNNN"),  # IIS decodes %uNNNN
    ("/fotoweb/%u0041DMIN/x", "%uNNNN"),
    ("/fotoweb%u002fadmin/x", "%uNNNN"),
    ("/fotoweb/archives/%u002e%u002e/admin/x", "%uNNNN"),
    ("/fotoweb/%U0061dmin/x", "%uNNNN"),
    ("/fotoweb/%zzadmin", "%XX"),
    ("/fotoweb/admin%", "%XX"),
    ("/fotoweb/%2561dmin", "double"),
    ("/fotoweb/%25u0061dmin", "double"),
    ("/fotoweb/%c0%afadmin", "UTF-8"),  # overlong /
    ("/fotoweb/%c0%ae%c0%ae/admin", "UTF-8"),  # overlong ..
    ("/fotoweb/%e0%80%afadmin", "UTF-8"),
    ("/fotoweb/%ff", "UTF-8"),
    ("/fotoweb/\udce9", "non-ASCII"),  # a raw byte 0xE9, as aiohttp hands it on
    ("/fotoweb/./admin", "'..'"),
    ("/fotoweb/archives/../admin", "'..'"),
    ("/fotoweb/%2e%2E/admin", "'..'"),
    ("/fotoweb/archives/.. /admin/x", "'..'"),
    ("/fotoweb/archives/..%20/admin/x", "'..'"),  # Windows trims the space: ..
    ("/fotoweb/archives/..%2e%20/admin/x", "'..'"),
    ("/fotoweb/archives/.%20./admin/x", "'..'"),
    ("/fotoweb/archives/.../admin/x", "'..'"),
    ("/fotoweb/%20/admin", "'..'"),
    ("/fotoweb/a%00b", "control"),
    ("/fotoweb/a%09b", "control"),  # tab
    ("/fotoweb/a%0d%0aX:%20y", "control"),
    ("/fotoweb/a%7fb", "control"),
    ("/fotoweb/admin;x/users", "';'"),
    ("/fotoweb/admin;/users", "';'"),
    ("/fotoweb/admin;x%2Fusers", "';'"),  # an encoded slash after the parameter
    ("/fotoweb/admin;x%5cusers", "';'"),
    ("/fotoweb/admin;x\\users", "';'"),
    ("/fotoweb/archives/..;x", "'..'"),  # without its parameter, a dot segment
    ("/fotoweb/x;%EF%BC%8Fadmin", "look-alike"),
    ("/fotoweb/(S(x))/admin/x", "cookieless"),
    ("/fotoweb/(A(abc)S(def))/admin/x", "cookieless"),
    ("/fotoweb/%28S%28x%29%29/admin/x", "cookieless"),
    ("/fotoweb%EF%BC%8Fadmin/x", "look-alike"),  # fullwidth solidus
    ("/fotoweb/%EF%BC%8E%EF%BC%8E/admin", "look-alike"),  # fullwidth full stops
    ("/fotoweb/%EF%BC%BCadmin", "look-alike"),  # fullwidth reverse solidus
    ("/fotoweb/%E2%80%A5/admin", "look-alike"),  # two dot leader
    ("/fotoweb/%EF%BC%9Bx", "look-alike"),  # fullwidth semicolon
    ("/fotoweb/%EF%BC%88S%EF%BC%88x%EF%BC%89%EF%BC%89/admin", "look-alike"),
    # NTFS stream names and 8.3 short names reach /fotoweb/admin (red team)
    ("/fotoweb/admin::$INDEX_ALLOCATION/", "NTFS stream"),
    ("/fotoweb/admin:$DATA/", "NTFS stream"),
    ("/fotoweb/admin%3A$DATA/x", "NTFS stream"),
    (FOLDED[0], "NTFS stream"),  # a fullwidth colon, folded
    ("/fotoweb/ADMIN~1/", "8.3 short name"),
    ("/fotoweb/admin%7E1/x", "8.3 short name"),
    ("/fotoweb/FOTOWE~2/x", "8.3 short name"),
    (FOLDED[1], "8.3 short name"),  # a fullwidth digit, folded
]


@pytest.mark.parametrize(("raw", "why"), REFUSED)
def test_paths_refused_rather_than_guessed(raw: str, why: str) -> None:
    with pytest.raises(BadPath) as caught:
        path_readings(raw)
    assert why in str(caught.value)


@pytest.mark.parametrize(("raw", "readings"), NORMALIZED)
def test_normalize_path_is_the_first_reading(raw: str, readings: tuple[str, ...]) -> None:
    assert normalize_path(raw) == readings[0]


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", "/"),
        ("/fotoweb/", "/fotoweb"),  # a trailing slash goes: rules match with or without
        ("/fotoweb/ME", "/fotoweb/ME"),  # case is kept: the rules' globs ignore it
        ("\\fotoweb\\me", "/fotoweb/me"),
        # look-alikes are not folded here: path_readings refuses or adds a folded reading
        ("/fotoweb%EF%BC%8Fadmin/x", "/fotoweb\uff0fadmin/x"),
        ("/fotoweb/%EF%BD%81dmin/x", "/fotoweb/\uff41dmin/x"),
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize(("raw", "why"), [(raw, why) for raw, why in REFUSED
                                          if why != "look-alike" and raw not in FOLDED])
def test_normalize_path_refuses(raw: str, why: str) -> None:
    """What admission refuses: every reading of the path (`path_readings`; the first is
    `normalize_path`'s, a ``;`` parameter in the last segment adds the reading without it)."""
    with pytest.raises(BadPath) as caught:
        path_readings(raw)
    assert why in str(caught.value)


def rule(name: str, action: str, paths: list[str], methods: list[str] | None = None) -> Rule:
    return Rule(name, action, frozenset(methods) if methods else None, tuple(paths),
                tuple(compile_glob(p) for p in paths))


NO_ADMIN = rule("no-admin", "deny", ["/fotoweb/admin/**"])
ARCHIVES = rule("archives", "allow", ["/fotoweb/archives/**"])
GET_ME = rule("get-me", "allow", ["/fotoweb/me"], ["GET"])


@pytest.mark.parametrize(
    ("rules", "default", "read_only", "methods", "raw", "expected"),
    [
        ([NO_ADMIN], "allow", False, ["GET"], "/fotoweb/adm%C4%B1n/x", (False, "no-admin")),
        ([NO_ADMIN], "allow", False, ["GET"], "/fotoweb/%EF%BD%81dmin/x", (False, "no-admin")),
        ([NO_ADMIN], "allow", False, ["GET"], "/fotoweb/caf%C3%A9", (True, "default")),
        ([ARCHIVES], "deny", False, ["GET"], "/fotoweb/archives/caf%C3%A9", (True, "archives")),
        ([ARCHIVES], "deny", False, ["GET"], "/fotoweb/%EF%BD%81rchives/x", (False, "default")),
        ([GET_ME], "deny", False, ["GET"], "/fotoweb/me", (True, "get-me")),
        ([GET_ME], "deny", False, ["GET", "DELETE"], "/fotoweb/me", (False, "default")),
        ([], "allow", True, ["GET", "DELETE"], "/fotoweb/me", (False, "read_only")),
        ([], "allow", True, ["GET", "HEAD"], "/fotoweb/me", (True, "default")),
    ],
)
def test_every_reading_must_be_allowed(
    rules: list[Rule], default: str, read_only: bool, methods: list[str], raw: str,
    expected: tuple[bool, str],
) -> None:
    allowed, name, _, _ = decide_all(rules, default, read_only, methods, path_readings(raw))
    assert (allowed, name) == expected


@pytest.mark.parametrize(
    ("pattern", "path", "matched"),
    [
        ("/fotoweb/admin/**", "/fotoweb/admin", True),  # /x/** also matches /x
        ("/fotoweb/admin/**", "/fotoweb/admin/", True),
        ("/fotoweb/admin/**", "/fotoweb/admin/users/5", True),
        ("/fotoweb/admin/**", "/fotoweb/administrators", False),
        ("/fotoweb/admin/**", "/fotoweb/x/admin", False),
        ("/fotoweb/admin/**", "/FotoWeb/ADMIN/users", True),  # IIS: case-insensitive
        ("/fotoweb/admin/**", "/fotoweb/adm\u0131n/x", True),  # .NET upper-cases it to I
        ("/fotoweb/me", "/fotoweb/me", True),
        ("/fotoweb/me", "/fotoweb/me/", True),
        ("/fotoweb/me", "/fotoweb/me/x", False),
        ("/fotoweb/me", "/fotoweb/mex", False),
        ("/fotoweb/*/x", "/fotoweb/a/x", True),  # * stays within a segment
        ("/fotoweb/*/x", "/fotoweb/a/b/x", False),
        ("/fotoweb/**/x", "/fotoweb/a/b/x", True),  # ** crosses segments
        ("/fotoweb/**/x", "/fotoweb/x", False),
        ("/fotoweb/*.jpg", "/fotoweb/a.JPG", True),
        ("/fotoweb/a.b", "/fotoweb/aXb", False),  # everything else is literal
        ("/fotoweb/(x)+", "/fotoweb/(x)+", True),
        ("/fotoweb/(x)+", "/fotoweb/xx", False),
        ("/**", "/", True),
        ("/**", "/any/thing", True),
    ],
)
def test_compile_glob(pattern: str, path: str, matched: bool) -> None:
    assert bool(compile_glob(pattern).fullmatch(path)) is matched


ALLOW_ALL = rule("all", "allow", ["/**"])


@pytest.mark.parametrize(
    ("rules", "default", "read_only", "method", "path", "expected"),
    [
        ([NO_ADMIN, ALLOW_ALL], "deny", False, "GET", "/fotoweb/admin/x", (False, "no-admin")),
        ([ALLOW_ALL, NO_ADMIN], "deny", False, "GET", "/fotoweb/admin/x", (True, "all")),
        ([NO_ADMIN], "allow", False, "GET", "/fotoweb/me", (True, "default")),
        ([NO_ADMIN], "deny", False, "GET", "/fotoweb/me", (False, "default")),
        ([GET_ME], "deny", False, "GET", "/fotoweb/me", (True, "get-me")),
        ([GET_ME], "deny", False, "POST", "/fotoweb/me", (False, "default")),  # its methods
        ([GET_ME, ALLOW_ALL], "deny", False, "POST", "/fotoweb/me", (True, "all")),
        ([], "allow", False, "DELETE", "/fotoweb/me", (True, "default")),
        # read_only refuses before any rule, and allows nothing a rule denies
        ([ALLOW_ALL], "allow", True, "DELETE", "/fotoweb/me", (False, "read_only")),
        ([GET_ME], "allow", True, "POST", "/fotoweb/me", (False, "read_only")),
        ([NO_ADMIN], "allow", True, "GET", "/fotoweb/admin", (False, "no-admin")),
        ([], "allow", True, "HEAD", "/fotoweb/me", (True, "default")),
        ([], "allow", True, "OPTIONS", "/fotoweb/me", (True, "default")),
    ],
)
def test_decide_access_first_match_wins(
    rules: list[Rule], default: str, read_only: bool, method: str, path: str,
    expected: tuple[bool, str],
) -> None:
    assert decide_access(rules, default, read_only, method, path) == expected


@pytest.mark.parametrize(
    ("rules", "default", "methods", "paths", "expected"),
    [
        ([NO_ADMIN], "allow", ["GET", "DELETE"], ["/fotoweb/me", "/fotoweb/admin"],
         (False, "no-admin", "GET", "/fotoweb/admin")),  # the first denial, named
        ([GET_ME], "deny", ["GET", "DELETE"], ["/fotoweb/me"],
         (False, "default", "DELETE", "/fotoweb/me")),
        ([ARCHIVES], "deny", ["GET"], ["/fotoweb/archives/x", "/fotoweb/archives/y"],
         (True, "archives", "GET", "/fotoweb/archives/x")),  # allowed: the first reading
        ([NO_ADMIN], "allow", ["GET", "HEAD"], ["/fotoweb/me"],
         (True, "default", "GET", "/fotoweb/me")),
    ],
)
def test_decide_all_names_the_reading_that_decided(
    rules: list[Rule], default: str, methods: list[str], paths: list[str],
    expected: tuple[bool, str, str, str],
) -> None:
    assert decide_all(rules, default, False, methods, paths) == expected


@pytest.mark.parametrize(
    ("values", "methods"),
    [([], ()), (["DELETE"], ("DELETE",)), ([" delete "], ("DELETE",)),
     (["PUT, DELETE"], ("PUT", "DELETE")), (["", ","], ())],
)
def test_overridden_methods(values: list[str], methods: tuple[str, ...]) -> None:
    assert overridden_methods(values) == methods
