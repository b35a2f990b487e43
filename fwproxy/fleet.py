"""The fleet's shared state: one Redis connection pool, the key names, and whether Redis is
there. Every shared feature (the token, the user session, the budget) goes through here.

Theory of operation
-------------------
With ``state.backend: redis`` the app holds one `SharedState`. Its whole state::

    UNKNOWN ──first call or `start`'s probe answers──> UP
    UP ──a call or the watcher's probe fails to reach Redis (connect, timeout, auth,
         ACL, TLS) or Redis takes no write (read-only replica, disk, memory)──> DOWN
    DOWN ──the watcher's probe is written──> UP, then every `on_recovery` callback runs
                                             (each writes back what this instance holds)

Going DOWN is logged once (with `why`, a closed set: `WHY`), counted (`outages`) and shown
(`view`: the status page, readiness, metrics). While DOWN, `call` fails at once without
touching the network (no request waits on a dead Redis). One watcher task, from `start` to
`aclose`, probes every `probe_interval` with a small write (``alive``, expiring: a PING
would take a read-only replica after a failover for a working Redis): while UP a probe
that fails marks Redis DOWN (so an outage shows even while no feature calls Redis: a fleet
with a good token makes no call for as long as the token lives), while DOWN the first probe
written marks it UP. Callers
decide their own fallback (the rules are in README "Running a fleet"); none of them is this
module's business.

`call` is the one boundary where redis-py's exceptions become `SharedStateUnavailable`.
A Redis that answers but refuses one command (a hostile or broken value: WRONGTYPE) raises
`SharedStateUnavailable` with why ``error`` and does not mark Redis DOWN.

Key names are ``{state.key_prefix}:{scope}:{name}``; the scope is a hash of tenant URL,
client ID and grant, so several tenants or clients can share one Redis and no name holds
anything secret (nor the client ID itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import Settings, StateConfig
from .exceptions import SharedStateUnavailable
from .log import outward
from .sealing import SealingKey, derive_key

log = logging.getLogger("fwproxy.fleet")
T = TypeVar("T")

# why Redis is unavailable: the only values the `why` label and readiness ever show
# what redis-py raises parsing an answer no Redis gives (a broken proxy, someone on the
# network without TLS: a handshake that is not a map, say): Redis unusable, not a crash
_GARBLED = (ValueError, TypeError, AttributeError, KeyError, IndexError)
MAX_CALL_TIME = 2.0  # seconds a Redis call may take before it counts as a failure
SCOPE_CHARS = 16


def scope_of(tenant_url: str, client_id: str, grant: str) -> str:
    """The part of every key name that tells fleets apart: a hash, never the inputs."""
    digest = hashlib.sha256(f"{tenant_url}\x00{client_id}\x00{grant}".encode()).hexdigest()
    return digest[:SCOPE_CHARS]


# Redis answers but takes no write (a replica after a failover, a failing disk, memory
# full): redis-py's classes (it strips their code from the text), and codes it has none for
_NO_WRITES = (ReadOnlyError, OutOfMemoryError, MasterDownError, ClusterDownError)
_NO_WRITES_CODES = ("READONLY", "OOM", "MASTERDOWN", "CLUSTERDOWN", "MISCONF", "NOREPLICAS")


def why_of(exc: BaseException) -> str:
    """The closed-set reason for a redis-py (or socket) failure."""
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
        return "denied"
    if isinstance(exc, _NO_WRITES):
        return "down"
    if isinstance(exc, ResponseError):
        text = str(exc).upper()
        if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return "denied"
        if text.startswith(_NO_WRITES_CODES):
            return "down"
        return "error"
    if isinstance(exc, BusyLoadingError):
        return "loading"
    if isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    text = str(exc).lower()
    if "ssl" in text or "certificate" in text or "tls" in text:
        return "tls"
    return "unreachable"


def connect(config: StateConfig, timeout: float) -> redis.Redis:
    """A redis-py client for `config.redis_url`: binary values, short timeouts, one quiet
    retry on a broken pooled connection (Redis restarted), nothing more: the fallback is
    ours to decide."""
    assert config.redis_url is not None
    options: dict[str, object] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": False,
        "client_name": "fwproxy",
    }
    if config.redis_password is not None:
        options["password"] = config.redis_password.reveal()
    if config.redis_url.lower().startswith("rediss://"):
        # checked in full whatever redis-py's defaults (before 6.0 it did not check the
        # name: any certificate of the CA, or of any public CA, would have done)
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
    if config.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(config.redis_ca_file)
    return redis.Redis.from_url(config.redis_url, **options)  # type: ignore[arg-type]


def shared_state(settings: Settings, *, announce: bool = True) -> SharedState | None:
    """The fleet's `SharedState` for `settings`, or None with ``state.backend: local``.
    Sealed with a key from state.encryption_key_file, else from the client secret
    (config.py refuses redis without either). `announce`: log an outage (a running
    instance); a one-shot command (fwproxy login, logout, token) says it in its own line."""
    state = settings.state
    material = key_material(settings)
    if material is None:
        return None
    return SharedState(state, fleet_scope(settings), material, announce=announce)


def key_material(settings: Settings) -> str | None:
    """What the fleet's keys (sealing, local tokens) are derived from: state.encryption_key,
    else the client secret; None with ``state.backend: local``."""
    if not settings.state.shared:
        return None
    material = settings.state.encryption_key or settings.auth.client_secret
    assert material is not None  # config.py refuses redis without either
    return material.reveal()


def fleet_scope(settings: Settings) -> str:
    return scope_of(str(settings.tenant.url), settings.auth.client_id, settings.auth.grant_type)


class SharedState:
    """The Redis side of one instance (the module docstring)."""

    def __init__(self, config: StateConfig, scope: str, key_material: str, *,
                 client: redis.Redis | None = None,
                 clock: Callable[[], float] = time.monotonic, announce: bool = True) -> None:
        self.config = config
        self.scope = scope
        self.prefix = f"{config.key_prefix}:{scope}:"
        self.sealing: SealingKey = derive_key(key_material, f"{config.key_prefix}:{scope}")
        self.timeout = min(MAX_CALL_TIME, config.lease_time / 4)
        self.redis = client if client is not None else connect(config, self.timeout)
        self.probe_interval = min(1.0, config.lease_time / 4)
        self._clock = clock
        self._announce = announce
        self.up: bool | None = None  # None: not yet known
        self.why = ""
        self.since = clock()
        self.outages = 0
        self.recoveries = 0
        self._watcher: asyncio.Task[None] | None = None
        self._recovery: list[Callable[[], Awaitable[None]]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"SharedState(prefix={self.prefix!r}, up={self.up})"

    def key(self, name: str) -> str:
        """The full Redis key name of a record (`name`: a fixed word, never a value)."""
        return self.prefix + name

    @property
    def available(self) -> bool:
        """Whether a call may be tried now (UP, or not yet known)."""
        return self.up is not False

    def on_recovery(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time Redis comes back (after it was DOWN)."""
        self._recovery.append(callback)

    async def start(self) -> None:
        """One probe, so the status page knows at once; DOWN starts the watcher. Never
        raises: an instance starts without Redis (README "Running a fleet")."""
        with contextlib.suppress(SharedStateUnavailable):
            await self.call(self._probe)
        self._watch_soon()

    def _probe(self, client: redis.Redis) -> Awaitable[object]:
        """A write, not a PING: a Redis that answers but takes no write (why ``down``) is
        no more use to the fleet than one that does not answer, and is not back until a
        write goes through."""
        return client.set(self.key("alive"), b"1", px=int(self.config.lease_time * 1000))

    def _watch_soon(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def call(self, op: Callable[[redis.Redis], Awaitable[T]],
                   waits: float = 0.0) -> T:
        """`op(client)`, with redis-py's failures translated; fails at once while DOWN.
        `waits`: seconds the command itself blocks for (a pub/sub wait) on top of the
        usual limit."""
        if self.up is False:
            raise SharedStateUnavailable(self.why, f"Redis is {self.why}; waiting for it")
        try:
            result = await asyncio.wait_for(op(self.redis), self.timeout * 2 + waits)
        except _GARBLED:  # redis-py tripped on an answer no Redis gives
            raise SharedStateUnavailable("error", "Redis answered something unexpected"
                                         ) from None
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            why = why_of(exc)
            if why == "error":  # Redis's own words stay in the log: they name its internals
                log.warning("shared state: Redis refused a command: %s", outward(str(exc), 200))
                raise SharedStateUnavailable(why, "Redis refused a command") from None
            self._down(why, exc)
            raise SharedStateUnavailable(why, f"Redis is {why}") from None
        if self.up is not True:
            self._up()
        return result

    def _down(self, why: str, exc: BaseException) -> None:
        if self.up is False:
            return
        self.up, self.why, self.since = False, why, self._clock()
        self.outages += 1
        if self._announce:
            log.warning("shared state: Redis is %s (%s); each instance goes on by itself "
                        "until it is back", why,
                        outward(str(exc) or type(exc).__name__, 200))
        self._watch_soon()

    def _up(self) -> None:
        self.up, self.why, self.since = True, "", self._clock()

    async def _watch(self) -> None:
        """Probe every `probe_interval`: UP and it fails, DOWN; DOWN and it is written, UP and
        the recovery callbacks."""
        try:
            while not self._closed:
                await asyncio.sleep(self.probe_interval)
                try:
                    await asyncio.wait_for(self._probe(self.redis), self.timeout * 2)
                except (RedisError, OSError, asyncio.TimeoutError, *_GARBLED) as exc:
                    if self.up is False:
                        self.why = why_of(exc)
                    else:
                        self._down(why_of(exc), exc)
                    continue
                if self.up is False:
                    await self._recover()
                elif self.up is None:
                    self._up()
        finally:
            self._watcher = None

    async def _recover(self) -> None:
        self._up()
        self.recoveries += 1
        log.warning("shared state: Redis is back; sharing again")
        for callback in self._recovery:
            try:
                await callback()
            except SharedStateUnavailable as exc:
                if self.up is False:
                    return  # down again: the next recovery runs them all
                # Redis is up but refused this one (a key of another type: WRONGTYPE)
                log.warning("shared state: writing back after Redis came back was refused "
                            "(%s)", exc.why)
            except Exception:  # one write-back failing must not stop the others
                log.exception("shared state: writing back after Redis came back failed")

    def view(self) -> dict[str, object]:
        """For the status page, readiness and metrics: nothing secret (no URL: it may name
        a user)."""
        return {"backend": "redis", "up": self.up is not False, "why": self.why,
                "for_seconds": round(self._clock() - self.since, 1),
                "outages": self.outages, "prefix": self.config.key_prefix}

    async def aclose(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.redis.aclose()
