"""Reload (SIGHUP): which keys a running proxy takes up, and the settings it runs with.

`reload_plan(running, loaded)` compares every key; a key listed in `APPLIES_ON_RELOAD`
takes effect at once (app.reconfigure, server's reload), any other keeps its running
value and is reported as needing a restart. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import Settings

# Keys a running proxy takes up on SIGHUP (app.reconfigure, server._reload). Every other key,
# a new one too until it is listed here, is reported as needing a restart and keeps its
# running value; tests/test_reload.py fails for a key in neither set.
APPLIES_ON_RELOAD = frozenset({
    "listen.shutdown_timeout",
    "tenant.allow_insecure_http",  # only checked against the config it comes with
    "tenant.read_timeout",
    "tenant.max_in_flight", "tenant.max_rate", "tenant.max_burst", "tenant.queue_timeout",
    "tenant.retries", "tenant.retry_methods", "tenant.retry_max_wait", "tenant.retry_budget",
    "tenant.breaker_failures", "tenant.breaker_cooldown",
    "auth.client_id", "auth.client_secret", "auth.client_secret_file", "auth.token_url",
    "auth.refresh_margin", "auth.token_placement", "auth.client_authorization",
    "auth.replay_max_body", "auth.idle_renewal",
    "auth.redirect_uri", "auth.authorize_url",  # read by `fwproxy login`, not the server
    "access.accept_hosts", "access.allow_origins", "access.allow_from", "access.allow_public",
    "access.read_only", "access.rules", "access.default", "access.api_keys_file",
    "access.trust_forwarded_from",
    "limits.max_body", "limits.max_header_bytes", "limits.max_concurrent",
    "limits.max_concurrent_per_client",
    "limits.queue_timeout", "limits.client_idle_timeout", "limits.max_connections",
    "limits.client_body_timeout", "limits.client_send_timeout",
    "log.level", "log.format",
    # the guard is rebuilt (proxy.reconfigure): the endpoint opens or closes, the signing
    # key is read again (the same file, so tokens issued before stay good; a fleet's
    # derived key is the one derived at start)
    "local_tokens.enabled", "local_tokens.lifetime",
})
# Keys that need a restart: sockets, the tenant's connection pool, the grant, the routes.
NEEDS_RESTART = frozenset({
    "listen.host", "listen.port", "listen.unix_socket", "listen.workers", "listen.event_loop",
    "tenant.url", "tenant.ca_file", "tenant.verify_tls", "tenant.connect_timeout",
    "auth.grant_type", "auth.token_store",
    "status.enabled", "status.prefix",
    # the fleet's connection and keys are made once at start (fleet.py)
    "state.backend", "state.redis_url", "state.redis_password_file", "state.redis_ca_file",
    "state.key_prefix", "state.encryption_key_file", "state.lease_time", "state.fleet_size",
    "state.redis_password", "state.encryption_key",
})


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes: the keys taken up at once, the keys that need a restart (by
    name only: a value may be a secret), and the settings to run with, which are the new
    ones except that each key needing a restart keeps its running value (so it is reported
    again on the next reload, and workers started later match the running ones)."""

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]
    settings: Settings


def sections(settings: Settings) -> dict[str, Any]:
    """The section dataclasses of `settings` by name (listen, tenant, ...)."""
    return {item.name: getattr(settings, item.name) for item in dataclasses.fields(settings)
            if dataclasses.is_dataclass(getattr(settings, item.name))}


def reload_plan(running: Settings, loaded: Settings) -> ReloadPlan:
    """Compare every key of `running` and `loaded`; see `ReloadPlan`."""
    applied: list[str] = []
    restart: list[str] = []
    effective: dict[str, Any] = {}
    for name, old in sections(running).items():
        new = getattr(loaded, name)
        kept: dict[str, Any] = {}
        for item in dataclasses.fields(old):
            before, after = getattr(old, item.name), getattr(new, item.name)
            if before == after:
                continue
            key = f"{name}.{item.name}"
            if key in APPLIES_ON_RELOAD:
                applied.append(key)
            else:
                restart.append(key)
                kept[item.name] = before
        effective[name] = dataclasses.replace(new, **kept) if kept else new
    return ReloadPlan(tuple(applied), tuple(restart), dataclasses.replace(loaded, **effective))
