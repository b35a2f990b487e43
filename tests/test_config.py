"""Configuration: contract key names, typed values, errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from fwproxy.config import (
    SCHEMA,
    Secret,
    find_config,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from fwproxy.exceptions import ConfigError

BASE: dict[str, Any] = {
    "tenant": {"url": "https://acme.fotoware.cloud"},
    "auth": {"client_id": "app", "client_secret": "s3cr3t-value"},
}


def config(**sections: dict[str, Any]) -> dict[str, Any]:
    out = {key: dict(value) for key, value in BASE.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def test_defaults_match_the_documented_contract() -> None:
    settings = parse_config(config(), environ={})
    assert settings.listen.host == "127.0.0.1"
    assert settings.listen.port == 8080
    assert settings.tenant.url == URL("https://acme.fotoware.cloud")
    assert settings.tenant.verify_tls is True
    assert settings.tenant.allow_insecure_http is False
    assert settings.tenant.connect_timeout == 10
    assert settings.tenant.read_timeout == 300
    assert settings.auth.grant_type == "client_credentials"
    assert settings.auth.token_url == URL("https://acme.fotoware.cloud/fotoweb/oauth2/token")
    assert settings.auth.refresh_margin == 60
    assert settings.auth.token_placement == "auto"
    assert settings.auth.client_authorization == "keep"
    assert settings.auth.replay_max_body == 64 * 2**20
    assert settings.listen.event_loop == "auto"


def test_example_config_parses_and_lists_every_key() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    settings = load_config(example, environ={"FWPROXY_CLIENT_SECRET": "x"})
    assert settings.tenant.url.host == "acme.fotoware.cloud"
    text = example.read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert f"{key}:" in text, f"{section}.{key} is not documented in config.example.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64MiB", 64 * 2**20), ("1.5GB", 1_500_000_000), (1024, 1024), ("512 KiB", 524288),
     ("10", 10), ("0", 0)],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text, "k") == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("5m", 300.0), ("90", 90.0), (1.5, 1.5), ("500ms", 0.5), ("1h", 3600.0)]
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text, "k") == expected


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"tenant": {"urll": "x"}}, "tenant.urll"),
        ({"tennant": {}}, "tennant"),
        ({"auth": {"replay_max_body": "lots"}}, "auth.replay_max_body"),
        ({"auth": {"refresh_margin": "soon"}}, "auth.refresh_margin"),
        ({"auth": {"token_placement": "cookie"}}, "auth.token_placement"),
        ({"auth": {"client_authorization": "merge"}}, "auth.client_authorization"),
        ({"auth": {"grant_type": "password"}}, "auth.grant_type"),
        ({"listen": {"port": 70000}}, "listen.port"),
        ({"tenant": {"verify_tls": "maybe"}}, "tenant.verify_tls"),
        ({"tenant": {"url": "ftp://acme"}}, "tenant.url"),
        ({"tenant": {"url": "https://acme/fotoweb"}}, "tenant.url"),
        ({"tenant": {"url": "http://acme"}}, "tenant.url"),  # clear text refused by default
        ({"tenant": {"ca_file": "/nonexistent/ca.pem"}}, "tenant.ca_file"),
        ({"auth": {"token_url": "oauth2/token"}}, "auth.token_url"),
    ],
)
def test_errors_name_the_key(sections: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(**sections), environ={})
    assert caught.value.key == key
    assert str(caught.value).startswith(key)


def test_required_keys() -> None:
    with pytest.raises(ConfigError, match=r"^tenant\.url"):
        parse_config({"auth": BASE["auth"]}, environ={})
    with pytest.raises(ConfigError, match=r"^auth\.client_id"):
        parse_config({"tenant": BASE["tenant"], "auth": {"client_secret": "x"}}, environ={})
    with pytest.raises(ConfigError, match=r"^auth\.client_secret"):
        parse_config({"tenant": BASE["tenant"], "auth": {"client_id": "x"}}, environ={})


def test_http_tenant_allowed_only_deliberately() -> None:
    settings = parse_config(
        config(tenant={"url": "http://fotoweb.lan:8080", "allow_insecure_http": True}), environ={}
    )
    assert settings.tenant.url == URL("http://fotoweb.lan:8080")


def test_absolute_token_url() -> None:
    settings = parse_config(config(auth={"token_url": "https://idp.example/token"}), environ={})
    assert settings.auth.token_url == URL("https://idp.example/token")


def test_environment_beats_file() -> None:
    environ = {
        "FWPROXY_TENANT_URL": "https://other.fotoware.cloud",
        "FWPROXY_LISTEN_PORT": "9090",
        "FWPROXY_AUTH_REPLAY_MAX_BODY": "1MiB",
        "FWPROXY_CLIENT_SECRET": "from-env",
    }
    settings = parse_config(config(), environ=environ)
    assert settings.tenant.url.host == "other.fotoware.cloud"
    assert settings.listen.port == 9090
    assert settings.auth.replay_max_body == 2**20
    assert settings.auth.client_secret == Secret("from-env")


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^FWPROXY_LISTEN_PORT"):
        parse_config(config(), environ={"FWPROXY_LISTEN_PORT": "http"})


def test_secret_never_shows_in_repr() -> None:
    settings = parse_config(config(), environ={})
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings.auth)
    assert settings.auth.client_secret is not None
    assert settings.auth.client_secret.reveal() == "s3cr3t-value"


def test_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    path.chmod(0o600)
    auth = {"client_id": "app", "client_secret_file": str(path)}
    settings = parse_config({"tenant": BASE["tenant"], "auth": auth}, environ={})
    assert settings.auth.client_secret == Secret("from-file")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file")
    path.chmod(mode)
    auth = {"client_id": "app", "client_secret_file": str(path)}
    with pytest.raises(ConfigError, match="too open") as caught:
        parse_config({"tenant": BASE["tenant"], "auth": auth}, environ={})
    assert caught.value.key == "auth.client_secret_file"
    assert "from-file" not in str(caught.value)


def test_secret_and_secret_file_together_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="either"):
        parse_config(config(auth={"client_secret_file": str(path)}), environ={})


def test_secret_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("docker-secret")
    path.chmod(0o400)
    environ = {"FWPROXY_CLIENT_SECRET_FILE": str(path)}
    settings = parse_config(config(), environ=environ)
    assert settings.auth.client_secret == Secret("docker-secret")


def test_load_reports_yaml_errors_with_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tenant:\n  url: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path, environ={})


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config("given.yaml", {"FWPROXY_CONFIG": "env.yaml"}) == Path("given.yaml")
    assert find_config(None, {"FWPROXY_CONFIG": "env.yaml"}) == Path("env.yaml")
    (tmp_path / "fwproxy.yaml").write_text("")
    assert find_config(None, {}) == Path("fwproxy.yaml")


def test_event_loop_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from fwproxy import eventloop

    assert parse_config(config(listen={"event_loop": "AsyncIO"}), environ={}
                        ).listen.event_loop == "asyncio"
    with pytest.raises(ConfigError, match=r"listen\.event_loop.*auto, asyncio, uvloop"):
        parse_config(config(listen={"event_loop": "tokio"}), environ={})
    monkeypatch.setattr(eventloop, "uvloop_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"listen\.event_loop.*uvloop is not installed"):
        parse_config(config(listen={"event_loop": "uvloop"}), environ={})
    settings = parse_config(config(), environ={"FWPROXY_LISTEN_EVENT_LOOP": "asyncio"})
    assert settings.listen.event_loop == "asyncio"


def test_connection_and_client_limits() -> None:
    limits = parse_config(config(), environ={}).limits
    assert (limits.max_connections, limits.client_body_timeout, limits.client_send_timeout
            ) == (10240, 60.0, 60.0)
    limits = parse_config(config(limits={"max_connections": 500, "client_body_timeout": "2m",
                                         "client_send_timeout": "500ms"}), environ={}).limits
    assert (limits.max_connections, limits.client_body_timeout, limits.client_send_timeout
            ) == (500, 120.0, 0.5)
    for key, bad in (("max_connections", -1), ("client_body_timeout", "soon"),
                     ("client_send_timeout", "-5")):
        with pytest.raises(ConfigError, match=rf"^limits\.{key}"):
            parse_config(config(limits={key: bad}), environ={})
