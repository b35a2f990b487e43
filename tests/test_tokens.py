"""Pure token decisions: no event loop, `now` passed in."""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs

import pytest

from fwproxy.exceptions import TokenEndpointError, TokenResponseInvalid
from fwproxy.tokens import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    REJECTION_COOLDOWN,
    After401,
    Decision,
    Token,
    Verdict,
    Wake,
    after_401,
    client_credentials_form,
    decide,
    make_token,
    next_backoff,
    parse_retry_after,
    parse_token_response,
    plan_renewal,
    retry_after_seconds,
    should_drop,
    verdict_of,
)

JSON = "application/json; charset=utf-8"


def answer(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_timetable_for_a_normal_token() -> None:
    token = make_token("t", 3600, now=1000.0, refresh_margin=60)
    assert token.expires_at == 4600.0
    assert token.stale_at == 4540.0  # never injected in its last refresh_margin seconds
    assert token.renew_at == 4480.0  # background renewal gets a whole margin before that


def test_margin_is_capped_for_lifetimes_shorter_than_it() -> None:
    token = make_token("t", 30, now=0.0, refresh_margin=60)
    assert token.stale_at == 22.5
    assert token.renew_at == 15.0
    assert token.usable(22.4)
    assert not token.usable(22.5)


def test_huge_lifetime_is_clamped() -> None:
    token = make_token("t", 10**12, now=0.0, refresh_margin=60)
    assert token.expires_at == MAX_LIFETIME


def test_token_repr_hides_the_value() -> None:
    token = make_token("sekrit-token-value", 60, now=0.0, refresh_margin=10)
    assert "sekrit" not in repr(token)
    assert "sekrit" not in str(token)


@pytest.mark.parametrize(
    ("now", "renewing", "backoff_until", "expected"),
    [
        (100.0, False, 0.0, Decision.USE),
        (3480.0, False, 0.0, Decision.USE_AND_RENEW),
        (3480.0, True, 0.0, Decision.USE),
        (3480.0, False, 3500.0, Decision.USE),  # renewal failed recently: keep serving
        (3540.0, False, 0.0, Decision.FETCH),  # stale: no longer injected
        (3540.0, True, 0.0, Decision.WAIT),
        (3540.0, False, 3600.0, Decision.FAIL),
    ],
)
def test_decide_table(now: float, renewing: bool, backoff_until: float, expected: Decision) -> None:
    token = make_token("t", 3600, now=0.0, refresh_margin=60)
    assert decide(token, now, renewing, backoff_until) is expected


def test_decide_without_a_token() -> None:
    assert decide(None, 5.0, renewing=False, backoff_until=0.0) is Decision.FETCH
    assert decide(None, 5.0, renewing=True, backoff_until=0.0) is Decision.WAIT
    assert decide(None, 5.0, renewing=False, backoff_until=6.0) is Decision.FAIL


def test_backoff_grows_caps_and_jitters() -> None:
    assert next_backoff(1, rand=0.0) == 0.5
    assert next_backoff(1, rand=0.999) < 1.0
    assert next_backoff(4, rand=0.0) == 4.0
    assert next_backoff(30, rand=0.0) == 30.0  # cap 60, half of it fixed
    assert next_backoff(30, rand=0.999) < 60.0
    assert next_backoff(1, rand=0.0, retry_after=20) == 20.0  # the server's word is a floor


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_seconds(10.2, now=10.0) == 1
    assert retry_after_seconds(12.1, now=10.0) == 3
    assert retry_after_seconds(5.0, now=10.0) == 1
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


def test_client_credentials_form_is_url_encoded() -> None:
    body = client_credentials_form("my app", "s&cr=t+/?")
    assert b" " not in body
    assert b"&cr" not in body
    assert parse_qs(body.decode(), strict_parsing=True) == {
        "grant_type": ["client_credentials"],
        "client_id": ["my app"],
        "client_secret": ["s&cr=t+/?"],
    }


def test_parse_success() -> None:
    body = answer(access_token="abc.def-123", token_type="bearer", expires_in=3600)
    token = parse_token_response(200, JSON, body, now=50.0, refresh_margin=60)
    assert token.value == "abc.def-123"
    assert token.expires_at == 3650.0


def test_token_type_is_case_insensitive_and_may_be_absent() -> None:
    body = answer(access_token="abc", token_type="Bearer", expires_in=60)
    assert parse_token_response(200, JSON, body, 0.0, 10).value == "abc"
    body = answer(access_token="abc", expires_in=60)
    assert parse_token_response(200, JSON, body, 0.0, 10).value == "abc"


def test_expires_in_as_a_string_is_accepted() -> None:
    body = answer(access_token="abc", token_type="bearer", expires_in="120")
    assert parse_token_response(200, JSON, body, 0.0, 10).expires_at == 120.0


def test_missing_expires_in_assumes_a_short_lifetime() -> None:
    body = answer(access_token="abc", token_type="bearer")
    token = parse_token_response(200, JSON, body, 0.0, 10)
    assert token.lifetime == DEFAULT_LIFETIME


@pytest.mark.parametrize("expires_in", [0, -5, "soon", None, True, float("inf")])
def test_unusable_expires_in_is_refused(expires_in: object) -> None:
    fields: dict[str, object] = {"access_token": "abc", "token_type": "bearer"}
    fields["expires_in"] = expires_in if expires_in is not None else []
    body = json.dumps(fields).encode() if expires_in != float("inf") else (
        b'{"access_token": "abc", "expires_in": 1e999}'
    )
    with pytest.raises(TokenResponseInvalid, match="expires_in"):
        parse_token_response(200, JSON, body, 0.0, 10)


def test_non_bearer_token_type_is_refused() -> None:
    body = answer(access_token="abc", token_type="mac", expires_in=60)
    with pytest.raises(TokenResponseInvalid, match="only bearer"):
        parse_token_response(200, JSON, body, 0.0, 10)


@pytest.mark.parametrize("value", ["", "has space", "line\nbreak", 42, None])
def test_access_token_must_be_header_safe(value: object) -> None:
    body = answer(access_token=value, token_type="bearer", expires_in=60)
    with pytest.raises(TokenResponseInvalid, match="access_token"):
        parse_token_response(200, JSON, body, 0.0, 10)


def test_oauth_error_is_surfaced_verbatim() -> None:
    body = answer(error="invalid_client", error_description="Client authentication failed")
    with pytest.raises(TokenEndpointError) as caught:
        parse_token_response(401, JSON, body, 0.0, 10)
    assert caught.value.oauth_error == "invalid_client"
    assert caught.value.description == "Client authentication failed"
    assert "invalid_client (Client authentication failed)" in str(caught.value)


def test_html_error_page_is_described_not_echoed() -> None:
    body = b"<html><body>502 Bad Gateway secret-ish internals</body></html>"
    with pytest.raises(TokenEndpointError) as caught:
        parse_token_response(502, "text/html", body, 0.0, 10, retry_after=30)
    assert caught.value.oauth_error == "http_502"
    assert "text/html" in str(caught.value)
    assert "internals" not in str(caught.value)
    assert caught.value.retry_after == 30


def test_garbage_with_200_is_invalid() -> None:
    with pytest.raises(TokenResponseInvalid, match="not a JSON token response"):
        parse_token_response(200, "text/plain", b"OK", 0.0, 10)
    with pytest.raises(TokenResponseInvalid):
        parse_token_response(200, JSON, b"{not json", 0.0, 10)
    with pytest.raises(TokenResponseInvalid):
        parse_token_response(200, JSON, b"[1, 2]", 0.0, 10)


def test_control_characters_in_an_error_cannot_forge_log_lines() -> None:
    body = answer(error="bad\nFAKE LOG LINE", error_description="x\r\ny")
    with pytest.raises(TokenEndpointError) as caught:
        parse_token_response(400, JSON, body, 0.0, 10)
    assert "\n" not in str(caught.value)
    assert "\r" not in str(caught.value)


def test_should_drop_only_the_current_token() -> None:
    old = make_token("old", 3600, now=0.0, refresh_margin=60)
    new = make_token("new", 3600, now=5.0, refresh_margin=60)
    assert should_drop(old, old, now=1.0, issued_after_rejection=False)
    assert not should_drop(new, old, now=6.0, issued_after_rejection=False)  # replaced
    assert not should_drop(None, old, now=6.0, issued_after_rejection=False)  # already gone


def test_a_token_issued_after_a_401_is_not_dropped_again_at_once() -> None:
    answer = make_token("answer", 3600, now=100.0, refresh_margin=60)
    assert not should_drop(answer, answer, now=100.0 + REJECTION_COOLDOWN - 0.1,
                           issued_after_rejection=True)
    assert should_drop(answer, answer, now=100.0 + REJECTION_COOLDOWN,
                       issued_after_rejection=True)


def test_stored_token_moves_from_wall_clock_to_monotonic() -> None:
    from fwproxy.store import StoredSession
    from fwproxy.tokens import stored_token

    saved = StoredSession("rt", "at", expires_at=1_000_100.0)
    token = stored_token(saved, wall_now=1_000_000.0, now=5.0, refresh_margin=10)
    assert token is not None
    assert token.value == "at"
    assert token.expires_at == 105.0
    assert token.stale_at == 95.0
    # inside its last refresh_margin seconds: not used, renewed instead
    assert stored_token(saved, wall_now=1_000_090.0, now=5.0, refresh_margin=10) is None
    assert stored_token(StoredSession("rt"), 0.0, 0.0, 10) is None
    assert stored_token(None, 0.0, 0.0, 10) is None


def test_at_most_one_drop_a_second() -> None:
    token = make_token("t", 3600, now=0.0, refresh_margin=60)
    assert not should_drop(token, token, now=100.5, issued_after_rejection=False,
                           last_drop=100.0)
    assert should_drop(token, token, now=101.0, issued_after_rejection=False, last_drop=100.0)


def test_stored_token_with_its_lifetime_keeps_the_timetable_it_was_issued_with() -> None:
    """A 4 s token shared through a file: every reader renews when the fetcher does (the
    margin shrinks to a quarter of the lifetime), instead of finding it unusable and
    fetching its own."""
    from fwproxy.store import StoredSession
    from fwproxy.tokens import stored_token

    issued = make_token("at", 4, now=50.0, refresh_margin=60)
    saved = StoredSession("", "at", expires_at=1_000_004.0, lifetime=4.0)
    token = stored_token(saved, wall_now=1_000_000.0, now=50.0, refresh_margin=60)
    assert token is not None
    assert (token.renew_at, token.stale_at, token.expires_at) == (
        issued.renew_at, issued.stale_at, issued.expires_at)
    assert token.lifetime == 4.0
    # inside its last (shrunk) margin: not used
    assert stored_token(saved, wall_now=1_000_003.0, now=50.0, refresh_margin=60) is None
    # an older file without the lifetime: the full margin, as before
    assert stored_token(StoredSession("", "at", expires_at=1_000_004.0), 1_000_000.0, 50.0,
                        60) is None


TOKEN = make_token("t", 3600, now=0.0, refresh_margin=60)  # renew_at 3480, stale_at 3540
ALWAYS = None


@pytest.mark.parametrize(
    ("token", "now", "renewing", "backoff_until", "last_use", "idle", "expected"),
    [
        # before renew_at: look again at renew_at, idle or not
        (TOKEN, 100.0, False, 0.0, 0.0, ALWAYS, Wake(False, 3480.0)),
        (TOKEN, 100.0, False, 0.0, 0.0, 0.0, Wake(False, 3480.0)),
        # due, never used since start: always renew (approach 3) ...
        (TOKEN, 3480.0, False, 0.0, 0.0, ALWAYS, Wake(True, None)),
        (None, 5.0, False, 0.0, 0.0, ALWAYS, Wake(True, None)),
        (TOKEN, 3550.0, False, 0.0, 0.0, ALWAYS, Wake(True, None)),  # stale: fetch
        # ... unless renewing is only on use (0) or the proxy has been idle that long
        (TOKEN, 3480.0, False, 0.0, 3480.0, 0.0, Wake(False, None)),
        (None, 5.0, False, 0.0, 5.0, 0.0, Wake(False, None)),
        (TOKEN, 3480.0, False, 0.0, 3000.0, 480.0, Wake(False, None)),
        (TOKEN, 3480.0, False, 0.0, 3000.0, 481.0, Wake(True, None)),
        # a renewal in flight: its end wakes the timer
        (TOKEN, 3480.0, True, 0.0, 0.0, ALWAYS, Wake(False, None)),
        (None, 5.0, True, 0.0, 0.0, ALWAYS, Wake(False, None)),
        # backing off after a failure: the same backoff rules as requests
        (TOKEN, 3480.0, False, 3490.0, 0.0, ALWAYS, Wake(False, 3490.0)),
        (None, 5.0, False, 65.0, 0.0, ALWAYS, Wake(False, 65.0)),
        (None, 5.0, False, 65.0, 0.0, 1.0, Wake(False, None)),  # idle: nobody to serve
        (TOKEN, 3490.0, False, 3490.0, 0.0, ALWAYS, Wake(True, None)),
    ],
)
def test_plan_renewal_table(
    token: Token | None, now: float, renewing: bool, backoff_until: float, last_use: float,
    idle: float | None, expected: Wake,
) -> None:
    assert plan_renewal(token, now, renewing, backoff_until, last_use, idle) == expected


_GOOD = make_token("good", 3600, now=0.0, refresh_margin=60)
_NEWER = make_token("newer", 3600, now=5.0, refresh_margin=60)
KEEP, DROP, VERIFY = After401.KEEP, After401.DROP, After401.VERIFY


@pytest.mark.parametrize(
    ("current", "accepted_before", "after_rejection", "last_drop", "verdict", "expected"),
    [
        # taken before: verify first; a 401 on one path never renews by itself
        (_GOOD, True, False, -math.inf, None, VERIFY),
        (_GOOD, True, False, 99.5, None, VERIFY),  # whatever the pace of the 401s
        (_GOOD, True, False, -math.inf, Verdict.ACCEPTED, KEEP),  # the path's own 401
        (_GOOD, True, False, 99.5, Verdict.REFUSED, DROP),  # revoked: renew at once
        (_GOOD, True, False, -math.inf, Verdict.UNKNOWN, DROP),  # proves nothing: as before
        (_GOOD, True, False, 99.5, Verdict.UNKNOWN, KEEP),  # ... one drop a second
        # never taken: today's rule (should_drop)
        (_GOOD, False, False, -math.inf, None, DROP),
        (_GOOD, False, False, 99.5, None, KEEP),
        (_GOOD, False, True, -math.inf, None, DROP),  # issued for a 401, but long ago
        # replaced meanwhile: nothing to drop or verify
        (_NEWER, True, False, -math.inf, None, KEEP),
        (None, True, False, -math.inf, None, KEEP),
        (_NEWER, False, False, -math.inf, Verdict.REFUSED, KEEP),
    ],
)
def test_after_401_table(current: Token | None, accepted_before: bool, after_rejection: bool,
                         last_drop: float, verdict: Verdict | None, expected: After401) -> None:
    assert after_401(current, _GOOD, 100.0, accepted_before, after_rejection, last_drop,
                     verdict) is expected


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, Verdict.ACCEPTED), (204, Verdict.ACCEPTED), (401, Verdict.REFUSED),
     (403, Verdict.UNKNOWN), (302, Verdict.UNKNOWN), (500, Verdict.UNKNOWN),
     (None, Verdict.UNKNOWN)],
)
def test_verdict_of_a_verification(status: int | None, verdict: Verdict) -> None:
    assert verdict_of(status) is verdict
