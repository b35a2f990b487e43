"""deploy/ kept honest: the compose file and the Kubernetes manifests are parsed, every
FWPROXY_* variable and config key they use is one fwproxy knows (values.SCHEMA,
config.NON_KEY_VARIABLES), their configuration passes `parse_config` as a fleet (three
replicas, state.backend: redis at the Redis they define, secrets from files or the Secret),
the probes hit the status prefix's health and ready, and fwproxy runs as the image's
non-root user."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from fwproxy.access import HostRefused, judge_host
from fwproxy.config import (
    NON_KEY_VARIABLES,
    ListenConfig,
    StatusConfig,
    check_environment,
    env_name,
    parse_config,
)
from fwproxy.values import SCHEMA
from tests.support.redis import free_port, redis_server_path

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "fwproxy.yaml"
KNOWN = {env_name(section, key) for section, keys in SCHEMA.items() for key in keys} | set(
    NON_KEY_VARIABLES)
CONTAINER_TMP = "/tmp"  # Python's temp directory in the image (no TMPDIR)
SECRET_VARIABLES = {"FWPROXY_CLIENT_SECRET", "FWPROXY_STATE_REDIS_PASSWORD"}


def image_user() -> int:
    """The numeric user the Dockerfile runs fwproxy as."""
    found = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert found is not None
    return int(found.group(1))


def image_environment() -> dict[str, str]:
    """The FWPROXY_* variables the Dockerfile sets (ENV)."""
    return dict(re.findall(r"\b(FWPROXY_\w+)=(\S+)", (ROOT / "Dockerfile").read_text()))


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}"
    return found[0]


def check_variables(names: list[str]) -> None:
    fwproxy = [name for name in names if name.startswith("FWPROXY_")]
    assert fwproxy
    assert sorted(set(fwproxy) - KNOWN) == []
    check_environment(dict.fromkeys(fwproxy, "x"))  # what fwproxy itself would refuse


def check_keys(raw: dict[str, Any]) -> None:
    for section, keys in raw.items():
        assert section in SCHEMA, section
        assert sorted(set(keys) - set(SCHEMA[section])) == [], section


# --- docker compose --------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_runs_three_fwproxy_and_redis() -> None:
    services = compose()["services"]
    assert services["fwproxy"]["deploy"]["replicas"] == 3
    assert "redis" in services
    assert services["fwproxy"]["read_only"] is True
    assert services["fwproxy"]["tmpfs"] == [CONTAINER_TMP]  # a big body's replay copy


def test_compose_uses_only_known_variables_and_its_configuration_is_a_valid_fleet() -> None:
    service = compose()["services"]["fwproxy"]
    environ = {name: str(value) for name, value in service["environment"].items()}
    check_variables(list(environ))
    image = image_environment()
    assert image  # FWPROXY_LISTEN_HOST: all interfaces, so allow_from must be set
    settings = parse_config({}, {**image, **environ})  # pure: no secret file is read
    assert settings.state.shared
    assert settings.state.fleet_size == 3
    assert settings.listen.host == image["FWPROXY_LISTEN_HOST"]
    redis_url = URL(settings.state.redis_url or "")
    assert redis_url.host == "redis"  # the Redis this file runs
    assert redis_url.port == 6379
    assert not redis_url.password  # never in the URL


def test_compose_passes_secrets_as_files_it_declares() -> None:
    whole = compose()
    service = whole["services"]["fwproxy"]
    environ = service["environment"]
    assert not SECRET_VARIABLES & set(environ)  # no secret in a variable
    mounted = {f"/run/secrets/{name}" for name in service["secrets"]}
    files = [value for name, value in environ.items() if name.endswith("_FILE")]
    assert sorted(files) == sorted(mounted)
    assert {name: spec["file"] for name, spec in whole["secrets"].items()} == {
        "client_secret": "./secrets/client_secret",
        "redis_password": "./secrets/redis_password"}
    redis = whole["services"]["redis"]
    assert "redis_password" in redis["secrets"]
    command = " ".join(redis["command"])
    assert "requirepass" in command
    assert "/run/secrets/redis_password" in command
    assert "redis-server - --save '' --appendonly no" in command  # stdin; no persistence


# --- Kubernetes --------------------------------------------------------------------------------

def fwproxy_container() -> dict[str, Any]:
    spec = one("Deployment", "fwproxy")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return dict(container)


def configmap_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(one("ConfigMap", "fwproxy-config")["data"]
                                            ["config.yaml"])
    return loaded


def test_kubernetes_has_the_fleet_redis_secret_and_configmap() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents())
    assert kinds == [("ConfigMap", "fwproxy-config"), ("Deployment", "fwproxy"),
                     ("Deployment", "fwproxy-redis"), ("Secret", "fwproxy-secrets"),
                     ("Service", "fwproxy"), ("Service", "fwproxy-redis")]
    assert one("Deployment", "fwproxy")["spec"]["replicas"] == 3
    assert sorted(one("Secret", "fwproxy-secrets")["stringData"]) == [
        "client_secret", "redis_password"]


def test_kubernetes_uses_only_known_keys_and_variables_and_is_a_valid_fleet() -> None:
    container = fwproxy_container()
    env = container["env"]
    check_variables([item["name"] for item in env])
    assert {item["name"] for item in env} == SECRET_VARIABLES
    secret = one("Secret", "fwproxy-secrets")["stringData"]
    for item in env:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "fwproxy-secrets"
        assert ref["key"] in secret
    raw = configmap_config()
    check_keys(raw)
    settings = parse_config(raw, {**image_environment(),
                                     **dict.fromkeys(SECRET_VARIABLES, "placeholder")})
    assert settings.state.shared
    assert settings.state.fleet_size == 3
    assert settings.auth.client_secret is not None  # from the Secret
    assert settings.state.redis_password is not None
    redis_url = URL(settings.state.redis_url or "")
    service = one("Service", "fwproxy-redis")["spec"]
    assert redis_url.host == "fwproxy-redis"
    assert redis_url.port == service["ports"][0]["port"]
    assert not redis_url.password
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["config"]
    assert container["args"] == ["run", "--config", f"{mount}/config.yaml"]


@pytest.mark.parametrize(("probe", "path"), [("readinessProbe", "ready"),
                                             ("livenessProbe", "health")])
def test_kubernetes_probes_hit_the_status_prefix(probe: str, path: str) -> None:
    container = fwproxy_container()
    raw = configmap_config()
    settings = parse_config(raw, {**image_environment(),
                                     **dict.fromkeys(SECRET_VARIABLES, "placeholder")})
    prefix = settings.status.prefix
    assert prefix == StatusConfig().prefix
    http = container[probe]["httpGet"]
    assert http["path"] == f"{prefix}/{path}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[http["port"]] == settings.listen.port
    host = {h["name"]: h["value"] for h in http["httpHeaders"]}["Host"]
    judged = judge_host(host, None, settings.access.accept_hosts)
    assert not isinstance(judged, HostRefused)  # the probe's Host is accepted


def test_kubernetes_runs_everything_as_non_root() -> None:
    for name in ("fwproxy", "fwproxy-redis"):
        pod = one("Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    fwproxy = one("Deployment", "fwproxy")["spec"]["template"]["spec"]
    assert fwproxy["securityContext"]["runAsUser"] == image_user()
    # a read-only root, but a writable temp directory: a big body's replay copy goes there
    container = fwproxy_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tmp"] == CONTAINER_TMP
    assert {"name": "tmp", "emptyDir": {}} in fwproxy["volumes"]
    # SIGTERM drains for up to listen.shutdown_timeout: the pod is given longer
    assert fwproxy["terminationGracePeriodSeconds"] > ListenConfig.shutdown_timeout


def test_kubernetes_redis_takes_its_password_from_the_secret_not_a_command_line() -> None:
    pod = one("Deployment", "fwproxy-redis")["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    (password,) = redis["env"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "fwproxy-secrets",
                                                     "key": "redis_password"}
    script = " ".join(redis["args"])
    assert f'"${password["name"]}"' in script
    assert "redis-server - --save '' --appendonly no" in script  # stdin; no persistence


# --- the Redis command of both, run against the real redis-server -----------------------------

def run_redis(script: str, env: dict[str, str], tmp_path: Path) -> tuple[bool, bool]:
    """Run a deploy file's Redis shell command (on a free loopback port, appended), then
    (PING with the password answers, PING without is refused)."""
    port = free_port()
    process = subprocess.Popen(
        ["sh", "-c", f"{script} --port {port} --bind 127.0.0.1 --dir {tmp_path}"],
        env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)

    def ping(password: str | None) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if password is not None:
                sock.sendall(f"AUTH {password}\r\n".encode())
                sock.recv(100)
            sock.sendall(b"PING\r\n")
            return sock.recv(100)

    try:
        deadline = time.monotonic() + 20  # a hang guard
        while True:
            try:
                ping(None)
                break
            except OSError:
                assert process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        return ping(REDIS_PASSWORD) == b"+PONG\r\n", ping(None).startswith(b"-NOAUTH")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


REDIS_PASSWORD = "deploy-test-pw-7Hq2"


@pytest.mark.skipif(redis_server_path() is None, reason="Debian redis-server not installed")
def test_the_compose_redis_command_takes_the_password_from_the_secret_file(
        tmp_path: Path) -> None:
    redis = compose()["services"]["redis"]
    assert redis["command"][:2] == ["sh", "-c"]
    secret = tmp_path / "redis_password"
    secret.write_text(REDIS_PASSWORD)
    script = redis["command"][2].replace("$$", "$").replace("/run/secrets/redis_password",
                                                            str(secret))
    assert run_redis(script, {}, tmp_path) == (True, True)


@pytest.mark.skipif(redis_server_path() is None, reason="Debian redis-server not installed")
def test_the_kubernetes_redis_command_takes_the_password_from_the_secret(
        tmp_path: Path) -> None:
    (redis,) = one("Deployment", "fwproxy-redis")["spec"]["template"]["spec"]["containers"]
    assert redis["command"] == ["sh", "-c"]
    (script,) = redis["args"]
    assert run_redis(script, {"REDIS_PASSWORD": REDIS_PASSWORD}, tmp_path) == (True, True)
