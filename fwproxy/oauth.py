"""The token endpoint client: one POST per grant, answers parsed by `tokens.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
from yarl import URL

from .config import AuthConfig
from .exceptions import (
    ConfigError,
    LoginRequired,
    SharedStateUnavailable,
    TokenEndpointError,
    TokenEndpointUnreachable,
    TokenResponseInvalid,
)
from .log import REDACT, outward
from .store import FileSessions, SessionHold, SessionStore, StoredSession, TokenStore
from .token_manager import Grant, WrappedGrant
from .tokens import (
    TOKEN_REQUEST_HEADERS,
    Token,
    client_credentials_form,
    parse_retry_after,
    parse_token_response,
    refresh_token_form,
    stored_token,
)

MAX_TOKEN_RESPONSE = 64 * 1024  # a token answer is a few hundred bytes; refuse a flood
TOKEN_TIMEOUT = aiohttp.ClientTimeout(total=30)


def make_grant(session: aiohttp.ClientSession, auth: AuthConfig,
               sessions: SessionStore | None = None) -> Grant:
    """The grant the configuration asks for; user context keeps its session in `sessions`
    (the fleet's, fleetsession.py), else in the token store file."""
    if auth.user_context:
        assert auth.token_store is not None
        return RefreshTokenGrant(session, auth, sessions or TokenStore(auth.token_store))
    return ClientCredentialsGrant(session, auth)


class ClientCredentialsGrant:
    """``grant_type=client_credentials`` with the client's id and secret, as Fotoware's
    "Non-interactive application authorization with OAuth 2.0" page describes it."""

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

    def stored(self) -> Token | None:
        return None

    def has_news(self) -> bool:
        return False

    async def fetch(self) -> Token:
        auth = self._auth
        if auth.client_secret is None:
            raise TokenResponseInvalid("no client secret is configured")
        form = client_credentials_form(auth.client_id, auth.client_secret.reveal())
        return await post_token_request(
            self._session, auth.token_url, form, auth.refresh_margin, self._clock
        )


class RefreshTokenGrant:
    """User context (Fotoware's "Web Application or API authorization" page): renew with
    the stored refresh token.

    FotoWeb may rotate refresh tokens, so a new one is saved to the store before the new
    access token is handed out, under the store's lock (`store.SessionStore`: the token
    store file, or with ``state.backend: redis`` the fleet's record, fleetsession.py),
    which also makes any other process or instance sharing the store wait and then use
    what this one obtained.
    """

    name = "refresh_token"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth: AuthConfig,
        store: SessionStore | TokenStore,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._auth = auth
        self._store = FileSessions(store) if isinstance(store, TokenStore) else store
        self._clock = clock
        self._wall = wall
        self._failed_at: object = None  # the store's mark when a refresh was refused
        self._failed = False
        self._handed_out: str | None = None  # the access token this process last used
        self.from_peer = False  # the last fetch took what another process refreshed

    def update(self, auth: AuthConfig) -> None:
        self._auth = auth

    def __repr__(self) -> str:
        return f"RefreshTokenGrant(token_url={str(self._auth.token_url)!r}, store={self._store})"

    @property
    def cache_key(self) -> Hashable:
        return (str(self._auth.token_url), self._auth.client_id, "user")

    def stored(self) -> Token | None:
        """The access token a previous run (or `fwproxy login`) left, if still good."""
        try:
            token = self._usable(self._store.peek())
        except ConfigError:
            return None
        self._handed_out = token.value if token is not None else None
        return token

    def has_news(self) -> bool:
        """The store changed since a refusal: a new `fwproxy login` may have fixed it (or,
        with a fleet, Redis is back)."""
        return self._failed and self._store.changed(self._failed_at)

    async def fetch(self) -> Token:
        # Shielded: once the tenant has taken the old refresh token, the new one must reach
        # the store even if the request that asked for it is cancelled (or we shut down).
        return await asyncio.shield(self._refresh())

    async def _refresh(self) -> Token:
        try:
            async with self._store.hold() as held:
                return await self._refresh_held(held)
        except SharedStateUnavailable:
            self._failing()
            raise

    async def _refresh_held(self, held: SessionHold) -> Token:
        try:
            saved = await held.load()
        except ConfigError as exc:
            raise self._refused(str(exc)) from None
        if saved is None:
            raise self._refused("no stored session")
        theirs = self._usable(saved)
        self.from_peer = False
        if theirs is not None and theirs.value != self._handed_out:
            self.from_peer = True
            return self._hand_out(theirs)  # another process renewed while we waited
        auth = self._auth
        secret = auth.client_secret.reveal() if auth.client_secret is not None else None
        form = refresh_token_form(auth.client_id, secret, saved.refresh_token)
        try:
            token = await post_token_request(
                self._session, auth.token_url, form, auth.refresh_margin, self._clock
            )
        except TokenEndpointError as exc:
            if exc.oauth_error in ("invalid_grant", "invalid_token"):
                raise self._refused(
                    f"the tenant refused the refresh token: {exc.oauth_error}") from None
            raise
        rotated = StoredSession(
            refresh_token=token.refresh_token or saved.refresh_token,
            access_token=token.value,
            expires_at=self._wall() + token.lifetime,
            user=saved.user,
            lifetime=token.lifetime,
        )
        kept = await held.save(rotated)
        if kept is not rotated:  # the store holds a newer session than ours (a new login)
            newer = self._usable(kept)
            if newer is None:
                raise self._refused("the stored session changed during the refresh")
            return self._hand_out(newer)
        return self._hand_out(token)

    def _hand_out(self, token: Token) -> Token:
        self._failed = False
        self._handed_out = token.value
        return token

    def _usable(self, saved: StoredSession | None) -> Token | None:
        return stored_token(saved, self._wall(), self._clock(), self._auth.refresh_margin)

    def _failing(self) -> None:
        self._failed, self._failed_at = True, self._store.mark()

    def _refused(self, why: str) -> LoginRequired:
        self._failing()
        return LoginRequired(why)


class SharedGrant(WrappedGrant):
    """One token for several worker processes: whoever needs a new token first fetches it,
    under a lock, and leaves it in a file (0600, in a private 0700 directory the supervisor
    made and removes) where the other workers pick it up instead of asking again."""

    def __init__(
        self,
        inner: Grant,
        path: Path,
        refresh_margin: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        self._path = path
        self._clock = clock
        self._wall = wall
        self._handed_out: str | None = None
        self.from_peer = False  # the last fetch took what another worker fetched
        self._margin = refresh_margin

    def update(self, auth: AuthConfig) -> None:
        self._margin = auth.refresh_margin
        super().update(auth)

    def stored(self) -> Token | None:
        token = self._read() or self._inner.stored()
        self._handed_out = token.value if token is not None else None
        return token

    async def fetch(self) -> Token:
        async with TokenStore(self._path).locked():
            theirs = self._read()
            self.from_peer = theirs is not None and theirs.value != self._handed_out
            if theirs is not None and self.from_peer:
                self._handed_out = theirs.value
                return theirs  # another worker renewed while we waited for the lock
            token = await self._inner.fetch()
            TokenStore(self._path).save(StoredSession(
                refresh_token="", access_token=token.value,
                expires_at=self._wall() + token.lifetime, lifetime=token.lifetime,
            ))
            self._handed_out = token.value
            return token

    def _read(self) -> Token | None:
        try:
            saved = TokenStore(self._path, "listen.workers").load()  # checked as a secret
        except ConfigError:
            return None  # not there yet, or not safe to use: ask for a token, replace it
        return stored_token(saved, self._wall(), self._clock(), self._margin)


async def post_token_request(
    session: aiohttp.ClientSession,
    token_url: URL,
    form: bytes,
    refresh_margin: float,
    clock: Callable[[], float],
) -> Token:
    """POST `form` to the token endpoint and parse the answer; network faults are mapped.

    Every secret the form carries is known to `REDACT` first: the endpoint may echo it
    back, in any encoding, in what it answers. Every error names the token URL (without
    query or user info), so a wrong auth.token_url shows in the message."""
    remember_secrets(form)
    where = endpoint_name(token_url)
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
            f"cannot reach token endpoint {where}: {outward(connect_failure(exc), 200)}"
        ) from None
    except (TokenEndpointError, TokenResponseInvalid) as exc:
        exc.args = (f"{exc} (POST {where})",)  # the answer's parser does not know the URL
        raise


def endpoint_name(url: URL) -> str:
    """The URL as an error shows it: no query, fragment or user info (they may hold secrets)."""
    return str(url.with_query(None).with_fragment(None).with_user(None))


def connect_failure(exc: aiohttp.ClientError) -> str:
    """Why a request failed, without aiohttp's ``Cannot connect to host h:p ssl:default``
    preamble (the host is named by the caller; ``ssl:default`` means nothing on http)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate rejected: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def remember_secrets(form: bytes) -> None:
    """Teach `REDACT` the secrets in a token request: the client secret for the life of
    the process (with the client id, for a Basic credential), the rest while recent."""
    fields = dict(parse_qsl(form.decode("ascii")))
    secret = fields.get("client_secret")
    if secret is not None:
        REDACT.pin(secret, fields.get("client_id"))
    for name in ("refresh_token", "code", "code_verifier"):
        if name in fields:
            REDACT.add(fields[name])


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however it is split on the wire; refuse one larger than `limit`."""
    body = bytearray()
    while chunk := await resp.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise TokenResponseInvalid(f"token endpoint answer is larger than {limit} bytes")
    return bytes(body)
