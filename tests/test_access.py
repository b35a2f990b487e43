"""Pure access checks: Host and browser origin (DNS rebinding, cross-site requests), and
paths read the way IIS reads them."""

from __future__ import annotations

from typing import Any

import pytest

from fwproxy.access import (
    DEFAULT_ACCEPT_HOSTS,
    BadPath,
    Rule,
    compile_glob,
    decide_all,
    host_name,
    matches,
    overridden_methods,
    path_readings,
    refuse_cross_site,
    refuse_host,
)
from fwproxy.config import parse_config


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8080", "127.0.0.1"), ("[::1]:8080", "::1"), ("[::1]", "::1"),
     ("LocalHost.", "localhost"), ("example.com:80", "example.com"), ("::1", "::1"),
     ("evil.example:notaport", "evil.example:notaport")],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_matches() -> None:
    assert matches("a.example.com", ["*.example.com"])
    assert not matches("example.com.evil", ["*.example.com"])
    assert not matches("badexample.com", ["*.example.com"])
    assert matches("anything", ["*"])
    assert not matches("127.0.0.1.evil.example", DEFAULT_ACCEPT_HOSTS)


def test_refuse_host() -> None:
    assert refuse_host("127.0.0.1:8080", DEFAULT_ACCEPT_HOSTS) is None
    assert refuse_host(None, DEFAULT_ACCEPT_HOSTS) is None  # HTTP/1.0 without Host
    reason = refuse_host("rebind.evil.example:8080", DEFAULT_ACCEPT_HOSTS)
    assert reason is not None
    assert "rebind.evil.example" in reason


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


# --- paths as IIS reads them: refused or normalized (the table in access.py's docstring) ------

NORMALIZED = [
    ("/fotoweb/me", ("/fotoweb/me",)),
    ("/fotoweb/%61dmin/users", ("/fotoweb/admin/users",)),
    ("/fotoweb/admin%2Fusers", ("/fotoweb/admin/users",)),
    ("/fotoweb\\admin/%5cusers", ("/fotoweb/admin/users",)),
    ("/fotoweb//admin.. /users.", ("/fotoweb/admin/users",)),  # trailing dots and spaces
    ("/fotoweb/100%25.jpg", ("/fotoweb/100%.jpg",)),  # a literal % is fine
    ("/fotoweb/a%3Bb", ("/fotoweb/a;b",)),  # an encoded ; is a character, not a parameter
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
    ("/fotoweb/(S(x))/admin/x", "cookieless"),
    ("/fotoweb/(A(abc)S(def))/admin/x", "cookieless"),
    ("/fotoweb/%28S%28x%29%29/admin/x", "cookieless"),
    ("/fotoweb%EF%BC%8Fadmin/x", "look-alike"),  # fullwidth solidus
    ("/fotoweb/%EF%BC%8E%EF%BC%8E/admin", "look-alike"),  # fullwidth full stops
    ("/fotoweb/%EF%BC%BCadmin", "look-alike"),  # fullwidth reverse solidus
    ("/fotoweb/%E2%80%A5/admin", "look-alike"),  # two dot leader
    ("/fotoweb/%EF%BC%9Bx", "look-alike"),  # fullwidth semicolon
    ("/fotoweb/%EF%BC%88S%EF%BC%88x%EF%BC%89%EF%BC%89/admin", "look-alike"),
]


@pytest.mark.parametrize(("raw", "why"), REFUSED)
def test_paths_refused_rather_than_guessed(raw: str, why: str) -> None:
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
    ("values", "methods"),
    [([], ()), (["DELETE"], ("DELETE",)), ([" delete "], ("DELETE",)),
     (["PUT, DELETE"], ("PUT", "DELETE")), (["", ","], ())],
)
def test_overridden_methods(values: list[str], methods: tuple[str, ...]) -> None:
    assert overridden_methods(values) == methods
