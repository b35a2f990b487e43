"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .attempts import BudgetedGrant, Protection
from .config import LimitsConfig, Settings
from .exceptions import ConfigError
from .guard import strict_parser
from .log import REDACT, quiet_malformed_requests
from .oauth import SharedGrant, make_grant
from .observe import Observer, StatusInfo
from .proxy import Proxy
from .reload import ReloadPlan, reload_plan
from .store import TokenStore
from .token_manager import Grant, TokenManager
from .upstream import create_session

if TYPE_CHECKING:
    from .fleet import SharedState
    from .fleetbudget import FleetBudget
    from .fleetsession import FleetSessions

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenManager)
PROXY = web.AppKey("proxy", Proxy)
OBSERVER = web.AppKey("observer", Observer)
SHARED_TOKEN = web.AppKey("shared_token", Path)
# only with state.backend: redis (the fleet's modules, and redis-py and cryptography with
# them, are imported only then: a proxy without a fleet does not carry them)
SHARED_STATE: web.AppKey[SharedState] = web.AppKey("shared_state")
SHARED_SESSION: web.AppKey[FleetSessions] = web.AppKey("shared_session")  # and user context

MAX_REQUEST_LINE = 16 * 1024  # aiohttp's parser limit for the request line


def create_app(settings: Settings, shared_token: Path | None = None) -> web.Application:
    """Build the proxy application. The upstream session lives in `cleanup_ctx`.

    `shared_token`: a file through which worker processes share one token (workers.py).
    """
    app = web.Application(
        middlewares=[_unrouted_to_proxy], handler_args=handler_args(settings.limits)
    )
    app[SETTINGS] = settings
    if shared_token is not None:
        app[SHARED_TOKEN] = shared_token
    if settings.auth.client_secret is not None:
        REDACT.pin(settings.auth.client_secret.reveal())
    for secret in (settings.state.redis_password, settings.state.encryption_key):
        if secret is not None:  # masked wherever a Redis error might echo one
            REDACT.pin(secret.reveal())
    quiet_malformed_requests()
    strict_parser()  # the pure-Python parser refuses what the C parser does
    app.cleanup_ctx.append(_upstream)
    observer = Observer(settings.status.prefix, _status_info(settings, app))
    app[OBSERVER] = observer
    if settings.status.enabled:
        for route in observer.probe_routes():
            app.router.add_get(route.path, _guarded(route.handler, keyed=False))
        for route in observer.page_routes():
            app.router.add_get(route.path, _guarded(route.handler, keyed=True))
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def handler_args(limits: LimitsConfig) -> dict[str, Any]:
    """aiohttp's per-connection settings; a reload gives them to new connections
    (server.py)."""
    return {
        "max_line_size": MAX_REQUEST_LINE,
        "max_field_size": limits.max_header_bytes or 1024 * 1024,
        # idle keep-alive connections, and requests whose headers never finish
        # (slowloris), are closed after this long
        "keepalive_timeout": limits.client_idle_timeout,
    }


def _status_info(settings: Settings, app: web.Application) -> StatusInfo:
    return StatusInfo(
        tenant=str(settings.tenant.url), grant=settings.auth.grant_type,
        client_id=settings.auth.client_id, acting_as=_acting_as(settings, app),
    )


def _acting_as(settings: Settings, app: web.Application) -> Callable[[], str]:
    """Who the proxy acts as, for the status page (read when the page is shown; with a
    fleet, from the shared session as this instance last read it: no Redis call)."""
    if not settings.auth.user_context:
        return lambda: "the application itself (client credentials: tenant administrator)"
    if settings.state.shared:
        return lambda: (app[SHARED_SESSION].acting_as() if SHARED_SESSION in app
                        else "not known yet (starting)")
    assert settings.auth.token_store is not None
    store = TokenStore(settings.auth.token_store)

    def user() -> str:
        try:
            saved = store.load()
        except ConfigError as exc:
            return f"nobody: {exc}"
        if saved is None:
            return "nobody yet: run fwproxy login"
        return f"{saved.user or 'an unknown user'} (fwproxy login)"

    return user


def reconfigure(app: web.Application, loaded: Settings) -> ReloadPlan:
    """Apply a reloaded config to a running app (SIGHUP): every key in
    `reload.APPLIES_ON_RELOAD` takes effect at once (the connection settings for new
    connections: server.py), the cached token stays unless the client changed. The plan
    names the keys applied and those that need a restart, which keep their running value."""
    proxy = app[PROXY]
    plan = reload_plan(proxy.settings, loaded)
    settings = plan.settings
    proxy.reconfigure(settings)  # first: it refuses (ConfigError) before any change
    if settings.auth.client_secret is not None:
        REDACT.pin(settings.auth.client_secret.reveal())
    app[TOKENS].update(settings.auth)
    app[OBSERVER].info = _status_info(settings, app)
    return plan


async def _forward(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


def dispatcher(app: web.Application) -> Handler:
    """The server's handler (connections.py `Runner`): a request the router could only give
    to the proxy goes to it straight, without resolving a route, freezing a match and
    running the middleware (and `get_event_loop`, a system call on 3.11) on the way. That
    is a path (`rel_url.path_safe`, what the router matches) outside the status prefix, with
    no ``Expect`` (whose 100-continue is the route's business), from a method the router
    takes; anything else goes through the application as before. The routes are
    `create_app`'s, so the prefix is the one the app was made with (a reload keeps it)."""
    handle = app._handle
    settings = app.get(SETTINGS)
    if settings is None:  # not fwproxy's application: its own routing throughout
        return handle
    prefix = settings.status.prefix

    async def dispatch(request: web.Request) -> web.StreamResponse:
        proxy = app.get(PROXY)
        if (proxy is None or request.method == "CONNECT" or "Expect" in request.headers
                or request.raw_path[:1] != "/" or request.rel_url.path_safe.startswith(prefix)):
            return await handle(request)
        return await proxy.handle(request)

    return dispatch


@web.middleware
async def _unrouted_to_proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Targets that are not a path (``CONNECT host:443``, ``OPTIONS *``, ``GET http://h``)
    match no route, and aiohttp routes no CONNECT at all; the proxy answers them (405, 400,
    or forwards the absolute form)."""
    if request.method == "CONNECT" or not request.raw_path.startswith("/"):
        return await _forward(request)
    return await handler(request)


def _guarded(handler: Handler, keyed: bool) -> Handler:
    """A status page is for the same clients as the proxy, and for the machine itself:
    allow_from (loopback always passes) and Host apply. `keyed` (metrics, the status page):
    with API keys configured, a valid one too, from loopback as well; health and readiness
    stay open to probes, which carry no key."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        guard = request.app[PROXY].guard
        refusal = guard.admit_client(request, loopback=True)
        if refusal is None and keyed:
            refusal = guard.admit_key(request)
        return refusal if refusal is not None else await handler(request)

    return guarded


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    state: SharedState | None = None
    budget: FleetBudget | None = None
    sessions: FleetSessions | None = None
    if settings.state.shared:
        from .fleet import shared_state
        from .fleetbudget import FleetBudget
        from .fleetsession import FleetSessions

        state = shared_state(settings)
        assert state is not None  # (backend redis: a state, with its key material)
        app[SHARED_STATE] = state
        app[OBSERVER].share(state)  # status page, readiness, metrics
        await state.start()  # never fails: an instance starts without Redis
        budget = FleetBudget(state, settings.state.fleet_size)
        if settings.auth.user_context:  # the fleet's user session
            sessions = app[SHARED_SESSION] = FleetSessions(state)
    session = create_session(settings.tenant)
    protection = Protection(settings.tenant, budget=budget)  # (the token requests' too)
    grant: Grant = BudgetedGrant(make_grant(session, settings.auth, sessions), protection,
                                 settings.tenant.url, settings.auth)
    shared = app.get(SHARED_TOKEN)
    if state is not None and not settings.auth.user_context:  # one token for the fleet
        from .fleettoken import FleetGrant

        grant = FleetGrant(grant, state, settings.auth.refresh_margin)  # (and its workers)
    elif shared is not None and not settings.auth.user_context:  # a user's store is shared
        grant = SharedGrant(grant, shared, settings.auth.refresh_margin)
    tokens = TokenManager(grant, idle_renewal=settings.auth.idle_renewal)
    observer = app[OBSERVER]
    proxy = Proxy(settings, session, tokens, observer.metrics, protection)
    observer.attach(tokens, proxy, protection)
    app[TOKENS] = tokens
    app[PROXY] = proxy
    yield
    proxy.close()
    await tokens.aclose()
    await session.close()
    if sessions is not None:
        await sessions.aclose()
    if budget is not None:
        await budget.aclose()
    if state is not None:
        await state.aclose()
