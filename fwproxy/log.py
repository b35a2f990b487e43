"""Logging to stderr, with a redaction filter on the handler that no secret gets past.

Every line goes through one `LineHandler`. The access log (one line a request) takes its
fast lane, `AccessLog.info`: no `LogRecord`, the line formatted directly, and the lines of
one event-loop turn written together, so a busy proxy makes one ``write()`` per turn rather
than one per request. Anything else that logs goes the ordinary way, after whatever the
fast lane still holds, so the order of lines is kept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO
from urllib.parse import quote_plus

from aiohttp.http_exceptions import HttpProcessingError

from .encodings import HINT_LENGTH, encodings, prefix_pattern

MASK = "********"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # access_token=..., refresh_token=..., in URLs and form bodies
    (re.compile(r"((?:access|refresh)_token|client_secret|code_verifier)=[^&\s\"'#]+", re.I),
     rf"\1={MASK}"),
    # "access_token": "...", in JSON
    (re.compile(r"(\"(?:access|refresh)_token\"|\"client_secret\")(\s*:\s*)\"[^\"]*\"", re.I),
     rf'\1\2"{MASK}"'),
    # Authorization: Bearer ...
    (re.compile(r"(Bearer)\s+[^\s\"',;]+", re.I), rf"\1 {MASK}"),
]


def _basic(match: re.Match[str]) -> str:
    """``Basic base64(user:password)`` masked; ``Basic authentication`` is left alone."""
    try:
        decoded = base64.b64decode(match.group(2) + "=" * (-len(match.group(2)) % 4))
    except ValueError:
        return match.group()
    return f"{match.group(1)} {MASK}" if b":" in decoded else match.group()


# Authorization: Basic base64(client_id:client_secret), echoed
_PATTERNS.append((re.compile(r"(Basic)\s+([A-Za-z0-9+/]{4,}=*)", re.I), _basic))


# a local token (localtokens.py), wherever it appears: fwproxy's own prefix says what it is
_PATTERNS.append((re.compile(r"fwpl_[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"), MASK))

_TRIGGERS = ("token", "secret", "verifier", "bearer", "basic", "fwpl_")  # one a pattern
MAX_SHOWN = 400  # characters of one text shown to a client or a scraper


def basic_credentials(user: str, password: str) -> set[str]:
    """``base64(user:password)`` as an ``Authorization: Basic`` header carries it, raw and
    with both parts form-encoded first (RFC 6749 section 2.3.1)."""
    pairs = {f"{user}:{password}", f"{quote_plus(user)}:{quote_plus(password)}"}
    return {base64.b64encode(pair.encode("utf-8", "surrogateescape")).decode("ascii")
            for pair in pairs}


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")  # C0, DEL, C1, line breaks


def _may_match(text: str) -> bool:
    """A cheap pre-check: most lines carry none of the patterns. For ASCII text, casefold
    finds every word `re.I` would; other text (re.I also lets ``i`` match the dotless i,
    U+0131) always goes through the patterns."""
    if not text.isascii():
        return True
    folded = text.casefold()
    return any(word in folded for word in _TRIGGERS)


class Redactor:
    """Masks known secret values, in every encoding they may be echoed in (`encodings`),
    and every token-shaped pattern in a piece of text."""

    def __init__(self, remember: int = 32) -> None:
        self._secrets: deque[str] = deque(maxlen=remember)
        self._pinned: set[str] = set()
        self._forms: dict[str, frozenset[str]] = {}
        self._known: tuple[str, ...] = ()
        self._hint: re.Pattern[str] | None = None  # finds every form's start, or more

    def pin(self, secret: str, client_id: str | None = None) -> None:
        """A secret to mask for the life of the process (the client secret); with
        `client_id`, also the Basic credentials the two make."""
        if len(secret) >= 4 and secret not in self._pinned:
            self._pinned.add(secret)
            self._forms[secret] = encodings(secret)
            self._update()
        if client_id is not None and len(secret) >= 4:
            basic = basic_credentials(client_id, secret)
            if not basic <= self._forms[secret]:
                self._forms[secret] |= basic
                self._update()

    def add(self, secret: str) -> None:
        """A short-lived secret (an access or refresh token); the last few are remembered."""
        if len(secret) >= 4 and secret not in self._secrets:
            if len(self._secrets) == self._secrets.maxlen and self._secrets[0] not in self._pinned:
                self._forms.pop(self._secrets[0], None)
            self._secrets.append(secret)
            self._forms.setdefault(secret, encodings(secret))
            self._update()

    def _update(self) -> None:
        forms: set[str] = set()
        for secret in (*self._pinned, *self._secrets):
            forms |= self._forms[secret]
        # longest first: a form that contains another is masked whole
        self._known = tuple(sorted(forms, key=len, reverse=True))
        self._hint = prefix_pattern(forms, HINT_LENGTH) if forms else None

    def __call__(self, text: str) -> str:
        hint = self._hint
        if hint is not None and hint.search(text):  # most text holds no form: one search
            for secret in self._known:
                if secret in text:
                    text = text.replace(secret, MASK)
        if _may_match(text):
            for pattern, replacement in _PATTERNS:
                text = pattern.sub(replacement, text)
        return text


REDACT = Redactor()


def outward(text: str, limit: int = MAX_SHOWN) -> str:
    """The one way text leaves the process for a client or a scraper (error bodies, the
    readiness answer, the status page): control characters become spaces, every secret
    is masked (`REDACT`), and the result is cut to `limit` characters, in that order, so
    a cut never leaves part of a secret unmasked."""
    text = REDACT(_UNPRINTABLE.sub(" ", text))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def quoted(text: str) -> str:
    """`text` safe between the access log's double quotes: ``"`` and ``\\`` escaped with a
    backslash, every control or other unprintable character as ``\\xNN``/``\\uNNNN``, so a
    request target cannot end the quoted field or the line. The usual target passes as it is."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_escaped(c) for c in text)


def _escaped(char: str) -> str:
    if char == '"' or char == "\\":
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else (
        f"\\U{code:08x}")


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback through `REDACT` before it is written."""

    def __init__(self, redactor: Redactor = REDACT) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._redact(text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a client's malformed request as an error with a traceback; it is neither.

    Such records become one warning line saying what was wrong with the request.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            detail = _CONTROL.sub(" ", exc.message or type(exc).__name__)[:200]
            record.msg = f"{record.getMessage()}: malformed request, answered {exc.code}: {detail}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald, Loki or ELK."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one stderr handler: redacts, formats, writes; and the access log's fast lane."""

    def __init__(self, stream: TextIO, fmt: str = "text") -> None:
        super().__init__(stream)
        self.json = fmt == "json"
        self.addFilter(RedactingFilter())
        self.setFormatter(JsonFormatter() if self.json else logging.Formatter(TEXT_FORMAT))
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.flush()
        super().emit(record)

    def write_line(self, name: str, level: str, message: str) -> None:
        """Queue one already-composed message; it is written at the end of this loop turn
        (at once outside a loop)."""
        now = time.time()
        text = REDACT(message)
        if self.json:
            line = json.dumps({"ts": _iso(now), "level": level.lower(), "logger": name,
                               "msg": text}, ensure_ascii=False) + "\n"
        else:  # `_asctime`, inline: the line made in one piece, its newline with it
            second = int(now)
            if second != self._second:
                self._asctime(now)
            line = f"{self._stamp},{int((now - second) * 1000):03d} {level:<7} {name}: {text}\n"
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        # StreamHandler.flush's work (under the handler's lock, the stream's flush) without
        # its call, and a try instead of a context manager: once a loop turn with a line
        pending, self._pending = self._pending, []
        stream = self.stream
        try:
            with self.lock:  # type: ignore[union-attr]
                if pending:
                    stream.write("".join(pending))
                if stream and hasattr(stream, "flush"):
                    stream.flush()
        except (OSError, ValueError):  # stderr gone: never fail a request
            pass

    def _asctime(self, now: float) -> str:
        """`logging.Formatter`'s default time format, the date part made once a second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"


def _iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class AccessLog:
    """One line a request at INFO on ``fwproxy.access``, through `LineHandler`'s fast lane
    when that handler is the only one; through the logger otherwise (tests, embedders)."""

    def __init__(self, name: str = "fwproxy.access") -> None:
        self.name = name
        self._logger = logging.getLogger(name)

    def info(self, message: str) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handlers = logging.root.handlers
        if len(handlers) == 1 and isinstance(handlers[0], LineHandler) and not logger.handlers:
            handlers[0].write_line(self.name, "INFO", message)
        else:
            logger.info("%s", message)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route every logger (fwproxy's and aiohttp's) through one redacting stderr handler."""
    handler = LineHandler(stream or sys.stderr, fmt)
    # No record says which thread, process or source line it came from: don't look them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the logging HOWTO's "Optimization" section
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # fwproxy writes its own
    quiet_malformed_requests()


def quiet_malformed_requests() -> None:
    """Install `MalformedRequestFilter` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
