"""A simulated FotoWeb tenant: the OAuth 2.0 token endpoint and login of FotoWeb's
documents, a small FotoWeb (archives, assets, search, renditions, uploads), and ``/sim/``
test hooks.

`fwproxy demo` runs it on loopback behind the proxy (runner.py); the tests and the
benchmarks run the very same app. It checks what a real tenant checks (form encoding,
client credentials, codes and PKCE, bearer tokens in the header or the ``access_token``
query parameter) and can be told to misbehave: strip the Authorization header like a badly
configured NGINX, revoke tokens, refuse them, answer the token endpoint slowly or wrongly.

The rooms: state.py (what the tenant knows, issued and saw; its switches), app.py (the
aiohttp app: record, bearer check, routes), oauth.py (token endpoint, authorize, login and
consent), pages.py (the HTML forms), catalog.py (seeded archives and assets, rendition
tasks, uploads), media.py (FotoWeb's media types, Accept negotiation), api.py (the API
descriptors, ``/fotoweb/me``, archives), assets.py (listings, search, assets, metadata,
previews), renditions.py, uploads.py, hooks.py (``/sim/*``), runner.py (``fwproxy demo``).
The product (everything outside this package) never imports it; the CLI imports runner.py
inside its ``demo`` command.
"""

from .app import create_tenant_app
from .catalog import Catalog
from .hooks import GZIP_PAYLOAD, PATTERN
from .oauth import TOKEN_PATH, token_endpoint
from .state import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_NATIVE_CLIENT,
    DEMO_PASSWORD,
    DEMO_REDIRECT,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    TENANT,
    InteractiveApp,
    SeenRequest,
    TenantState,
    default_apps,
)

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_NATIVE_CLIENT",
    "DEMO_PASSWORD",
    "DEMO_REDIRECT",
    "DEMO_USER",
    "DEMO_WEB_CLIENT",
    "DEMO_WEB_SECRET",
    "GZIP_PAYLOAD",
    "PATTERN",
    "TENANT",
    "TOKEN_PATH",
    "Catalog",
    "InteractiveApp",
    "SeenRequest",
    "TenantState",
    "create_tenant_app",
    "default_apps",
    "token_endpoint",
]
