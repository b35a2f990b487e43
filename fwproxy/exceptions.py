"""Every error fwproxy raises on purpose.

    FwproxyError
     ├── ConfigError                  bad or missing configuration (CLI exit 2)
     ├── TokenError                   no access token could be had
     │    ├── TokenEndpointError      the token endpoint answered with an OAuth error
     │    ├── TokenEndpointUnreachable  connect failure or timeout talking to it
     │    ├── TokenResponseInvalid    it answered 2xx, but not with a usable bearer token
     │    ├── LoginRequired           user context: no session, or the refresh token refused
     │    └── NoTokenAvailable        no valid token now; carries the cause and a retry delay
     └── UpstreamError                the tenant could not be reached or misbehaved
          ├── UpstreamConnectError    502
          ├── UpstreamTimeout         504
          └── UpstreamProtocolError   502

Messages are written for operators and never contain a secret: client secrets, access
tokens and refresh tokens are not passed into any of these.
"""

from __future__ import annotations

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


class TokenError(FwproxyError):
    """An access token could not be obtained."""

    @property
    def reason(self) -> str:
        """A short machine-readable reason, used in metrics and readiness."""
        return "token_error"


class TokenEndpointError(TokenError):
    """The token endpoint refused: `error` and `description` are what it said, with control
    characters removed, secrets masked and the length bounded (`tokens._error_from`)."""

    def __init__(
        self, status: int, error: str, description: str | None, retry_after: float | None = None
    ) -> None:
        text = f"token endpoint refused (HTTP {status}): {error}"
        if description:
            text += f" ({description})"
        super().__init__(text)
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return oauth_reason(self.error, self.status)


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


class LoginRequired(TokenError):
    """User context: there is no stored session, or the tenant refused the refresh token."""

    def __init__(self, why: str) -> None:
        super().__init__(f"login required: run fwproxy login ({why})")

    @property
    def reason(self) -> str:
        return "login_required"


class NoTokenAvailable(TokenError):
    """No valid token now. `cause` says why; try again after `retry_after` seconds."""

    def __init__(self, cause: TokenError, retry_after: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return self.cause.reason


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
