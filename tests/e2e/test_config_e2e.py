"""`fwproxy run` on a bad config file: exit 2, one line on stderr naming the key, no traceback.

No tenant is needed: the process must give up before it contacts anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import clean_env

pytestmark = pytest.mark.e2e

VALID_REST = """\
listen:
  host: 127.0.0.1
  port: 0
auth:
  client_id: fwproxy-demo
  client_secret: demo-secret
"""
TENANT = """\
tenant:
  url: http://127.0.0.1:9
  allow_insecure_http: true
"""


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fwproxy", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, env=clean_env(), stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        pytest.param(TENANT + "  urll: http://127.0.0.1:9\n" + VALID_REST, ["tenant.urll"],
                     id="unknown-key"),
        pytest.param("tenant:\n  allow_insecure_http: true\n" + VALID_REST, ["tenant.url"],
                     id="missing-url"),
        pytest.param(TENANT + VALID_REST + "  replay_max_body: lots\n",
                     ["auth.replay_max_body", "lots"], id="bad-size"),
        pytest.param(TENANT + VALID_REST + "  client_id: [unclosed\n",
                     ["config.yaml", "line"], id="invalid-yaml"),
        pytest.param(TENANT + "  verify_tls: maybe\n" + VALID_REST, ["tenant.verify_tls"],
                     id="bad-bool"),
        pytest.param(TENANT + VALID_REST.replace("port: 0", "port: 99999"), ["listen.port"],
                     id="bad-port"),
        pytest.param(
            TENANT + VALID_REST + f"  replay_max_body: {'9' * 400}.5KiB\n",
            ["auth.replay_max_body"],
            id="size-beyond-float-range",  # once an OverflowError traceback
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, text: str, mentions: list[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    result = run(config)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fwproxy: configuration error: ")
    for needle in mentions:
        assert needle in lines[0]


def test_config_file_not_in_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes((TENANT + VALID_REST + "# eier: Bj\u00f8rn\n").encode("latin-1"))
    result = run(config)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the-secret-in-the-file\n", encoding="utf-8")
    secret.chmod(0o644)
    config = tmp_path / "config.yaml"
    config.write_text(
        TENANT + VALID_REST.replace("  client_secret: demo-secret\n", "")
        + f"  client_secret_file: {secret}\n",
        encoding="utf-8",
    )
    result = run(config)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "auth.client_secret_file" in lines[0]
    assert "0644" in lines[0]
    assert f"chmod 600 {secret}" in lines[0]
    assert "the-secret-in-the-file" not in result.stderr


def test_mistyped_environment_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fwproxy", "run"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
        cwd=tmp_path, env=clean_env({
            "FWPROXY_TENANT_URL": "http://127.0.0.1:9", "FWPROXY_AUTH_CLIENT_ID": "a",
            "FWPROXY_CLIENT_SECRET": "s", "FWPROXY_TENANT_ALLOW_INSECURE_HTTP": "true",
            "FWPROXY_LISTEN_PROT": "0",
        }),
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "fwproxy: configuration error: FWPROXY_LISTEN_PROT: unknown environment variable, "
        "did you mean FWPROXY_LISTEN_PORT?\n"
    )


def test_inline_secret_in_a_config_others_may_read_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(TENANT + VALID_REST, encoding="utf-8")  # client_secret: demo-secret
    config.chmod(0o644)
    result = run(config)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"fwproxy: configuration error: auth.client_secret: permissions 0644 for {config} "
        f"are too open (group or others may use it); run: chmod 600 {config}\n"
    )
    assert "demo-secret" not in result.stderr
