"""Pure Host and browser-origin checks (DNS rebinding, cross-site requests)."""

from __future__ import annotations

from typing import Any

import pytest

from fwproxy.access import (
    DEFAULT_ACCEPT_HOSTS,
    host_name,
    matches,
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
