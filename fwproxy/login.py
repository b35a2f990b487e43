"""``fwproxy login``: the authorization-code flow with PKCE of Fotoware's "Web Application or
API authorization" page, on the command line.

Prints the authorize URL (and opens a browser unless told not to), listens on the
redirect URI's loopback host and port for that one path, checks the ``state`` echo,
exchanges the code at the token endpoint, stores the tokens (in the token store, or with
``state.backend: redis`` as the fleet's shared session) and shows the browser a small
page. The tokens never reach the browser. Anything but a matching state, a code and a
successful exchange stores nothing and exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import secrets
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from .config import Settings
from .exceptions import TokenError, UpstreamError
from .oauth import post_token_request, read_limited
from .pkce import authorize_url, b64url, challenge, make_verifier, same_state
from .store import StoredSession, TokenStore
from .tokens import Token, authorization_code_form
from .upstream import create_session, map_upstream_errors

DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


async def login(
    settings: Settings,
    *,
    open_browser: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Run one login; `say` gets the authorize URL and progress lines (stdout)."""
    auth = settings.auth
    assert auth.redirect_uri is not None
    assert auth.authorize_url is not None
    assert auth.token_store is not None
    redirect = URL(auth.redirect_uri)
    verifier = make_verifier(secrets.token_bytes(48))
    state = b64url(secrets.token_bytes(32))
    url = authorize_url(auth.authorize_url, auth.client_id, auth.redirect_uri, state,
                        challenge(verifier))
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    async with create_session(settings.tenant) as session:

        busy = asyncio.Lock()

        async def callback(request: web.Request) -> web.Response:
            async with busy:  # one callback at a time; the first one decides
                if done.done():
                    return _page("Already done", "This login has finished; start a new one.",
                                 410)
                try:
                    outcome = await _finish(request, state, verifier, settings, session)
                except Exception as exc:  # the CLI must say why, not wait for the timeout
                    outcome = Outcome(False, f"the login failed: {type(exc).__name__}: {exc}")
                done.set_result(outcome)
            title = "Logged in" if outcome.ok else "Login failed"
            return _page(title, outcome.message + (
                " You can close this window." if outcome.ok else ""),
                200 if outcome.ok else 400)

        app = web.Application()
        app.router.add_get(redirect.path, callback)  # that path only: the rest is 404
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, redirect.host, redirect.port)
            try:
                await site.start()
            except OSError as exc:
                return Outcome(False, f"cannot listen on {redirect.host}:{redirect.port} "
                                      f"for the callback: {exc.strerror}")
            say(url)
            say(f"Waiting for the login to return to {auth.redirect_uri} "
                f"(up to {timeout:g}s)...")
            if open_browser:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(webbrowser.open, url)
            try:
                return await asyncio.wait_for(asyncio.shield(done), timeout)
            except asyncio.TimeoutError:
                return Outcome(False, f"no login came back within {timeout:g}s; "
                                      "run fwproxy login again")
        finally:
            await runner.cleanup()


async def _finish(request: web.Request, state: str, verifier: str, settings: Settings,
                  session: aiohttp.ClientSession) -> Outcome:
    query = request.query
    if not same_state(state, query.get("state")):
        return Outcome(False, "the state parameter did not match this login (possible "
                              "cross-site request forgery); nothing was stored")
    if "error" in query:
        description = query.get("error_description", "")
        return Outcome(False, f"the tenant answered {query['error']}"
                              + (f": {description}" if description else ""))
    code = query.get("code")
    if not code:
        return Outcome(False, "the callback carried no code; nothing was stored")
    auth = settings.auth
    secret = auth.client_secret.reveal() if auth.client_secret is not None else None
    form = authorization_code_form(auth.client_id, secret, code, auth.redirect_uri, verifier)
    try:
        token = await post_token_request(session, auth.token_url, form, auth.refresh_margin,
                                         time.monotonic)
    except TokenError as exc:
        return Outcome(False, f"exchanging the code failed: {exc}")
    if token.refresh_token is None:
        return Outcome(False, "the tenant issued no refresh token; nothing was stored")
    user = await _who(session, settings, token)
    stored = StoredSession(
        refresh_token=token.refresh_token,
        access_token=token.value,
        expires_at=time.time() + token.lifetime,
        user=user,
        lifetime=token.lifetime,
    )
    if settings.state.shared:  # the fleet's session, in Redis, under the fleet lock
        try:
            from .fleetsession import save_login  # (redis-py: only for a fleet)

            await save_login(settings, stored)
        except TokenError as exc:  # Redis away, or the lock busy: nothing was stored
            return Outcome(False, f"the session could not be stored: {exc}")
        return Outcome(True, f"Logged in as {user or 'an unknown user'}; the session is "
                             "shared by the fleet (state.backend: redis).")
    assert auth.token_store is not None
    store = TokenStore(auth.token_store)
    async with store.locked():  # not in the middle of a running proxy's refresh
        store.save(stored)
    return Outcome(True, f"Logged in as {user or 'an unknown user'}; the session is stored "
                         f"in {auth.token_store}.")


async def _who(session: aiohttp.ClientSession, settings: Settings, token: Token) -> str | None:
    """The user name /fotoweb/me reports for this token, if it answers."""
    with contextlib.suppress(UpstreamError, TokenError, ValueError), map_upstream_errors():
        async with session.get(
            settings.tenant.url.with_path("/fotoweb/me"),
            headers={"Authorization": f"Bearer {token.value}", "Accept": "application/json"},
            allow_redirects=False, timeout=aiohttp.ClientTimeout(total=15),
        ) as resp:
            if resp.status == 200:
                document = json.loads(await read_limited(resp, 1024 * 1024))
                if isinstance(document, dict):
                    name = document.get("fullName") or document.get("userName")
                    return str(name) if name else None
    return None


def _page(title: str, message: str, status: int) -> web.Response:
    return web.Response(
        status=status, content_type="text/html", headers={"Cache-Control": "no-store"},
        text=f"<!doctype html><html><head><meta charset='utf-8'><title>fwproxy: "
             f"{html.escape(title)}</title></head><body><h1 id='title'>{html.escape(title)}"
             f"</h1><p id='message'>{html.escape(message)}</p></body></html>",
    )
