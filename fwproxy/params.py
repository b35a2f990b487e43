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
a form field of a POST body                    where a field could evade the rules (POST
(``application/x-www-form-urlencoded``,        allowed on the path but some other method
``multipart/form-data``: a part's ``name``     denied there) the body is read as it streams
or ``name*``)                                  (`FormScanner`, fed each chunk before it is
                                               forwarded): a field named as an override stops
                                               the upload before its end (403). Without
                                               ``access.rules`` nothing is looked at
                                               (``read_only`` refuses every POST anyway).
=============================================  ===============================================

A WebDAV ``Destination`` header (MOVE, COPY) names a second path the method acts on: it is
judged like the request's own path, with the same method.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote, unquote, unquote_plus

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
              if is_override_name(form_decode(key))]
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
    rules deny on `paths`, or None. When there is one (a POST the rules allow, but some
    other method not) the caller reads a form POST's body with a `FormScanner`."""
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


# --- method overrides in a form body, read as it streams ----------------------------------

_OVERRIDE_NAMES = tuple(sorted(_OVERRIDE_PARAMS))
URLENCODED = "application/x-www-form-urlencoded"
# One decoded character takes at most 12 raw bytes (%F0%9F%98%80), and decoding never drops
# one: a raw name longer than this cannot decode to an override name.
MAX_RAW_NAME = 12 * max(map(len, _OVERRIDE_NAMES))
MAX_PART_HEADERS = 16 * 1024  # a multipart part's header block; longer: refused
_NAME_END = re.compile(rb"[=&;]")
_PAIR_END = re.compile(rb"[&;]")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
_NAME_PARAM = re.compile(
    r'(?:^|[;\s])name(\*\d+)?(\*)?\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', re.IGNORECASE)
_QUOTED_PAIR = re.compile(r"\\(.)")


def _same_char(char: str, target: str) -> bool:
    """`char` compares equal to `target` (ASCII lower case, or ``-``) the ways ASP.NET
    ignores case (invariant lower or upper case, per character) or reads ``_`` as ``-``."""
    return (char == target or char.lower()[:1] == target or char.upper()[:1].lower() == target
            or (target == "-" and char == "_"))


def is_override_name(decoded: str) -> bool:
    """Whether a decoded form field or query parameter name is a method override
    (``X-HTTP-Method-Override``, ``x_http_method``, ``_METHOD``; a dotless i, U+0131, is an
    ``I`` to .NET's upper-casing comparison)."""
    return any(len(decoded) == len(name) and all(map(_same_char, decoded, name))
               for name in _OVERRIDE_NAMES)


class FormScanner:
    """Finds a method-override field in a form body as it streams, before each chunk is
    forwarded: `feed` every chunk in order; True once one is found (`refusal` says what),
    and from then on. Pure and incremental: a name split across chunks is found, and at most
    a bounded tail is kept (`MAX_RAW_NAME` bytes of a urlencoded name, the boundary's length
    or `MAX_PART_HEADERS` for multipart). It errs on the side of refusing: ``;`` separates
    fields as ``&`` does, and a multipart body whose boundary or part headers it cannot read
    is refused."""

    def __init__(self, content_type: str, denial: str) -> None:
        self.denial = denial  # what is denied there: the refusal's second half
        self.refusal = ""
        self._name = bytearray()  # urlencoded: the current field's raw name so far
        self._in_name = True
        self._long = False  # the current name is longer than MAX_RAW_NAME
        self._buf = b""  # multipart: the unsearched tail
        self._headers = False  # multipart: inside a part's header block
        self._delimiter: bytes | None = None
        self.multipart = content_type.strip().lower().startswith("multipart/")
        if self.multipart:
            boundaries = _BOUNDARY.findall(content_type)
            values = {quoted or token for quoted, token in boundaries}
            self._buf = b"\n"  # (the body starts a line)
            if len(values) != 1 or not next(iter(values)):
                self._found("a multipart body whose boundary cannot be read")
            else:
                self._delimiter = b"\n--" + next(iter(values)).encode("utf-8", "replace")

    @property
    def kept(self) -> int:
        """Bytes held between chunks (bounded: see the class docstring)."""
        return len(self._name) + len(self._buf)

    def _found(self, what: str) -> bool:
        self.refusal = f"{what}, where {self.denial}"
        return True

    def feed(self, data: bytes) -> bool:
        """Scan the next chunk (before it is forwarded): True to stop the upload."""
        if self.refusal:
            return True
        return self._multipart(data) if self.multipart else self._urlencoded(data)

    def _urlencoded(self, data: bytes) -> bool:
        pos, size = 0, len(data)
        while pos < size:
            if not self._in_name:
                match = _PAIR_END.search(data, pos)
                if match is None:
                    return False
                self._in_name, pos = True, match.end()
                continue
            match = _NAME_END.search(data, pos)
            end = size if match is None else match.start()
            if not self._long:
                self._name += data[pos:min(end, pos + MAX_RAW_NAME + 1 - len(self._name))]
                self._long = len(self._name) > MAX_RAW_NAME
            if match is None:
                return False
            if data[end:end + 1] == b"=":
                raw = self._name.decode("latin-1")
                if not self._long and is_override_name(form_decode(raw)):
                    return self._found(f"the form field {raw!r} names a method override")
                self._in_name = False
            self._name.clear()
            self._long = False
            pos = end + 1
        return False

    def _multipart(self, data: bytes) -> bool:
        delimiter = self._delimiter
        assert delimiter is not None
        buf = self._buf + data
        while True:
            if not self._headers:
                at = buf.find(delimiter)
                if at < 0:
                    self._buf = buf[-(len(delimiter) - 1):]
                    return False
                buf, self._headers = buf[at + 1:], True
            end = _BLANK_LINE.search(buf)
            if len(buf) > MAX_PART_HEADERS if end is None else end.end() > MAX_PART_HEADERS:
                return self._found("a multipart part's headers longer than "
                                   f"{MAX_PART_HEADERS} bytes")
            if end is None:
                self._buf = buf
                return False
            name = _part_override(buf[:end.end()])
            if name is not None:
                return self._found(f"the multipart form field {name!r} names a method override")
            buf, self._headers = buf[end.end() - 1:], False  # its last LF starts a line


def _part_override(block: bytes) -> str | None:
    """The method-override name a part's header block gives its part, if any: every
    ``name=`` parameter (quoted or not, and RFC 2231/5987 ``name*=`` with continuations),
    read as UTF-8 and as Latin-1, as written and percent-decoded."""
    for text in {block.decode("utf-8", "replace"), block.decode("latin-1")}:
        names: list[str] = []
        pieces: list[str] = []
        for number, extended, quoted, token in _NAME_PARAM.findall(text):
            value = _QUOTED_PAIR.sub(r"\1", quoted) if quoted else token
            if extended:  # charset'language'percent-encoded
                charset, _, rest = value.partition("'")
                latin = charset.strip().lower() == "iso-8859-1"
                value = unquote(rest.partition("'")[2] if "'" in rest else value,
                                encoding="latin-1" if latin else "utf-8", errors="replace")
            (pieces if number else names).append(value)
        names.append("".join(pieces))
        for name in names:
            for reading in (name, form_decode(name), unquote(name, errors="replace")):
                if is_override_name(reading):
                    return name
    return None


# Charsets whose ASCII bytes are ASCII characters and which have no shift sequences: a name
# written in them reads as fwproxy reads it (UTF-16 or UTF-7 would not)
_PLAIN_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1",
                             "windows-1252"})
_CHARSET = re.compile(r';\s*charset\s*=\s*"?([^";\s]*)', re.IGNORECASE)


def form_scanner(content_types: Sequence[str], denial: str,
                 encodings: Sequence[str] = ()) -> FormScanner:
    """The scanner for a form POST's body (its Content-Type and Content-Encoding values).
    What fwproxy cannot read as ASP.NET would is refused at the first byte: more than one
    Content-Type, a Content-Encoding (a compressed form), a charset other than
    `_PLAIN_CHARSETS`."""
    why = None
    charsets = {charset.lower() for value in content_types for charset in _CHARSET.findall(value)}
    if len(content_types) != 1:
        why = "a form POST with more than one Content-Type"
    elif any(value.strip().lower() not in ("", "identity") for value in encodings):
        why = "a form POST with a Content-Encoding"
    elif not charsets <= _PLAIN_CHARSETS:
        why = f"a form POST in charset {min(charsets - _PLAIN_CHARSETS)[:40]!r}"
    if why is None:
        return FormScanner(content_types[0], denial)
    scanner = FormScanner(URLENCODED, denial)
    scanner._found(why)
    return scanner
