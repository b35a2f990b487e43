"""Configuration: contract key names, typed values, errors that name the key."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from fwproxy.config import (
    NON_KEY_VARIABLES,
    SECRET_SOURCES,
    Secret,
    SecretFile,
    check_environment,
    effective_config_lines,
    env_name,
    parse_config,
)
from fwproxy.exceptions import ConfigError
from fwproxy.loading import find_config, load_config, load_mapping
from fwproxy.private import CREDENTIAL
from fwproxy.values import AUTO_WORKERS, SCHEMA

BASE: dict[str, Any] = {
    "tenant": {"url": "https://acme.fotoware.cloud"},
    "auth": {"client_id": "app", "client_secret": "s3cr3t-value"},
}


def config(**sections: dict[str, Any]) -> dict[str, Any]:
    out = {key: dict(value) for key, value in BASE.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def file_with(path: Path, text: str, mode: int = 0o600) -> Path:
    """`path`, written with `text` and then given `mode` (a secret's 0600 unless told)."""
    path.write_text(text)
    path.chmod(mode)
    return path


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
        load_mapping(config(**sections), environ={})
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
    settings = parse_config({**config(), "auth": {"client_id": "app"}}, environ=environ)
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
    path = file_with(tmp_path / "secret", "from-file\n")
    auth = {"client_id": "app", "client_secret_file": str(path)}
    settings = load_mapping({"tenant": BASE["tenant"], "auth": auth}, environ={})
    assert settings.auth.client_secret == Secret("from-file")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = file_with(tmp_path / "secret", "from-file", mode)
    auth = {"client_id": "app", "client_secret_file": str(path)}
    with pytest.raises(ConfigError, match="too open") as caught:
        load_mapping({"tenant": BASE["tenant"], "auth": auth}, environ={})
    assert caught.value.key == "auth.client_secret_file"
    assert "from-file" not in str(caught.value)


def test_secret_and_secret_file_together_is_ambiguous(tmp_path: Path) -> None:
    path = file_with(tmp_path / "secret", "x")
    with pytest.raises(ConfigError) as caught:
        parse_config(config(auth={"client_secret_file": str(path)}), environ={})
    assert str(caught.value) == (
        "auth.client_secret: more than one client secret is configured: auth.client_secret "
        "and auth.client_secret_file; keep only one"
    )


def test_secret_file_from_environment(tmp_path: Path) -> None:
    path = file_with(tmp_path / "secret", "docker-secret", 0o400)
    environ = {"FWPROXY_CLIENT_SECRET_FILE": str(path)}
    settings = load_mapping({**config(), "auth": {"client_id": "app"}}, environ=environ)
    assert settings.auth.client_secret == Secret("docker-secret")


def test_load_reports_yaml_errors_with_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tenant:\n  url: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        # a second section silently replaced the first (red team)
        ("tenant:\n  url: https://a.example\naccess:\n  read_only: true\n"
         "access:\n  default: allow\n", "access", "lines 3 and 5"),
        ("tenant:\n  url: https://a.example\naccess:\n  read_only: true\n"
         "  read_only: false\n", "read_only", "lines 4 and 5"),
        ("tenant:\n  url: https://a.example\naccess:\n  rules:\n"
         "    - {paths: [/a], action: deny, action: allow}\n", "action", "lines 5 and 5"),
        ("tenant: {url: https://a.example, url: https://b.example}\n", "url", "lines 1 and 1"),
    ],
)
def test_load_refuses_a_key_given_twice(tmp_path: Path, text: str, key: str, lines: str
                                        ) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert f"duplicate key {key!r} ({lines})" in str(caught.value)
    assert str(path) in str(caught.value)


def test_rules_from_the_environment_refuse_a_key_given_twice() -> None:
    environ = {"FWPROXY_ACCESS_RULES": "[{paths: [/a], action: deny, action: allow}]"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config(), environ=environ)
    assert str(caught.value).startswith("FWPROXY_ACCESS_RULES: duplicate key 'action'")


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


# --- names: unknown sections, keys and FWPROXY_ variables get "did you mean" -------------


@pytest.mark.parametrize(
    ("raw", "environ", "message"),
    [
        ({"tennant": {}}, {}, "tennant: unknown section, did you mean tenant?"),
        ({"frobnicate": {}}, {},
         "frobnicate: unknown section (known: listen, tenant, auth, access, limits, "
         "local_tokens, state, status, log)"),
        ({"tenant": {"urll": "x"}}, {}, "tenant.urll: unknown key, did you mean tenant.url?"),
        ({"listen": {"accept_hosts": ["a"]}}, {},
         "listen.accept_hosts: unknown key, did you mean access.accept_hosts?"),
        ({"log": {"colour": "x"}}, {}, "log.colour: unknown key (known: log.level, log.format)"),
        ({"access": {"rules": [{"path": "/a", "action": "allow"}]}}, {},
         "access.rules[0].path: unknown key, did you mean paths?"),
        ({}, {"FWPROXY_TENANT_ULR": "x"},
         "FWPROXY_TENANT_ULR: unknown environment variable, did you mean FWPROXY_TENANT_URL?"),
        ({}, {"FWPROXY_CLIENT_SECRET_FIEL": "/s"},
         "FWPROXY_CLIENT_SECRET_FIEL: unknown environment variable, "
         "did you mean FWPROXY_CLIENT_SECRET_FILE?"),
        ({}, {"FWPROXY_ACCESS_ACCEPT_HOST": "a"},
         "FWPROXY_ACCESS_ACCEPT_HOST: unknown environment variable, "
         "did you mean FWPROXY_ACCESS_ACCEPT_HOSTS?"),
        ({}, {"FWPROXY_FOO": "x"},
         "FWPROXY_FOO: unknown environment variable (config keys are "
         "FWPROXY_<SECTION>_<KEY>, e.g. FWPROXY_TENANT_URL)"),
    ],
)
def test_unknown_names_suggest_the_closest(
    raw: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**config(), **raw}, environ=environ)
    assert str(caught.value) == message


def test_a_mistyped_variable_is_refused_before_the_config_is_looked_for() -> None:
    with pytest.raises(ConfigError, match=r"^FWPROXY_CONFG: .* did you mean FWPROXY_CONFIG\?$"):
        find_config(None, {"FWPROXY_CONFG": "/etc/fwproxy/config.yaml"})


def test_other_environment_variables_are_left_alone() -> None:
    environ = {"FWPROXY": "x", "fwproxy_tenant_ulr": "x", "HOME": "/root", "PATH": "/bin"}
    assert parse_config(config(), environ=environ).listen.port == 8080


def test_every_fwproxy_variable_the_project_reads_is_known() -> None:
    """NON_KEY_VARIABLES lists every FWPROXY_ name used anywhere that is not a config key."""
    root = Path(__file__).parent.parent
    keys = {env_name(section, key) for section, parsers in SCHEMA.items() for key in parsers}
    files = [root / "Dockerfile", root / "README.md", *root.glob("systemd/*"),
             *root.glob("scripts/*"), *root.glob("bench/*.py"), *root.glob("fwproxy/*.py"),
             *root.glob("tests/**/*.py")]
    used = set()
    for path in files:
        used |= set(re.findall(r"\bFWPROXY_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    # the typos the tests make on purpose are not variables the project reads
    used -= {"FWPROXY_TENANT_ULR", "FWPROXY_CLIENT_SECRET_FIEL", "FWPROXY_ACCESS_ACCEPT_HOST",
             "FWPROXY_FOO", "FWPROXY_CONFG", "FWPROXY_LISTEN_PROT"}
    assert sorted(used - keys - set(NON_KEY_VARIABLES)) == []
    for name in NON_KEY_VARIABLES:
        check_environment({name: "x"})  # known: not refused


# --- lists: one parser, comma or whitespace in a string, every item checked ---------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("accept_hosts", "a.example b.example", ("a.example", "b.example")),
        ("accept_hosts", "a.example,b.example", ("a.example", "b.example")),
        ("accept_hosts", " A.example ,\tb.example\n", ("a.example", "b.example")),
        ("accept_hosts", "", ()),
        ("accept_hosts", ["localhost", "127.0.0.1", "::1", "[::1]"], ("localhost", "127.0.0.1",
                                                                     "::1")),
        ("accept_hosts", ["*", "*.example.com", "proxy.example.com."],
         ("*", "*.example.com", "proxy.example.com")),
        ("accept_hosts", ["0:0:0:0:0:0:0:1", "fd00::1", "10.0.0.1"], ("::1", "fd00::1",
                                                                     "10.0.0.1")),
        ("accept_hosts", ["xn--bjrn-lua.example", "a-b.c1"], ("xn--bjrn-lua.example", "a-b.c1")),
        ("allow_from", "10.0.0.0/8 192.168.1.7", ("10.0.0.0/8", "192.168.1.7/32")),
        ("allow_from", "10.0.0.0/8,::1", ("10.0.0.0/8", "::1/128")),
        ("allow_from", ["172.16.0.0/12"], ("172.16.0.0/12",)),
        ("allow_origins", "https://intranet.example http://localhost:3000",
         ("https://intranet.example", "http://localhost:3000")),
        ("allow_origins", ["HTTPS://Intranet.Example/", "https://x.example:443", "*",
                           "http://[::1]:8080", "http://127.0.0.1:80"],
         ("https://intranet.example", "https://x.example", "*", "http://[::1]:8080",
          "http://127.0.0.1")),
    ],
)
def test_list_values(key: str, value: object, expected: tuple[str, ...]) -> None:
    settings = parse_config(config(access={key: value}), environ={})
    assert tuple(str(item) for item in getattr(settings.access, key)) == expected
    if isinstance(value, str):  # the same from the environment
        settings = parse_config(config(), environ={f"FWPROXY_ACCESS_{key.upper()}": value})
        assert tuple(str(item) for item in getattr(settings.access, key)) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("accept_hosts", ["a b"],
         "access.accept_hosts: 'a b' is not a host name, an IP address, *.example.com or *"),
        ("accept_hosts", "a.example user@b.example",
         "access.accept_hosts: 'user@b.example' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["localhost/"],
         "access.accept_hosts: 'localhost/' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["localhost:8080"],
         "access.accept_hosts: 'localhost:8080' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["[127.0.0.1]"],
         "access.accept_hosts: '[127.0.0.1]' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["[localhost]"],
         "access.accept_hosts: '[localhost]' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["::1]"],
         "access.accept_hosts: '::1]' is not a host name, an IP address, *.example.com or *"),
        ("accept_hosts", ["a.*.example"],
         "access.accept_hosts: 'a.*.example' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["-a.example"],
         "access.accept_hosts: '-a.example' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["a..example"],
         "access.accept_hosts: 'a..example' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["999.1.1.1"],
         "access.accept_hosts: '999.1.1.1' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["x" * 64 + ".example"],
         f"access.accept_hosts: '{'x' * 64}.example' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", ["bj\u00f8rn.example"],
         "access.accept_hosts: 'bj\u00f8rn.example' is not a host name, an IP address, "
         "*.example.com or *"),
        ("accept_hosts", [""],
         "access.accept_hosts: '' is not a host name, an IP address, *.example.com or *"),
        ("accept_hosts", [["nested"]],
         "access.accept_hosts: expected a list of strings, got the item ['nested']"),
        ("accept_hosts", 7, "access.accept_hosts: expected a list, got 7"),
        ("allow_from", "10.0.0.0/8 10.0.0.0/33",
         "access.allow_from: '10.0.0.0/33' is not a network such as 10.0.0.0/8, "
         "or an IP address"),
        ("allow_from", ["localhost"],
         "access.allow_from: 'localhost' is not a network such as 10.0.0.0/8, or an IP address"),
        ("allow_origins", ["https://intranet.example/app"],
         "access.allow_origins: 'https://intranet.example/app' is not a web origin such as "
         "https://intranet.example or http://localhost:3000, or *"),
        ("allow_origins", ["intranet.example"],
         "access.allow_origins: 'intranet.example' is not a web origin such as "
         "https://intranet.example or http://localhost:3000, or *"),
        ("allow_origins", ["https://*.example"],
         "access.allow_origins: 'https://*.example' is not a web origin such as "
         "https://intranet.example or http://localhost:3000, or *"),
        ("allow_origins", ["null"],
         "access.allow_origins: 'null' is not a web origin such as "
         "https://intranet.example or http://localhost:3000, or *"),
        ("allow_origins", ["http://::1:8080"],
         "access.allow_origins: 'http://::1:8080' is not a web origin such as "
         "https://intranet.example or http://localhost:3000, or *"),
        ("allow_origins", ["http://a.example:99999"],
         "access.allow_origins: 'http://a.example:99999' is not a web origin such as "
         "https://intranet.example or http://localhost:3000, or *"),
    ],
)
def test_bad_list_items_are_named(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(access={key: value}), environ={})
    assert str(caught.value) == message


def test_an_accept_hosts_list_from_the_environment_is_split_at_whitespace() -> None:
    """Once FWPROXY_ACCESS_ACCEPT_HOSTS="a b" became the one host "a b"."""
    settings = parse_config(config(), environ={"FWPROXY_ACCESS_ACCEPT_HOSTS": "a b"})
    assert settings.access.accept_hosts == ("a", "b")


@pytest.mark.parametrize(
    ("rule", "message_or_methods"),
    [
        ({"methods": "GET HEAD", "paths": "/a /b/**"}, ({"GET", "HEAD"}, ("/a", "/b/**"))),
        ({"methods": "get,head", "paths": ["/a"]}, ({"GET", "HEAD"}, ("/a",))),
        ({"methods": ["GET"], "paths": ["/My Archive/**"]}, ({"GET"}, ("/My Archive/**",))),
        ({"methods": ["GET HEAD"], "paths": ["/a"]},
         "access.rules[0].methods: 'GET HEAD' is not an HTTP method such as GET"),
        ({"methods": ["GET/1"], "paths": ["/a"]},
         "access.rules[0].methods: 'GET/1' is not an HTTP method such as GET"),
        ({"paths": "/My Archive/**"},
         "access.rules[0].paths: 'Archive/**' is not a path starting with '/'"),
        ({"paths": ["a"]}, "access.rules[0].paths: 'a' is not a path starting with '/'"),
        ({"paths": []}, "access.rules[0].paths: expected a list of paths starting with '/'"),
        ({}, "access.rules[0].paths: expected a list of paths starting with '/'"),
    ],
)
def test_rule_lists(rule: dict[str, Any], message_or_methods: object) -> None:
    raw = config(access={"rules": [{"action": "allow", **rule}]})
    if isinstance(message_or_methods, str):
        with pytest.raises(ConfigError) as caught:
            parse_config(raw, environ={})
        assert str(caught.value) == message_or_methods
    else:
        (parsed,) = parse_config(raw, environ={}).access.rules
        assert (parsed.methods, parsed.paths) == message_or_methods


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # paths no request is ever normalized to (red team): the form it would be written in
        ("/fotoweb/%61dmin/**", "write '/fotoweb/admin/**'"),
        ("/fotoweb/admin./**", "write '/fotoweb/admin/**'"),
        ("/fotoweb//admin/**", "write '/fotoweb/admin/**'"),
        ("/fotoweb\\admin/**", "write '/fotoweb/admin/**'"),
        ("/fotoweb/admin /**", "write '/fotoweb/admin/**'"),
        ("/fotoweb/admin/", "write '/fotoweb/admin'"),
        ("/fotoweb/caf%C3%A9/**", "write '/fotoweb/caf\u00e9/**'"),
        ("/fotoweb/../fotoweb/admin/**", "refused: '.' or '..' segments"),
        ("/fotoweb/admin6?x", "refused: a '?' or '#'"),
        ("/fotoweb/admin#x", "refused: a '?' or '#'"),
        ("/fotoweb/admin;x/**", "refused: ';'"),
        ("/fotoweb/admin::$DATA", "refused: ':'"),
        ("/fotoweb/ADMIN~1/**", "refused: '~' and a digit"),
        ("/fotoweb/%zz", "refused: a '%' that is not a %XX escape"),
    ],
)
def test_rule_paths_that_can_never_match_are_refused(path: str, message: str) -> None:
    raw = config(access={"rules": [
        {"paths": ["/fotoweb/x/**"], "action": "deny"},
        {"paths": ["/ok/**", path], "action": "deny"}]})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ={})
    assert caught.value.key == "access.rules[1].paths[1]"
    assert message in str(caught.value)
    assert repr(path) in str(caught.value)


@pytest.mark.parametrize("path", ["/", "/**", "/fotoweb/admin/**", "/FotoWeb/Admin",
                                  "/fotoweb/*/x", "/My Archive/**", "/caf\u00e9/**",
                                  "/fotoweb/~me/**"])
def test_rule_paths_in_normalized_form_are_accepted(path: str) -> None:
    raw = config(access={"rules": [{"paths": [path], "action": "deny"}]})
    (rule,) = parse_config(raw, environ={}).access.rules
    assert rule.paths == (path,)


# --- the client secret: one source, and never in a file others may read -------------------


def _secret_source(source: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(auth section, environ) that configure the secret through `source` alone."""
    path = file_with(tmp_path / f"secret-{source}", f"from-{source}\n")
    value = str(path) if source.lower().endswith("_file") else f"from-{source}"
    if source.startswith("auth."):
        return {source.partition(".")[2]: value}, {}
    return {}, {source: value}


@pytest.mark.parametrize("source", SECRET_SOURCES)
def test_each_secret_source_alone(source: str, tmp_path: Path) -> None:
    auth, environ = _secret_source(source, tmp_path)
    settings = load_mapping({**config(), "auth": {"client_id": "app", **auth}}, environ=environ)
    assert settings.auth.client_secret == Secret(f"from-{source}")


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(SECRET_SOURCES, 2)))
def test_two_secret_sources_are_refused_naming_both(
    first: str, second: str, tmp_path: Path
) -> None:
    auth1, env1 = _secret_source(first, tmp_path)
    auth2, env2 = _secret_source(second, tmp_path)
    raw = {**config(), "auth": {"client_id": "app", **auth1, **auth2}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ={**env1, **env2})
    assert str(caught.value) == (
        f"auth.client_secret: more than one client secret is configured: {first} and "
        f"{second}; keep only one"
    )
    assert "from-" not in str(caught.value)


def test_three_secret_sources_are_all_named() -> None:
    environ = {"FWPROXY_CLIENT_SECRET": "a", "FWPROXY_AUTH_CLIENT_SECRET": "b"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config(), environ=environ)
    assert str(caught.value) == (
        "auth.client_secret: more than one client secret is configured: auth.client_secret, "
        "FWPROXY_AUTH_CLIENT_SECRET and FWPROXY_CLIENT_SECRET; keep only one"
    )


@pytest.mark.parametrize("name", ["FWPROXY_CLIENT_SECRET", "FWPROXY_CLIENT_SECRET_FILE",
                                  "FWPROXY_AUTH_CLIENT_SECRET_FILE"])
def test_an_empty_secret_variable_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**config(), "auth": {"client_id": "app"}}, environ={name: ""})
    assert str(caught.value) == f"{name}: is set but empty"


def test_a_secret_file_from_the_environment_is_named_when_too_open(tmp_path: Path) -> None:
    path = file_with(tmp_path / "secret", "the-secret", 0o644)
    with pytest.raises(ConfigError) as caught:
        load_mapping({**config(), "auth": {"client_id": "app"}},
                      environ={"FWPROXY_CLIENT_SECRET_FILE": str(path)})
    assert str(caught.value) == (
        f"FWPROXY_CLIENT_SECRET_FILE: permissions 0644 for {path} are too open "
        f"(group or others may use it); run: chmod 600 {path}"
    )


def test_systemd_credential_is_only_the_fallback(tmp_path: Path) -> None:
    file_with(tmp_path / "client_secret", "from-systemd\n", 0o400)  # as systemd hands it over
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    settings = load_mapping({**config(), "auth": {"client_id": "app"}}, environ=environ)
    assert settings.auth.client_secret == Secret("from-systemd")
    settings = load_mapping(config(), environ=environ)  # an explicit secret wins, no error
    assert settings.auth.client_secret == Secret("s3cr3t-value")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_inline_secret_in_a_config_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    """The same rule, and the same message, as for a secret file."""
    path = tmp_path / "fwproxy.yaml"
    path.write_text("tenant: {url: https://t.example}\n"
                    "auth: {client_id: app, client_secret: inline-secret}\n")
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == (
        f"auth.client_secret: permissions {mode:04o} for {path} are too open "
        f"(group or others may use it); run: chmod 600 {path}"
    )
    assert "inline-secret" not in str(caught.value)
    path.chmod(0o600)
    assert load_config(path, environ={}).auth.client_secret == Secret("inline-secret")


@pytest.mark.parametrize("secret_line", ["", "  client_secret: null\n", "  client_secret:\n"])
def test_a_readable_config_without_a_secret_is_fine(tmp_path: Path, secret_line: str) -> None:
    """README's systemd and container setups: a 644 config, the secret elsewhere."""
    path = tmp_path / "config.yaml"
    path.write_text("tenant:\n  url: https://t.example\nauth:\n  client_id: app\n"
                    + secret_line + "  client_secret_file: null\n")
    path.chmod(0o644)
    secret = file_with(tmp_path / "client_secret", "from-file")
    settings = load_config(path, environ={"FWPROXY_CLIENT_SECRET_FILE": str(secret)})
    assert settings.auth.client_secret == Secret("from-file")


def test_the_example_config_installed_644_works_as_readme_says(tmp_path: Path) -> None:
    """README, systemd step 2: install -m 644 config.example.yaml; FWPROXY_CLIENT_SECRET_FILE."""
    example = (Path(__file__).parent.parent / "config.example.yaml").read_text()
    path = file_with(tmp_path / "config.yaml", example, 0o644)
    secret = file_with(tmp_path / "client_secret", "from-file")
    settings = load_config(path, environ={"FWPROXY_CLIENT_SECRET_FILE": str(secret)})
    assert settings.auth.client_secret == Secret("from-file")
    settings = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.auth.client_secret == Secret("from-file")


# --- config.example.yaml, README and `fwproxy check` agree key for key --------------------

ROOT = Path(__file__).parent.parent


def _schema_keys() -> list[str]:
    return [f"{section}.{key}" for section, parsers in SCHEMA.items() for key in parsers]


def test_example_config_describe_and_schema_have_the_same_keys() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    example_keys = [f"{section}.{key}" for section, keys in example.items() for key in keys]
    assert len(example_keys) == len(set(example_keys))
    assert sorted(example_keys) == sorted(_schema_keys())
    settings = load_config(ROOT / "config.example.yaml", environ={"FWPROXY_CLIENT_SECRET": "x"})
    shown = [line.partition(": ")[0] for line in effective_config_lines(settings)]
    assert shown == _schema_keys()  # every key once, in SCHEMA's order


def test_check_shows_the_example_defaults_as_the_example_writes_them() -> None:
    """No ``None`` where the example has a default, no key twice in a list."""
    settings = load_config(ROOT / "config.example.yaml", environ={"FWPROXY_CLIENT_SECRET": "x"})
    shown = dict(line.split(": ", 1) for line in effective_config_lines(settings))
    assert shown["auth.authorize_url"] == "https://acme.fotoware.cloud/fotoweb/oauth2/authorize"
    assert shown["access.accept_hosts"] == "[localhost, 127.0.0.1, ::1]"
    assert shown["auth.redirect_uri"] == "null"
    assert shown["auth.client_secret"] == "Secret('********')"
    assert shown["tenant.verify_tls"] == "true"
    assert shown["listen.shutdown_timeout"] == "30"
    assert shown["access.allow_from"] == "[127.0.0.1/32, ::1/128]"
    assert "None" not in shown.values()


def test_readme_names_only_real_keys() -> None:
    text = (ROOT / "README.md").read_text()
    # sections from SCHEMA itself, so a new section (local_tokens) is covered too
    named = {name for name in re.findall(
        rf"\b((?:{'|'.join(SCHEMA)})\.[a-z_]+)\b", text
    ) if not name.endswith(".py")}  # access.py is a module
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        document = yaml.safe_load(block)
        if isinstance(document, dict) and set(document) <= set(SCHEMA):
            named |= {f"{section}.{key}" for section, keys in document.items()
                      for key in (keys or {})}
    assert sorted(named - set(_schema_keys())) == []


def test_listen_host_is_added_to_accept_hosts_once() -> None:
    for host, expected in [("127.0.0.1", ("localhost", "127.0.0.1", "::1")),
                           ("::1", ("localhost", "127.0.0.1", "::1")),
                           ("localhost", ("localhost", "127.0.0.1", "::1")),
                           ("127.0.0.2", ("localhost", "127.0.0.1", "::1", "127.0.0.2"))]:
        settings = parse_config(config(listen={"host": host}), environ={})
        assert settings.access.accept_hosts == expected, host


def test_authorize_url_is_checked_for_every_grant() -> None:
    with pytest.raises(ConfigError, match=r"^auth\.authorize_url: a relative URL must start"):
        parse_config(config(auth={"authorize_url": "oauth2/authorize"}), environ={})


@pytest.mark.parametrize("value", ["two", "0", "257", True, "-1"])
def test_workers_error_mentions_auto(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(listen={"workers": value}), environ={})
    assert str(caught.value) == (
        f"listen.workers: expected a number of processes (1 to 256) or auto, got {value!r}"
    )


def test_rules_from_the_environment_are_yaml_text() -> None:
    environ = {"FWPROXY_ACCESS_RULES":
               "[{name: readers, methods: GET HEAD, paths: [/fotoweb/archives/**], action: allow}]"}
    (rule,) = parse_config(config(), environ=environ).access.rules
    assert (rule.name, rule.methods, rule.paths) == (
        "readers", frozenset({"GET", "HEAD"}), ("/fotoweb/archives/**",))
    with pytest.raises(ConfigError) as caught:
        parse_config(config(), environ={"FWPROXY_ACCESS_RULES": "[{paths: /a"})
    assert str(caught.value) == "FWPROXY_ACCESS_RULES: expected a YAML list of rules"


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


# --- parse_config is pure: every file is read in one later step (loading.resolve_files) ---

CREDENTIALS = "/nonexistent/credentials"


@pytest.mark.parametrize(
    ("sections", "environ", "secret_file"),
    [
        ({"auth": {"client_secret": None, "client_secret_file": "/nonexistent/secret"}}, {},
         SecretFile(Path("/nonexistent/secret"), "auth.client_secret_file")),
        ({"auth": {"client_secret": None}}, {"FWPROXY_CLIENT_SECRET_FILE": "/nonexistent/s"},
         SecretFile(Path("/nonexistent/s"), "FWPROXY_CLIENT_SECRET_FILE")),
        ({"auth": {"client_secret": None}}, {"FWPROXY_AUTH_CLIENT_SECRET_FILE": "/n/s"},
         SecretFile(Path("/n/s"), "FWPROXY_AUTH_CLIENT_SECRET_FILE")),
        ({"auth": {"client_secret": None}}, {"CREDENTIALS_DIRECTORY": CREDENTIALS},
         SecretFile(Path(CREDENTIALS) / "client_secret", "auth.client_secret", CREDENTIAL,
                    optional=True)),
        ({}, {"CREDENTIALS_DIRECTORY": CREDENTIALS}, None),  # an explicit secret wins
        ({"tenant": {"ca_file": "/nonexistent/ca.pem"},
          "access": {"api_keys_file": "/nonexistent/keys"}, "listen": {"workers": "auto"}},
         {}, None),
    ],
)
def test_parse_config_reads_no_file(
    sections: dict[str, Any], environ: dict[str, str], secret_file: SecretFile | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"parse_config did I/O: {args}")

    for name in ("open", "stat", "lstat", "sched_getaffinity"):
        monkeypatch.setattr(os, name, no_io)
    monkeypatch.setattr("builtins.open", no_io)
    settings = parse_config(config(**sections), environ=environ)
    assert settings.secret_file == secret_file
    if secret_file is not None:
        assert settings.auth.client_secret is None  # not read yet
        assert settings.auth.client_secret_file == (
            None if secret_file.optional else secret_file.path)
    if sections.get("listen"):
        assert settings.listen.workers == AUTO_WORKERS


def test_loading_counts_the_cpus_for_workers_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    settings = load_mapping(config(listen={"workers": "auto"}), environ={})
    assert (settings.listen.workers, settings.secret_file) == (3, None)
    with pytest.raises(ConfigError) as caught:
        load_mapping(config(listen={"workers": "auto", "unix_socket": "/run/f.sock"}),
                     environ={})
    assert str(caught.value) == ("listen.unix_socket: cannot be combined with "
                                 "listen.workers > 1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    settings = load_mapping(config(listen={"workers": "auto", "unix_socket": "/run/f.sock"}),
                            environ={})
    assert settings.listen.workers == 1


def test_a_missing_credential_without_another_secret_is_required(tmp_path: Path) -> None:
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}  # empty: systemd gave no credential
    with pytest.raises(ConfigError) as caught:
        load_mapping({**config(), "auth": {"client_id": "app"}}, environ=environ)
    assert str(caught.value).startswith("auth.client_secret: is required")
    user = {"client_id": "app", "grant_type": "authorization_code",
            "redirect_uri": "http://127.0.0.1:8765/callback"}
    settings = load_mapping({**config(), "auth": user}, environ=environ)
    assert settings.auth.client_secret is None  # a public client needs none


@pytest.mark.parametrize(
    ("limits", "environ", "share"),
    [
        ({}, {}, 0),
        ({"max_concurrent": 4}, {}, 0),  # left out: no share of its own
        ({"max_concurrent": 4, "max_concurrent_per_client": "auto"}, {}, 2),  # half,
        ({"max_concurrent": 5, "max_concurrent_per_client": "AUTO"}, {}, 3),  # rounded up
        ({"max_concurrent": 1, "max_concurrent_per_client": "auto"}, {}, 1),
        ({"max_concurrent_per_client": "auto"}, {}, 0),  # half of no limit: none
        ({"max_concurrent": 4, "max_concurrent_per_client": 0}, {}, 0),  # explicitly none
        ({"max_concurrent": 4, "max_concurrent_per_client": 4}, {}, 4),
        ({"max_concurrent_per_client": 3}, {}, 3),  # a share without a global limit
        ({"max_concurrent": 8}, {"FWPROXY_LIMITS_MAX_CONCURRENT_PER_CLIENT": "1"}, 1),
    ],
)
def test_max_concurrent_per_client(limits: dict[str, Any], environ: dict[str, str],
                                   share: int) -> None:
    settings = parse_config(config(limits=limits), environ=environ)
    assert settings.limits.max_concurrent_per_client == share


@pytest.mark.parametrize("limits", [
    {"max_concurrent": 4, "max_concurrent_per_client": 5},
    {"max_concurrent_per_client": -1},
    {"max_concurrent_per_client": "half"},
])
def test_max_concurrent_per_client_errors_name_the_key(limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(limits=limits), environ={})
    assert caught.value.key == "limits.max_concurrent_per_client"
