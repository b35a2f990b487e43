"""Configuration: a YAML file plus environment overrides, validated into frozen dataclasses.
Longer than 400 lines because the dataclasses (the typed shape of each section) and the
rules that build them from a mapping (merging, names, the client secret's one source,
policy across keys) are one job and read best together; the value parsers (values.py),
all I/O (loading.py) and the reload plan (reload.py) live elsewhere.

The key names are a contract with users' files. Every key may also come from the
environment as ``FWPROXY_<SECTION>_<KEY>`` (environment beats file), and the client secret
from ``FWPROXY_CLIENT_SECRET`` or ``FWPROXY_CLIENT_SECRET_FILE``; exactly one source of the
secret may be configured. Any error names its key.

`parse_config(raw, environ)` is pure: it merges, parses (values.py) and applies the policy
across keys, reading no file; loading.py reads the YAML and then, in one step, the files
the settings name. `effective_config_lines` is what `fwproxy check` prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, NamedTuple

from yarl import URL

from .access import DEFAULT_ACCEPT_HOSTS, Rule
from .exceptions import ConfigError
from .private import CREDENTIAL, PRIVATE, Secret
from .values import SCHEMA, did_you_mean, unknown_name

__all__ = [
    "LOOPBACK_NETWORKS",
    "NON_KEY_VARIABLES",
    "SECRET_SOURCES",
    "AccessConfig",
    "AuthConfig",
    "ConfigError",
    "LimitsConfig",
    "ListenConfig",
    "LocalTokensConfig",
    "LogConfig",
    "Secret",
    "SecretFile",
    "Settings",
    "StateConfig",
    "StatusConfig",
    "TenantConfig",
    "check_environment",
    "check_listen",
    "default_store_path",
    "effective_config_lines",
    "env_name",
    "is_loopback",
    "parse_config",
    "secret_required",
    "secret_sources",
]



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
    # protecting the tenant (issue 15; attempts.py): a fair line, safe retries, a breaker
    max_in_flight: int = 0  # requests at the tenant at once; 0: no cap
    max_rate: float = 0.0  # requests started a second; 0: no cap
    max_burst: float = 0.0  # 0: max_rate
    queue_timeout: float = 30.0  # longest wait in the line, then 503 busy
    retries: int = 2
    retry_methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    retry_max_wait: float = 20.0
    retry_budget: float = 0.2
    breaker_failures: int = 5  # 0: no breaker
    breaker_cooldown: float = 5.0


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
    # user context (grant_type: authorization_code; Fotoware's web application flow)
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
    # of those, what one client (API key, else address) may hold; 0: no limit of its own
    max_concurrent_per_client: int = 0
    queue_timeout: float = 0.0  # seconds to wait for a slot before 503
    client_idle_timeout: float = 75.0
    max_connections: int = 10240  # open client connections; 0: no limit
    client_body_timeout: float = 60.0  # no byte of an owed request body for this long: 408
    client_send_timeout: float = 60.0  # the client took no byte of the response: cut


@dataclass(frozen=True)
class LocalTokensConfig:
    """fwproxy's own token endpoint (localtokens.py, tokenendpoint.py). Off by default:
    answering POST to the token path here changes what a client that sends the real secret
    through fwproxy gets (a local token instead of the tenant's), and needs a state
    directory for the signing key."""

    enabled: bool = False
    lifetime: float = 3600.0


LOCAL_TOKEN_KEY = "local-tokens.key"  # the signing key's file, next to the token store


@dataclass(frozen=True)
class StateConfig:
    """Where the state a fleet of instances shares lives (README "Running a fleet"):
    ``local`` (this machine: memory and files), or ``redis`` (fleet.py). The password and the
    encryption key are read by loading.resolve_files (or taken from the environment)."""

    backend: str = "local"
    redis_url: str | None = None  # redis://[user@]host:port/db, rediss://…, unix:///path
    redis_password_file: Path | None = None
    redis_ca_file: Path | None = None
    key_prefix: str = "fwproxy"
    encryption_key_file: Path | None = None
    lease_time: float = 15.0  # locks and leases of a dead instance expire after this
    fleet_size: int = 0  # instances expected; while Redis is away each takes its share
    redis_password: Secret | None = field(default=None, repr=False)
    encryption_key: Secret | None = field(default=None, repr=False)

    @property
    def shared(self) -> bool:
        return self.backend == "redis"


REDIS_PASSWORD_VARIABLE = "FWPROXY_STATE_REDIS_PASSWORD"
MIN_ENCRYPTION_KEY = 32  # characters in state.encryption_key_file


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
    local_tokens: LocalTokensConfig = LocalTokensConfig()
    state: StateConfig = StateConfig()
    source: str = "<defaults>"
    # the file the client secret is still to be read from (loading.resolve_files), if any
    secret_file: SecretFile | None = None
    # local_tokens' signing key, shared by all workers and kept across restarts: in the
    # state directory, next to the token store (None: local tokens are off, or a fleet's)
    local_token_key: Path | None = None


class SecretFile(NamedTuple):
    """Where the client secret is to be read from, and how: `key` is named in errors,
    `forbidden` the permission bits it may not have (see private.file_problem), and an
    `optional` file (systemd's credential, a fallback) may be missing."""

    path: Path
    key: str
    forbidden: int = PRIVATE
    optional: bool = False


def parse_config(
    raw: Mapping[str, object], environ: Mapping[str, str], source: str = "<mapping>"
) -> Settings:
    """Validate an already-parsed mapping; `environ` supplies the overrides. Pure: no file
    is read or checked here. A secret file is recorded in `Settings.secret_file`, and
    ``listen.workers: auto`` left as `AUTO_WORKERS`, for `loading.resolve_files`."""
    values = _merge(raw, environ)
    listen = ListenConfig(**values["listen"])
    check_listen(listen)
    tenant = _tenant(values["tenant"])
    given_auth = raw.get("auth")
    auth, secret_file = _auth(values["auth"],
                              given_auth if isinstance(given_auth, Mapping) else {},
                              tenant, environ)
    log = LogConfig(**values["log"])
    access = _access(values["access"], listen)
    limits = _limits(values["limits"])
    status = StatusConfig(**values["status"])
    local_tokens = LocalTokensConfig(**values["local_tokens"])
    lifetime = local_tokens.lifetime
    if not 1 <= lifetime <= 86400 or lifetime != int(lifetime):
        raise ConfigError("local_tokens.lifetime",
                          f"expected whole seconds from 1s to 1d (86400), got {lifetime:g}s")
    state = _state(values["state"], environ,
                   public_client=auth.client_secret is None and secret_file is None)
    key_file = None
    if local_tokens.enabled and not state.shared:  # a fleet derives its key (tokengate.py)
        key_file = (auth.token_store or default_store_path(environ)).parent / LOCAL_TOKEN_KEY
    return Settings(listen=listen, tenant=tenant, auth=auth, log=log, access=access,
                    limits=limits, status=status, local_tokens=local_tokens, state=state,
                    source=source,
                    secret_file=secret_file, local_token_key=key_file)


def _state(values: dict[str, Any], environ: Mapping[str, str], public_client: bool
           ) -> StateConfig:
    """The shared-state settings, checked across keys. The Redis password comes from
    exactly one of state.redis_password_file and FWPROXY_STATE_REDIS_PASSWORD, never from
    the URL (where it would show in every place the URL does); the tokens kept in Redis are
    sealed with a key derived from the client secret, so a public client (none) needs
    state.encryption_key_file."""
    state = StateConfig(**values)
    password = environ.get(REDIS_PASSWORD_VARIABLE) or None
    if password is not None and state.redis_password_file is not None:
        raise ConfigError("state.redis_password_file",
                          f"is set, and so is {REDIS_PASSWORD_VARIABLE}: keep one")
    if state.lease_time < 1 or state.lease_time > 3600:
        raise ConfigError("state.lease_time",
                          f"expected from 1s to 1h, got {state.lease_time:g}s")
    if state.redis_url is not None:
        _check_redis_url(state)
    if not state.shared:
        return replace(state, redis_password=None if password is None else Secret(password))
    if state.redis_url is None:
        raise ConfigError("state.redis_url", "is required when state.backend is redis "
                                             "(redis://host:6379/0, rediss://…, unix:///…)")
    if public_client and state.encryption_key_file is None:
        raise ConfigError("state.encryption_key_file",
                          "is required with state.backend: redis when there is no client "
                          "secret: the tokens kept in Redis are encrypted with a key derived "
                          "from it, or from this file")
    return replace(state, redis_password=None if password is None else Secret(password))


REDIS_SCHEMES = ("redis", "rediss", "unix")
_REDIS_DB = re.compile(r"/?|/[0-9]{1,5}")


def _check_redis_url(state: StateConfig) -> None:
    assert state.redis_url is not None
    try:
        url = URL(state.redis_url)
    except ValueError:
        raise ConfigError("state.redis_url", "is not a URL") from None
    if url.scheme not in REDIS_SCHEMES:
        raise ConfigError("state.redis_url",
                          "must start with redis://, rediss:// (TLS) or unix://")
    if url.password is not None:
        raise ConfigError("state.redis_url",
                          "holds a password: put it in state.redis_password_file or "
                          f"{REDIS_PASSWORD_VARIABLE} (an ACL user name may stay in the URL)")
    if "password" in url.query:
        raise ConfigError("state.redis_url",
                          "holds a password (?password=): put it in state.redis_password_file "
                          f"or {REDIS_PASSWORD_VARIABLE}")
    # redis-py lets the URL's parameters override what fwproxy sets (timeouts, TLS checks:
    # ?ssl_cert_reqs=none) and fails on a bad one only when it connects: only db=N here.
    others = sorted(set(url.query) - {"db"})
    if others:
        raise ConfigError("state.redis_url", f"takes no {others[0]!r} parameter: only db=N "
                                             "(timeouts, TLS and the password are fwproxy's)")
    if not all(db.isascii() and db.isdigit() for db in url.query.getall("db", [])):
        raise ConfigError("state.redis_url", "db=N needs a database number")
    if url.scheme != "unix" and not _REDIS_DB.fullmatch(url.path):
        raise ConfigError("state.redis_url", "the path is the database number: /0, /1, ...")
    if url.scheme == "unix" and not url.path.startswith("/"):
        raise ConfigError("state.redis_url", "unix:// needs an absolute path: unix:///run/redis.sock")
    if url.scheme != "unix" and not url.host:
        raise ConfigError("state.redis_url", "names no host")
    if state.redis_ca_file is not None and url.scheme != "rediss":
        raise ConfigError("state.redis_ca_file", "is only for rediss:// (TLS) URLs")


def _limits(values: dict[str, Any]) -> LimitsConfig:
    """``limits.max_concurrent_per_client: auto`` is half of ``max_concurrent`` rounded up
    (one client never holds every slot, another is always served); more than
    ``max_concurrent`` is a mistake. Left out it is 0, no share of its own: on loopback
    without API keys every local tool is one client (one address), and a default share
    would halve ``max_concurrent`` and end its queueing for all of them."""
    total = values.get("max_concurrent", LimitsConfig.max_concurrent)
    share = values.get("max_concurrent_per_client", LimitsConfig.max_concurrent_per_client)
    if share is None:
        values["max_concurrent_per_client"] = -(-total // 2)
    elif total and share > total:
        raise ConfigError("limits.max_concurrent_per_client",
                          f"must not exceed limits.max_concurrent ({total}), got {share}")
    return LimitsConfig(**values)


def check_listen(listen: ListenConfig) -> None:
    if listen.workers > 1 and listen.unix_socket is not None:
        raise ConfigError("listen.unix_socket", "cannot be combined with listen.workers > 1")


def _access(values: dict[str, Any], listen: ListenConfig) -> AccessConfig:
    if "accept_hosts" not in values:
        own = listen.host.strip("[]").lower()
        wildcard = own in ("0.0.0.0", "::", "")  # noqa: S104 (comparing, not binding)
        extra = () if wildcard or own in DEFAULT_ACCEPT_HOSTS else (own,)
        values["accept_hosts"] = DEFAULT_ACCEPT_HOSTS + extra
    access = AccessConfig(**values)
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
    "FWPROXY_STATE_REDIS_PASSWORD": "the Redis password (state.backend: redis)",
    # scripts/image-test.sh, read on the host that builds the image
    "FWPROXY_IMAGE_TEST_CACHE": "image-test.sh: cache directory",
    "FWPROXY_IMAGE_TEST_MIRROR": "image-test.sh: Debian mirror",
    "FWPROXY_IMAGE_TEST_REFRESH": "image-test.sh: rebuild the base image",
    "FWPROXY_IMAGE_TEST_KEEP": "image-test.sh: keep the working container",
}


def env_name(section: str, key: str) -> str:
    """``listen``, ``port`` -> ``FWPROXY_LISTEN_PORT``."""
    return f"FWPROXY_{section}_{key}".upper()


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an FWPROXY_ variable that is neither a config key nor a known variable."""
    keys = [env_name(section, key) for section, parsers in SCHEMA.items() for key in parsers]
    known = set(keys) | set(NON_KEY_VARIABLES)
    for name in sorted(environ):
        if not name.startswith("FWPROXY_") or name in known:
            continue
        # compared without the common prefix, which would make every name look close
        prefix = len("FWPROXY_")
        guess = did_you_mean(name[prefix:], [n[prefix:] for n in keys + list(NON_KEY_VARIABLES)])
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
    if did_you_mean(key, known) is None:
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
) -> tuple[str | None, SecretFile | None]:
    """(secret text, None) or (None, the file to read it from) from the one configured
    source, or (None, None). More than one source is ambiguous, and refused naming them."""
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
        return None, SecretFile(path, source)
    return text, None


def _auth(values: dict[str, Any], given: Mapping[str, object], tenant: TenantConfig,
          environ: Mapping[str, str]) -> tuple[AuthConfig, SecretFile | None]:
    if "client_id" not in values:
        raise ConfigError("auth.client_id", "is required (Site Configuration > Applications)")
    token_url = _token_url(values.pop("token_url", "/fotoweb/oauth2/token"), tenant,
                           "auth.token_url")
    secret_text, secret_file = _client_secret(values, given, environ)
    if secret_text is None and secret_file is None and environ.get("CREDENTIALS_DIRECTORY"):
        # systemd LoadCredential=client_secret:...: a file of root's (readable by the service
        # through an ACL, whose mask shows as group bits) or of the service user's; only
        # a fallback, so its absence is no error (unless no secret is had at all)
        credential = Path(environ["CREDENTIALS_DIRECTORY"]) / "client_secret"
        secret_file = SecretFile(credential, "auth.client_secret", CREDENTIAL, optional=True)
    user_context = values.get("grant_type") == "authorization_code"
    if secret_text is None and secret_file is None and not user_context:
        raise secret_required()
    if user_context:
        values["redirect_uri"] = _redirect_uri(values.get("redirect_uri"))
        values["token_store"] = values.get("token_store") or default_store_path(environ)
    values["authorize_url"] = _token_url(
        values.pop("authorize_url", "/fotoweb/oauth2/authorize"), tenant, "auth.authorize_url"
    )  # checked and shown (fwproxy check) whatever the grant: only login uses it
    auth = AuthConfig(
        token_url=token_url,
        client_secret=Secret(secret_text) if secret_text is not None else None,
        client_secret_file=None if secret_file is None or secret_file.optional
        else secret_file.path,
        **values,
    )
    return auth, secret_file


def secret_required() -> ConfigError:
    """No client secret, though the grant needs one (a public, native client has none)."""
    return ConfigError(
        "auth.client_secret",
        "is required: set auth.client_secret, auth.client_secret_file or "
        "FWPROXY_CLIENT_SECRET",
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


def effective_config_lines(settings: Settings) -> list[str]:
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
