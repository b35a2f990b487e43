"""The local token endpoint: a token request read and answered, free of I/O.

Theory of operation
-------------------
With ``local_tokens.enabled``, fwproxy answers ``POST`` to the path of ``auth.token_url``
itself (it is never forwarded): the client credentials grant of RFC 6749 section 4.4, with
client authentication by ``client_secret_basic`` or ``client_secret_post`` (section 2.3.1).
The handler reads at most `MAX_BODY` + 1 bytes and calls, in order::

    parse_token_request(...)  -> TokenRequest | OAuthError   the request's form
    authenticate(request, ..) -> Holder | OAuthError         who it is (API keys or none)
    localtokens.issue(...)    -> token
    token_response(token, lifetime)                          200, JSON, no-store

Every refusal is an `OAuthError`, answered by `OAuthError.answer` as section 5.2 says (JSON
``error`` and ``error_description``, plus fwproxy's usual ``detail``), checked in this order:

    not POST                                      405 invalid_request   (Allow: POST)
    a query string (secrets must not be in URLs)  400 invalid_request
    not application/x-www-form-urlencoded         400 invalid_request
      (or a charset other than UTF-8)
    body over MAX_BODY                            413 invalid_request
    body not a form (non-ASCII, bad UTF-8)        400 invalid_request
    a parameter repeated (3.2)                    400 invalid_request
    no grant_type                                 400 invalid_request
    Basic credentials not base64, no colon        400 invalid_request
    credentials both in Basic and in the body     400 invalid_request
    client_secret without client_id               400 invalid_request
    client_id not printable ASCII, 1-255 long     400 invalid_request
    grant_type other than client_credentials      400 unsupported_grant_type
    no client_id, Authorization not Basic         401 invalid_client
    (authenticate) wrong or missing secret        401 invalid_client

A parameter sent without a value counts as omitted (3.1); unknown parameters are ignored
(3.2). ``scope`` is accepted and ignored, and not echoed: a local token carries its key's
rights, whatever scope was asked for. Every 401 has ``WWW-Authenticate: Basic`` (RFC 6749
5.2 requires it when Basic was used; RFC 9110 15.5.2 for any 401). Descriptions are fixed
texts: nothing the client sent, so never its secret, is echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import unquote_plus

from .localtokens import Holder, Refused

if TYPE_CHECKING:
    from .keys import ApiKey

FORM = "application/x-www-form-urlencoded"
GRANT = "client_credentials"
MAX_BODY = 8192  # bytes: a client credentials request is a few hundred
BASIC_CHALLENGE = 'Basic realm="fwproxy", charset="UTF-8"'
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JSON_TYPE = "application/json;charset=UTF-8"
_CLIENT_ID = re.compile(r"[\x20-\x7e]{1,255}")  # VSCHAR (appendix A.1), and fits a token
_UTF8 = ("utf-8", "utf8", "us-ascii")

AuthMethod = Literal["client_secret_basic", "client_secret_post"]


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class TokenRequest:
    client_id: str
    client_secret: str | None = field(repr=False)
    auth_method: AuthMethod
    scope: str | None = None  # accepted, ignored


@dataclass(frozen=True)
class OAuthError:
    status: int
    error: str
    description: str
    www_authenticate: str | None = None
    allow: str | None = None

    def answer(self) -> Answer:
        headers = {"Content-Type": JSON_TYPE, **NO_STORE}
        if self.www_authenticate is not None:
            headers["WWW-Authenticate"] = self.www_authenticate
        if self.allow is not None:
            headers["Allow"] = self.allow
        return Answer(self.status, headers, _json({"error": self.error,
                                                   "error_description": self.description,
                                                   "detail": self.description}))


def _json(value: dict[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def _invalid(description: str, status: int = 400) -> OAuthError:
    return OAuthError(status, "invalid_request", description)


def _client(description: str) -> OAuthError:
    return OAuthError(401, "invalid_client", description, BASIC_CHALLENGE)


KNOWN = ("grant_type", "client_id", "client_secret", "scope")
FAILED = _client("client authentication failed")


def parse_token_request(method: str, content_type: str | None, body: bytes,
                        authorization: str | None, max_body: int = MAX_BODY,
                        query: str = "") -> TokenRequest | OAuthError:
    """A well-formed client credentials request, or the error to answer (table above).
    `query`: the raw query string, where no parameter belongs (RFC 6749 2.3.1, 3.2)."""
    if method != "POST":
        return OAuthError(405, "invalid_request", "the token endpoint takes POST only",
                          allow="POST")
    if query:
        return _invalid("send the parameters in the body, not in the URL")
    if not _is_form(content_type):
        return _invalid(f"send the parameters as {FORM} (UTF-8)")
    if len(body) > max_body:
        return _invalid(f"the request body exceeds {max_body} bytes", 413)
    fields = _parse_form(body)
    if isinstance(fields, OAuthError):
        return fields
    grant = fields.get("grant_type")
    if grant is None:
        return _invalid("grant_type is missing")
    basic: tuple[str, str] | None = None
    unsupported_scheme = False
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            decoded = _decode_basic(credentials.strip())
            if isinstance(decoded, OAuthError):
                return decoded
            basic = decoded
        elif scheme:
            unsupported_scheme = True
        else:
            return _invalid("the Authorization header is empty")
    body_id, body_secret = fields.get("client_id"), fields.get("client_secret")
    if basic is not None and (body_secret is not None
                              or (body_id is not None and body_id != basic[0])):
        return _invalid("client credentials both in the Authorization header and in the body")
    if body_secret is not None and body_id is None:
        return _invalid("client_secret without client_id")
    client_id = basic[0] if basic is not None else body_id
    if client_id is not None and not _CLIENT_ID.fullmatch(client_id):
        return _invalid("client_id must be 1 to 255 printable ASCII characters")
    if grant != GRANT:
        return OAuthError(400, "unsupported_grant_type",
                          f"this endpoint issues local tokens for grant_type={GRANT} only")
    if unsupported_scheme:
        return _client("authenticate with Basic or with client_id and client_secret "
                       "in the body")
    if client_id is None:
        return _client("no client authentication: send client_id (and client_secret)")
    if basic is not None:
        return TokenRequest(client_id, basic[1], "client_secret_basic", fields.get("scope"))
    return TokenRequest(client_id, body_secret, "client_secret_post", fields.get("scope"))


def _is_form(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() != FORM:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            return False
    return True


def _parse_form(body: bytes) -> dict[str, str] | OAuthError:
    """Name to value; a value left empty counts as omitted (RFC 6749 3.1)."""
    try:
        text = body.decode("ascii")  # a form body is percent-encoded: ASCII only
    except UnicodeDecodeError:
        return _invalid(f"the body is not {FORM}")
    fields: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            return _invalid("a parameter is not percent-encoded UTF-8")
        if not value:
            continue
        if name in fields:
            shown = name if name in KNOWN else "a parameter"
            return _invalid(f"{shown} is repeated")
        fields[name] = value
    return fields


def _decode_basic(credentials: str) -> tuple[str, str] | OAuthError:
    """``client_id:client_secret``, each form-encoded before base64 (RFC 6749 2.3.1)."""
    try:
        pair = base64.b64decode(credentials, validate=True).decode("ascii")
        client_id, colon, secret = pair.partition(":")
        if not colon:
            raise ValueError
        return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return _invalid("the Basic credentials are not base64 of client_id:client_secret")


def authenticate(request: TokenRequest, find_key: Callable[[str], ApiKey | None] | None
                 ) -> Holder | OAuthError:
    """Who gets the token. With API keys (`find_key`, e.g. ``KeyStore.find``), the client
    ID is a key's name and the secret is that key; without, any client ID will do."""
    if find_key is None:
        return Holder.open(request.client_id)
    key = find_key(request.client_secret) if request.client_secret else None
    if key is None or not hmac.compare_digest(key.name.encode(), request.client_id.encode()):
        return FAILED
    return Holder.of_key(key)


def token_response(token: str, lifetime: float) -> Answer:
    """The token, as FotoWeb's token endpoint answers (RFC 6749 5.1): never cached."""
    return Answer(200, {"Content-Type": JSON_TYPE, **NO_STORE},
                  _json({"access_token": token, "token_type": "bearer",
                         "expires_in": int(lifetime)}))


def invalid_token_response(refused: Refused) -> Answer:
    """A local token that does not hold: 401 from fwproxy itself (RFC 6750 3.1); it never
    reaches the tenant. The body is fwproxy's usual ``{"error", "detail"}``."""
    challenge = (f'Bearer realm="fwproxy", error="invalid_token", '
                 f'error_description="{refused.detail}"')
    return Answer(401, {"Content-Type": JSON_TYPE, "WWW-Authenticate": challenge, **NO_STORE},
                  _json({"error": "invalid_token", "detail": refused.detail}))
