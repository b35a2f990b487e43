"""fleet.py against a real redis-server: the UP/DOWN state machine, the one boundary for
redis-py's exceptions, key names, and recovery callbacks. Sealing as a table (sealing.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fwproxy.config import StateConfig
from fwproxy.exceptions import SealBroken, SharedStateUnavailable
from fwproxy.fleet import SharedState, scope_of, why_of
from fwproxy.private import Secret
from fwproxy.sealing import derive_key, open_sealed, seal
from tests.conftest import wait_until
from tests.support.redis import RedisServer

KEY = derive_key("k" * 40, "fwproxy:scope")


def state_for(server: RedisServer, **extra: object) -> SharedState:
    config = StateConfig(backend="redis", redis_url=server.url, lease_time=4.0, **extra)  # type: ignore[arg-type]
    return SharedState(config, scope_of("https://t", "app", "client_credentials"), "s" * 40)


# --- sealing: pure -------------------------------------------------------------------------

def test_a_sealed_value_opens_only_where_and_as_what_it_was_sealed() -> None:
    sealed = seal(KEY, b"secret-token", "fwproxy:x:token", 7)
    assert open_sealed(KEY, sealed, "fwproxy:x:token", 7) == b"secret-token"
    assert b"secret-token" not in sealed
    for key, name, version, blob in [
        (derive_key("other" * 8, "fwproxy:scope"), "fwproxy:x:token", 7, sealed),  # other key
        (derive_key("k" * 40, "fwproxy:other"), "fwproxy:x:token", 7, sealed),  # other scope
        (KEY, "fwproxy:x:session", 7, sealed),  # copied to another record
        (KEY, "fwproxy:x:token", 8, sealed),  # presented as a newer version
        (KEY, "fwproxy:x:token", 7, sealed[:-1] + bytes([sealed[-1] ^ 1])),  # changed
        (KEY, "fwproxy:x:token", 7, b"\x02" + sealed[1:]),  # unknown format
        (KEY, "fwproxy:x:token", 7, b""),
    ]:
        with pytest.raises(SealBroken) as caught:
            open_sealed(key, blob, name, version)
        assert "secret" not in str(caught.value)


@pytest.mark.parametrize("version", [-1, 2**64, 2**70])
def test_a_version_out_of_range_is_a_broken_seal(version: int) -> None:
    """Versions come from Redis: out of the 8 bytes the associated data holds, the record
    is broken (SealBroken), not a struct.error."""
    with pytest.raises(SealBroken):
        open_sealed(KEY, seal(KEY, b"v", "n", 1), "n", version)


def test_two_seals_of_one_value_differ() -> None:
    assert seal(KEY, b"v", "n", 1) != seal(KEY, b"v", "n", 1)


def test_keys_never_show_in_repr() -> None:
    assert "k" * 10 not in repr(KEY)


@pytest.mark.parametrize(("error", "why"), [
    (__import__("redis").exceptions.ConnectionError("Connection refused"), "unreachable"),
    (__import__("redis").exceptions.TimeoutError("Timeout reading"), "timeout"),
    (__import__("redis").exceptions.AuthenticationError("invalid password"), "denied"),
    (__import__("redis").exceptions.ResponseError("NOPERM this user has no permissions"),
     "denied"),
    (__import__("redis").exceptions.ResponseError("WRONGTYPE Operation against a key"), "error"),
    # redis-py strips the code of the errors it has a class for
    (__import__("redis").exceptions.NoPermissionError("this user has no permissions"),
     "denied"),
    # Redis answers but takes no write: a replica after a failover, a failing disk, full
    (__import__("redis").exceptions.ReadOnlyError("You can't write against a read only "
                                                  "replica."), "down"),
    (__import__("redis").exceptions.OutOfMemoryError("command not allowed when used "
                                                     "memory > 'maxmemory'."), "down"),
    (__import__("redis").exceptions.MasterDownError("Link with MASTER is down"), "down"),
    (__import__("redis").exceptions.ResponseError("MISCONF Redis is configured to save RDB "
                                                  "snapshots, but it is unable to"), "down"),
    (__import__("redis").exceptions.BusyLoadingError("Redis is loading"), "loading"),
    (__import__("redis").exceptions.ConnectionError("SSL: CERTIFICATE_VERIFY_FAILED"), "tls"),
    (asyncio.TimeoutError(), "timeout"),
])
def test_why_is_a_closed_set(error: BaseException, why: str) -> None:
    assert why_of(error) == why


def test_scope_names_no_input() -> None:
    scope = scope_of("https://acme.fotoware.cloud", "my-client", "client_credentials")
    assert len(scope) == 16
    assert "acme" not in scope
    assert "client" not in scope
    assert scope != scope_of("https://acme.fotoware.cloud", "my-client", "authorization_code")


# --- the state machine, against a real redis-server ----------------------------------------

async def test_up_down_and_back_with_recovery_callbacks(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    recovered = asyncio.Event()

    async def write_back() -> None:
        await state.call(lambda r: r.set(state.key("marker"), b"1"))
        recovered.set()

    state.on_recovery(write_back)
    try:
        await state.start()
        assert state.up is True
        assert await state.call(lambda r: r.set(state.key("a"), b"x")) is True
        redis_server.stop()
        with pytest.raises(SharedStateUnavailable) as caught:
            await state.call(lambda r: r.get(state.key("a")))
        assert caught.value.reason == "shared_state_unavailable"
        assert state.up is False
        assert state.why == "unreachable"
        assert state.outages == 1
        with pytest.raises(SharedStateUnavailable):  # at once, without the network
            await state.call(lambda r: r.get(state.key("a")))
        assert state.view()["up"] is False
        redis_server.start()  # back, empty
        await asyncio.wait_for(recovered.wait(), 20)
        assert state.up is True
        assert state.recoveries == 1
        assert await state.call(lambda r: r.get(state.key("marker"))) == b"1"
    finally:
        await state.aclose()


async def test_a_write_back_redis_refuses_does_not_skip_the_others(
    redis_server: RedisServer,
) -> None:
    """One record's write-back refused by a Redis that is up (its key holds another type:
    another application's key, or someone's write): the other write-backs still run. Only
    Redis going down again stops them (the next recovery runs them all)."""
    state = state_for(redis_server)
    recovered = asyncio.Event()

    async def refused() -> None:
        await state.call(lambda r: r.set(state.key("session"), b"not a hash"))
        await state.call(lambda r: r.hget(state.key("session"), "v"))  # WRONGTYPE

    async def write_back() -> None:
        await state.call(lambda r: r.set(state.key("marker"), b"1"))
        recovered.set()

    state.on_recovery(refused)
    state.on_recovery(write_back)
    try:
        await state.start()
        redis_server.stop()
        with pytest.raises(SharedStateUnavailable):
            await state.call(lambda r: r.get(state.key("a")))
        redis_server.start()
        await asyncio.wait_for(recovered.wait(), 20)
        assert await state.call(lambda r: r.get(state.key("marker"))) == b"1"
    finally:
        await state.aclose()


async def test_a_redis_that_answers_but_takes_no_write_is_down_until_it_does(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    """A failover left the address on a read-only replica (or the disk fails, or memory
    is full): PING answers, every write is refused. That is an outage (DOWN, why "down",
    shown; each instance on its own), not "up" with every call failing, and it lasts
    until a write goes through: then the recovery write-backs run."""
    state = state_for(redis_server)
    recovered = asyncio.Event()

    async def write_back() -> None:
        recovered.set()

    state.on_recovery(write_back)
    admin = state_for(redis_server)
    nowhere = RedisServer(tmp_path / "nowhere")  # never started: a master that is gone
    try:
        await state.start()
        assert state.up is True
        await admin.call(lambda r: r.replicaof("127.0.0.1", nowhere.port))
        await wait_until(lambda: state.up is False, "the read-only Redis to be seen DOWN")
        assert state.why == "down"
        with pytest.raises(SharedStateUnavailable):  # at once
            await state.call(lambda r: r.set(state.key("a"), b"x"))
        assert not recovered.is_set()  # PING answers all along: not taken for a return
        await admin.call(lambda r: r.replicaof("NO", "ONE"))
        await asyncio.wait_for(recovered.wait(), 20)
        assert state.up is True
        assert await state.call(lambda r: r.set(state.key("a"), b"x")) is True
    finally:
        await admin.aclose()
        await state.aclose()


async def test_starting_without_redis_is_no_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")  # never started: nothing listens on its port
    state = state_for(server)
    try:
        await state.start()
        assert state.up is False
        assert state.view()["why"] == "unreachable"
    finally:
        await state.aclose()


async def test_a_refused_command_does_not_mark_redis_down(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    try:
        await state.call(lambda r: r.lpush(state.key("t"), b"x"))
        with pytest.raises(SharedStateUnavailable) as caught:
            await state.call(lambda r: r.get(state.key("t")))  # WRONGTYPE
        assert caught.value.why == "error"
        assert state.up is True
        # what Redis said (its internals) is for the log, not for a client's error body
        assert "WRONGTYPE" not in str(caught.value)
    finally:
        await state.aclose()


async def test_password_and_acl_user(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", user=("fwproxy", "pw-123456")) as server:
        wrong = state_for(server)
        right = SharedState(
            StateConfig(backend="redis", redis_url=server.url,
                        redis_password=Secret("pw-123456")),
            "scope", "s" * 40)
        try:
            await wrong.start()
            assert wrong.up is False
            assert wrong.why == "denied"
            await right.start()
            assert right.up is True
        finally:
            await wrong.aclose()
            await right.aclose()


async def test_unix_socket(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", unix=True) as server:
        state = state_for(server)
        try:
            await state.start()
            assert state.up is True
        finally:
            await state.aclose()
