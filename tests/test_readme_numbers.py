"""README's numbers and names are the code's: each row quotes README and reads the code.

If either side changes alone, the row fails: the README sentence and the default move together.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fwproxy import app, breaker, keys, localtokens, reload, replay, retry, tokens, workers
from fwproxy.cli import build_parser
from fwproxy.config import NON_KEY_VARIABLES, Settings, parse_config
from fwproxy.values import SCHEMA

ROOT = Path(__file__).parent.parent
README = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # lines unwrapped
KiB = 1024
MiB = 1024 * KiB


def defaults() -> Settings:
    return parse_config({"tenant": {"url": "https://acme.example"},
                         "auth": {"client_id": "c", "client_secret": "s"}}, environ={})


S = defaults()

# (README phrase, exactly as written; the code's value, the value README states)
NUMBERS = [
    ("`auth.replay_max_body` (64 MiB)", S.auth.replay_max_body, 64 * MiB),
    ("(memory, then a temp file past 1 MiB)", replay.SPILL_AT, 1 * MiB),
    ("backs off exponentially with jitter (1 s up to 60 s",
     (tokens.BACKOFF_BASE, tokens.BACKOFF_CAP), (1.0, 60.0)),
    ("the default, `always`, never stops", S.auth.idle_renewal, None),
    ("`limits.max_body` (413; default none)", S.limits.max_body, 0),
    ("`limits.max_header_bytes` (431; default 64 KiB", S.limits.max_header_bytes, 64 * KiB),
    ("the 16 KiB request line allowance", app.MAX_REQUEST_LINE, 16 * KiB),
    ("(503 with Retry-After; default no limit)", S.limits.max_concurrent, 0),
    ("`limits.client_idle_timeout` (default 75 s)", S.limits.client_idle_timeout, 75.0),
    ("`limits.max_connections` (default 10,240 per process)", S.limits.max_connections, 10240),
    ("`limits.client_body_timeout` (default 60 s)", S.limits.client_body_timeout, 60.0),
    ("`limits.client_send_timeout` (default 60 s)", S.limits.client_send_timeout, 60.0),
    ("`listen.shutdown_timeout` (30 s)", S.listen.shutdown_timeout, 30.0),
    ("`local_tokens.lifetime`, 1 s to a day, default 1 h",
     (localtokens.MIN_LIFETIME, localtokens.MAX_LIFETIME, S.local_tokens.lifetime),
     (1, 86400, 3600.0)),
    ("With `local_tokens.enabled: false` (the default)", S.local_tokens.enabled, False),
    ("(`access.allow_from`, default loopback only)",
     tuple(str(n) for n in S.access.allow_from), ("127.0.0.1/32", "::1/128")),
    ("`access.trust_forwarded_from` (default none)", S.access.trust_forwarded_from, ()),
    ("(`status.prefix`; FotoWeb's own paths", S.status.prefix, "/_fwproxy"),
    ("`listen.event_loop: auto` (the default)", S.listen.event_loop, "auto"),
    ("(`client_authorization: keep`)", S.auth.client_authorization, "keep"),
    ("With `token_placement: auto`,", S.auth.token_placement, "auto"),
    ("plus 10 a second", retry.BUDGET_FLOOR, 10.0),
    ("of the requests seen over the last 10 s", retry.BUDGET_WINDOW, 10),
    ("else a random wait up to 0.5 s, doubling per retry", retry.BACKOFF_BASE, 0.5),
    ("for twice as long (up to 60 s)", breaker.COOLDOWN_CAP, 60.0),
    ("doubles while probes fail, up to 60 s", breaker.COOLDOWN_CAP, 60.0),
    ("it gives up after 5 deaths a minute", (workers.MAX_DEATHS, workers.DEATH_WINDOW),
     (5, 60.0)),
    ("revokes its tokens (within two seconds, as for the key itself)", keys.RELOAD_EVERY, 2.0),
    ("The methods are RFC 9110's idempotent ones", set(S.tenant.retry_methods),
     {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}),
    ("listen: {host: 127.0.0.1, port: 8080}", (S.listen.host, S.listen.port),
     ("127.0.0.1", 8080)),
]


@pytest.mark.parametrize(("phrase", "code", "stated"), NUMBERS, ids=[n[0][:40] for n in NUMBERS])
def test_a_number_readme_states_is_the_codes_default(phrase: str, code: object,
                                                      stated: object) -> None:
    assert phrase in README
    assert code == stated


def test_the_memory_ceiling_arithmetic_holds() -> None:
    """README: about 155 KiB a connection, so 10,240 of them about 1.6 GB."""
    assert "costs about 155 KiB (measured), so 10,240 of them about 1.6 GB" in README
    total = 155 * KiB * S.limits.max_connections
    assert 1.55e9 < total < 1.65e9


def test_the_protecting_the_tenant_block_shows_the_defaults() -> None:
    """The commented yaml block in "Protecting the tenant" is every tenant.* budget default."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Protecting the tenant", 1)[1]
    block = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert set(block["tenant"]) >= {"max_in_flight", "max_rate", "max_burst", "queue_timeout",
                                    "retries", "retry_methods", "retry_max_wait",
                                    "retry_budget", "breaker_failures", "breaker_cooldown"}
    from_block = parse_config({"tenant": {**block["tenant"], "url": "https://acme.example"},
                               "auth": {"client_id": "c", "client_secret": "s"}}, environ={})
    assert from_block.tenant == S.tenant


# --- names: every FWPROXY_ variable and `key: value` README shows is a real one -------------

SPECIAL_VARIABLES = set(NON_KEY_VARIABLES)  # FWPROXY_CONFIG, FWPROXY_CLIENT_SECRET, ...
SHOWN_AS_MISTAKES = {"FWPROXY_TENANT_ULR"}  # README's example of the did-you-mean error


def test_every_environment_variable_readme_names_exists() -> None:
    real = SPECIAL_VARIABLES | {f"FWPROXY_{section}_{key}".upper()
                                for section, parsers in SCHEMA.items() for key in parsers}
    named = set(re.findall(r"\bFWPROXY_[A-Z_]*[A-Z]\b", README)) - SHOWN_AS_MISTAKES
    named.discard("FWPROXY_")
    assert named
    assert sorted(named - real) == []
    assert "did you mean FWPROXY_TENANT_URL?" in README  # the mistake is shown as one


def test_every_key_readme_shows_with_a_value_exists() -> None:
    """`token_placement: auto`, `max_in_flight: 8`: a bare key with a value is a real key."""
    keys_ = {key for parsers in SCHEMA.values() for key in parsers}
    shown = set(re.findall(r"`([a-z_]+): [^`]+`", README))
    oauth_fields = {"token_type"}  # `token_type: bearer`, the token answer's field
    assert shown
    assert sorted(shown - keys_ - oauth_fields) == []


def test_the_keys_readme_says_need_a_restart_are_the_reload_tables() -> None:
    """Operate it, Signals: "`listen` except `shutdown_timeout`, `tenant.url`, ... and
    `status`" is NEEDS_RESTART, and every other key applies on reload."""
    sentence = README.split("These keys need a restart,", 1)[1].split("Every other key", 1)[0]
    assert "`listen` except `shutdown_timeout`" in sentence
    named = set(re.findall(r"`((?:tenant|auth)\.[a-z_]+)`", sentence))
    named |= {f"listen.{key}" for key in SCHEMA["listen"] if key != "shutdown_timeout"}
    named |= {f"status.{key}" for key in SCHEMA["status"]}
    assert "`status`" in sentence
    assert "`state`" in sentence
    named |= {f"state.{key}" for key in SCHEMA["state"]}
    # read from state's files (or the environment) and restarted with them
    derived = {"state.redis_password", "state.encryption_key"}
    assert named | derived == reload.NEEDS_RESTART
    every = {f"{section}.{key}" for section, parsers in SCHEMA.items() for key in parsers}
    assert every - named == reload.APPLIES_ON_RELOAD


def test_the_demo_tenants_tokens_live_30_seconds() -> None:
    assert "The demo tenant's tokens live 30 seconds" in README
    assert build_parser().parse_args(["demo"]).token_lifetime == 30
