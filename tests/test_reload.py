"""SIGHUP: which keys a reload applies and which need a restart (reload.reload_plan), as a
table over every key, and the rule that no key may be in neither list."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fwproxy import reload as reload_module
from fwproxy.config import Settings
from fwproxy.loading import load_mapping
from fwproxy.reload import (
    APPLIES_ON_RELOAD,
    NEEDS_RESTART,
    reload_plan,
    sections,
)

BASE: dict[str, Any] = {
    "tenant": {"url": "https://acme.fotoware.cloud"},
    "auth": {"client_id": "app", "client_secret": "s3cr3t-value"},
}
USER = {"grant_type": "authorization_code", "client_secret": None,
        "redirect_uri": "http://127.0.0.1:8765/callback", "token_store": "/var/lib/t.json"}


def settings(sections: dict[str, dict[str, Any]], tmp: Path) -> Settings:
    raw = {key: dict(value) for key, value in BASE.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(
            {k: v.replace("{tmp}", str(tmp)) if isinstance(v, str) else v
             for k, v in values.items()})
    return load_mapping(raw, environ={})


def all_keys() -> set[str]:
    return {f"{name}.{item.name}"
            for name, section in sections(settings({}, Path("/"))).items()
            for item in dataclasses.fields(section)}


# (running config, reloaded config, keys applied, keys needing a restart)
ROWS: list[tuple[dict[str, Any], dict[str, Any], set[str], set[str]]] = [
    ({}, {"listen": {"host": "127.0.0.2"}}, {"access.accept_hosts"}, {"listen.host"}),
    ({}, {"listen": {"port": 9000}}, set(), {"listen.port"}),
    ({}, {"listen": {"unix_socket": "/run/f.sock"}}, set(), {"listen.unix_socket"}),
    ({}, {"listen": {"shutdown_timeout": 5}}, {"listen.shutdown_timeout"}, set()),
    ({}, {"listen": {"workers": 2}}, set(), {"listen.workers"}),
    ({}, {"listen": {"event_loop": "asyncio"}}, set(), {"listen.event_loop"}),
    # a relative token_url follows the tenant: it applies, the tenant waits for a restart
    ({}, {"tenant": {"url": "https://other.fotoware.cloud"}},
     {"auth.token_url", "auth.authorize_url"}, {"tenant.url"}),
    ({}, {"tenant": {"ca_file": "{tmp}/ca.pem"}}, set(), {"tenant.ca_file"}),
    ({}, {"tenant": {"verify_tls": False}}, set(), {"tenant.verify_tls"}),
    ({}, {"tenant": {"allow_insecure_http": True}}, {"tenant.allow_insecure_http"}, set()),
    ({}, {"tenant": {"connect_timeout": 3}}, set(), {"tenant.connect_timeout"}),
    ({}, {"tenant": {"read_timeout": 5}}, {"tenant.read_timeout"}, set()),
    ({}, {"tenant": {"max_in_flight": 8}}, {"tenant.max_in_flight"}, set()),
    ({}, {"tenant": {"max_rate": 2.5}}, {"tenant.max_rate"}, set()),
    ({}, {"tenant": {"max_burst": 5}}, {"tenant.max_burst"}, set()),
    ({}, {"tenant": {"queue_timeout": "2s"}}, {"tenant.queue_timeout"}, set()),
    ({}, {"tenant": {"retries": 0}}, {"tenant.retries"}, set()),
    ({}, {"tenant": {"retry_methods": ["GET"]}}, {"tenant.retry_methods"}, set()),
    ({}, {"tenant": {"retry_max_wait": "1s"}}, {"tenant.retry_max_wait"}, set()),
    ({}, {"tenant": {"retry_budget": 0.5}}, {"tenant.retry_budget"}, set()),
    ({}, {"tenant": {"breaker_failures": 0}}, {"tenant.breaker_failures"}, set()),
    ({}, {"tenant": {"breaker_cooldown": "1s"}}, {"tenant.breaker_cooldown"}, set()),
    ({}, {"auth": USER}, {"auth.client_secret", "auth.redirect_uri"},
     {"auth.grant_type", "auth.token_store"}),
    ({}, {"auth": {"client_id": "other"}}, {"auth.client_id"}, set()),
    ({}, {"auth": {"idle_renewal": "1h"}}, {"auth.idle_renewal"}, set()),
    ({}, {"auth": {"client_secret": "rotated"}}, {"auth.client_secret"}, set()),
    ({}, {"auth": {"client_secret": None, "client_secret_file": "{tmp}/secret"}},
     {"auth.client_secret", "auth.client_secret_file"}, set()),
    ({}, {"auth": {"token_url": "/other/token"}}, {"auth.token_url"}, set()),
    ({}, {"auth": {"refresh_margin": 5}}, {"auth.refresh_margin"}, set()),
    ({}, {"auth": {"token_placement": "query"}}, {"auth.token_placement"}, set()),
    ({}, {"auth": {"client_authorization": "replace"}}, {"auth.client_authorization"}, set()),
    ({}, {"auth": {"replay_max_body": "1MiB"}}, {"auth.replay_max_body"}, set()),
    ({"auth": USER}, {"auth": {**USER, "redirect_uri": "http://127.0.0.1:9/cb"}},
     {"auth.redirect_uri"}, set()),
    ({"auth": USER}, {"auth": {**USER, "authorize_url": "/other/authorize"}},
     {"auth.authorize_url"}, set()),
    ({"auth": USER}, {"auth": {**USER, "token_store": "/var/lib/other.json"}}, set(),
     {"auth.token_store"}),
    ({}, {"access": {"accept_hosts": ["proxy.lan"]}}, {"access.accept_hosts"}, set()),
    ({}, {"access": {"allow_origins": ["https://a.example"]}}, {"access.allow_origins"}, set()),
    ({}, {"access": {"allow_from": ["10.0.0.0/8"]}}, {"access.allow_from"}, set()),
    ({}, {"access": {"allow_public": True}}, {"access.allow_public"}, set()),
    ({}, {"access": {"read_only": True}}, {"access.read_only"}, set()),
    ({}, {"access": {"rules": [{"paths": ["/x"], "action": "deny"}]}}, {"access.rules"}, set()),
    ({}, {"access": {"default": "deny"}}, {"access.default"}, set()),
    ({}, {"access": {"api_keys_file": "{tmp}/keys"}}, {"access.api_keys_file"}, set()),
    ({}, {"access": {"trust_forwarded_from": ["10.0.0.0/8"]}}, {"access.trust_forwarded_from"},
     set()),
    ({}, {"limits": {"max_body": "1MiB"}}, {"limits.max_body"}, set()),
    ({}, {"limits": {"max_header_bytes": "128KiB"}}, {"limits.max_header_bytes"}, set()),
    ({}, {"limits": {"max_concurrent": 4}}, {"limits.max_concurrent"}, set()),
    ({}, {"limits": {"max_concurrent_per_client": 2}}, {"limits.max_concurrent_per_client"},
     set()),
    ({}, {"limits": {"queue_timeout": 2}}, {"limits.queue_timeout"}, set()),
    ({}, {"limits": {"client_idle_timeout": 2}}, {"limits.client_idle_timeout"}, set()),
    ({}, {"limits": {"max_connections": 100}}, {"limits.max_connections"}, set()),
    ({}, {"limits": {"client_body_timeout": 5}}, {"limits.client_body_timeout"}, set()),
    ({}, {"limits": {"client_send_timeout": 5}}, {"limits.client_send_timeout"}, set()),
    # the signing key goes next to the token store: here, in the test's directory
    ({"auth": {**USER, "token_store": "{tmp}/t.json"}},
     {"auth": {**USER, "token_store": "{tmp}/t.json"}, "local_tokens": {"enabled": True}},
     {"local_tokens.enabled"}, set()),
    ({}, {"local_tokens": {"lifetime": "5m"}}, {"local_tokens.lifetime"}, set()),
    ({}, {"state": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}}, set(),
     {"state.backend", "state.redis_url"}),
    ({}, {"state": {"redis_password_file": "{tmp}/secret"}}, set(),
     {"state.redis_password_file", "state.redis_password"}),
    ({"state": {"redis_url": "rediss://redis.example"}},
     {"state": {"redis_url": "rediss://redis.example", "redis_ca_file": "{tmp}/ca.pem"}},
     set(), {"state.redis_ca_file"}),
    ({}, {"state": {"key_prefix": "fleet-b"}}, set(), {"state.key_prefix"}),
    ({}, {"state": {"encryption_key_file": "{tmp}/enc"}}, set(),
     {"state.encryption_key_file", "state.encryption_key"}),
    ({}, {"state": {"lease_time": "30s"}}, set(), {"state.lease_time"}),
    ({}, {"state": {"fleet_size": 3}}, set(), {"state.fleet_size"}),
    ({}, {"status": {"enabled": False}}, set(), {"status.enabled"}),
    ({}, {"status": {"prefix": "/_x"}}, set(), {"status.prefix"}),
    ({}, {"log": {"level": "debug"}}, {"log.level"}, set()),
    ({}, {"log": {"format": "json"}}, {"log.format"}, set()),
]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_text("not read here\n")
    for name, text in (("secret", "from-file\n"), ("keys", ""), ("enc", "k" * 44 + "\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    return tmp_path


@pytest.mark.parametrize(("running", "loaded", "applied", "restart"), ROWS)
def test_reload_plan(files: Path, running: dict[str, Any], loaded: dict[str, Any],
                     applied: set[str], restart: set[str]) -> None:
    old, new = settings(running, files), settings(loaded, files)
    plan = reload_plan(old, new)
    assert (set(plan.applied), set(plan.needs_restart)) == (applied, restart)
    for key in plan.applied:  # what applies is the new value ...
        section, name = key.split(".")
        assert getattr(getattr(plan.settings, section), name) == getattr(
            getattr(new, section), name)
    for key in plan.needs_restart:  # ... what needs a restart keeps the running one
        section, name = key.split(".")
        assert getattr(getattr(plan.settings, section), name) == getattr(
            getattr(old, section), name)
    again = reload_plan(plan.settings, new)  # and is reported again on the next reload
    assert (again.applied, set(again.needs_restart)) == ((), restart)


def test_the_table_has_a_row_for_every_key() -> None:
    covered = set().union(*(applied | restart for _, _, applied, restart in ROWS))
    assert covered == all_keys()


def test_every_key_is_either_applied_on_reload_or_needs_a_restart() -> None:
    keys = all_keys()
    assert not APPLIES_ON_RELOAD & NEEDS_RESTART
    unlisted = keys - APPLIES_ON_RELOAD - NEEDS_RESTART
    assert not unlisted, (
        f"{sorted(unlisted)}: add each to reload.APPLIES_ON_RELOAD (and take it up in "
        "app.reconfigure) or to reload.NEEDS_RESTART")
    assert (APPLIES_ON_RELOAD | NEEDS_RESTART) - keys == set()  # no stale names


def test_an_unlisted_key_is_reported_as_needing_a_restart(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload_module, "APPLIES_ON_RELOAD",
                        APPLIES_ON_RELOAD - {"limits.max_body"})
    old = settings({}, files)
    plan = reload_plan(old, settings({"limits": {"max_body": "1MiB"}}, files))
    assert (plan.applied, plan.needs_restart) == ((), ("limits.max_body",))
    assert plan.settings.limits.max_body == old.limits.max_body


def test_nothing_changed(files: Path) -> None:
    plan = reload_plan(settings({}, files), settings({}, files))
    assert (plan.applied, plan.needs_restart) == ((), ())
