"""Config values: one parser per kind of value, and SCHEMA, which names every key.
Longer than 400 lines because SCHEMA is one table of every key of every section and the
parsers it names read best beside it; the rules across keys live in config.py.

Each parser takes the raw value (from YAML, or a string from the environment) and the key
(or variable) to name in an error, and returns the typed value or raises `ConfigError`.
Pure: no file is read here (see config.py for how values become Settings).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import eventloop
from .access import Rule, compile_glob
from .exceptions import ConfigError
from .params import check_rule_paths
from .yamlread import load_yaml

T = TypeVar("T")
AUTO_WORKERS = 0  # listen.workers: auto, one per CPU, counted when the config is loaded


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
    """A number of processes, or ``auto`` (`AUTO_WORKERS`): one per CPU this process may
    run on, counted when the config is loaded (loading.resolve_files)."""
    if str(value).strip().lower() == "auto":
        return AUTO_WORKERS
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


def parse_rate(value: object, key: str) -> float:
    """A non-negative number (``2.5``: requests a second; ``0.2``: a share)."""
    try:
        number = float(str(value)) if not isinstance(value, bool) else -1.0
    except ValueError:
        number = -1.0
    if not 0 <= number < 10**9:  # (also refuses nan and inf)
        raise ConfigError(key, f"expected a number, 0 or more, got {value!r}")
    return number


def parse_methods(value: object, key: str) -> tuple[str, ...]:
    """HTTP methods (``[GET, PUT]``), upper-cased; an empty list is none."""
    return () if value is None or value == "" else parse_list(value, key, method_item)


def parse_share(value: object, key: str) -> int | None:
    """A count, or ``auto`` (None: half of limits.max_concurrent, config.py)."""
    return None if str(value).strip().lower() == "auto" else parse_count(value, key)


def parse_rules(value: object, key: str) -> tuple[Rule, ...]:
    """``[{methods: [GET], paths: ["/fotoweb/archives/**"], action: allow, name: ...}]``."""
    if isinstance(value, str):  # from the environment: YAML (or JSON) text
        try:
            value = load_yaml(value)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", ""))
            raise ConfigError(key, problem if problem.startswith("duplicate key") else
                              "expected a YAML list of rules") from None
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
        check_rule_paths(item.get("paths"), paths, f"{where}.paths")
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


def parse_optional_str(value: object, key: str) -> str | None:
    if value is None or value == "":
        return None
    return parse_str(value, key)


_KEY_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def parse_key_prefix(value: object, key: str) -> str:
    """The start of every Redis key name: letters, digits and ``_.:-``, up to 64."""
    text = parse_str(value, key)
    if not _KEY_PREFIX.fullmatch(text):
        raise ConfigError(key, "expected up to 64 letters, digits and _ . : - (starting "
                               f"with a letter or digit), got {text!r}")
    return text


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
        "max_in_flight": parse_count,
        "max_rate": parse_rate,
        "max_burst": parse_rate,
        "queue_timeout": parse_duration,
        "retries": parse_count,
        "retry_methods": parse_methods,
        "retry_max_wait": parse_duration,
        "retry_budget": parse_rate,
        "breaker_failures": parse_count,
        "breaker_cooldown": parse_duration,
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
        "max_concurrent_per_client": parse_share,
        "queue_timeout": parse_duration,
        "client_idle_timeout": parse_duration,
        "max_connections": parse_count,
        "client_body_timeout": parse_duration,
        "client_send_timeout": parse_duration,
    },
    "local_tokens": {"enabled": parse_bool, "lifetime": parse_duration},
    "state": {
        "backend": choice("local", "redis"),
        "redis_url": parse_optional_str,
        "redis_password_file": parse_optional_path,
        "redis_ca_file": parse_optional_path,
        "key_prefix": parse_key_prefix,
        "encryption_key_file": parse_optional_path,
        "lease_time": parse_duration,
        "fleet_size": parse_count,
    },
    "status": {"enabled": parse_bool, "prefix": parse_prefix},
    "log": {"level": choice(*LOG_LEVELS), "format": choice("text", "json")},
}


def did_you_mean(name: str, known: Sequence[str]) -> str | None:
    """The closest of `known` to a mistyped `name`, if any is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_name(where: str, what: str, name: str, known: Sequence[str],
                 shown: Callable[[str], str] = str) -> ConfigError:
    """``tenant.urll: unknown key, did you mean tenant.url?`` (or the known names)."""
    guess = did_you_mean(name, known)
    if guess is not None:
        return ConfigError(where, f"unknown {what}, did you mean {shown(guess)}?")
    return ConfigError(where, f"unknown {what} (known: {', '.join(shown(k) for k in known)})")
