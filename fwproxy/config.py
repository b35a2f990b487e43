"""Configuration: a YAML file plus environment overrides, validated into frozen dataclasses.

The key names are a contract with users' files. Every key may also come from the
environment as ``FWPROXY_<SECTION>_<KEY>`` (environment beats file), and the client secret
from ``FWPROXY_CLIENT_SECRET`` or ``FWPROXY_CLIENT_SECRET_FILE``; exactly one source of the
secret may be configured. Any error names its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yarl import URL

from . import eventloop
from .access import DEFAULT_ACCEPT_HOSTS, Rule, compile_glob
from .exceptions import ConfigError
from .private import (
    CREDENTIAL,
    MissingFile,
    Secret,
    ensure_private,
    read_ca_file,
    read_secret_file,
)

__all__ = [
    "AccessConfig",
    "AuthConfig",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "ReloadPlan",
    "Secret",
    "Settings",
    "StatusConfig",
    "TenantConfig",
    "find_config",
    "load_config",
    "parse_config",
    "reload_plan",
]

T = TypeVar("T")
DEFAULT_LOCATIONS = (Path("fwproxy.yaml"), Path("/etc/fwproxy/config.yaml"))


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
    idle_renewal: float | None = None  # renew on time unless idle this long; None: always
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
    # peers (a reverse proxy in front) whose X-Forwarded-* are kept; others' are replaced
    trust_forwarded_from: tuple[IPv4Network | IPv6Network, ...] = ()
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


def parse_idle_renewal(value: object, key: str) -> float | None:
    """``always`` (the default: renew on time however long nobody uses the proxy), or a
    duration without requests after which renewing stops (``0``: only when requests come)."""
    if isinstance(value, str) and value.strip().lower() == "always":
        return None
    try:
        return parse_duration(value, key)
    except ConfigError:
        raise ConfigError(key, f"expected always or a duration such as 0, 30m or 8h, "
                               f"got {value!r}") from None


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


# --- lists: one parser for every list-valued key, each item checked by its own parser -----

_LIST_SEPARATORS = re.compile(r"[,\s]+")


def parse_list(value: object, key: str, item: Callable[[str], T]) -> tuple[T, ...]:
    """A YAML list, or a string of items separated by commas and/or whitespace (as the
    environment gives it). Each item goes through `item`, whose ValueError says what the
    item should be; duplicates are dropped. The error names the key and the bad item."""
    if isinstance(value, str):
        items: list[object] = [part for part in _LIST_SEPARATORS.split(value) if part]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a list, got {value!r}")
    out: list[T] = []
    for raw in items:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ConfigError(key, f"expected a list of strings, got the item {raw!r}")
        text = str(raw).strip()
        try:
            out.append(item(text))
        except ValueError as exc:
            raise ConfigError(key, f"{text!r} is not {exc}") from None
    return tuple(dict.fromkeys(out))


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def host_item(text: str) -> str:
    """An RFC 1123 host name, ``*.example.com``, ``*``, an IPv4 or IPv6 address (bare or in
    brackets); lower-cased, without a trailing dot, addresses in their usual short form."""
    name = text.lower()
    if name == "*":
        return name
    bracketed = name.startswith("[") and name.endswith("]")
    try:
        address = ip_address(name[1:-1] if bracketed else name)
    except ValueError:
        pass
    else:
        if not (bracketed and address.version == 4):
            return str(address)
    wildcard = "*." if name.startswith("*.") else ""
    body = name[len(wildcard):].removesuffix(".")
    labels = body.split(".")
    if (bracketed or len(body) > 253 or not all(_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise ValueError("a host name, an IP address, *.example.com or *")
    return wildcard + body


def network_item(text: str) -> IPv4Network | IPv6Network:
    try:
        return ip_network(text, strict=False)
    except ValueError:
        raise ValueError("a network such as 10.0.0.0/8, or an IP address") from None


_ORIGIN = re.compile(r"(https?)://(\[[^\]/]*\]|[^:/\[\]]+)(?::(\d{1,5}))?/?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_item(text: str) -> str:
    """``*``, or scheme://host[:port] as a browser sends it in Origin (lower-case, no
    path, no default port)."""
    if text == "*":
        return text
    match = _ORIGIN.fullmatch(text.lower())
    what = "a web origin such as https://intranet.example or http://localhost:3000, or *"
    if not match:
        raise ValueError(what)
    scheme, host, port = match.groups()
    try:
        host = host_item(host)
    except ValueError:
        raise ValueError(what) from None
    if host == "*" or host.startswith("*."):
        raise ValueError(what)
    if ":" in host:
        host = f"[{host}]"
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(what)
    if port is None or int(port) == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def method_item(text: str) -> str:
    if not _METHOD.fullmatch(text):
        raise ValueError("an HTTP method such as GET")
    return text.upper()


def path_item(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("a path starting with '/'")
    return text


def parse_hosts(value: object, key: str) -> tuple[str, ...]:
    return parse_list(value, key, host_item)


def parse_origins(value: object, key: str) -> tuple[str, ...]:
    return parse_list(value, key, origin_item)


def parse_networks(value: object, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """CIDRs (``10.0.0.0/8``) or plain addresses."""
    return parse_list(value, key, network_item)


def parse_optional_networks(value: object, key: str
                            ) -> tuple[IPv4Network | IPv6Network, ...]:
    """Like `parse_networks`; null or an empty string (from the environment) is none."""
    return () if value is None or value == "" else parse_networks(value, key)


def parse_workers(value: object, key: str) -> int:
    """A number of processes, or ``auto``: one per CPU."""
    if str(value).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        count = int(str(value))
    except ValueError:
        count = 0
    if isinstance(value, bool) or not 1 <= count <= 256:
        raise ConfigError(key, f"expected a number of processes (1 to 256) or auto, "
                               f"got {value!r}")
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
        known = ["name", "methods", "paths", "action"]
        unknown = sorted(str(k) for k in item if k not in known)
        if unknown:
            raise unknown_name(f"{where}.{unknown[0]}", "key", unknown[0], known)
        action = choice("allow", "deny")(item.get("action"), f"{where}.action")
        paths = parse_list(item.get("paths", ()), f"{where}.paths", path_item)
        if not paths:
            raise ConfigError(f"{where}.paths", "expected a list of paths starting with '/'")
        methods = item.get("methods")
        if methods is not None:
            methods = frozenset(parse_list(methods, f"{where}.methods", method_item))
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
        "idle_renewal": parse_idle_renewal,
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
        "trust_forwarded_from": parse_optional_networks,
        "accept_hosts": parse_hosts,
        "allow_origins": parse_origins,
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
    settings = parse_config(raw, environ, source=str(path) if path else "<environment>")
    auth = raw.get("auth")
    if path is not None and isinstance(auth, Mapping) and auth.get("client_secret") is not None:
        # the file holds the secret itself: the same rule as for a secret file
        ensure_private(path, "auth.client_secret")
    return settings


def parse_config(
    raw: Mapping[str, object], environ: Mapping[str, str], source: str = "<mapping>"
) -> Settings:
    """Validate an already-parsed mapping; `environ` supplies the overrides."""
    values = _merge(raw, environ)
    listen = ListenConfig(**values["listen"])
    if listen.workers > 1 and listen.unix_socket is not None:
        raise ConfigError("listen.unix_socket", "cannot be combined with listen.workers > 1")
    tenant = _tenant(values["tenant"])
    given_auth = raw.get("auth")
    auth = _auth(values["auth"], given_auth if isinstance(given_auth, Mapping) else {},
                 tenant, environ)
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
        extra = () if wildcard or own in DEFAULT_ACCEPT_HOSTS else (own,)
        values["accept_hosts"] = DEFAULT_ACCEPT_HOSTS + extra
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


# FWPROXY_ variables that are not FWPROXY_<SECTION>_<KEY>: every one read anywhere (the
# code, tests, bench, systemd unit, Dockerfile, scripts). Any other FWPROXY_ variable is a
# typo and refused. A new one is added here, one line each.
NON_KEY_VARIABLES: dict[str, str] = {
    "FWPROXY_CONFIG": "the config file (find_config)",
    "FWPROXY_CLIENT_SECRET": "the client secret",
    "FWPROXY_CLIENT_SECRET_FILE": "a file holding the client secret",
    # scripts/image-test.sh, read on the host that builds the image
    "FWPROXY_IMAGE_TEST_CACHE": "image-test.sh: cache directory",
    "FWPROXY_IMAGE_TEST_MIRROR": "image-test.sh: Debian mirror",
    "FWPROXY_IMAGE_TEST_REFRESH": "image-test.sh: rebuild the base image",
    "FWPROXY_IMAGE_TEST_KEEP": "image-test.sh: keep the working container",
}


def env_name(section: str, key: str) -> str:
    """``listen``, ``port`` -> ``FWPROXY_LISTEN_PORT``."""
    return f"FWPROXY_{section}_{key}".upper()


def _did_you_mean(name: str, known: Sequence[str]) -> str | None:
    """The closest of `known` to a mistyped `name`, if any is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_name(where: str, what: str, name: str, known: Sequence[str],
                 shown: Callable[[str], str] = str) -> ConfigError:
    """``tenant.urll: unknown key, did you mean tenant.url?`` (or the known names)."""
    guess = _did_you_mean(name, known)
    if guess is not None:
        return ConfigError(where, f"unknown {what}, did you mean {shown(guess)}?")
    return ConfigError(where, f"unknown {what} (known: {', '.join(shown(k) for k in known)})")


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an FWPROXY_ variable that is neither a config key nor a known variable."""
    keys = [env_name(section, key) for section, parsers in SCHEMA.items() for key in parsers]
    known = set(keys) | set(NON_KEY_VARIABLES)
    for name in sorted(environ):
        if not name.startswith("FWPROXY_") or name in known:
            continue
        # compared without the common prefix, which would make every name look close
        prefix = len("FWPROXY_")
        guess = _did_you_mean(name[prefix:], [n[prefix:] for n in keys + list(NON_KEY_VARIABLES)])
        hint = f", did you mean FWPROXY_{guess}?" if guess else (
            " (config keys are FWPROXY_<SECTION>_<KEY>, e.g. FWPROXY_TENANT_URL)")
        raise ConfigError(name, f"unknown environment variable{hint}")


def _merge(raw: Mapping[str, object], environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Check names, apply environment overrides, parse each value with its schema parser."""
    check_environment(environ)
    for section in raw:
        if section not in SCHEMA:
            raise unknown_name(str(section), "section", str(section), list(SCHEMA))
    merged: dict[str, dict[str, Any]] = {}
    for section, parsers in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(section, "must be a mapping of keys")
        for key in given:
            if key not in parsers:
                raise _unknown_key(section, str(key))
        out: dict[str, Any] = {}
        for key, parse in parsers.items():
            variable = env_name(section, key)
            if variable in environ:
                out[key] = parse(environ[variable], variable)
            elif key in given and given[key] is not None:
                out[key] = parse(given[key], f"{section}.{key}")
        merged[section] = out
    return merged


def _unknown_key(section: str, key: str) -> ConfigError:
    """An unknown key; suggest a close one of the section, else the same key elsewhere."""
    where = f"{section}.{key}"
    known = list(SCHEMA[section])
    if _did_you_mean(key, known) is None:
        elsewhere = [f"{other}.{key}" for other in SCHEMA if key in SCHEMA[other]]
        if elsewhere:
            return ConfigError(where, f"unknown key, did you mean {elsewhere[0]}?")
    return unknown_name(where, "key", key, known, lambda k: f"{section}.{k}")


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
    if tenant.ca_file is not None:
        read_ca_file(tenant.ca_file)
    return tenant


# Every way to give the client secret; at most one may be used (systemd's credential is
# only a fallback, for when none is). Order: how they are named in an error.
SECRET_SOURCES = (
    "auth.client_secret",
    "auth.client_secret_file",
    "FWPROXY_AUTH_CLIENT_SECRET",
    "FWPROXY_AUTH_CLIENT_SECRET_FILE",
    "FWPROXY_CLIENT_SECRET",
    "FWPROXY_CLIENT_SECRET_FILE",
)


def secret_sources(given: Mapping[str, object], environ: Mapping[str, str]) -> list[str]:
    """The configured secret sources, by name: a key given (not null) in the file, a
    variable present in the environment (even empty: then it is refused as empty)."""
    return [
        source for source in SECRET_SOURCES
        if (source in environ if source.startswith("FWPROXY_")
            else given.get(source.partition(".")[2]) is not None)
    ]


def _client_secret(
    values: dict[str, Any], given: Mapping[str, object], environ: Mapping[str, str]
) -> tuple[str | None, Path | None]:
    """(secret text, the file it came from) from the one configured source, or (None, None).
    More than one source is ambiguous, and refused naming them."""
    text, path = values.pop("client_secret", None), values.pop("client_secret_file", None)
    sources = secret_sources(given, environ)
    if len(sources) > 1:
        raise ConfigError(
            "auth.client_secret",
            f"more than one client secret is configured: {', '.join(sources[:-1])} and "
            f"{sources[-1]}; keep only one",
        )
    if not sources:
        return None, None
    (source,) = sources
    if source in ("FWPROXY_CLIENT_SECRET", "FWPROXY_CLIENT_SECRET_FILE"):
        if not environ[source].strip():
            raise ConfigError(source, "is set but empty")
        if source == "FWPROXY_CLIENT_SECRET":
            return environ[source], None
        path = Path(environ[source]).expanduser()
    if source.lower().endswith("_file"):
        if path is None:  # FWPROXY_AUTH_CLIENT_SECRET_FILE=""
            raise ConfigError(source, "is set but empty")
        return read_secret_file(path, source), path
    return text, None


def _auth(values: dict[str, Any], given: Mapping[str, object], tenant: TenantConfig,
          environ: Mapping[str, str]) -> AuthConfig:
    if "client_id" not in values:
        raise ConfigError("auth.client_id", "is required (Site Configuration > Applications)")
    token_url = _token_url(values.pop("token_url", "/fotoweb/oauth2/token"), tenant,
                           "auth.token_url")
    secret_text, secret_file = _client_secret(values, given, environ)
    if secret_text is None and environ.get("CREDENTIALS_DIRECTORY"):
        # systemd LoadCredential=client_secret:...: a file of root's (readable by the service
        # through an ACL, whose mask shows as group bits) or of the service user's
        credential = Path(environ["CREDENTIALS_DIRECTORY"]) / "client_secret"
        try:
            secret_text = read_secret_file(credential, "auth.client_secret", CREDENTIAL)
            secret_file = credential
        except MissingFile:
            pass
    user_context = values.get("grant_type") == "authorization_code"
    if secret_text is None and not user_context:  # a public (native) client has none
        raise ConfigError(
            "auth.client_secret",
            "is required: set auth.client_secret, auth.client_secret_file or "
            "FWPROXY_CLIENT_SECRET",
        )
    if user_context:
        values["redirect_uri"] = _redirect_uri(values.get("redirect_uri"))
        values["token_store"] = values.get("token_store") or default_store_path(environ)
    values["authorize_url"] = _token_url(
        values.pop("authorize_url", "/fotoweb/oauth2/authorize"), tenant, "auth.authorize_url"
    )  # checked and shown (fwproxy check) whatever the grant: only login uses it
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


# --- files that hold secrets: the client secret, API keys, the token store -----------------


def describe(settings: Settings) -> list[str]:
    """The effective configuration, one ``section.key: value`` a line, secrets masked: every
    key of SCHEMA in its order (that of config.example.yaml), values written as there."""
    lines = []
    for section, parsers in SCHEMA.items():
        values = getattr(settings, section)
        for key in parsers:
            lines.append(f"{section}.{key}: {_show(getattr(values, key))}")
    return lines


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Rule):
        return f"{value.name}: {value.action}"
    if isinstance(value, (tuple, list, frozenset)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)


# --- reload (SIGHUP): which keys a running proxy takes up -----------------------------------

# Keys a running proxy takes up on SIGHUP (app.reconfigure, server._reload). Every other key,
# a new one too until it is listed here, is reported as needing a restart and keeps its
# running value; tests/test_reload.py fails for a key in neither set.
APPLIES_ON_RELOAD = frozenset({
    "listen.shutdown_timeout",
    "tenant.allow_insecure_http",  # only checked against the config it comes with
    "tenant.read_timeout",
    "auth.client_id", "auth.client_secret", "auth.client_secret_file", "auth.token_url",
    "auth.refresh_margin", "auth.token_placement", "auth.client_authorization",
    "auth.replay_max_body", "auth.idle_renewal",
    "auth.redirect_uri", "auth.authorize_url",  # read by `fwproxy login`, not the server
    "access.accept_hosts", "access.allow_origins", "access.allow_from", "access.allow_public",
    "access.read_only", "access.rules", "access.default", "access.api_keys_file",
    "access.trust_forwarded_from",
    "limits.max_body", "limits.max_header_bytes", "limits.max_concurrent",
    "limits.queue_timeout", "limits.client_idle_timeout", "limits.max_connections",
    "limits.client_body_timeout", "limits.client_send_timeout",
    "log.level", "log.format",
})
# Keys that need a restart: sockets, the tenant's connection pool, the grant, the routes.
NEEDS_RESTART = frozenset({
    "listen.host", "listen.port", "listen.unix_socket", "listen.workers", "listen.event_loop",
    "tenant.url", "tenant.ca_file", "tenant.verify_tls", "tenant.connect_timeout",
    "auth.grant_type", "auth.token_store",
    "status.enabled", "status.prefix",
})


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes: the keys taken up at once, the keys that need a restart (by
    name only: a value may be a secret), and the settings to run with, which are the new
    ones except that each key needing a restart keeps its running value (so it is reported
    again on the next reload, and workers started later match the running ones)."""

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]
    settings: Settings


def sections(settings: Settings) -> dict[str, Any]:
    """The section dataclasses of `settings` by name (listen, tenant, ...)."""
    return {item.name: getattr(settings, item.name) for item in dataclasses.fields(settings)
            if dataclasses.is_dataclass(getattr(settings, item.name))}


def reload_plan(running: Settings, loaded: Settings) -> ReloadPlan:
    """Compare every key of `running` and `loaded`; see `ReloadPlan`."""
    applied: list[str] = []
    restart: list[str] = []
    effective: dict[str, Any] = {}
    for name, old in sections(running).items():
        new = getattr(loaded, name)
        kept: dict[str, Any] = {}
        for item in dataclasses.fields(old):
            before, after = getattr(old, item.name), getattr(new, item.name)
            if before == after:
                continue
            key = f"{name}.{item.name}"
            if key in APPLIES_ON_RELOAD:
                applied.append(key)
            else:
                restart.append(key)
                kept[item.name] = before
        effective[name] = dataclasses.replace(new, **kept) if kept else new
    return ReloadPlan(tuple(applied), tuple(restart), dataclasses.replace(loaded, **effective))
