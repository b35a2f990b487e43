"""The `state` section (shared state for a fleet): its policy across keys, as a table, and
the files loading.py reads for it. Every error names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fwproxy.config import ConfigError, parse_config
from fwproxy.fleet import connect
from fwproxy.loading import load_mapping

BASE: dict[str, Any] = {
    "tenant": {"url": "https://acme.fotoware.cloud"},
    "auth": {"client_id": "app", "client_secret": "s3cr3t-value"},
}
PUBLIC = {"grant_type": "authorization_code", "client_secret": None,
          "redirect_uri": "http://127.0.0.1:8765/callback", "token_store": "/var/lib/t.json"}
REDIS = {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}


def parsed(state: dict[str, Any], environ: dict[str, str] | None = None,
           auth: dict[str, Any] | None = None) -> Any:
    raw = {**BASE, "state": state}
    if auth is not None:
        raw["auth"] = {**BASE["auth"], **auth}
    return parse_config(raw, environ or {})


@pytest.mark.parametrize(("state", "environ", "auth", "key", "words"), [
    ({"backend": "redis"}, {}, None, "state.redis_url", "is required"),
    ({**REDIS, "redis_url": "http://h:6379"}, {}, None, "state.redis_url", "redis://"),
    ({**REDIS, "redis_url": "redis://:pw@h:6379"}, {}, None, "state.redis_url",
     "holds a password"),
    ({**REDIS, "redis_url": "redis://user:pw@h:6379"}, {}, None, "state.redis_url",
     "holds a password"),
    ({**REDIS, "redis_url": "redis:///0"}, {}, None, "state.redis_url", "names no host"),
    # redis-py takes a password, and settings that override fwproxy's, from the query
    ({**REDIS, "redis_url": "redis://h:6379/0?password=pw"}, {}, None, "state.redis_url",
     "holds a password"),
    ({**REDIS, "redis_url": "unix:///run/redis.sock?password=pw"}, {}, None,
     "state.redis_url", "holds a password"),
    ({**REDIS, "redis_url": "rediss://h:6379/0?ssl_cert_reqs=none"}, {}, None,
     "state.redis_url", "'ssl_cert_reqs'"),
    ({**REDIS, "redis_url": "redis://h:6379/0?socket_timeout=600"}, {}, None,
     "state.redis_url", "'socket_timeout'"),
    ({**REDIS, "redis_url": "redis://h:6379/0?socket_timeout=x"}, {}, None,
     "state.redis_url", "'socket_timeout'"),
    ({**REDIS, "redis_url": "unix:///run/redis.sock?db=x"}, {}, None, "state.redis_url",
     "database number"),
    ({**REDIS, "redis_url": "redis://h:6379/abc"}, {}, None, "state.redis_url", "/0, /1"),
    ({**REDIS, "redis_url": "redis://h:6379/0/1"}, {}, None, "state.redis_url", "/0, /1"),
    ({**REDIS, "redis_url": "redis://h:6379/-1"}, {}, None, "state.redis_url", "/0, /1"),
    ({**REDIS, "redis_ca_file": "/etc/ca.pem"}, {}, None, "state.redis_ca_file", "rediss://"),
    ({**REDIS, "redis_password_file": "/run/pw"}, {"FWPROXY_STATE_REDIS_PASSWORD": "x"}, None,
     "state.redis_password_file", "keep one"),
    ({**REDIS, "lease_time": "500ms"}, {}, None, "state.lease_time", "from 1s"),
    ({**REDIS, "key_prefix": "my prefix"}, {}, None, "state.key_prefix", "letters"),
    ({**REDIS, "key_prefix": ":x"}, {}, None, "state.key_prefix", "letters"),
    ({"backend": "etcd"}, {}, None, "state.backend", "local, redis"),
    (REDIS, {}, PUBLIC, "state.encryption_key_file", "no client secret"),
    ({"redis_urll": "x"}, {}, None, "state.redis_urll", "did you mean state.redis_url"),
])
def test_state_errors_name_the_key(state: dict[str, Any], environ: dict[str, str],
                                   auth: dict[str, Any] | None, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed(state, environ, auth)
    assert caught.value.key == key
    assert words in str(caught.value)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://redis.example:6380/1", "unix:///run/redis.sock",
    "redis://fwproxy@redis.example:6379/0", "redis://h", "redis://h/", "redis://h:6379/15",
    "unix:///run/redis.sock?db=2",
])
def test_redis_urls_taken(url: str) -> None:
    """Taken by the config, and by redis-py as it is (no ValueError when connecting)."""
    state = parsed({**REDIS, "redis_url": url}).state
    assert state.redis_url == url
    connect(state, 1.0)


def test_defaults_are_local() -> None:
    state = parse_config(BASE, {}).state
    assert (state.backend, state.key_prefix, state.lease_time, state.fleet_size) == (
        "local", "fwproxy", 15.0, 0)
    assert not state.shared


def test_the_password_from_the_environment_never_shows() -> None:
    state = parsed(REDIS, {"FWPROXY_STATE_REDIS_PASSWORD": "hunter2-pw"}).state
    assert state.redis_password.reveal() == "hunter2-pw"
    assert "hunter2" not in repr(state)


def test_files_are_read_and_checked(tmp_path: Path) -> None:
    password, key = tmp_path / "pw", tmp_path / "key"
    password.write_text("file-pw\n")
    key.write_text("q" * 44 + "\n")
    for path in (password, key):
        path.chmod(0o600)
    settings = load_mapping({**BASE, "state": {
        **REDIS, "redis_password_file": str(password), "encryption_key_file": str(key)}}, {})
    password_, key_ = settings.state.redis_password, settings.state.encryption_key
    assert password_ is not None
    assert password_.reveal() == "file-pw"
    assert key_ is not None
    assert key_.reveal() == "q" * 44
    assert "file-pw" not in repr(settings)
    assert "q" * 44 not in repr(settings)
    # a public client with its own key is fine
    assert load_mapping({**BASE, "auth": {**BASE["auth"], **PUBLIC},
                         "state": {**REDIS, "encryption_key_file": str(key)}}, {}).state.shared


def test_a_short_or_open_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("short\n")
    key.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_mapping({**BASE, "state": {**REDIS, "encryption_key_file": str(key)}}, {})
    assert caught.value.key == "state.encryption_key_file"
    assert "openssl rand -base64 32" in str(caught.value)
    key.write_text("q" * 44)
    key.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_mapping({**BASE, "state": {**REDIS, "encryption_key_file": str(key)}}, {})
    assert caught.value.key == "state.encryption_key_file"
