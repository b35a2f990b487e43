"""params.py: query parameter names as the tenant reads them, method overrides outside the
headers, and WebDAV's Destination, as tables."""

from __future__ import annotations

import pytest

from fwproxy.access import Rule
from fwproxy.exceptions import BadPath
from fwproxy.params import (
    MAX_PART_HEADERS,
    MAX_RAW_NAME,
    FormScanner,
    destination_path,
    form_decode,
    form_override_denied,
    form_scanner,
    is_override_name,
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
        # .NET ignores case by upper-casing: a dotless i (U+0131) is an I to it
        ("X-HTTP-Method-Overr%C4%B1de=DELETE", ("DELETE",)),
        ("x-http-method-overr%u0131de=PUT", ("PUT",)),
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


# --- method overrides in a form body, read as it streams (FormScanner) -----------------------

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=b"


def part(headers: bytes, value: bytes = b"DELETE", boundary: bytes = b"b") -> bytes:
    return (b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n--" + boundary
            + b"--\r\n")


def chunk_part() -> bytes:
    return part(b'Content-Disposition: form-data; name="chunk"; filename="blob"\r\n'
                b"Content-Type: application/octet-stream", b"\0\r\n-b--x--b" * 20)


SCANS = [
    # urlencoded: names as ASP.NET reads them; '&' and ';' separate fields
    (URLENCODED, b"x-http-method-override=DELETE", True),
    (URLENCODED, b"a=1&X_HTTP_METHOD_OVERRIDE=PUT", True),
    (URLENCODED, b"a=1;x-http-method=PUT", True),
    (URLENCODED, b"a=1&&x-method-override=", True),
    (URLENCODED, b"%58-HTTP-Method-Override=DELETE", True),
    (URLENCODED, b"%u0058-http-method-override=DELETE", True),
    (URLENCODED, b"x%2Dhttp%2Dmethod%2Doverride=DELETE", True),
    (URLENCODED, b"_method=DELETE", True),
    (URLENCODED, b"%5FMETHOD=DELETE", True),
    (URLENCODED, b"x-http-method-overr%C4%B1de=DELETE", True),  # a dotless i: .NET's upper
    (URLENCODED, b"x+http+method+override=DELETE", False),  # '+' is a space, not a '-'
    (URLENCODED, b"a=x-http-method-override", False),  # in a value
    (URLENCODED, b"a=b=x-http-method=1&c=2", False),
    (URLENCODED, b"x-http-method-override", False),  # no '=': a value without a name
    (URLENCODED, b"x-http-method-overrides=1&ax-http-method=1", False),
    (URLENCODED, b"chunk=" + b"%00" * 500 + b"&name=x", False),
    (URLENCODED, b"", False),
    # multipart: the part's Content-Disposition name, however it is written
    (MULTIPART, part(b'Content-Disposition: form-data; name="X-HTTP-Method-Override"'), True),
    (MULTIPART, part(b"content-disposition: form-data;name=x_http_method"), True),
    (MULTIPART, part(b'CONTENT-DISPOSITION: FORM-DATA; NAME = "_Method"'), True),
    (MULTIPART, part(b'Content-Disposition: form-data; name="X-HTTP-Method\\-Override"'), True),
    (MULTIPART, part(b"Content-Disposition: form-data; name*=UTF-8''%58-HTTP-Method"), True),
    (MULTIPART, part(b"Content-Disposition: form-data; NAME*=iso-8859-1'en'x%2Dmethod"
                     b"%2Doverride"), True),
    (MULTIPART, part(b'Content-Disposition: form-data; name*0="X-HTTP-"; name*1="Method"'),
     True),
    (MULTIPART, part(b'Content-Disposition: form-data; name="%58-HTTP-Method"'), True),
    (MULTIPART, chunk_part() [:-4] + b"\r\n" + part(
        b'Content-Disposition: form-data; name="X-HTTP-Method"')[2:], True),  # second part
    (MULTIPART, b"--b\nContent-Disposition: form-data; name=_method\n\nPUT\n--b--", True),
    (MULTIPART, chunk_part(), False),
    (MULTIPART, part(b'Content-Disposition: form-data; name="file"; '
                     b'filename="X-HTTP-Method-Override"'), False),
    (MULTIPART, part(b'Content-Disposition: form-data; name="note"',
                     b"x\r\n--c\r\nContent-Disposition: form-data; name=_method\r\n\r\n"), False),
    (MULTIPART, b'name=_method\r\n\r\n' + chunk_part(), False),  # a preamble is no part
    ('multipart/form-data; boundary="a b:c?=(\')"', part(
        b'Content-Disposition: form-data; name="X-HTTP-Method"', boundary=b"a b:c?=(')"), True),
    ('multipart/form-data; boundary="a b:c?=(\')"', part(
        b'Content-Disposition: form-data; name="X-HTTP-Method"', boundary=b"a b:c"), False),
    ("multipart/form-data; charset=utf-8; BOUNDARY=--_x--", part(
        b'Content-Disposition: form-data; name="x-method-override"', boundary=b"--_x--"), True),
    # refused when the body cannot be read as ASP.NET might read it
    ("multipart/form-data", chunk_part(), True),  # no boundary
    ("multipart/form-data; boundary=b; boundary=c", chunk_part(), True),
    (MULTIPART, b"--b\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\nx\r\n--b--", True),
]


def scan(content_type: str, chunks: list[bytes]) -> bool:
    scanner = FormScanner(content_type, "DELETE /x is denied by access rule 'r'")
    found = any(scanner.feed(chunk) for chunk in chunks)
    assert bool(scanner.refusal) == found
    return found


@pytest.mark.parametrize(("content_type", "body", "found"), SCANS)
def test_form_scanner(content_type: str, body: bytes, found: bool) -> None:
    assert scan(content_type, [body]) is found
    for offset in range(len(body) + 1):  # split at every byte offset
        assert scan(content_type, [body[:offset], body[offset:]]) is found, offset
    assert scan(content_type, [body[i:i + 1] for i in range(len(body))]) is found


def test_form_scanner_names_the_field_and_the_rule() -> None:
    scanner = FormScanner(URLENCODED, "DELETE /x is denied by access rule 'r'")
    assert not scanner.feed(b"a=1&%58_http_")
    assert scanner.feed(b"method=DELETE")
    assert scanner.refusal == ("the form field '%58_http_method' names a method override, "
                               "where DELETE /x is denied by access rule 'r'")
    assert scanner.feed(b"more")  # and stays found


def test_form_scanner_keeps_a_bounded_tail() -> None:
    scanner = FormScanner(URLENCODED, "denied")
    for _ in range(64):
        assert not scanner.feed(b"n" * 65536)  # a 4 MiB field name
        assert scanner.kept <= MAX_RAW_NAME + 1
    assert not scanner.feed(b"=1&x-http-method")  # the long name ends: not an override
    assert scanner.feed(b"=PUT")  # found on the "=" that ends this one's name
    multipart = FormScanner(MULTIPART, "denied")
    assert not multipart.feed(chunk_part()[:chunk_part().index(b"\r\n\r\n") + 4])
    for _ in range(64):
        assert not multipart.feed(b"\0\r\n-" * 16384)
        assert multipart.kept < len(b"\n--b")
    headers = FormScanner(MULTIPART, "denied")
    assert not headers.feed(b"--b\r\nX: " + b"p" * 8000)
    assert headers.kept <= MAX_PART_HEADERS
    assert headers.feed(b"p" * MAX_PART_HEADERS)  # a part header block without end: refused


@pytest.mark.parametrize(
    ("name", "override"),
    [("X-HTTP-Method-Override", True), ("x_http_method", True), ("_METHOD", True),
     ("-method", True), ("X-Method-Override", True), ("x-http-method-overr\u0131de", True),
     ("x-http-method-overr\u0130de", True), ("x-http-method", True), ("x-http-methods", False),
     ("x http method", False), ("method", False), ("", False)],
)
def test_is_override_name(name: str, override: bool) -> None:
    assert is_override_name(name) is override


@pytest.mark.parametrize(
    ("content_types", "encodings", "refused"),
    [([URLENCODED, MULTIPART], (), "more than one Content-Type"),
     ([URLENCODED], ["gzip"], "a form POST with a Content-Encoding"),
     ([URLENCODED + "; charset=utf-16"], (), "charset 'utf-16'"),
     ([MULTIPART + '; charset="UTF-7"'], (), "charset 'utf-7'"),
     ([URLENCODED + "; charset=UTF-8"], ["identity"], ""),
     ([MULTIPART + "; charset=windows-1252"], (), ""),
     ([URLENCODED], (), "")],
)
def test_form_scanner_refuses_what_it_cannot_read(
    content_types: list[str], encodings: list[str], refused: str
) -> None:
    scanner = form_scanner(content_types, "denied", encodings)
    assert scanner.feed(b"a=1") is bool(refused)
    assert refused in scanner.refusal
