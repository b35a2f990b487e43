"""The simulated tenant's OAuth 2.0 server: the token endpoint and the authorize flow.

Theory of operation. ``POST /fotoweb/oauth2/token`` answers three grants, each checked as
FotoWeb's documents state:

* ``client_credentials`` ("Non-interactive application authorization with OAuth 2.0"):
  a registered client id and its secret, form-encoded (``client_secret_post``) or, as
  RFC 6749 2.3.1 obliges a server to accept, in ``Authorization: Basic``
  (``client_secret_basic``; `basic_credentials`); both at once is ``invalid_request``;
* ``authorization_code`` ("Web Application or API authorization"): a code is exchanged
  once, by the client it was issued to, with the identical redirect_uri (given if and only
  if the authorize request gave one) and the PKCE verifier (RFC 7636 4.6: S256 only);
* ``refresh_token``: the refresh token of that client; rotated (the old one dies, and a
  spent one is refused with ``invalid_grant``, as FotoWeb does) when
  `TenantState.rotate_refresh_tokens` says so; each is recorded (`TenantState.refreshes`:
  start, end, outcome) and may be slowed (`refresh_delay`).

``GET /fotoweb/oauth2/authorize`` checks the request (registered client, redirect_uri
rules, ``response_type=code``, a ``state``, PKCE S256 - required for public clients) and
shows the login form (pages.py); after it the consent form; then a redirect to the client
with ``code`` and the exact ``state``, or ``error=access_denied``. The endpoint's switches
(`token_endpoint_gate`, `token_endpoint_fault`) and record (`token_requests`,
`token_forms`, ...) live in state.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import secrets
import time
from typing import NoReturn
from urllib.parse import unquote_plus, urlencode

from aiohttp import web

from ..pkce import challenge
from .pages import consent_page, expired_page, login_page, page
from .state import CODE_LIFETIME, TENANT, PendingCode, Refresh, TenantState

TOKEN_PATH = "/fotoweb/oauth2/token"
AUTHORIZE_PATH = "/fotoweb/oauth2/authorize"
LOGIN_PATH = "/fotoweb/oauth2/login"
CONSENT_PATH = "/fotoweb/oauth2/consent"
LOGIN_PATHS = frozenset({AUTHORIZE_PATH, LOGIN_PATH, CONSENT_PATH})
PUBLIC_PATHS = LOGIN_PATHS | {TOKEN_PATH}  # asked without a bearer token


def add_routes(app: web.Application) -> None:
    app.router.add_post(TOKEN_PATH, token_endpoint)
    app.router.add_get(AUTHORIZE_PATH, authorize)
    app.router.add_post(LOGIN_PATH, login)
    app.router.add_post(CONSENT_PATH, consent)


def oauth_error(status: int, error: str, description: str) -> web.Response:
    """An error answer of the token endpoint (RFC 6749 5.2)."""
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


# --- the token endpoint -------------------------------------------------------------------


async def token_endpoint(request: web.Request) -> web.Response:
    """POST /fotoweb/oauth2/token."""
    state = request.app[TENANT]
    peer = request.transport.get_extra_info("peername") if request.transport else None
    state.token_arrivals.append(peer[1] if isinstance(peer, tuple) else 0)
    if state.token_endpoint_gate is not None:
        await state.token_endpoint_gate.wait()
    state.token_requests += 1
    state.token_times.append(time.monotonic())
    state.token_headers.append(dict(request.headers))
    if state.token_endpoint_fault is not None:
        status, content_type, body = state.token_endpoint_fault
        return web.Response(status=status, body=body, content_type=content_type)
    if request.content_type != "application/x-www-form-urlencoded":
        return oauth_error(400, "invalid_request", "expected application/x-www-form-urlencoded")
    form = {key: str(value) for key, value in (await request.post()).items()}
    basic = basic_credentials(request.headers.get("Authorization"))
    if basic is not None:
        if "client_secret" in form or form.get("client_id", basic[0]) != basic[0]:
            return oauth_error(400, "invalid_request", "use one client authentication method")
        form["client_id"], form["client_secret"] = basic
    state.token_forms.append(form)
    grant = form.get("grant_type")
    if grant == "authorization_code":
        return exchange_code(state, form)
    if grant == "refresh_token":
        start = time.monotonic()
        if state.refresh_delay > 0:
            await asyncio.sleep(state.refresh_delay)
        answer = refresh(state, form)
        outcome = "ok" if answer.status == 200 else str(
            json.loads(answer.body or b"{}").get("error"))  # type: ignore[arg-type]
        state.refreshes.append(Refresh(start, time.monotonic(), outcome))
        return answer
    if grant != "client_credentials":
        return oauth_error(400, "unsupported_grant_type", f"unknown grant_type {grant!r}")
    return client_credentials(state, form)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(client id, secret) of ``Authorization: Basic`` (RFC 6749 2.3.1: each
    form-urlencoded before base64), or None without one; malformed is ("", "")."""
    if header is None or not header.lower().startswith("basic "):
        return None
    try:
        pair = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    client_id, sep, secret = pair.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if sep else ("", "")


def client_credentials(state: TenantState, form: dict[str, str]) -> web.Response:
    """grant_type=client_credentials: a registered client and its secret."""
    expected = state.clients.get(form.get("client_id", ""))
    if expected is None or not hmac.compare_digest(
        expected.encode(), form.get("client_secret", "").encode()
    ):
        return oauth_error(401, "invalid_client", "Client authentication failed")
    token, lifetime = state.issue()
    return web.json_response(
        {"access_token": token, "token_type": "bearer", "expires_in": int(lifetime)},
        headers={"Cache-Control": "no-store"},
    )


def exchange_code(state: TenantState, form: dict[str, str]) -> web.Response:
    """grant_type=authorization_code, checked as "Web Application or API authorization"
    states."""
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
    if pending.challenge is not None and not verifier_matches(
        form.get("code_verifier", ""), pending.challenge
    ):
        return oauth_error(400, "invalid_grant", "PKCE verification failed")
    return _issue(state, form["client_id"], pending.user)


def verifier_matches(verifier: str, code_challenge: str) -> bool:
    """RFC 7636 4.6, method S256. A verifier outside ASCII (4.1 allows only unreserved
    characters) matches nothing."""
    try:
        computed = challenge(verifier)
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(computed.encode(), code_challenge.encode())


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


def _client_ok(state: TenantState, form: dict[str, str]) -> bool:
    app_ = state.apps.get(form.get("client_id", ""))
    if app_ is None:
        return False
    if app_.public:
        return "client_secret" not in form
    return hmac.compare_digest(app_.secret or "", form.get("client_secret", ""))


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


# --- the authorize endpoint and its forms ----------------------------------------------------


async def authorize(request: web.Request) -> web.Response:
    """GET /fotoweb/oauth2/authorize: check the request, then show the login form."""
    state = request.app[TENANT]
    params = dict(request.query)
    app_ = state.apps.get(params.get("client_id", ""))
    if app_ is None:
        return page("Unknown application", "<p>No application has this client_id.</p>", 400)
    redirect = params.get("redirect_uri")
    if redirect is not None and redirect not in app_.redirect_uris:
        return page("Bad redirect_uri",
                    "<p>redirect_uri is not registered for this application.</p>", 400)
    if redirect is None and len(app_.redirect_uris) != 1:
        return page("redirect_uri required",
                    "<p>This application has several redirect URIs: name one.</p>", 400)
    target = redirect or app_.redirect_uris[0]
    if params.get("response_type") != "code":
        return _back(target, params, error="unsupported_response_type")
    if not params.get("state"):
        return _back(target, params, error="invalid_request", description="state is required")
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
    return login_page(LOGIN_PATH, pending_id, app_.name)


async def login(request: web.Request) -> web.Response:
    """POST of the login form: a known user and password lead to the consent form."""
    state = request.app[TENANT]
    form = await request.post()
    pending_id = str(form.get("pending", ""))
    params = state.pending.get(pending_id)
    if params is None:
        return expired_page()
    app_ = state.apps[params["client_id"]]
    user = str(form.get("username", ""))
    known = state.users.get(user)
    if known is None or not hmac.compare_digest(known[0], str(form.get("password", ""))):
        return login_page(LOGIN_PATH, pending_id, app_.name, failed=True)
    params["_user"] = user
    return consent_page(CONSENT_PATH, pending_id, app_.name, known[1])


async def consent(request: web.Request) -> web.Response:
    """POST of the consent form: a code for the client, or access_denied."""
    state = request.app[TENANT]
    form = await request.post()
    params = state.pending.pop(str(form.get("pending", "")), None)
    if params is None or "_user" not in params:
        return expired_page()
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


def _back(target: str, params: dict[str, str], **answer: str) -> NoReturn:
    """Redirect to the client with `answer` and the exact state it sent."""
    query = {("error_description" if k == "description" else k): v for k, v in answer.items()}
    if "state" in params:
        query["state"] = params["state"]
    separator = "&" if "?" in target else "?"
    raise web.HTTPFound(target + separator + urlencode(query))
