"""Point 5 of issue 16 against a real redis-server: Redis AUTH (state.redis_password_file or
FWPROXY_STATE_REDIS_PASSWORD), an ACL user named in state.redis_url, and TLS (rediss:// with
state.redis_ca_file, a test CA from trustme) each carry the fleet's lock and records; and no
secret shows in a log line, a metric, the shared state's view or repr, or a Redis key name."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
import trustme
from prometheus_client import CollectorRegistry, generate_latest

from fwproxy.config import Settings
from fwproxy.exceptions import ConfigError
from fwproxy.fleet import SharedState, shared_state
from fwproxy.fleetlock import FleetLock
from fwproxy.fleetview import SharedStateCollector
from fwproxy.loading import load_mapping
from tests.support.redis import RedisServer, redis_server_path

pytestmark = pytest.mark.skipif(redis_server_path() is None,
                                reason="Debian redis-server not installed (.ci/run installs it)")

PASSWORD = "redis-pw-Zq8wX3vN7"
CLIENT_SECRET = "client-secret-Jd93kLm2"
ENCRYPTION_KEY = "enc-key-" + "Hx7Tq2Lp9" * 4
PLAINTEXT = b"access-token-Pq72mZ"


def text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def settings_for(url: str, environ: dict[str, str] | None = None, **state: Any) -> Settings:
    raw = {"tenant": {"url": "https://acme.fotoware.cloud"},
           "auth": {"client_id": "app", "client_secret": CLIENT_SECRET},
           "state": {"backend": "redis", "redis_url": url, "lease_time": "4s", **state}}
    return load_mapping(raw, environ or {})


def write_tls_files(tmp_path: Path, host: str) -> tuple[Path, Path, Path]:
    """(the CA's certificate, the server's chain, its key), a certificate for `host`."""
    ca = trustme.CA()
    cert = ca.issue_cert(host)
    folder = tmp_path / "tls"
    folder.mkdir()
    ca_file, chain, key = folder / "ca.pem", folder / "chain.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return ca_file, chain, key


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(the CA's certificate, the server's chain, its key) for 127.0.0.1."""
    return write_tls_files(tmp_path, "127.0.0.1")


@pytest.fixture
async def opened() -> AsyncIterator[list[SharedState]]:
    """SharedStates the test opens, closed at the end."""
    made: list[SharedState] = []
    yield made
    for state in made:
        await state.aclose()


async def start(settings: Settings, opened: list[SharedState]) -> SharedState:
    state = shared_state(settings)
    assert state is not None
    opened.append(state)
    await state.start()
    return state


async def round_trip(state: SharedState) -> None:
    """What the fleet does with Redis: the lock (SET NX, a script, pub/sub) and a sealed
    record written, read back and compare-and-deleted."""
    lock = FleetLock(state, "token")
    held = await lock.acquire(wait=1)
    assert held is not None
    assert await FleetLock(state, "token").acquire(wait=0.2) is None  # the wait: pub/sub
    assert await lock.put_locked(held, PLAINTEXT, ttl=60)
    await lock.release(held)
    record = await lock.read()
    assert record is not None
    assert record.value == PLAINTEXT
    assert await lock.delete_if_version(record.version)


async def test_auth_with_a_password_file(tmp_path: Path, opened: list[SharedState]) -> None:
    with RedisServer(tmp_path / "r", password=PASSWORD) as server:
        password_file = write_secret(tmp_path / "redis-password", PASSWORD)
        state = await start(settings_for(server.url, redis_password_file=str(password_file)),
                            opened)
        assert state.up is True
        await round_trip(state)
        refused = await start(settings_for(server.url), opened)  # no password
        assert refused.up is False
        assert refused.why == "denied"


async def test_auth_with_the_environment_variable(tmp_path: Path,
                                                  opened: list[SharedState]) -> None:
    with RedisServer(tmp_path / "r", password=PASSWORD) as server:
        state = await start(settings_for(
            server.url, environ={"FWPROXY_STATE_REDIS_PASSWORD": PASSWORD}), opened)
        assert state.up is True
        await round_trip(state)
        wrong = await start(settings_for(
            server.url, environ={"FWPROXY_STATE_REDIS_PASSWORD": "not-it-at-all"}), opened)
        assert wrong.why == "denied"


def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    loose = write_secret(tmp_path / "redis-password", PASSWORD)
    loose.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        settings_for("redis://127.0.0.1:1/0", redis_password_file=str(loose))
    assert caught.value.key == "state.redis_password_file"
    assert PASSWORD not in str(caught.value)


async def test_an_acl_user_in_the_url(tmp_path: Path, opened: list[SharedState]) -> None:
    """The test server's user may do all but @dangerous commands, its default user is off:
    the lock, its scripts and its pub/sub all work under it."""
    with RedisServer(tmp_path / "r", user=("fleet", PASSWORD)) as server:
        assert server.url.startswith("redis://fleet@")
        password_file = write_secret(tmp_path / "redis-password", PASSWORD)
        state = await start(settings_for(server.url, redis_password_file=str(password_file)),
                            opened)
        assert state.up is True
        await round_trip(state)
        other = server.url.replace("fleet@", "nobody@")
        denied = await start(settings_for(other, redis_password_file=str(password_file)),
                             opened)
        assert denied.why == "denied"


async def test_tls_with_a_ca_file(tmp_path: Path, tls_files: tuple[Path, Path, Path],
                                  opened: list[SharedState]) -> None:
    ca_file, chain, key = tls_files
    with RedisServer(tmp_path / "r", tls=(chain, key)) as server:
        assert server.url.startswith("rediss://")
        state = await start(settings_for(server.url, redis_ca_file=str(ca_file)), opened)
        assert state.up is True
        await round_trip(state)
        untrusted = await start(settings_for(server.url), opened)  # the system's CAs only
        assert untrusted.up is False
        assert untrusted.why == "tls"
        plain = await start(settings_for(server.url.replace("rediss://", "redis://")),
                            opened)  # plain text to a TLS port
        assert plain.up is False


async def test_tls_refuses_a_certificate_for_another_name(
        tmp_path: Path, opened: list[SharedState]) -> None:
    """rediss:// checks the certificate's name as well as its CA, whatever redis-py's
    default (setup.cfg takes redis>=5, whose default was not to check it): a certificate
    the CA issued for another host is someone else's, not Redis's."""
    ca_file, chain, key = write_tls_files(tmp_path, "redis.example")  # reached at 127.0.0.1
    with RedisServer(tmp_path / "r", tls=(chain, key)) as server:
        state = await start(settings_for(server.url, redis_ca_file=str(ca_file)), opened)
        assert state.up is False
        assert state.why == "tls"
        options = state.redis.connection_pool.connection_kwargs
        assert (options["ssl_check_hostname"], options["ssl_cert_reqs"]) == (True, "required")


async def test_tls_an_acl_user_and_a_password_together_leak_no_secret(
        tmp_path: Path, tls_files: tuple[Path, Path, Path], opened: list[SharedState],
        caplog: pytest.LogCaptureFixture) -> None:
    """Everything at once, then the scan: no password, client secret, encryption key or
    record value in the log, the metrics, the view, a repr, or a key name; the record's
    value is sealed in Redis (not readable there)."""
    caplog.set_level(logging.DEBUG)
    ca_file, chain, key = tls_files
    with RedisServer(tmp_path / "r", user=("fleet", PASSWORD), tls=(chain, key)) as server:
        password_file = write_secret(tmp_path / "redis-password", PASSWORD)
        key_file = write_secret(tmp_path / "encryption-key", ENCRYPTION_KEY)
        settings = settings_for(server.url, redis_password_file=str(password_file),
                                redis_ca_file=str(ca_file),
                                encryption_key_file=str(key_file))
        state = await start(settings, opened)
        assert state.up is True
        await round_trip(state)
        await FleetLock(state, "token").put_if_newer(99, PLAINTEXT, ttl=60)
        reader = redis.Redis.from_url(server.url, username="fleet", password=PASSWORD,
                                      ssl_ca_certs=str(ca_file))
        try:  # as the fleet's own ACL user sees it (KEYS is @dangerous: SCAN)
            names = [text(name) async for name in reader.scan_iter("*")]
            values = [await reader.dump(name) for name in names]
        finally:
            await reader.aclose()
        wrong = await start(settings_for(server.url, redis_ca_file=str(ca_file),
                                         environ={"FWPROXY_STATE_REDIS_PASSWORD": "x" * 12}),
                            opened)
        assert wrong.why == "denied"
        server.stop()  # an outage: logged
        await start(settings, opened)
        registry = CollectorRegistry()
        registry.register(SharedStateCollector(state))
        shown = "\n".join([
            caplog.text, generate_latest(registry).decode(), repr(state), repr(settings),
            repr(state.view()), repr(wrong.view()), repr(settings.state),
        ])
    for secret in (PASSWORD, CLIENT_SECRET, ENCRYPTION_KEY, PLAINTEXT.decode()):
        assert secret not in shown
        assert all(secret not in name for name in names)
        assert all(secret.encode() not in (value or b"") for value in values)
    assert "Redis is denied" in caplog.text  # the log did say something
    assert "Redis is unreachable" in caplog.text
    assert "fwproxy:" in " ".join(names)  # the record is there, under the prefix
    assert all(name.startswith("fwproxy:") for name in names)


async def test_redis_holds_the_record_sealed(redis_server: RedisServer,
                                             opened: list[SharedState]) -> None:
    """Someone who can read Redis sees key names made of fixed words and a hash, and a
    sealed value: neither the token, nor the client ID or tenant."""
    state = await start(settings_for(redis_server.url), opened)
    await FleetLock(state, "token").put_if_newer(5, PLAINTEXT, ttl=60)
    reader = redis.Redis.from_url(redis_server.url)
    try:
        names = [text(name) for name in await reader.keys("*")]
        stored = {name: await reader.hgetall(name) for name in names
                  if await reader.type(name) == b"hash"}
    finally:
        await reader.aclose()
    assert names
    for name in names:
        assert "acme" not in name
        assert "app" not in name.split(":")[1:]
    assert stored
    for fields in stored.values():
        assert all(PLAINTEXT not in value for value in fields.values())
