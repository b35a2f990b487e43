"""The simulated tenant's HTML: one page frame, one login form, one consent form.

Theory of operation: the interactive flow ("Web Application or API authorization") shows a
person a FotoWeb login page and then a consent page. Both are plain HTML forms that post
back to oauth.py; a browser or a test's scraper fills them by their ids (``username``,
``password``, ``signin``; ``allow``, ``deny``; ``error`` on a failed sign-in) and the hidden
``pending`` field that names the sign-in in progress. Everything put into the HTML is
escaped here.
"""

from __future__ import annotations

import html

from aiohttp import web


def page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        text=f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
    )


def login_page(action: str, pending_id: str, app_name: str, failed: bool = False
               ) -> web.Response:
    """The sign-in form; after a wrong password, the same form under an error line (401)."""
    error = '<p id="error">Wrong user name or password.</p>\n' if failed else ""
    return page("Sign in to FotoWeb", f"""
{error}<p>Sign in to let <b>{html.escape(app_name)}</b> use FotoWeb as you.</p>
<form method="post" action="{html.escape(action)}">
<input type="hidden" name="pending" value="{html.escape(pending_id)}">
<label>User name <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="signin" type="submit">Sign in</button>
</form>""", 401 if failed else 200)


def consent_page(action: str, pending_id: str, app_name: str, full_name: str
                 ) -> web.Response:
    return page("Allow access?", f"""
<p><b>{html.escape(app_name)}</b> wants to use FotoWeb as
<b>{html.escape(full_name)}</b>: read and change what you may read and change.</p>
<form method="post" action="{html.escape(action)}">
<input type="hidden" name="pending" value="{html.escape(pending_id)}">
<button id="allow" name="decision" value="allow" type="submit">Allow</button>
<button id="deny" name="decision" value="deny" type="submit">Deny</button>
</form>""")


def expired_page() -> web.Response:
    return page("Expired", "<p>This sign-in has expired. Start again.</p>", 400)
