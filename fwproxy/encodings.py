"""The encodings of a secret: the one notion of the shapes a secret takes when something
echoes it back (a token endpoint quoting its request, a tenant reflecting the token it got),
shared by the log redactor (log.py `Redactor`, `outward`) and the response scrub
(upstream.py `carries`, fed by the token manager's `Echo`). Computed once a secret."""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus


def encodings(secret: str) -> frozenset[str]:
    """The shapes a secret takes when a token endpoint or tenant echoes it back: as it is,
    form-encoded (``+`` for space, ``%XX`` in either case), percent-encoded, JSON-escaped
    (with or without ``\\/``, ASCII or not, or every character as ``\\uXXXX``),
    backslash-escaped as a Python ``repr`` shows it, HTML-escaped (named, or every
    character a numeric entity), hex, and base64 (standard and URL-safe, with or without
    padding, also inside longer base64 text such as ``base64("Bearer " + token)``).

    The one notion of "the encodings of a secret": the log redactor masks these, and the
    response scrub (`echo_pattern`, upstream.py) drops a header that holds one. Computed once
    a secret (cached): a renewal pays for it, a request never does."""
    return _encodings(secret)


@functools.lru_cache(maxsize=64)
def _encodings(secret: str) -> frozenset[str]:
    forms = {secret, quote_plus(secret, safe=""), quote(secret, safe=""), quote(secret),
             html.escape(secret), repr(secret)[1:-1], ascii(secret)[1:-1]}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    forms |= {_PERCENT.sub(lambda m: m.group().lower(), form) for form in forms}
    raw = secret.encode("utf-8", "surrogateescape")
    forms |= {raw.hex(), raw.hex().upper()}
    for pattern in ("&#{:d};", "&#x{:x};", "&#x{:X};", "\\u{:04x}", "\\u{:04X}"):
        forms.add("".join(pattern.format(ord(char)) for char in secret))
    forms |= _base64_forms(raw)
    return frozenset(form for form in forms if len(form) >= 4)


@dataclass(frozen=True)
class Echo:
    """Finds any of some secrets in any of their `encodings` (`echo_pattern`)."""

    forms: tuple[str, ...] = field(repr=False)
    hint: re.Pattern[str] = field(repr=False)  # where a form may start (`prefix_pattern`)
    shortest: int  # no shorter text can hold a form (nor can it once percent-decoded)

    def __call__(self, text: str) -> bool:
        if len(text) < self.shortest or not self.hint.search(text):
            return False
        return any(form in text for form in self.forms)


@functools.lru_cache(maxsize=8)
def echo_pattern(secrets: tuple[str, ...]) -> Echo:
    """What finds any of `secrets` in any of its `encodings`: made once a tuple (the token
    manager makes one as it takes a token, in a few milliseconds), asked once a response."""
    forms = frozenset().union(*map(encodings, secrets))
    return Echo(tuple(forms), prefix_pattern(forms, HINT_LENGTH), min(map(len, forms)))


BASE64_CORE = 8  # shortest run of base64 taken to stand for a secret inside longer text


def _base64_forms(raw: bytes) -> set[str]:
    """`raw` in base64 on its own (padded and not) and `Bearer `-prefixed, and the runs of
    base64 that encode only `raw`'s bytes at each of the three alignments it may have
    inside longer base64 text; each in the standard and the URL-safe alphabet."""
    forms: set[str] = set()
    for text in (raw, b"Bearer " + raw):
        padded = base64.b64encode(text).decode("ascii")
        forms |= {padded, padded.rstrip("=")}
    for offset in range(3):  # the secret starts at byte 0, 1 or 2 of a 3-byte group
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        start = 4 if offset else 0  # the first group mixes in what came before
        end = 4 * ((offset + len(raw)) // 3)  # a last partial group mixes in what follows
        core = encoded[start:end]
        if len(core) >= BASE64_CORE:
            forms.add(core)
    forms |= {form.translate(_URLSAFE) for form in forms}
    return forms


_URLSAFE = str.maketrans("+/", "-_")


_PERCENT = re.compile(r"%[0-9A-F]{2}")


HINT_LENGTH = 16  # characters of each form the pre-checks look for (redactor, echo)


def prefix_pattern(words: set[str] | frozenset[str], length: int) -> re.Pattern[str]:
    """A pattern that matches wherever one of `words` starts (its first `length`
    characters; a shorter word whole), built as a trie: the regex engine then tries one
    branch a character instead of every word in turn, so hundreds of forms (32 tokens)
    cost one quick search of a log line."""
    trie: dict[str, Any] = {}
    for word in sorted({word[:length] for word in words}, key=len):
        node = trie
        for char in word:
            if node.get("") is True:
                break  # a shorter prefix already matches wherever this one would
            node = node.setdefault(char, {})
        else:
            node.clear()
            node[""] = True

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items())
                    if char]
        if not branches:
            return ""
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return re.compile(build(trie))
