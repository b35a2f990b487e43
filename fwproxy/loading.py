"""Loading the configuration: find the file, read the YAML, then read and check the files.

`parse_config` (config.py) turns a mapping into Settings without touching the disk; this
module does all the I/O around it, in one explicit step, `resolve_files`: the client
secret (a file, or systemd's credential), the CA bundle, the API keys file, and the CPUs
``listen.workers: auto`` counts. Errors name the key, as config.py's do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from .config import (
    MIN_ENCRYPTION_KEY,
    Settings,
    StateConfig,
    check_environment,
    check_listen,
    parse_config,
    secret_required,
)
from .exceptions import ConfigError, MissingFile
from .keys import load_keys
from .localtokens import file_signing_keys
from .private import Secret, ensure_private, read_ca_file, read_secret_file
from .values import AUTO_WORKERS
from .yamlread import load_yaml

DEFAULT_LOCATIONS = (Path("fwproxy.yaml"), Path("/etc/fwproxy/config.yaml"))


def find_config(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$FWPROXY_CONFIG``, else ./fwproxy.yaml, else /etc/fwproxy/;
    None (configuration from the environment alone) when none exists but
    ``FWPROXY_TENANT_URL`` is set, as in a container. A mistyped FWPROXY_ variable is
    refused first: it may be the one meant to say where the config is."""
    check_environment(environ)
    if explicit:
        return Path(explicit)
    if environ.get("FWPROXY_CONFIG"):
        return Path(environ["FWPROXY_CONFIG"])
    for candidate in DEFAULT_LOCATIONS:
        if candidate.exists():
            return candidate
    if environ.get("FWPROXY_TENANT_URL"):
        return None
    raise ConfigError(
        "",
        "no configuration found: pass --config PATH, set FWPROXY_CONFIG, or create "
        "./fwproxy.yaml (see config.example.yaml); `fwproxy demo` needs none",
    )


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (may be None for environment-only configuration) and validate it, the
    files it names included."""
    environ = os.environ if environ is None else environ
    raw: object = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                "", f"{path} is not UTF-8 (byte {exc.start}); save it as UTF-8"
            ) from None
        try:
            raw = load_yaml(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError("", f"{path}{where}: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"{path}: the top level must be a mapping of sections")
    settings = load_mapping(raw, environ, source=str(path) if path else "<environment>")
    auth = raw.get("auth")
    if path is not None and isinstance(auth, Mapping) and auth.get("client_secret") is not None:
        # the file holds the secret itself: the same rule as for a secret file
        ensure_private(path, "auth.client_secret")
    return settings


def load_mapping(raw: Mapping[str, object], environ: Mapping[str, str],
                 source: str = "<mapping>") -> Settings:
    """`parse_config`, then `resolve_files`: an already-parsed mapping, ready to run."""
    return resolve_files(parse_config(raw, environ, source))


def resolve_files(settings: Settings) -> Settings:
    """Read and check every file `settings` names, and count the CPUs: the final Settings.
    The CA bundle first, then the client secret, then the API keys file (missing, too
    open or malformed: a config error)."""
    listen, tenant, auth, access = settings.listen, settings.tenant, settings.auth, settings.access
    if listen.workers == AUTO_WORKERS:
        listen = dataclasses.replace(listen, workers=max(1, len(os.sched_getaffinity(0))))
        check_listen(listen)
    if tenant.ca_file is not None:
        read_ca_file(tenant.ca_file)
    wanted = settings.secret_file
    if wanted is not None:
        try:
            secret = read_secret_file(wanted.path, wanted.key, wanted.forbidden)
        except MissingFile:
            if not wanted.optional:
                raise
            if not auth.user_context:
                raise secret_required() from None
        else:
            auth = dataclasses.replace(auth, client_secret=Secret(secret),
                                       client_secret_file=wanted.path)
    if access.api_keys_file is not None:
        load_keys(access.api_keys_file)
    if settings.local_token_key is not None:
        load_signing_keys(settings.local_token_key)
    state = resolve_state(settings.state)
    return dataclasses.replace(settings, listen=listen, auth=auth, state=state, secret_file=None)


def resolve_state(state: StateConfig) -> StateConfig:
    """Read the shared state's files: the Redis password, the CA bundle for rediss://, and
    the encryption key (at least MIN_ENCRYPTION_KEY characters: 256 bits in base64)."""
    if state.redis_ca_file is not None:
        read_ca_file(state.redis_ca_file, "state.redis_ca_file")
    if state.redis_password_file is not None:
        password = read_secret_file(state.redis_password_file, "state.redis_password_file")
        state = dataclasses.replace(state, redis_password=Secret(password))
    if state.encryption_key_file is not None:
        key = read_secret_file(state.encryption_key_file, "state.encryption_key_file")
        if len(key) < MIN_ENCRYPTION_KEY:
            raise ConfigError("state.encryption_key_file",
                              f"{state.encryption_key_file} holds {len(key)} characters; "
                              f"at least {MIN_ENCRYPTION_KEY} are needed (make one with "
                              "`openssl rand -base64 32`)")
        state = dataclasses.replace(state, encryption_key=Secret(key))
    return state


def load_signing_keys(path: Path) -> None:
    """local_tokens' signing key: created (0600) on first use, in the state directory, made
    (0700) as the token store makes it; then checked as every secret file is."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("local_tokens.enabled", f"cannot create the state directory "
                                                  f"{path.parent}: {exc.strerror}") from None
    file_signing_keys(path, "local_tokens.enabled")
