"""params.py: query parameter names as the tenant reads them, method overrides outside the
headers, and WebDAV's Destination, as tables."""

from __future__ import annotations

import pytest

from fwproxy.access import Rule
from fwproxy.exceptions import BadPath
from fwproxy.params import (
    destination_path,
    form_decode,
    form_override_denied,
    param_name,
    query_overrides,
)
from fwproxy.values import parse_rules


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [("a+b", "a b"), ("%41%u0042", "AB"), ("caf%C3%A9", "caf\u00e9"), ("%ff", "\ufffd"),
     ("plain", "plain"), ("%u00", "%u00")],
)
def test_form_decode(raw: str, decoded: str) -> None:
    assert form_decode(raw) == decoded


@pytest.mark.parametrize(
    ("raw", "name"),
    [("ACCESS_TOKEN", "access_token"), ("access%5Ftoken", "access_token"),
     ("%u0041ccess_token", "access_token"), ("acce%C5%BFs_token", "access_token"),
     ("access+token", "access token")],
)
def test_param_name(raw: str, name: str) -> None:
    assert param_name(raw) == name


@pytest.mark.parametrize(
    ("query", "methods"),
    [
        ("", ()),
        ("a=1&b=2", ()),  # the usual query: not even split
        ("x-http-method-override=delete", ("DELETE",)),
        ("X_HTTP_METHOD=put&x-method-override=patch,delete", ("PUT", "PATCH", "DELETE")),
        ("_method=DELETE", ("DELETE",)),
        ("%5Fmethod=DELETE", ("DELETE",)),
        ("x-http-method-override=%44ELETE", ("DELETE",)),
        ("x-http-method-override", ()),  # a bare name names nothing
        ("x-http-method-override=", ()),
        ("method=DELETE&x-http-method-overrides=PUT&q=_method%3DPUT", ()),
    ],
)
def test_query_overrides(query: str, methods: tuple[str, ...]) -> None:
    assert query_overrides(query) == methods


def rules(*items: dict[str, object]) -> tuple[Rule, ...]:
    return parse_rules(list(items), "access.rules")


@pytest.mark.parametrize(
    ("items", "default", "read_only", "denied"),
    [
        ((), "allow", False, None),
        (({"methods": ["DELETE"], "paths": ["/a/**"], "action": "deny"},), "allow", False,
         "DELETE"),
        (({"methods": ["DELETE"], "paths": ["/b/**"], "action": "deny"},), "allow", False,
         None),  # denied elsewhere only
        (({"methods": ["PROPPATCH"], "paths": ["/**"], "action": "deny"},), "allow", False,
         "PROPPATCH"),  # a method a rule names
        (({"methods": ["POST"], "paths": ["/a/**"], "action": "allow"},), "deny", False,
         "DELETE"),
        (({"methods": ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
           "paths": ["/a/**"], "action": "allow"},), "deny", False, "UNNAMED"),
        (({"paths": ["/a/**"], "action": "allow"},), "deny", False, None),  # any method
        ((), "allow", True, "DELETE"),  # (read_only refuses the POST itself first)
    ],
)
def test_form_override_denied(items: tuple[dict[str, object], ...], default: str,
                              read_only: bool, denied: str | None) -> None:
    assert form_override_denied(rules(*items), default, read_only, ["/a/x"]) == denied


@pytest.mark.parametrize(
    ("value", "path"),
    [("/fotoweb/admin/x", "/fotoweb/admin/x"), ("http://h:1/a/b?x#y", "/a/b"),
     ("HTTPS://h", "/"), ("/a%2Fb", "/a%2Fb")],
)
def test_destination_path(value: str, path: str) -> None:
    assert destination_path(value) == path


@pytest.mark.parametrize("value", ["fotoweb/admin", "ftp://h/a", "", "h/a"])
def test_destination_path_refuses(value: str) -> None:
    with pytest.raises(BadPath):
        destination_path(value)
