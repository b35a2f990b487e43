"""Query parameters and other places the tenant reads a method or a path from, besides the
request line: names read as ASP.NET reads them (`form_decode`, `param_name`), method
overrides in the query string or a form body, a WebDAV ``Destination``; and the form an
``access.rules`` path must be in to be matched at all (`check_rule_paths`). Pure functions.

A method-override header names a method some frameworks execute instead of the request
line's (access.py judges the three names). ASP.NET MVC also reads the override from a POST's
form fields and its query string (names case-insensitive, percent-decoded):

=============================================  ===============================================
where the override is named                    what fwproxy does
=============================================  ===============================================
``X-HTTP-Method-Override``, ``X-HTTP-Method``, each method named is judged
``X-Method-Override`` headers
the same names with ``_`` (``X_HTTP_Method``)  never reach the tenant: every request header
                                               whose name holds ``_`` is dropped (upstream.py)
a query parameter (those names, or             each method named is judged; names compared
``_method``), ``?X-HTTP-Method-Override=PUT``  percent-decoded (``%uNNNN`` too), ``+`` as a
                                               space, ``_`` as ``-``, case-insensitively
a form field of a POST body                    fwproxy does not read bodies (it streams them),
(``application/x-www-form-urlencoded``,        so where a field could evade the rules (POST
``multipart/form-data``)                       allowed on the path but some other method
                                               denied there) such a POST is refused (403).
                                               Without ``access.rules`` nothing is looked at
                                               (``read_only`` refuses every POST anyway).
=============================================  ===============================================

A WebDAV ``Destination`` header (MOVE, COPY) names a second path the method acts on: it is
judged like the request's own path, with the same method.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote, unquote_plus

from .access import (
    METHOD_OVERRIDES,
    Rule,
    decide_access,
    normalize_path,
    overridden_methods,
    target_authority,
)
from .exceptions import BadPath, ConfigError

# Method-override names as a query parameter or form field, folded by `param_name`
_OVERRIDE_PARAMS = frozenset({*(name.lower() for name in METHOD_OVERRIDES), "-method"})
_PERCENT_U = re.compile(r"%u([0-9a-f]{4})", re.IGNORECASE)


def form_decode(text: str) -> str:
    """A query parameter's name or value as ASP.NET's ``HttpUtility.UrlDecode`` reads it:
    ``+`` is a space, ``%XX`` (UTF-8) and ``%uNNNN`` are decoded."""
    if "%" in text:
        text = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), text)
    return unquote_plus(text, errors="replace")


def param_name(raw: str) -> str:
    """A query parameter's name the way ASP.NET compares it: decoded, case-folded (its
    collections ignore case). ``ACCESS%5FTOKEN`` -> ``access_token``."""
    return form_decode(raw).casefold()


def names_param(part: str, name: str) -> bool:
    """Whether one ``key=value`` part of a raw query string is parameter `name` (folded)."""
    return param_name(part.partition("=")[0]) == name


def may_name(query: str, name: str) -> bool:
    """False only when the raw query string cannot hold parameter `name` (folded, ASCII):
    the cheap test before splitting it."""
    return not query.isascii() or "%" in query or name in query.lower()


def query_overrides(query: str) -> tuple[str, ...]:
    """The methods named by method-override parameters of the raw query string
    (``?X-HTTP-Method-Override=DELETE``, ``?x_http_method=put``, ``?_method=delete``)."""
    if not query or not may_name(query, "method"):
        return ()  # (the usual query: three scans)
    values = [form_decode(value) for part in query.split("&")
              for key, _, value in (part.partition("="),)
              if param_name(key).replace("_", "-") in _OVERRIDE_PARAMS]
    return overridden_methods(values)


def destination_path(value: str) -> str:
    """The raw path a WebDAV ``Destination`` names (an absolute URI or an absolute path).
    BadPath for anything else."""
    if value[:1] != "/":
        if target_authority(value) is None:
            raise BadPath("a Destination that is not an http(s) URI or an absolute path")
        value = "/" + value.partition("://")[2].partition("/")[2]
    return value.partition("#")[0].partition("?")[0]


_UNNAMED = "UNNAMED"  # stands for every method no rule names: they are all judged alike


def form_override_denied(
    rules: Sequence[Rule], default: str, read_only: bool, paths: Sequence[str]
) -> str | None:
    """A method a POST's form field could name (ASP.NET MVC executes it instead) that the
    rules deny on `paths`, or None. fwproxy does not read bodies, so the caller refuses a
    form POST when there is one: that is a POST the rules allow, but some other method not."""
    candidates = {"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", _UNNAMED}
    for rule in rules:
        candidates.update(rule.methods or ())
    candidates.discard("POST")
    for method in sorted(candidates):
        for path in paths:
            if not decide_access(rules, default, read_only, method, path)[0]:
                return method
    return None


_PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))


def rule_path_form(pattern: str) -> str:
    """`pattern` (an ``access.rules`` path) the way `normalize_path` writes the paths it is
    matched against; BadPath for one no request path can be normalized to (``..``, ``;``,
    ``:``, ...). ``/fotoweb/%61dmin/`` -> ``/fotoweb/admin``."""
    if "?" in pattern or "#" in pattern:
        raise BadPath("a '?' or '#' (rules match the path, never the query)")
    return normalize_path(quote(pattern, safe=_PRINTABLE_ASCII))  # (non-ASCII as %XX)


def check_rule_paths(raw: object, paths: Sequence[str], key: str) -> None:
    """Refuse (ConfigError naming ``key[j]``) a rule path that can never match: one not in
    the form `rule_path_form` gives it, with that form suggested. `raw` is the value as
    configured (a list, or the environment's string), for the index."""
    for index, pattern in enumerate(paths):
        if isinstance(raw, list):
            index = next((i for i, item in enumerate(raw) if str(item).strip() == pattern),
                         index)
        try:
            form = rule_path_form(pattern)
        except BadPath as exc:
            raise ConfigError(f"{key}[{index}]", f"{pattern!r} can never match a request "
                                                 f"path: refused: {exc}") from None
        if form != pattern:
            raise ConfigError(f"{key}[{index}]",
                              f"{pattern!r} can never match: requests are matched in their "
                              f"normalized form; write {form!r}")
