"""The simulated tenant's state: what it knows, what it issued, what it saw, its switches.

Theory of operation: one `TenantState` per simulated tenant, held by the aiohttp app under
`TENANT`. Handlers (oauth.py, api.py, hooks.py) read and change it; nothing here knows
HTTP. Tests build a state, flip its switches (`strip_authorization`, `token_endpoint_fault`,
`token_endpoint_gate`, `rotate_refresh_tokens`, the lifetimes), run the app on it and read
back its record (`seen`, `token_requests`, `token_forms`, ...). New API areas add their
data here (or in a dataclass of their own that `TenantState` holds), never in handlers.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from .catalog import Catalog
from .limits import Limiter

# The application registered for the non-interactive flow ("Non-interactive application
# authorization with OAuth 2.0"): client credentials.
DEMO_CLIENT_ID = "fwproxy-demo"
DEMO_CLIENT_SECRET = "demo-secret-not-for-production"
# The interactive side ("Web Application or API authorization"): a user and two apps.
DEMO_USER, DEMO_PASSWORD = "alice", "wonderland"
DEMO_WEB_CLIENT, DEMO_WEB_SECRET = "fwproxy-web", "web-secret-not-for-production"
DEMO_NATIVE_CLIENT = "fwproxy-native"
DEMO_REDIRECT = "http://127.0.0.1:8765/callback"

CODE_LIFETIME = 120.0  # seconds an authorization code may wait for its exchange


@dataclass
class InteractiveApp:
    """A "Web App/API" (confidential: a secret) or "Native/mobile" (public) application."""

    name: str
    redirect_uris: list[str]
    secret: str | None = None

    @property
    def public(self) -> bool:
        return self.secret is None


@dataclass
class PendingCode:
    """An authorization code waiting for its one exchange."""

    client_id: str
    redirect_uri: str | None  # None when the authorize request carried none
    challenge: str | None
    user: str
    expires: float


def default_apps() -> dict[str, InteractiveApp]:
    return {
        DEMO_WEB_CLIENT: InteractiveApp("fwproxy (web app)", [DEMO_REDIRECT], DEMO_WEB_SECRET),
        DEMO_NATIVE_CLIENT: InteractiveApp("fwproxy (native)", [DEMO_REDIRECT]),
    }


@dataclass(frozen=True)
class Refresh:
    """One ``grant_type=refresh_token`` request: when it started and ended (monotonic) and
    what it answered (``ok`` or the OAuth error), so tests can check refreshes never
    overlap and no refresh token was spent twice."""

    start: float
    end: float
    outcome: str


@dataclass
class SeenRequest:
    method: str
    path_qs: str
    headers: dict[str, list[str]]
    body_size: int


@dataclass
class TenantState:
    """The simulated tenant's knobs and its record of what it saw."""

    clients: dict[str, str] = field(
        default_factory=lambda: {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}
    )
    token_lifetime: float = 3600
    # play the NGINX of "Using application access tokens for OAuth 2.0 authorization"
    strip_authorization: bool = False
    token_endpoint_fault: tuple[int, str, bytes] | None = None  # (status, type, body)
    token_endpoint_gate: asyncio.Event | None = None  # while set and not open: a slow endpoint
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    token_requests: int = 0
    # each token request's client port as it arrived, a held one (the gate) too
    token_arrivals: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # monotonic, one per request
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[dict[str, str]] = field(default_factory=list)
    seen: deque[SeenRequest] = field(default_factory=lambda: deque(maxlen=1000))
    upload_sizes: list[int] = field(default_factory=list)
    # the interactive side ("Web Application or API authorization"): see oauth.py
    users: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {DEMO_USER: (DEMO_PASSWORD, "Alice Liddell")}
    )
    apps: dict[str, InteractiveApp] = field(default_factory=default_apps)
    token_users: dict[str, str] = field(default_factory=dict)  # access token -> user
    refresh_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> client, user
    rotate_refresh_tokens: bool = True
    refresh_delay: float = 0.0  # seconds a refresh takes, so overlapping ones would show
    refreshes: list[Refresh] = field(default_factory=list)
    codes: dict[str, PendingCode] = field(default_factory=dict)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # login in progress
    limits: Limiter = field(default_factory=Limiter)  # over N concurrent or R/s: limits.py
    # the FotoWeb side: archives, assets, rendition tasks, uploads (catalog.py)
    catalog: Catalog = field(default_factory=Catalog.seeded)

    def issue(self, user: str | None = None) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.token_lifetime
        if user is not None:
            self.token_users[token] = user
        return token, self.token_lifetime

    def revoke_all(self) -> None:
        self.tokens.clear()

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    def valid(self, token: str | None) -> bool:
        expiry = self.tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry


TENANT = web.AppKey("tenant", TenantState)
