"""Every error fwproxy raises on purpose: the whole tree (no module defines its own).

    FwproxyError
     ├── ConfigError                  bad or missing configuration (CLI exit 2)
     │    ├── MissingFile             a configured file does not exist
     │    └── MissingKeysFile         access.api_keys_file does not exist yet: `key add`
     ├── KeyExists                    `fwproxy key add` of a name the keys file already has
     ├── TokenError                   no access token could be had
     │    ├── TokenEndpointError      the token endpoint answered with an OAuth error
     │    ├── TokenEndpointUnreachable  connect failure or timeout talking to it
     │    ├── TokenResponseInvalid    it answered 2xx, but not with a usable bearer token
     │    ├── TokenStoreBusy          another process held the token store's lock too long
     │    ├── LoginRequired           user context: no session, or the refresh token refused
     │    ├── SharedStateUnavailable  state.backend redis: Redis cannot be reached or refused
     │    └── NoTokenAvailable        no valid token now; carries the cause and a retry delay
     ├── SealBroken                   a record in shared storage cannot be opened (sealing.py)
     ├── ClientFault                  the client's request cannot be forwarded as it is
     │    ├── BadPath                 400 a path refused rather than guessed at
     │    ├── BodyTooLarge            413 the body passed limits.max_body while streaming
     │    ├── FormOverride            403 a form field names a method override denied there
     │    └── ClientBodyTimeout       408 the client stopped sending the body it owes
     ├── ReplayUnavailable            the body's replay copy was dropped (too large to keep)
     ├── TenantRefused                the tenant was not asked, to protect it: 503 + Retry-After
     │    ├── TenantBusy              waited tenant.queue_timeout in the budget's line (busy)
     │    └── TenantUnavailable       the breaker is open (tenant_unavailable)
     └── UpstreamError                the tenant could not be reached or misbehaved
          ├── UpstreamConnectError    502
          ├── UpstreamTimeout         504
          └── UpstreamProtocolError   502

Two attributes mean one thing each, wherever they appear in the tree:

- ``error``: the JSON ``"error"`` code a client sees in fwproxy's answer
  (``{"error", "detail"}``), with ``status`` its HTTP status (`ClientFault`,
  `UpstreamError`, `NoTokenAvailable`, `TenantRefused`).
- ``reason``: a closed-set label for metrics and the readiness answer (`TokenError`); never
  free text, so it cannot grow a metric's label set or carry a secret.

What a token endpoint itself said is `TokenEndpointError.oauth_error` (with its
``description`` and ``endpoint_status``), neither of the two.

Foreign exceptions (aiohttp's, asyncio's timeouts, redis-py's) are translated into these at
the boundary where they arise: `upstream.translate` for the tenant, `oauth.post_token_request`
for the token endpoint, `fleet.SharedState.call` for Redis.

Messages are written for operators and never contain a secret: client secrets, access
tokens and refresh tokens are not passed into any of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

# What a token endpoint may say in "error" (RFC 6749 5.2, RFC 6750 3.1, RFC 8628 3.5, OpenID
# Connect Core 3.1.2.6): the only values that become a reason (a metrics label, the
# readiness answer); any other text the endpoint sends is "other".
OAUTH_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "invalid_token", "insufficient_scope",
    "access_denied", "unsupported_response_type", "server_error", "temporarily_unavailable",
    "authorization_pending", "slow_down", "expired_token", "interaction_required",
    "login_required", "consent_required",
})


def oauth_reason(error: str, status: int) -> str:
    """A closed set: a known OAuth error code, ``http_NNN`` when the endpoint sent no OAuth
    JSON, else ``other``."""
    if error in OAUTH_ERRORS:
        return error
    if error == f"http_{status}" and 100 <= status <= 599:
        return error
    return "other"


class FwproxyError(Exception):
    """Base class of fwproxy's own errors."""


class ConfigError(FwproxyError):
    """A configuration value is missing, malformed or unsafe; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class MissingFile(ConfigError):
    """The file does not exist (the token store treats that as "not logged in")."""


# what creates a keys file
ADD_FIRST = "fwproxy key add NAME"


class MissingKeysFile(ConfigError):
    """`access.api_keys_file` names a file that does not exist yet: `fwproxy key add`
    creates it."""

    def __init__(self, path: Path) -> None:
        super().__init__("access.api_keys_file",
                         f"{path} does not exist; create it with its first key: {ADD_FIRST}")
        self.path = path


class KeyExists(FwproxyError):
    """`fwproxy key add` of a name the file already has."""


class TokenError(FwproxyError):
    """An access token could not be obtained."""

    @property
    def reason(self) -> str:
        """A short machine-readable reason, used in metrics and readiness."""
        return "token_error"


class TokenEndpointError(TokenError):
    """The token endpoint refused: `oauth_error` and `description` are what it said, with
    control characters removed, secrets masked and the length bounded
    (`tokens._error_from`); `endpoint_status` is the HTTP status it answered with."""

    def __init__(
        self, status: int, oauth_error: str, description: str | None,
        retry_after: float | None = None,
    ) -> None:
        text = f"token endpoint refused (HTTP {status}): {oauth_error}"
        if description:
            text += f" ({description})"
        super().__init__(text)
        self.endpoint_status = status
        self.oauth_error = oauth_error
        self.description = description
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return oauth_reason(self.oauth_error, self.endpoint_status)


class TokenEndpointUnreachable(TokenError):
    """The token endpoint could not be reached, or did not answer in time."""

    @property
    def reason(self) -> str:
        return "token_endpoint_unreachable"


class TokenResponseInvalid(TokenError):
    """The token endpoint answered, but not with something we can use."""

    @property
    def reason(self) -> str:
        return "token_response_invalid"


class TokenStoreBusy(TokenError):
    """Another process held the token store's lock (a refresh in progress there, or a
    stuck process) longer than we wait: not the token endpoint's fault."""

    @property
    def reason(self) -> str:
        return "token_store_busy"


class LoginRequired(TokenError):
    """User context: there is no stored session, or the tenant refused the refresh token."""

    def __init__(self, why: str) -> None:
        super().__init__(f"login required: run fwproxy login ({why})")

    @property
    def reason(self) -> str:
        return "login_required"


# why Redis is unavailable (fleet.py `why_of`): the only values a metrics label and the
# readiness answer ever show
WHY = ("unreachable", "timeout", "denied", "tls", "loading", "error", "down")


class SharedStateUnavailable(TokenError):
    """Redis (``state.backend: redis``) could not be reached, timed out, or refused us
    (authentication, ACL, TLS). `why` is a closed set (`WHY`): it is a metrics
    label and shows in the readiness answer."""

    def __init__(self, why: str, detail: str) -> None:
        super().__init__(f"shared state (Redis) unavailable: {detail}")
        self.why = why

    @property
    def reason(self) -> str:
        return "shared_state_unavailable"


class SealBroken(FwproxyError):
    """A sealed record (sealing.py) cannot be opened: another fleet's key, a value copied
    from another record, or changed bytes. The message never holds the record."""


class NoTokenAvailable(TokenError):
    """No valid token now. `cause` says why; try again after `retry_after` seconds."""

    status = 503
    error = "no_token"

    def __init__(self, cause: TokenError, retry_after: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after
        if isinstance(cause, SharedStateUnavailable):
            # the code follows the cause where a client can act on it (a fleet instance
            # without Redis, past its token: another instance, or later)
            self.error = "shared_state_unavailable"

    @property
    def reason(self) -> str:
        return self.cause.reason


class ClientFault(FwproxyError):
    """The client's request cannot be forwarded as it is: fwproxy answers `status`."""

    status = 400
    error = "bad_request"


class BadPath(ClientFault):
    """A path that is refused (400) rather than guessed at (`access.normalize_path`)."""

    status = 400
    error = "bad_path"


class BodyTooLarge(ClientFault):
    """The body passed limits.max_body while streaming (a chunked upload)."""

    status = 413
    error = "body_too_large"


class FormOverride(ClientFault):
    """A form POST's body names a method override (a field ASP.NET MVC executes instead of
    POST) on a path where a method it could name is denied (params.py `FormScanner`): the
    upload is stopped before its end."""

    status = 403
    error = "forbidden"


class ClientBodyTimeout(ClientFault):
    """The client sent no byte of the body it owes for limits.client_body_timeout.
    (Not an OSError: aiohttp's body writer reports it as a failed upload, not the tenant's
    network error.)"""

    status = 408
    error = "client_body_timeout"


class ReplayUnavailable(FwproxyError):
    """The replay copy of a request body was dropped (body larger than the replay limit)."""


class TenantRefused(FwproxyError):
    """The tenant was not asked, to protect it (issue 15): 503 with `retry_after` (the
    Retry-After header's value, whole seconds)."""

    status = 503
    error = "tenant_refused"
    retry_after = "1"


class TenantBusy(TenantRefused):
    """A request waited ``tenant.queue_timeout`` in the tenant budget's line (budget.py)."""

    status = 503
    error = "busy"

    def __init__(self, queue_timeout: float, retry_after: int) -> None:
        super().__init__(
            "the tenant's budget (tenant.max_in_flight, tenant.max_rate) is used up"
            + (f"; waited tenant.queue_timeout ({queue_timeout:g}s)" if queue_timeout > 0
               else "")
        )
        self.retry_after = str(retry_after)


class HasHeader(Protocol):
    """A breaker's refusal (breaker.Refused): the Retry-After value to send."""

    @property
    def header(self) -> str: ...


class TenantUnavailable(TenantRefused):
    """The breaker is open (breaker.py): the tenant was not asked."""

    status = 503
    error = "tenant_unavailable"

    def __init__(self, refused: HasHeader) -> None:
        super().__init__(
            "the tenant failed repeatedly (tenant.breaker_failures); not asking it again "
            f"for {refused.header}s"
        )
        self.retry_after = refused.header


class UpstreamError(FwproxyError):
    """The tenant could not be reached or broke the exchange."""

    status = 502
    error = "upstream_error"


class UpstreamConnectError(UpstreamError):
    """Connecting (TCP or TLS) to the tenant failed."""

    status = 502
    error = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    """The tenant sent nothing for longer than the configured timeout."""

    status = 504
    error = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    """The tenant's answer was malformed, or the connection broke mid-exchange."""

    status = 502
    error = "upstream_protocol_error"
