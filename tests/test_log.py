"""Redaction: no secret reaches a log line, whatever shape it comes in."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fwproxy.log import MASK, TEXT_FORMAT, AccessLog, Redactor, quoted, setup_logging
from tests.conftest import CLOSE, raw_exchange, wait_until


@pytest.fixture
def redact() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("GET /fotoweb/me?access_token=abc123XYZ&x=1", "abc123XYZ"),
        ("grant_type=client_credentials&client_id=a&client_secret=p4ss%21", "p4ss%21"),
        ('{"access_token": "tok-1", "token_type": "bearer"}', "tok-1"),
        ('{"refresh_token":"rt-9"}', "rt-9"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("refresh_token=rt-2&grant_type=refresh_token", "rt-2"),
        ("code_verifier=v3rifier", "v3rifier"),
        ("GET /x?ACCESS_TOKEN=Upper1", "Upper1"),  # the cheap pre-check ignores case too
        ("authorization: BEARER Upper2", "Upper2"),
        ("Client_Secret=Upper3", "Upper3"),
    ],
)
def test_patterns(redact: Redactor, text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out
    assert MASK in out


def test_known_secrets_are_masked_anywhere(redact: Redactor) -> None:
    redact.pin("the-client-secret")
    redact.add("plain-token-value")
    out = redact("odd place: the-client-secret / plain-token-value")
    assert "the-client-secret" not in out
    assert "plain-token-value" not in out


def test_only_recent_tokens_are_remembered() -> None:
    redact = Redactor(remember=2)
    for value in ("t-one", "t-two", "t-three"):
        redact.add(value)
    assert redact("t-one t-two t-three") == f"t-one {MASK} {MASK}"


class Recording(io.StringIO):
    """stderr for the handler: counts the writes, and `getvalue` sees queued lines too."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def getvalue(self) -> str:
        for handler in logging.getLogger().handlers:
            handler.flush()
        return super().getvalue()


@pytest.fixture
def stream() -> Iterator[Recording]:
    buffer = Recording()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_handler_redacts_args_and_tracebacks(stream: Recording) -> None:
    setup_logging("debug", stream=stream)
    log = logging.getLogger("fwproxy.test")
    log.debug("sending %s", "Authorization: Bearer very-secret-token")
    try:
        raise ValueError("boom with access_token=leaky-value")
    except ValueError:
        log.exception("failed")
    output = stream.getvalue()
    assert "very-secret-token" not in output
    assert "leaky-value" not in output
    assert "Traceback" in output  # the traceback itself is kept, only masked


def test_json_format_is_one_object_per_line(stream: Recording) -> None:
    setup_logging("info", "json", stream=stream)
    logging.getLogger("fwproxy.test").info("hello access_token=zzz")
    line = stream.getvalue().strip()
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "fwproxy.test"
    assert "zzz" not in entry["msg"]


async def test_malformed_requests_log_one_line_without_traceback(
    stream: Recording, proxy: Any
) -> None:
    setup_logging("info", stream=stream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.0 400")
    writer.close()
    output = stream.getvalue()
    assert "Traceback" not in output
    assert "malformed request, answered 400" in output
    assert "ERROR" not in output


async def test_no_secret_in_debug_logs_of_a_busy_run(
    stream: Recording, make_proxy: Any, tenant_state: Any
) -> None:
    from fwproxy.sim import DEMO_CLIENT_SECRET

    setup_logging("debug", stream=stream)
    proxy = await make_proxy()
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    tenant_state.revoke_all()  # a 401, a renewal and a replay
    async with proxy.post("/sim/echo?access_token=client-own-secret", data=b"x") as resp:
        assert resp.status == 401  # the client's own token: forwarded as is, not replayed
    async with proxy.post("/sim/upload", data=b"body") as resp:
        assert resp.status == 200
    wrong = await make_proxy(auth={"client_secret": "wrong-secret-value"})
    async with wrong.get("/fotoweb/me") as resp:
        assert resp.status == 503
        assert "wrong-secret-value" not in await resp.text()
    query = await make_proxy(auth={"token_placement": "query"})
    async with query.get("/fotoweb/me?x=1") as resp:
        assert resp.status == 200
    output = stream.getvalue()
    assert "invalid_client" in output
    assert "renewed" in output or "rejected" in output
    assert tenant_state.token_requests >= 3
    for secret in [DEMO_CLIENT_SECRET, "wrong-secret-value", "client-own-secret",
                   *tenant_state.tokens]:
        assert secret not in output


async def test_access_lines_of_one_loop_turn_are_written_together(stream: Recording) -> None:
    setup_logging("info", stream=stream)
    access = AccessLog("fwproxy.access")
    for n in range(5):
        access.info(f'127.0.0.1 "GET /x?access_token=leak{n}" 200')
    assert stream.writes == 0  # queued until the loop turn ends
    await asyncio.sleep(0)  # the flush scheduled with call_soon runs
    assert stream.writes == 1
    lines = super(Recording, stream).getvalue().splitlines()
    assert len(lines) == 5
    assert all(" INFO    fwproxy.access: 127.0.0.1 " in line for line in lines)
    assert "leak" not in "".join(lines)


async def test_other_records_keep_their_place_after_queued_access_lines(
    stream: Recording,
) -> None:
    setup_logging("info", stream=stream)
    AccessLog("fwproxy.access").info("first")
    logging.getLogger("fwproxy.proxy").warning("second")
    AccessLog("fwproxy.access").info("third")
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["first", "second", "third"]
    assert "WARNING fwproxy.proxy: second" in lines[1]


@pytest.mark.parametrize("now", [1_700_000_000.0, 1_700_000_000.0405, 1_700_000_000.9999,
                                 1_700_000_001.5])
def test_the_fast_lane_writes_what_the_formatter_would(
    stream: Recording, monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    """The access line is made without a LogRecord: its text is still the ordinary
    handler's, to the millisecond (the date part is made once a second)."""
    setup_logging("info", stream=stream)
    monkeypatch.setattr(time, "time", lambda: now)  # (the one fwproxy.log reads)
    AccessLog("fwproxy.access").info("GET Bearer abc.def")
    record = logging.LogRecord("fwproxy.access", logging.INFO, "", 0, f"GET Bearer {MASK}",
                               None, None)
    record.created, record.msecs = now, int((now - int(now)) * 1000)
    assert stream.getvalue() == logging.Formatter(TEXT_FORMAT).format(record) + "\n"


def test_access_line_outside_a_loop_is_written_at_once(stream: Recording) -> None:
    setup_logging("info", "json", stream=stream)
    AccessLog("fwproxy.access").info("GET Bearer abc.def")
    entry = json.loads(super(Recording, stream).getvalue())
    assert (entry["level"], entry["logger"]) == ("info", "fwproxy.access")
    assert entry["msg"] == f"GET Bearer {MASK}"
    assert entry["ts"].endswith("Z")


def test_access_lines_respect_the_level(stream: Recording) -> None:
    setup_logging("warning", stream=stream)
    AccessLog("fwproxy.access").info("not shown")
    assert stream.getvalue() == ""


def test_access_lines_reach_other_handlers_the_ordinary_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="fwproxy.access"):
        AccessLog("fwproxy.access").info("via the logger")
    assert [r.getMessage() for r in caplog.records] == ["via the logger"]


class Broken(io.StringIO):
    """stderr after journald went away: every write and flush fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


async def test_a_broken_stderr_never_fails_a_request(stream: Recording) -> None:
    setup_logging("info", stream=Broken())
    AccessLog("fwproxy.access").info("queued while stderr is gone")
    logging.getLogger("fwproxy.tokens").warning("flushes the queue first")  # must not raise
    AccessLog("fwproxy.access").info("queued again")
    await asyncio.sleep(0)  # the loop's flush must not raise either
    for handler in logging.getLogger().handlers:
        handler.flush()


def test_non_ascii_text_is_always_checked_against_the_patterns() -> None:
    redact = Redactor()
    # re.IGNORECASE lets "i" match the dotless i (U+0131): the pattern would mask this, so
    # the cheap pre-check must not skip it
    assert "v3rifier" not in redact("code_ver\u0131f\u0131er=v3rifier")


# --- the access line's quoted target cannot be spoofed (red team) -----------------------------


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/fotoweb/me?x=1", "/fotoweb/me?x=1"),
        ('/fotoweb/me?x="<script>{|}`', '/fotoweb/me?x=\\"<script>{|}`'),
        ("/a\\b", "/a\\\\b"),
        ("/a\nb\r\x00\x7f\x1b", "/a\\x0ab\\x0d\\x00\\x7f\\x1b"),
        ("/caf\u00e9\u2028\U000e0001", "/caf\u00e9\\u2028\\U000e0001"),
    ],
)
def test_quoted(target: str, shown: str) -> None:
    assert quoted(target) == shown


async def test_a_quote_in_the_target_does_not_end_the_logged_field(
    make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    with caplog.at_level(logging.INFO, logger="fwproxy.access"):
        answer = await raw_exchange(proxy.port, b'GET /fotoweb/me?x="<script>{|}`' + CLOSE)
        await wait_until(lambda: any("script" in r.getMessage() for r in caplog.records),
                         "the access line")
    assert answer.startswith(b"HTTP/1.1 200 ")
    line = next(r.getMessage() for r in caplog.records if "script" in r.getMessage())
    assert '"GET /fotoweb/me?x=\\"<script>{|}`" 200 ' in line
    assert line.count('"') - line.count('\\"') == 2
