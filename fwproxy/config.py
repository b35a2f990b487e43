"""Configuration: a YAML file plus environment overrides, validated into frozen dataclasses.

The key names are a contract with users' files. Every key may also come from the
environment as ``FWPROXY_<SECTION>_<KEY>`` (environment beats file), and the client secret
from ``FWPROXY_CLIENT_SECRET`` or ``FWPROXY_CLIENT_SECRET_FILE``. Any error names its key.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from . import eventloop
from .access import DEFAULT_ACCEPT_HOSTS, Rule, compile_glob
from .exceptions import ConfigError

__all__ = [
    "AccessConfig",
    "AuthConfig",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "Secret",
    "Settings",
    "StatusConfig",
    "TenantConfig",
    "find_config",
    "load_config",
    "parse_config",
]

DEFAULT_LOCATIONS = (Path("fwproxy.yaml"), Path("/etc/fwproxy/config.yaml"))


class Secret:
    """A string that never shows itself in repr, str or logs; `reveal()` gets it out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    unix_socket: Path | None = None
    shutdown_timeout: float = 30.0
    workers: int = 1
    event_loop: str = "auto"


@dataclass(frozen=True)
class TenantConfig:
    url: URL
    ca_file: Path | None = None
    verify_tls: bool = True
    allow_insecure_http: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 300.0


@dataclass(frozen=True)
class AuthConfig:
    client_id: str
    client_secret: Secret | None
    token_url: URL
    grant_type: str = "client_credentials"
    client_secret_file: Path | None = None
    refresh_margin: float = 60.0
    token_placement: str = "auto"
    client_authorization: str = "keep"
    replay_max_body: int = 64 * 1024 * 1024
    # user context (grant_type: authorization_code, seed 003)
    redirect_uri: str | None = None
    authorize_url: URL | None = None
    token_store: Path | None = None

    @property
    def user_context(self) -> bool:
        return self.grant_type == "authorization_code"


LOOPBACK_NETWORKS = (ip_network("127.0.0.1/32"), ip_network("::1/128"))


@dataclass(frozen=True)
class AccessConfig:
    accept_hosts: tuple[str, ...] = DEFAULT_ACCEPT_HOSTS
    allow_origins: tuple[str, ...] = ()
    allow_from: tuple[IPv4Network | IPv6Network, ...] = LOOPBACK_NETWORKS
    allow_public: bool = False
    read_only: bool = False
    rules: tuple[Rule, ...] = ()
    default: str = "allow"
    api_keys_file: Path | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_body: int = 0  # bytes; 0: no limit
    max_header_bytes: int = 64 * 1024
    max_concurrent: int = 0  # 0: no limit
    queue_timeout: float = 0.0  # seconds to wait for a slot before 503
    client_idle_timeout: float = 75.0
    max_connections: int = 10240  # open client connections; 0: no limit
    client_body_timeout: float = 60.0  # no byte of an owed request body for this long: 408
    client_send_timeout: float = 60.0  # the client took no byte of the response: cut


@dataclass(frozen=True)
class StatusConfig:
    enabled: bool = True
    prefix: str = "/_fwproxy"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    listen: ListenConfig
    tenant: TenantConfig
    auth: AuthConfig
    log: LogConfig
    access: AccessConfig = AccessConfig()
    limits: LimitsConfig = LimitsConfig()
    status: StatusConfig = StatusConfig()
    source: str = "<defaults>"


# --- value parsers: each takes the raw value and the key, returns the typed value ----------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9,
               "gb": 10**9, "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20,
               "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_size(value: object, key: str) -> int:
    """``64MiB``, ``1.5GB``, ``1048576`` -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size such as 64MiB, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(key, f"expected a size such as 64MiB or 1048576, got {value!r}")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not size < 2**63:
        raise ConfigError(key, f"{value!r} is too large")
    return int(size)


def parse_duration(value: object, key: str) -> float:
    """``90``, ``1.5``, ``500ms``, ``5m``, ``1h`` -> seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration such as 30 or 5m, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(key, f"expected a duration such as 30, 500ms or 5m, got {value!r}")
    unit = match.group(2).lower() if match.group(2) else None
    seconds = float(match.group(1)) * _DURATION_UNITS[unit]
    if not seconds < 10**9:
        raise ConfigError(key, f"{value!r} is too long")
    return seconds


def parse_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def parse_port(value: object, key: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise ConfigError(key, f"expected a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port must be between 0 and 65535, got {port}")
    return port


def parse_str(value: object, key: str) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise ConfigError(key, "expected a non-empty string")
    return str(value)


def parse_names(value: object, key: str) -> tuple[str, ...]:
    """A YAML list, or a comma-separated string (from the environment); lower-cased."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(key, f"expected a list, got {value!r}")
    out = tuple(str(item).strip().lower().rstrip("/") for item in items)
    if any(not item for item in out):
        raise ConfigError(key, "list items must be non-empty")
    return out


def parse_networks(value: object, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """CIDRs (``10.0.0.0/8``) or plain addresses; a list, or comma-separated."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(key, f"expected a list of networks, got {value!r}")
    try:
        return tuple(ip_network(str(item).strip(), strict=False) for item in items)
    except ValueError as exc:
        raise ConfigError(key, f"not a network: {exc}") from None


def parse_workers(value: object, key: str) -> int:
    """A number of processes, or ``auto``: one per CPU."""
    if str(value).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    count = parse_count(value, key)
    if not 1 <= count <= 256:
        raise ConfigError(key, f"expected 1 to 256 or auto, got {value!r}")
    return count


def parse_event_loop(value: object, key: str) -> str:
    """auto, asyncio or uvloop; uvloop only if it is installed (eventloop.py)."""
    text = choice(*eventloop.CHOICES)(value, key)
    if text == "uvloop" and not eventloop.uvloop_installed():
        raise ConfigError(key, "uvloop is not installed (pip install 'fwproxy[uvloop]'); "
                               "use auto or asyncio")
    return text


def parse_count(value: object, key: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(key, f"expected a whole number, got {value!r}") from None
    if number < 0:
        raise ConfigError(key, f"must not be negative, got {number}")
    return number


def parse_rules(value: object, key: str) -> tuple[Rule, ...]:
    """``[{methods: [GET], paths: ["/fotoweb/archives/**"], action: allow, name: ...}]``."""
    if isinstance(value, str):  # from the environment: YAML (or JSON) text
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(key, "expected a YAML list of rules") from None
    if not isinstance(value, list):
        raise ConfigError(key, "expected a list of rules")
    rules = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(where, "expected a mapping with paths and action")
        unknown = set(item) - {"name", "methods", "paths", "action"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}",
                              "unknown key (known: name, methods, paths, action)")
        action = choice("allow", "deny")(item.get("action"), f"{where}.action")
        paths = item.get("paths")
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not paths or not all(
            isinstance(p, str) and p.startswith("/") for p in paths
        ):
            raise ConfigError(f"{where}.paths", "expected a list of paths starting with '/'")
        methods = item.get("methods")
        if methods is not None:
            if isinstance(methods, str):
                methods = [methods]
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise ConfigError(f"{where}.methods", "expected a list of HTTP methods")
            methods = frozenset(m.upper() for m in methods)
        name = str(item.get("name") or f"rules[{index}]")
        rules.append(Rule(name=name, action=action, methods=methods, paths=tuple(paths),
                          patterns=tuple(compile_glob(p) for p in paths)))
    return tuple(rules)


def parse_prefix(value: object, key: str) -> str:
    text = parse_str(value, key).rstrip("/")
    if not re.fullmatch(r"/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*", text):
        raise ConfigError(key, f"expected a path such as /_fwproxy, got {value!r}")
    if text.lower() == "/fotoweb" or text.lower().startswith("/fotoweb/"):
        raise ConfigError(key, "must not be under /fotoweb/, which belongs to the tenant")
    return text


def parse_optional_path(value: object, key: str) -> Path | None:
    if value is None or value == "":
        return None
    return Path(parse_str(value, key)).expanduser()


def choice(*options: str) -> Callable[[object, str], str]:
    def parse(value: object, key: str) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ConfigError(key, f"must be one of {', '.join(options)}; got {value!r}")
        return text

    return parse


# (section, key) -> parser. The order here is the order of config.example.yaml.
SCHEMA: dict[str, dict[str, Callable[[object, str], Any]]] = {
    "listen": {
        "host": parse_str,
        "port": parse_port,
        "unix_socket": parse_optional_path,
        "shutdown_timeout": parse_duration,
        "workers": parse_workers,
        "event_loop": parse_event_loop,
    },
    "tenant": {
        "url": parse_str,
        "ca_file": parse_optional_path,
        "verify_tls": parse_bool,
        "allow_insecure_http": parse_bool,
        "connect_timeout": parse_duration,
        "read_timeout": parse_duration,
    },
    "auth": {
        "grant_type": choice("client_credentials", "authorization_code"),
        "client_id": parse_str,
        "client_secret": parse_str,
        "client_secret_file": parse_optional_path,
        "token_url": parse_str,
        "refresh_margin": parse_duration,
        "token_placement": choice("auto", "header", "query"),
        "client_authorization": choice("keep", "replace"),
        "replay_max_body": parse_size,
        "redirect_uri": parse_str,
        "authorize_url": parse_str,
        "token_store": parse_optional_path,
    },
    "access": {
        "allow_from": parse_networks,
        "allow_public": parse_bool,
        "accept_hosts": parse_names,
        "allow_origins": parse_names,
        "read_only": parse_bool,
        "rules": parse_rules,
        "default": choice("allow", "deny"),
        "api_keys_file": parse_optional_path,
    },
    "limits": {
        "max_body": parse_size,
        "max_header_bytes": parse_size,
        "max_concurrent": parse_count,
        "queue_timeout": parse_duration,
        "client_idle_timeout": parse_duration,
        "max_connections": parse_count,
        "client_body_timeout": parse_duration,
        "client_send_timeout": parse_duration,
    },
    "status": {"enabled": parse_bool, "prefix": parse_prefix},
    "log": {"level": choice(*LOG_LEVELS), "format": choice("text", "json")},
}


def find_config(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$FWPROXY_CONFIG``, else ./fwproxy.yaml, else /etc/fwproxy/;
    None (configuration from the environment alone) when none exists but
    ``FWPROXY_TENANT_URL`` is set, as in a container."""
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
    """Read `path` (may be None for environment-only configuration) and validate it."""
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
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError("", f"{path}{where}: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"{path}: the top level must be a mapping of sections")
    return parse_config(raw, environ, source=str(path) if path else "<environment>")


def parse_config(
    raw: Mapping[str, object], environ: Mapping[str, str], source: str = "<mapping>"
) -> Settings:
    """Validate an already-parsed mapping; `environ` supplies the overrides."""
    values = _merge(raw, environ)
    listen = ListenConfig(**values["listen"])
    if listen.workers > 1 and listen.unix_socket is not None:
        raise ConfigError("listen.unix_socket", "cannot be combined with listen.workers > 1")
    tenant = _tenant(values["tenant"])
    auth = _auth(values["auth"], tenant, environ)
    log = LogConfig(**values["log"])
    access = _access(values["access"], listen)
    limits = LimitsConfig(**values["limits"])
    status = StatusConfig(**values["status"])
    return Settings(listen=listen, tenant=tenant, auth=auth, log=log, access=access,
                    limits=limits, status=status, source=source)


def _access(values: dict[str, Any], listen: ListenConfig) -> AccessConfig:
    if "accept_hosts" not in values:
        own = listen.host.strip("[]").lower()
        wildcard = own in ("0.0.0.0", "::", "")  # noqa: S104 (comparing, not binding)
        values["accept_hosts"] = DEFAULT_ACCEPT_HOSTS + (() if wildcard else (own,))
    access = AccessConfig(**values)
    if access.api_keys_file is not None:
        from .keys import load_keys  # keys.py builds on this module

        load_keys(access.api_keys_file)  # missing, too open or malformed: a config error
    exposed = not is_loopback(listen.host)
    guarded = access.allow_from != LOOPBACK_NETWORKS or access.api_keys_file is not None
    if exposed and not guarded and not access.allow_public:
        raise ConfigError(
            "listen.host",
            f"{listen.host} is reachable from other machines, and whoever reaches fwproxy "
            "acts with its token. Allow it deliberately: name the client networks in "
            "access.allow_from, configure access.api_keys_file, or set "
            "access.allow_public: true",
        )
    return access


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _merge(raw: Mapping[str, object], environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Check names, apply environment overrides, parse each value with its schema parser."""
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(str(section), f"unknown section (known: {', '.join(SCHEMA)})")
    merged: dict[str, dict[str, Any]] = {}
    for section, parsers in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(section, "must be a mapping of keys")
        for key in given:
            if key not in parsers:
                raise ConfigError(
                    f"{section}.{key}", f"unknown key (known: {', '.join(parsers)})"
                )
        out: dict[str, Any] = {}
        for key, parse in parsers.items():
            env_name = f"FWPROXY_{section}_{key}".upper()
            if env_name in environ:
                out[key] = parse(environ[env_name], env_name)
            elif key in given and given[key] is not None:
                out[key] = parse(given[key], f"{section}.{key}")
        merged[section] = out
    return merged


def _tenant(values: dict[str, Any]) -> TenantConfig:
    if "url" not in values:
        raise ConfigError("tenant.url", "is required, e.g. https://acme.fotoware.cloud")
    text = values.pop("url")
    try:
        url = URL(text)
    except ValueError as exc:
        raise ConfigError("tenant.url", f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("tenant.url", f"expected scheme://host[:port], got {text!r}")
    if url.path not in ("", "/") or url.query_string or url.fragment or url.user:
        raise ConfigError(
            "tenant.url",
            f"give only scheme://host[:port] (the path comes from each request), got {text!r}",
        )
    tenant = TenantConfig(url=url.origin(), **values)
    if tenant.url.scheme == "http" and not tenant.allow_insecure_http:
        raise ConfigError(
            "tenant.url",
            "http:// sends the token in clear text; use https:// or set "
            "tenant.allow_insecure_http: true",
        )
    if tenant.ca_file is not None and not tenant.ca_file.is_file():
        raise ConfigError("tenant.ca_file", f"no such file: {tenant.ca_file}")
    return tenant


def _auth(values: dict[str, Any], tenant: TenantConfig, environ: Mapping[str, str]) -> AuthConfig:
    if "client_id" not in values:
        raise ConfigError("auth.client_id", "is required (Site Configuration > Applications)")
    token_url = _token_url(values.pop("token_url", "/fotoweb/oauth2/token"), tenant,
                           "auth.token_url")
    secret_text = values.pop("client_secret", None)
    secret_file = values.pop("client_secret_file", None)
    if environ.get("FWPROXY_CLIENT_SECRET"):
        secret_text, secret_file = environ["FWPROXY_CLIENT_SECRET"], None
    elif environ.get("FWPROXY_CLIENT_SECRET_FILE"):
        secret_text, secret_file = None, Path(environ["FWPROXY_CLIENT_SECRET_FILE"])
    elif secret_text is not None and secret_file is not None:
        raise ConfigError(
            "auth.client_secret", "set either auth.client_secret or auth.client_secret_file"
        )
    if secret_file is not None:
        secret_text = read_secret_file(secret_file, "auth.client_secret_file")
    credential = Path(environ.get("CREDENTIALS_DIRECTORY", "")) / "client_secret"
    if secret_text is None and environ.get("CREDENTIALS_DIRECTORY") and credential.is_file():
        # systemd LoadCredential=client_secret:...; systemd itself guards that directory
        secret_file = credential
        secret_text = credential.read_text(encoding="utf-8").strip() or None
    user_context = values.get("grant_type") == "authorization_code"
    if secret_text is None and not user_context:  # a public (native) client has none
        raise ConfigError(
            "auth.client_secret",
            "is required: set auth.client_secret, auth.client_secret_file or "
            "FWPROXY_CLIENT_SECRET",
        )
    if user_context:
        values["redirect_uri"] = _redirect_uri(values.get("redirect_uri"))
        values["authorize_url"] = _token_url(
            values.pop("authorize_url", "/fotoweb/oauth2/authorize"), tenant, "auth.authorize_url"
        )
        values["token_store"] = values.get("token_store") or default_store_path(environ)
    else:
        values.pop("authorize_url", None)
    return AuthConfig(
        token_url=token_url,
        client_secret=Secret(secret_text) if secret_text is not None else None,
        client_secret_file=secret_file,
        **values,
    )


def _redirect_uri(text: str | None) -> str:
    """A loopback http URI registered for the app, where `fwproxy login` takes the code."""
    key = "auth.redirect_uri"
    if text is None:
        raise ConfigError(key, "is required for authorization_code: a loopback URI such as "
                          "http://127.0.0.1:8765/callback, registered for the application")
    try:
        url = URL(text)
    except ValueError:
        raise ConfigError(key, f"not a URL: {text!r}") from None
    if url.scheme != "http" or not url.host or not is_loopback(url.host) or not url.explicit_port:
        raise ConfigError(key, f"must be http://127.0.0.1:PORT/path (loopback), got {text!r}")
    return text


def default_store_path(environ: Mapping[str, str]) -> Path:
    """``$STATE_DIRECTORY/tokens.json`` under systemd, else ``$XDG_STATE_HOME/fwproxy/``."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0]) / "tokens.json"
    home = Path(environ.get("HOME") or Path.home())
    base = Path(environ["XDG_STATE_HOME"]) if environ.get("XDG_STATE_HOME") else (
        home / ".local" / "state"
    )
    return base / "fwproxy" / "tokens.json"


def _token_url(text: str, tenant: TenantConfig, key: str) -> URL:
    """An endpoint URL: relative to tenant.url, or absolute."""
    try:
        url = URL(text)
    except ValueError as exc:
        raise ConfigError(key, f"not a URL: {exc}") from None
    if not url.is_absolute():
        if not text.startswith("/"):
            raise ConfigError(key, f"a relative URL must start with '/': {text!r}")
        return tenant.url.join(url)
    if url.scheme == "http" and not tenant.allow_insecure_http:
        raise ConfigError(key, "http:// would send credentials in clear text")
    if url.scheme not in ("http", "https"):
        raise ConfigError(key, f"expected an http(s) URL, got {text!r}")
    return url


def ensure_private(path: Path, key: str) -> os.stat_result:
    """Refuse (like ssh) a secret file that group or others may access."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(key, f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            key,
            f"permissions {stat.S_IMODE(info.st_mode):04o} for {path} are too open; "
            f"run: chmod 600 {path}",
        )
    return info


def read_secret_file(path: Path, key: str) -> str:
    """Read a secret file, refusing it when group or others may access it."""
    ensure_private(path, key)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text



def describe(settings: Settings) -> list[str]:
    """The effective configuration, one ``section.key: value`` a line, secrets masked."""
    lines = []
    for section in SCHEMA:
        values = getattr(settings, section)
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if isinstance(value, tuple) and value and isinstance(value[0], Rule):
                value = [f"{rule.name}: {rule.action}" for rule in value]
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            lines.append(f"{section}.{item.name}: {value}")
    return lines
