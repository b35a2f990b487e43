"""PKCE (RFC 7636) and the authorize URL of Fotoware's "Web Application or API
authorization" page, pure: randomness comes in as bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlencode

from yarl import URL

VERIFIER_BYTES = 48  # 64 characters of base64url: inside RFC 7636's 43..128


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_verifier(entropy: bytes) -> str:
    """A code_verifier from high-entropy random bytes (RFC 7636 4.1)."""
    if len(entropy) < 32:
        raise ValueError("a PKCE verifier needs at least 32 random bytes")
    return b64url(entropy)


def challenge(verifier: str) -> str:
    """code_challenge = BASE64URL(SHA256(verifier)), method S256 (RFC 7636 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def authorize_url(
    authorize: URL, client_id: str, redirect_uri: str | None, state: str, code_challenge: str
) -> str:
    """The authorize request of Fotoware's "Web Application or API authorization" page;
    every value URL-encoded."""
    params = {"response_type": "code", "client_id": client_id}
    if redirect_uri is not None:
        params["redirect_uri"] = redirect_uri
    params.update(state=state, code_challenge=code_challenge, code_challenge_method="S256")
    base = str(authorize.with_query(None).with_fragment(None))
    return f"{base}?{urlencode(params)}"


def same_state(expected: str, received: str | None) -> bool:
    """The state echo check (CSRF, RFC 6749 10.12), in constant time."""
    return received is not None and hmac.compare_digest(expected.encode(), received.encode())
