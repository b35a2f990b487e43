"""Logging to stderr, with a redaction filter on the handler that no secret gets past."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import deque
from typing import TextIO

from aiohttp.http_exceptions import HttpProcessingError

MASK = "********"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

_PATTERNS = [
    # access_token=..., refresh_token=..., in URLs and form bodies
    (re.compile(r"((?:access|refresh)_token|client_secret|code_verifier)=[^&\s\"'#]+", re.I),
     rf"\1={MASK}"),
    # "access_token": "...", in JSON
    (re.compile(r"(\"(?:access|refresh)_token\"|\"client_secret\")(\s*:\s*)\"[^\"]*\"", re.I),
     rf'\1\2"{MASK}"'),
    # Authorization: Bearer ...
    (re.compile(r"(Bearer)\s+[^\s\"',;]+", re.I), rf"\1 {MASK}"),
]


_TRIGGER = re.compile(r"token|secret|verifier|bearer", re.I)


class Redactor:
    """Masks known secret values and every token-shaped pattern in a piece of text."""

    def __init__(self, remember: int = 32) -> None:
        self._secrets: deque[str] = deque(maxlen=remember)
        self._pinned: set[str] = set()

    def pin(self, secret: str) -> None:
        """A secret to mask for the life of the process (the client secret)."""
        if len(secret) >= 4:
            self._pinned.add(secret)

    def add(self, secret: str) -> None:
        """A short-lived secret (an access token); the last few are remembered."""
        if len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in (*self._pinned, *self._secrets):
            if secret in text:
                text = text.replace(secret, MASK)
        if _TRIGGER.search(text):  # most lines carry none of the patterns: skip them fast
            for pattern, replacement in _PATTERNS:
                text = pattern.sub(replacement, text)
        return text


REDACT = Redactor()


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
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route every logger (fwproxy's and aiohttp's) through one redacting stderr handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
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
