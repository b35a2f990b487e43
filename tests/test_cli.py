"""The command line in-process: exit codes and one-line errors (subprocess runs are in e2e)."""

from __future__ import annotations

import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fwproxy import __version__
from fwproxy.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, main
from fwproxy.keys import load_keys
from fwproxy.loading import load_config
from fwproxy.store import StoredSession, TokenStore


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"fwproxy {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == EXIT_USAGE


def test_missing_config_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if Path("/etc/fwproxy/config.yaml").exists():
        pytest.skip("this machine has a system-wide fwproxy config")
    monkeypatch.chdir(tmp_path)
    assert main(["run"], environ={}) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--config" in err
    assert "FWPROXY_CONFIG" in err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tenant: {urll: https://x}\nauth: {client_id: a, client_secret: b}\n", "tenant.urll"),
        ("tenant: {url: https://x}\nauth: {client_id: a}\n", "auth.client_secret"),
        ("tenant: [1, 2\n", "line 2"),
        ("- just\n- a list\n", "top level"),
    ],
)
def test_config_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "fwproxy.yaml"
    path.write_text(text)
    assert main(["check", "--config", str(path)], environ={}) == EXIT_USAGE
    err = capsys.readouterr().err
    assert key in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_config_from_environment_variable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text("tenant: {url: https://x}\nauth: {client_id: a, bogus: 1}\n")
    assert main(["token"], environ={"FWPROXY_CONFIG": str(path)}) == EXIT_USAGE
    assert "auth.bogus" in capsys.readouterr().err


def test_mistyped_environment_variable_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fwproxy.yaml"
    path.write_text("tenant: {url: https://x}\nauth: {client_id: a}\n")
    environ = {"FWPROXY_CONFIG": str(path), "FWPROXY_TENANT_ULR": "https://y",
               "FWPROXY_CLIENT_SECRET": "s"}
    assert main(["check"], environ=environ) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "fwproxy: configuration error: FWPROXY_TENANT_ULR: unknown environment variable, "
        "did you mean FWPROXY_TENANT_URL?\n"
    )


def test_inline_secret_in_a_readable_config_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fwproxy.yaml"
    path.write_text("tenant: {url: https://x}\nauth: {client_id: a, client_secret: inline-s}\n")
    path.chmod(0o644)
    assert main(["check", "--config", str(path)], environ={}) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"fwproxy: configuration error: auth.client_secret: permissions 0644 for {path} "
        f"are too open (group or others may use it); run: chmod 600 {path}\n"
    )


def test_two_secret_variables_exit_2_naming_both(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fwproxy.yaml"
    path.write_text("tenant: {url: https://x}\nauth: {client_id: a}\n")
    environ = {"FWPROXY_CONFIG": str(path), "FWPROXY_CLIENT_SECRET": "s",
               "FWPROXY_CLIENT_SECRET_FILE": str(tmp_path / "s")}
    assert main(["token"], environ=environ) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "fwproxy: configuration error: auth.client_secret: more than one client secret is "
        "configured: FWPROXY_CLIENT_SECRET and FWPROXY_CLIENT_SECRET_FILE; keep only one\n"
    )


def test_logout_without_a_user_session_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fwproxy.yaml"
    path.write_text("tenant: {url: https://x}\nauth: {client_id: a, client_secret: b}\n")
    path.chmod(0o600)
    assert main(["logout", "--config", str(path)], environ={}) == EXIT_OK
    out = capsys.readouterr()
    assert out.out == ("nothing to log out of: auth.grant_type is client_credentials, which "
                       "keeps no user session\n")
    assert out.err == ""


def test_logout_leaves_nothing_behind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store_path = tmp_path / "state" / "tokens.json"
    path = tmp_path / "fwproxy.yaml"
    path.write_text(
        "tenant: {url: https://x}\n"
        "auth: {grant_type: authorization_code, client_id: a, "
        f"redirect_uri: 'http://127.0.0.1:8765/cb', token_store: '{store_path}'}}\n"
    )
    TokenStore(store_path).save(StoredSession(refresh_token="r"))
    assert main(["logout", "--config", str(path)], environ={}) == EXIT_OK
    assert capsys.readouterr().out == "logged out\n"
    assert sorted(p.name for p in store_path.parent.iterdir()) == []  # no tokens.json.lock
    assert main(["logout", "--config", str(path)], environ={}) == EXIT_OK
    assert capsys.readouterr().out == "there was no stored session\n"
    assert sorted(p.name for p in store_path.parent.iterdir()) == []
    store_path.parent.rmdir()  # never logged in: logout creates nothing
    assert main(["logout", "--config", str(path)], environ={}) == EXIT_OK
    assert capsys.readouterr().out == "there was no stored session\n"
    assert not store_path.parent.exists()


@pytest.mark.parametrize(
    ("command", "description"),
    [("run", "Run the proxy."),
     ("check", "Validate config, get a token, call /fotoweb/me."),
     ("token", "Print one valid access token."),
     ("health", "Exit 0 when the running proxy answers its health check."),
     ("login", "Log in as a FotoWeb user (grant_type: authorization_code)."),
     ("logout", "Remove the stored user session."),
     ("demo", "Run the proxy in front of a built-in simulated tenant."),
     ("key", "Manage API keys (access.api_keys_file).")],
)
def test_every_subcommand_help_says_what_it_does(
    capsys: pytest.CaptureFixture[str], command: str, description: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    page = capsys.readouterr().out
    assert f"\n\n{description}\n\n" in page
    assert ("--log-level {debug,info,warning,error} log level; beats log.level in the config"
            in " ".join(page.split()))
    assert "--config PATH" in page  # README, Commands: all take --config and --log-level


# --- fwproxy key: the first key creates the file ------------------------------------------


def keys_config(tmp_path: Path, keys: Path) -> Path:
    path = tmp_path / "fwproxy.yaml"
    path.write_text("tenant: {url: https://acme.fotoware.cloud}\n"
                    "auth: {client_id: a, client_secret: b}\n"
                    f"access: {{api_keys_file: {keys}}}\n")
    path.chmod(0o600)
    return path


def test_key_add_creates_the_missing_keys_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    config = keys_config(tmp_path, keys)
    assert main(["key", "add", "first", "--config", str(config)], environ={}) == EXIT_OK
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("fwp_")
    assert err == (f"fwproxy: key 'first' added to {keys}; it is shown only this once\n"
                   "fwproxy: in an OAuth-aware tool (set local_tokens.enabled: true first): "
                   "client ID first, client secret the key above, token URL "
                   "http://127.0.0.1:8080/fotoweb/oauth2/token\n")
    assert secret not in err
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert [key.name for key in load_keys(keys)] == ["first"]
    assert secret not in keys.read_text()  # only its hash
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keys.")]  # no temp left
    assert main(["key", "list", "--config", str(config)], environ={}) == EXIT_OK
    assert capsys.readouterr().out == "first\n"
    # and now `run`/`check` accept the config
    assert load_config(config, environ={}).access.api_keys_file == keys


def test_key_add_says_what_to_put_in_an_oauth_tool(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    config = keys_config(tmp_path, keys)
    config.write_text(config.read_text() + "local_tokens: {enabled: true}\n"
                      "listen: {port: 9000}\n")
    state = tmp_path / "state"
    state.mkdir()
    environ = {"STATE_DIRECTORY": str(state)}
    assert main(["key", "add", "first", "--config", str(config)], environ=environ) == EXIT_OK
    assert main(["key", "add", "robot", "--config", str(config)], environ=environ) == EXIT_OK
    out, err = capsys.readouterr()
    assert err.splitlines()[1] == (  # the first key too, before the keys file exists
        "fwproxy: in an OAuth-aware tool: client ID first, client secret the key above, "
        "token URL http://127.0.0.1:9000/fotoweb/oauth2/token")
    assert err.splitlines()[-1] == (
        "fwproxy: in an OAuth-aware tool: client ID robot, client secret the key above, "
        "token URL http://127.0.0.1:9000/fotoweb/oauth2/token")
    assert out.splitlines()[-1] not in err
    assert main(["key", "add", "x", "--file", str(tmp_path / "other")], environ={}) == EXIT_OK
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fwproxy: in an OAuth-aware tool: client ID x, client secret the key above, "
        "token URL fwproxy's address + the path of auth.token_url")


def test_key_add_needs_the_directory_to_exist(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "no-such-dir" / "keys"
    config = keys_config(tmp_path, keys)
    assert main(["key", "add", "first", "--config", str(config)], environ={}) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"fwproxy: configuration error: access.api_keys_file: cannot create {keys}: "
        f"directory {keys.parent} does not exist\n")
    assert not keys.parent.exists()


def test_run_with_a_missing_keys_file_says_what_to_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    config = keys_config(tmp_path, keys)
    for command in ("run", "check"):
        assert main([command, "--config", str(config)], environ={}) == EXIT_USAGE
        assert capsys.readouterr().err == (
            f"fwproxy: configuration error: access.api_keys_file: {keys} does not exist; "
            f"create it with its first key: fwproxy key add NAME --config {config}\n")


def test_key_add_of_an_existing_name_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    assert main(["key", "add", "k", "--file", str(keys)], environ={}) == EXIT_OK
    before = keys.read_text()
    capsys.readouterr()
    assert main(["key", "add", "k", "--file", str(keys)], environ={}) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"fwproxy: key k exists in {keys}; remove it first: fwproxy key remove k\n"
    assert keys.read_text() == before


def test_key_remove_of_no_such_key_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    assert main(["key", "remove", "k", "--file", str(keys)], environ={}) == EXIT_FAILED
    assert capsys.readouterr().err == f"fwproxy: no key named 'k' in {keys}\n"
    assert main(["key", "add", "k", "--file", str(keys)], environ={}) == EXIT_OK
    assert main(["key", "remove", "k", "--file", str(keys)], environ={}) == EXIT_OK
    assert main(["key", "remove", "k", "--file", str(keys)], environ={}) == EXIT_FAILED


# --- fwproxy health without a config -------------------------------------------------------


def test_health_without_a_config_probes_the_default_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if Path("/etc/fwproxy/config.yaml").exists():
        pytest.skip("this machine has a system-wide fwproxy config")
    monkeypatch.chdir(tmp_path)
    probed: list[str] = []

    def refuse(url: str, timeout: float) -> object:
        probed.append(url)
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert main(["health"], environ={}) == EXIT_FAILED
    assert probed == ["http://127.0.0.1:8080/_fwproxy/health"]
    assert capsys.readouterr().err == (
        "fwproxy: http://127.0.0.1:8080/_fwproxy/health: <urlopen error [Errno 111] "
        "Connection refused> (no config found: probed the default address)\n")

    class Answer:
        status = 200

        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Answer())
    assert main(["health"], environ={}) == EXIT_OK


def test_demo_ports_default_to_8080_and_8081() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.port, args.tenant_port, args.write_config) == (8080, 8081, None)
