"""The simulated tenant's interactive side: seed 003's authorization-code flow.

``GET /fotoweb/oauth2/authorize`` checks the request as seed 003 states (registered client,
redirect_uri rules, ``response_type=code``, a ``state``, PKCE S256 - required for public
clients) and shows a real HTML login form; after it, a consent form; then a redirect to the
client with ``code`` and the exact ``state`` (or ``error=access_denied``). The token
endpoint exchanges a code once, checking client, secret, redirect_uri and the PKCE
verifier, and renews with refresh tokens, rotating them when told to.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlencode

from aiohttp import web

from .pkce import b64url

if TYPE_CHECKING:
    from .demo import TenantState

AUTHORIZE_PATH = "/fotoweb/oauth2/authorize"
LOGIN_PATH = "/fotoweb/oauth2/login"
CONSENT_PATH = "/fotoweb/oauth2/consent"
LOGIN_PATHS = frozenset({AUTHORIZE_PATH, LOGIN_PATH, CONSENT_PATH})
CODE_LIFETIME = 120.0

DEMO_USER, DEMO_PASSWORD = "alice", "wonderland"
DEMO_WEB_CLIENT, DEMO_WEB_SECRET = "fwproxy-web", "web-secret-not-for-production"
DEMO_NATIVE_CLIENT = "fwproxy-native"
DEMO_REDIRECT = "http://127.0.0.1:8765/callback"


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


def oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


def add_login_routes(app: web.Application, state: TenantState) -> None:
    """The authorize endpoint and its login and consent forms."""

    async def authorize(request: web.Request) -> web.Response:
        params = dict(request.query)
        app_ = state.apps.get(params.get("client_id", ""))
        if app_ is None:
            return _page("Unknown application", "<p>No application has this client_id.</p>",
                         400)
        redirect = params.get("redirect_uri")
        if redirect is not None and redirect not in app_.redirect_uris:
            return _page("Bad redirect_uri",
                         "<p>redirect_uri is not registered for this application.</p>", 400)
        if redirect is None and len(app_.redirect_uris) != 1:
            return _page("redirect_uri required",
                         "<p>This application has several redirect URIs: name one.</p>", 400)
        target = redirect or app_.redirect_uris[0]
        if params.get("response_type") != "code":
            return _back(target, params, error="unsupported_response_type")
        if not params.get("state"):
            return _back(target, params, error="invalid_request",
                         description="state is required")
        method = params.get("code_challenge_method")
        if params.get("code_challenge") is None:
            if app_.public:
                return _back(target, params, error="invalid_request",
                             description="PKCE is required for this client")
        elif method != "S256":
            return _back(target, params, error="invalid_request",
                         description="code_challenge_method must be S256")
        pending_id = secrets.token_urlsafe(16)
        state.pending[pending_id] = params
        return _page("Sign in to FotoWeb", f"""
<p>Sign in to let <b>{html.escape(app_.name)}</b> use FotoWeb as you.</p>
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="pending" value="{pending_id}">
<label>User name <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="signin" type="submit">Sign in</button>
</form>""")

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        pending_id = str(form.get("pending", ""))
        params = state.pending.get(pending_id)
        if params is None:
            return _page("Expired", "<p>This sign-in has expired. Start again.</p>", 400)
        user = str(form.get("username", ""))
        known = state.users.get(user)
        if known is None or not hmac.compare_digest(known[0], str(form.get("password", ""))):
            return _page("Sign in to FotoWeb", f"""
<p id="error">Wrong user name or password.</p>
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="pending" value="{html.escape(pending_id)}">
<label>User name <input id="username" name="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="signin" type="submit">Sign in</button>
</form>""", 401)
        params["_user"] = user
        app_ = state.apps[params["client_id"]]
        return _page("Allow access?", f"""
<p><b>{html.escape(app_.name)}</b> wants to use FotoWeb as
<b>{html.escape(known[1])}</b>: read and change what you may read and change.</p>
<form method="post" action="{CONSENT_PATH}">
<input type="hidden" name="pending" value="{html.escape(pending_id)}">
<button id="allow" name="decision" value="allow" type="submit">Allow</button>
<button id="deny" name="decision" value="deny" type="submit">Deny</button>
</form>""")

    async def consent(request: web.Request) -> web.Response:
        form = await request.post()
        params = state.pending.pop(str(form.get("pending", "")), None)
        if params is None or "_user" not in params:
            return _page("Expired", "<p>This sign-in has expired. Start again.</p>", 400)
        target = params.get("redirect_uri") or state.apps[params["client_id"]].redirect_uris[0]
        if form.get("decision") != "allow":
            return _back(target, params, error="access_denied",
                         description="the user denied access")
        code = secrets.token_urlsafe(24)
        state.codes[code] = PendingCode(
            client_id=params["client_id"],
            redirect_uri=params.get("redirect_uri"),
            challenge=params.get("code_challenge"),
            user=params["_user"],
            expires=time.monotonic() + CODE_LIFETIME,
        )
        return _back(target, params, code=code)

    app.router.add_get(AUTHORIZE_PATH, authorize)
    app.router.add_post(LOGIN_PATH, login)
    app.router.add_post(CONSENT_PATH, consent)


def _back(target: str, params: dict[str, str], **answer: str) -> NoReturn:
    """Redirect to the client with `answer` and the exact state it sent."""
    query = {("error_description" if k == "description" else k): v for k, v in answer.items()}
    if "state" in params:
        query["state"] = params["state"]
    separator = "&" if "?" in target else "?"
    raise web.HTTPFound(target + separator + urlencode(query))


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        text=f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
    )


def _client_ok(state: TenantState, form: dict[str, str]) -> bool:
    app_ = state.apps.get(form.get("client_id", ""))
    if app_ is None:
        return False
    if app_.public:
        return "client_secret" not in form
    return hmac.compare_digest(app_.secret or "", form.get("client_secret", ""))


def exchange_code(state: TenantState, form: dict[str, str]) -> web.Response:
    """grant_type=authorization_code, checked as seed 003 states."""
    if not _client_ok(state, form):
        return oauth_error(401, "invalid_client", "Client authentication failed")
    pending = state.codes.pop(form.get("code", ""), None)  # single use
    if pending is None or pending.expires < time.monotonic():
        return oauth_error(400, "invalid_grant", "unknown, used or expired code")
    if pending.client_id != form["client_id"]:
        return oauth_error(400, "invalid_grant", "the code was issued to another client")
    if pending.redirect_uri != form.get("redirect_uri"):
        return oauth_error(400, "invalid_grant",
                           "redirect_uri must be given if and only if it was authorized, "
                           "and be identical")
    if pending.challenge is not None:
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != pending.challenge:
            return oauth_error(400, "invalid_grant", "PKCE verification failed")
    return _issue(state, form["client_id"], pending.user)


def refresh(state: TenantState, form: dict[str, str]) -> web.Response:
    """grant_type=refresh_token; the refresh token rotates when the tenant says so."""
    if not _client_ok(state, form):
        return oauth_error(401, "invalid_client", "Client authentication failed")
    old = form.get("refresh_token", "")
    owner = state.refresh_tokens.get(old)
    if owner is None or owner[0] != form["client_id"]:
        return oauth_error(400, "invalid_grant", "the refresh token is invalid or revoked")
    if state.rotate_refresh_tokens:
        del state.refresh_tokens[old]
        return _issue(state, owner[0], owner[1])
    return _issue(state, owner[0], owner[1], refresh_token=old)


def _issue(state: TenantState, client_id: str, user: str,
           refresh_token: str | None = None) -> web.Response:
    token, lifetime = state.issue(user)
    if refresh_token is None:
        refresh_token = secrets.token_urlsafe(32)
        state.refresh_tokens[refresh_token] = (client_id, user)
    return web.json_response(
        {"access_token": token, "token_type": "bearer", "expires_in": int(lifetime),
         "refresh_token": refresh_token},
        headers={"Cache-Control": "no-store"},
    )
