"""The token endpoint client: one POST per grant, answers parsed by `tokens.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable

import aiohttp
from yarl import URL

from .config import AuthConfig
from .exceptions import TokenEndpointUnreachable, TokenResponseInvalid
from .tokens import (
    TOKEN_REQUEST_HEADERS,
    Token,
    client_credentials_form,
    parse_retry_after,
    parse_token_response,
)

MAX_TOKEN_RESPONSE = 64 * 1024  # a token answer is a few hundred bytes; refuse a flood
TOKEN_TIMEOUT = aiohttp.ClientTimeout(total=30)


class ClientCredentialsGrant:
    """Seed 002: ``grant_type=client_credentials`` with the client's id and secret."""

    name = "client_credentials"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth: AuthConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._clock = clock
        self._auth = auth

    def update(self, auth: AuthConfig) -> None:
        """New credentials (a reload): used from the next token request on."""
        self._auth = auth

    def __repr__(self) -> str:
        return f"ClientCredentialsGrant(token_url={str(self._auth.token_url)!r})"

    @property
    def cache_key(self) -> Hashable:
        return (str(self._auth.token_url), self._auth.client_id)

    async def fetch(self) -> Token:
        auth = self._auth
        if auth.client_secret is None:
            raise TokenResponseInvalid("no client secret is configured")
        form = client_credentials_form(auth.client_id, auth.client_secret.reveal())
        return await post_token_request(
            self._session, auth.token_url, form, auth.refresh_margin, self._clock
        )


async def post_token_request(
    session: aiohttp.ClientSession,
    token_url: URL,
    form: bytes,
    refresh_margin: float,
    clock: Callable[[], float],
) -> Token:
    """POST `form` to the token endpoint and parse the answer; network faults are mapped."""
    where = str(token_url.origin())
    try:
        async with session.post(
            token_url,
            data=form,
            headers=TOKEN_REQUEST_HEADERS,
            allow_redirects=False,
            timeout=TOKEN_TIMEOUT,
        ) as resp:
            body = await read_limited(resp, MAX_TOKEN_RESPONSE)
            return parse_token_response(
                resp.status,
                resp.headers.get("Content-Type", ""),
                body,
                clock(),
                refresh_margin,
                parse_retry_after(resp.headers.get("Retry-After")),
            )
    except asyncio.TimeoutError:
        raise TokenEndpointUnreachable(f"token endpoint {where} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise TokenEndpointUnreachable(
            f"cannot reach token endpoint {where}: {exc or type(exc).__name__}"
        ) from None


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however it is split on the wire; refuse one larger than `limit`."""
    body = bytearray()
    while chunk := await resp.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise TokenResponseInvalid(f"token endpoint answer is larger than {limit} bytes")
    return bytes(body)
