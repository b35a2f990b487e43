"""Token decisions, free of I/O: every function here takes `now` and is tested without a loop.

Theory of operation
-------------------
A token obtained at ``obtained_at`` with lifetime ``L`` (the endpoint's ``expires_in``,
clamped to a sane range) expires at ``obtained_at + L`` on the monotonic clock, so a jump of
the wall clock changes nothing. Two instants matter before that:

    obtained_at ........ renew_at ........ stale_at ........ expires_at
       use it             use it, and       never inject      (tenant's view)
                          renew in the      it again
                          background

``margin = min(refresh_margin, L / 4)`` keeps very short lifetimes usable; ``stale_at`` is
``margin`` before expiry and ``renew_at`` one more ``margin`` earlier, so a background renewal
(Fotoware's approach 3) has a whole margin to succeed, with backoff, before any request has
to wait. A 401 to our own token (approach 2) drops it (`after_401`: a token the tenant
has taken before only once a known-good request with it is refused too), and `decide`
then sees "none" and fetches.

`decide` is the whole state machine of the manager, as a table:

    token usable, before renew_at                 -> USE
    token usable, after renew_at, none in flight  -> USE_AND_RENEW (unless backing off: USE)
    no usable token, a renewal in flight          -> WAIT
    no usable token, none in flight               -> FETCH (or FAIL while backing off)

`plan_renewal` is the renewal timer (approach 3: renew on time, not only when a request
happens to come), also a table: it says when the manager's one timer task should look
again and whether to renew now. An idle proxy keeps its token fresh, so the first request
after a quiet night does not wait, unless `auth.idle_renewal` says to stop renewing after
that long without a request (0: renew only when a request comes, as `decide` does):

    renewal in flight                             -> wait to be woken (it ends: woken)
    token usable, before renew_at                 -> look again at renew_at
    due (renew_at passed, or no usable token):
      idle longer than idle_renewal               -> wait to be woken (a request renews)
      backing off                                 -> look again when the backoff ends
      otherwise                                   -> RENEW now
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from .exceptions import TokenEndpointError, TokenError, TokenResponseInvalid
from .log import outward

if TYPE_CHECKING:
    from .store import StoredSession

DEFAULT_LIFETIME = 300.0  # when the endpoint omits expires_in: assume short, rely on 401 replay
MAX_LIFETIME = 86400.0  # a token claiming to live longer is renewed daily anyway
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
MAX_DESCRIPTION = 200  # characters of an endpoint's own text kept (after masking)
MAX_ECHO = 64  # of a short value it sent (an error code, a content type, a number)
REJECTION_COOLDOWN = 10.0  # a token issued after a 401 is not dropped again sooner than this
MIN_DROP_INTERVAL = 1.0  # at most one 401-triggered renewal a second

_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: safe in a header and a query


@dataclass(frozen=True)
class Token:
    """An access token and its timetable on the monotonic clock. The value never shows."""

    value: str = field(repr=False)
    obtained_at: float
    expires_at: float
    renew_at: float
    stale_at: float
    # user context: Fotoware's "Web Application or API authorization" page
    refresh_token: str | None = field(default=None, repr=False)

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    def usable(self, now: float) -> bool:
        return now < self.stale_at

    def seconds_left(self, now: float) -> float:
        return self.expires_at - now


def make_token(
    value: str,
    expires_in: float,
    now: float,
    refresh_margin: float,
    refresh_token: str | None = None,
) -> Token:
    """Lay out a token's timetable (see the module docstring)."""
    lifetime = min(float(expires_in), MAX_LIFETIME)
    margin = min(refresh_margin, lifetime / 4)
    expires_at = now + lifetime
    return Token(
        value=value,
        obtained_at=now,
        expires_at=expires_at,
        renew_at=expires_at - 2 * margin,
        stale_at=expires_at - margin,
        refresh_token=refresh_token,
    )


def stored_token(
    saved: StoredSession | None, wall_now: float, now: float, refresh_margin: float
) -> Token | None:
    """A persisted access token (expiry on the wall clock) back on the monotonic clock, if
    it is not yet inside its last margin. With its lifetime stored, the timetable is the
    one `make_token` laid out when it was obtained (so worker processes sharing a short-lived
    token all agree on when to renew it); without, the margin is the full `refresh_margin`."""
    if saved is None or saved.access_token is None or saved.expires_at is None:
        return None
    lifetime = saved.lifetime
    margin = refresh_margin if lifetime is None else min(refresh_margin, lifetime / 4)
    left = saved.expires_at - wall_now
    if left <= margin:
        return None
    expires_at = now + left
    obtained_at = now if lifetime is None else min(now, expires_at - lifetime)
    return Token(value=saved.access_token, obtained_at=obtained_at, expires_at=expires_at,
                 renew_at=expires_at - 2 * margin, stale_at=expires_at - margin)


class Decision(enum.Enum):
    USE = "use"
    USE_AND_RENEW = "use_and_renew"
    WAIT = "wait"
    FETCH = "fetch"
    FAIL = "fail"


def decide(token: Token | None, now: float, renewing: bool, backoff_until: float) -> Decision:
    """What `TokenManager.get` does now (the table in the module docstring)."""
    backing_off = now < backoff_until
    if token is not None and token.usable(now):
        if now >= token.renew_at and not renewing and not backing_off:
            return Decision.USE_AND_RENEW
        return Decision.USE
    if renewing:
        return Decision.WAIT
    return Decision.FAIL if backing_off else Decision.FETCH


@dataclass(frozen=True)
class Wake:
    """What the renewal timer does: renew now, and/or when to look again (None: only
    when woken, by a token obtained or dropped, a renewal ending or a reload)."""

    renew: bool
    at: float | None


def plan_renewal(
    token: Token | None,
    now: float,
    renewing: bool,
    backoff_until: float,
    last_use: float,
    idle_renewal: float | None,
) -> Wake:
    """The renewal timer's table (module docstring). `idle_renewal` None: always renew."""
    if renewing:
        return Wake(False, None)
    if token is not None and token.usable(now) and now < token.renew_at:
        return Wake(False, token.renew_at)
    if idle_renewal is not None and now - last_use >= idle_renewal:
        return Wake(False, None)
    if now < backoff_until:
        return Wake(False, backoff_until)
    return Wake(True, None)


def should_drop(
    current: Token | None,
    stale: Token,
    now: float,
    issued_after_rejection: bool,
    last_drop: float = -math.inf,
) -> bool:
    """After a 401 to `stale`: drop it if it is still the current token, except

    - when it was itself issued in answer to a 401 moments ago and never accepted since:
      the tenant refuses for another reason, and another token would fare no better;
    - more than once a second: a tenant that refuses at random must not turn every
      request into a token request.
    """
    if current is not stale:
        return False
    if issued_after_rejection and now - stale.obtained_at < REJECTION_COOLDOWN:
        return False
    return now - last_drop >= MIN_DROP_INTERVAL


class Verdict(enum.Enum):
    """What a known-good request (``GET /fotoweb/me``) with a token said about it."""

    ACCEPTED = "accepted"  # 2xx: the tenant takes the token
    REFUSED = "refused"  # 401: it does not
    UNKNOWN = "unknown"  # anything else, or no answer: it proves nothing


def verdict_of(status: int | None) -> Verdict:
    """The verdict of a verification request's status (None: it failed)."""
    if status is not None and 200 <= status < 300:
        return Verdict.ACCEPTED
    return Verdict.REFUSED if status == 401 else Verdict.UNKNOWN


class After401(enum.Enum):
    KEEP = "keep"  # keep the token; the request is replayed with the current one
    DROP = "drop"  # drop it; the request is replayed with a new one
    VERIFY = "verify"  # ask a known-good request with it first


def after_401(
    current: Token | None,
    stale: Token,
    now: float,
    accepted_before: bool,
    issued_after_rejection: bool,
    last_drop: float = -math.inf,
    verdict: Verdict | None = None,
) -> After401:
    """What a 401 to `stale` does to it. A 401 on one path must not renew the token for
    the whole proxy at the pace of whoever asks for that path, so a token the tenant has
    accepted before is verified first (one known-good request, single flight):

        stale is not the current token (replaced)       -> KEEP (the current one)
        verified: the tenant takes it                   -> KEEP (the 401 is the path's)
        verified: the tenant refuses it                 -> DROP
        accepted before, not verified yet               -> VERIFY
        never accepted, or the verification proved
        nothing                                         -> `should_drop` ? DROP : KEEP
    """
    if current is not stale or verdict is Verdict.ACCEPTED:
        return After401.KEEP
    if verdict is Verdict.REFUSED:
        return After401.DROP
    if accepted_before and verdict is None:
        return After401.VERIFY
    if should_drop(current, stale, now, issued_after_rejection, last_drop):
        return After401.DROP
    return After401.KEEP


def next_backoff(failures: int, rand: float, retry_after: float | None = None) -> float:
    """Seconds to wait after `failures` consecutive failures; `rand` in [0, 1) adds jitter.

    Exponential from 1 s, capped at 60 s, with "equal jitter" (half fixed, half random) so a
    fleet of proxies does not retry in step. A server's Retry-After is honoured as a floor.
    """
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** max(0, failures - 1))
    delay = ceiling / 2 + ceiling / 2 * rand
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_CAP * 5))
    return delay


def retry_after_seconds(backoff_until: float, now: float) -> int:
    """A Retry-After value for clients: whole seconds, at least 1."""
    return max(1, math.ceil(backoff_until - now))


def client_credentials_form(client_id: str, client_secret: str) -> bytes:
    """The body of a client-credentials token request, URL-encoded as Fotoware's
    "Non-interactive application authorization with OAuth 2.0" page requires."""
    fields = {"grant_type": "client_credentials", "client_id": client_id,
              "client_secret": client_secret}
    return urlencode(fields).encode("ascii")


def authorization_code_form(
    client_id: str, client_secret: str | None, code: str, redirect_uri: str | None,
    code_verifier: str,
) -> bytes:
    """The code exchange of Fotoware's "Web Application or API authorization" page. The
    secret only for a confidential client; `redirect_uri` if and only if the authorize
    request carried it."""
    fields = {"grant_type": "authorization_code", "client_id": client_id}
    if client_secret is not None:
        fields["client_secret"] = client_secret
    fields["code"] = code
    if redirect_uri is not None:
        fields["redirect_uri"] = redirect_uri
    fields["code_verifier"] = code_verifier
    return urlencode(fields).encode("ascii")


def refresh_token_form(client_id: str, client_secret: str | None, refresh_token: str) -> bytes:
    """A refresh (RFC 6749 section 6); the secret only for a confidential client."""
    fields = {"grant_type": "refresh_token", "client_id": client_id}
    if client_secret is not None:
        fields["client_secret"] = client_secret
    fields["refresh_token"] = refresh_token
    return urlencode(fields).encode("ascii")


TOKEN_REQUEST_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Accept": "application/json",
}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in delta-seconds form; the HTTP-date form is ignored (None)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def parse_token_response(
    status: int,
    content_type: str,
    body: bytes,
    now: float,
    refresh_margin: float,
    retry_after: float | None = None,
) -> Token:
    """Turn a token endpoint answer into a `Token`, or raise the `TokenError` that explains it."""
    document = _json_object(body) if "json" in content_type.lower() else None
    if status != 200:
        raise _error_from(status, content_type, document, retry_after)
    if document is None:
        raise TokenResponseInvalid(
            f"token endpoint answered HTTP 200 with {_clean(content_type) or 'no content type'}, "
            "not a JSON token response"
        )
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not _TOKEN_CHARS.match(access_token):
        raise TokenResponseInvalid("token response has no usable access_token")
    token_type = document.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenResponseInvalid(
            f"token_type is {_clean(str(token_type))!r}; only bearer tokens are supported"
        )
    refresh_token = document.get("refresh_token")
    if refresh_token is not None and (
        not isinstance(refresh_token, str) or not _TOKEN_CHARS.match(refresh_token)
    ):
        raise TokenResponseInvalid("token response has an unusable refresh_token")
    return make_token(access_token, _expires_in(document), now, refresh_margin, refresh_token)


def _expires_in(document: dict[str, object]) -> float:
    raw = document.get("expires_in")
    if raw is None:
        return DEFAULT_LIFETIME
    try:
        value = float(str(raw)) if not isinstance(raw, bool) else math.nan
    except ValueError:
        raise TokenResponseInvalid(f"expires_in is not a number: {_clean(str(raw))!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise TokenResponseInvalid(f"expires_in must be positive, got {_clean(str(raw))}")
    return value


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return document if isinstance(document, dict) else None


def _error_from(
    status: int, content_type: str, document: dict[str, object] | None, retry_after: float | None
) -> TokenError:
    if document is not None and isinstance(document.get("error"), str):
        description = document.get("error_description")
        return TokenEndpointError(
            status,
            _clean(str(document["error"])),
            _clean(str(description), MAX_DESCRIPTION) if description is not None else None,
            retry_after,
        )
    kind = _clean(content_type.split(";")[0]) or "no content type"
    return TokenEndpointError(
        status, f"http_{status}", f"answered {kind}, not OAuth JSON", retry_after
    )


def _clean(text: str, limit: int = MAX_ECHO) -> str:
    """An endpoint's text, fit to keep in an exception: control characters removed (no log
    injection), every secret masked (it may echo the request), then cut to `limit`."""
    return outward(text, limit).strip()
