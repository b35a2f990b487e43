"""Secret files (client secret, systemd credential, API keys, token store, the workers'
shared token): owner, mode, symlink, file type and directory, checked on the one open fd.

The tests run as root: "owned by another user" is a file chowned to uid 65534."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any, cast

import pytest

from fwproxy import keys
from fwproxy.exceptions import ConfigError
from fwproxy.loading import load_mapping
from fwproxy.oauth import SharedGrant
from fwproxy.private import (
    CREDENTIAL,
    PRIVATE,
    TRUSTED,
    directory_problem,
    file_problem,
    owner_ok,
    path_problem,
    read_private,
    write_private,
)
from fwproxy.store import StoredSession, TokenStore
from fwproxy.token_manager import Grant

NOBODY = 65534
TENANT = {"url": "https://acme.fotoware.cloud"}


def fake_stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


@pytest.mark.parametrize(
    ("st_uid", "my_uid", "ok"),
    [(1000, 1000, True), (0, 1000, True), (65534, 1000, False), (0, 0, True),
     (65534, 0, False), (1000, 0, False), (1001, 1000, False)],
)
def test_owner_is_the_running_user_or_root(st_uid: int, my_uid: int, ok: bool) -> None:
    assert owner_ok(st_uid, my_uid) is ok


REG, DIR = stat.S_IFREG, stat.S_IFDIR


@pytest.mark.parametrize(
    ("mode", "uid", "forbidden", "wanted"),
    [
        (REG | 0o600, 1000, PRIVATE, None),
        (REG | 0o400, 0, PRIVATE, None),
        (REG | 0o640, 1000, PRIVATE, "chmod 600"),
        (REG | 0o604, 1000, PRIVATE, "chmod 600"),
        (REG | 0o620, 1000, PRIVATE, "chmod 600"),
        (REG | 0o600, NOBODY, PRIVATE, "chown alice"),
        (stat.S_IFIFO | 0o600, 1000, PRIVATE, "not a regular file (a FIFO)"),
        (DIR | 0o700, 1000, PRIVATE, "not a regular file (a directory)"),
        (stat.S_IFCHR | 0o600, 0, PRIVATE, "not a regular file (a character device)"),
        (REG | 0o440, 0, CREDENTIAL, None),  # systemd's: its ACL mask in the group bits
        (REG | 0o444, 0, CREDENTIAL, "chmod 600"),
        (REG | 0o440, NOBODY, CREDENTIAL, "chown alice"),
        (REG | 0o644, 0, TRUSTED, None),  # a CA bundle: readable, but nobody else writes
        (REG | 0o664, 0, TRUSTED, "chmod go-w"),
        (REG | 0o646, 1000, TRUSTED, "chmod go-w"),
        (REG | 0o644, NOBODY, TRUSTED, "chown alice"),
    ],
)
def test_file_problems(mode: int, uid: int, forbidden: int, wanted: str | None) -> None:
    problem = file_problem(fake_stat(mode, uid), 1000, "/p/f", "alice", forbidden)
    assert_problem(problem, wanted, "/p/f")


def assert_problem(problem: str | None, wanted: str | None, path: str) -> None:
    """None when nothing is `wanted`; else a problem that says `wanted` and names `path`."""
    if wanted is None:
        assert problem is None
    else:
        assert problem is not None
        assert wanted in problem
        assert path in problem


@pytest.mark.parametrize(
    ("mode", "uid", "wanted"),
    [
        (DIR | 0o700, 1000, None),
        (DIR | 0o755, 0, None),
        (DIR | 0o1777, 0, None),  # /tmp: others write, but only the owner removes a file
        (DIR | 0o777, 0, "chmod go-w"),
        (DIR | 0o770, 1000, "chmod go-w"),
        (DIR | 0o757, 1000, "chmod go-w"),
        (DIR | 0o755, NOBODY, "chown alice"),
        (DIR | 0o1777, NOBODY, "chown alice"),
    ],
)
def test_directory_problems(mode: int, uid: int, wanted: str | None) -> None:
    problem = directory_problem(fake_stat(mode, uid), 1000, "/p", "alice", "f")
    assert_problem(problem, wanted, "/p")


ROOT_DIR = fake_stat(DIR | 0o755, 0)


@pytest.mark.parametrize(
    ("chain", "wanted", "where"),
    [
        ([("/", ROOT_DIR), ("/home", ROOT_DIR), ("/home/alice", fake_stat(DIR | 0o700, 1000))],
         None, None),
        ([("/", ROOT_DIR), ("/tmp", fake_stat(DIR | 0o1777, 0)),
          ("/tmp/a", fake_stat(DIR | 0o700, 1000))], None, None),
        # every ancestor counts, not only the file's own directory (red team)
        ([("/", ROOT_DIR), ("/srv", fake_stat(DIR | 0o777, 0)),
          ("/srv/a", fake_stat(DIR | 0o700, 1000))], "chmod go-w", "/srv"),
        ([("/", ROOT_DIR), ("/srv", fake_stat(DIR | 0o775, 1000)),
          ("/srv/a", fake_stat(DIR | 0o700, 1000))], "chmod go-w", "/srv"),
        ([("/", ROOT_DIR), ("/srv", fake_stat(DIR | 0o755, NOBODY)),
          ("/srv/a", fake_stat(DIR | 0o700, 1000))], "chown alice", "/srv"),
        ([("/", fake_stat(DIR | 0o757, 0)), ("/a", ROOT_DIR)], "chmod go-w", "/"),
        # the first problem from the top is named
        ([("/", ROOT_DIR), ("/x", fake_stat(DIR | 0o777, 0)),
          ("/x/y", fake_stat(DIR | 0o755, NOBODY))], "chmod go-w", "/x"),
    ],
)
def test_path_problem_checks_every_ancestor(
    chain: list[tuple[str, os.stat_result]], wanted: str | None, where: str | None
) -> None:
    problem = path_problem(chain, 1000, "alice", "f")
    assert_problem(problem, wanted, where or "")
    if problem is not None:
        assert f"the directory {where} " in problem


# --- the real thing, through each file's own reader -------------------------------------


def secret_file(directory: Path, text: str = "from-file") -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / "secret"
    path.write_text(text)
    path.chmod(0o600)
    return path


def load_secret(path: Path) -> Any:
    auth = {"client_id": "app", "client_secret_file": str(path)}
    return load_mapping({"tenant": TENANT, "auth": auth}, environ={})


def refused(path: Path, key: str = "auth.client_secret_file") -> str:
    with pytest.raises(ConfigError) as caught:
        load_secret(path)
    assert caught.value.key == key
    assert "from-file" not in str(caught.value)
    return str(caught.value)


def test_a_secret_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "d")
    os.chown(path, NOBODY, NOBODY)
    assert f"owned by uid {NOBODY}" in refused(path)
    assert f"run: chown root {path}" in refused(path)
    os.chown(path, 0, 0)
    assert load_secret(path).auth.client_secret.reveal() == "from-file"


def test_a_symlink_to_a_secret_file_is_refused(tmp_path: Path) -> None:
    target = secret_file(tmp_path / "d")
    link = tmp_path / "d" / "link"
    link.symlink_to(target)
    message = refused(link)
    assert "is a symbolic link" in message
    assert str(target) in message  # what to set the key to instead


async def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # opened for reading without O_NONBLOCK, this waits for a writer
    with pytest.raises(ConfigError, match="not a regular file"):
        await asyncio.wait_for(asyncio.to_thread(load_secret, fifo), 10)


def test_a_file_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    path = secret_file(shared)
    shared.chmod(0o777)
    assert f"run: chmod go-w {shared}" in refused(path)
    shared.chmod(0o1777)  # like /tmp: root's, sticky
    assert load_secret(path).auth.client_secret.reveal() == "from-file"


def test_a_file_below_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    path = secret_file(shared / "mine")  # its own directory is private; its parent is not
    shared.chmod(0o777)
    (shared / "mine").chmod(0o700)
    message = refused(path)
    assert f"the directory {shared} can be written by group or others" in message
    assert f"run: chmod go-w {shared}" in message
    shared.chmod(0o1777)  # sticky: nobody else may rename mine
    assert load_secret(path).auth.client_secret.reveal() == "from-file"
    os.chown(shared, NOBODY, NOBODY)
    assert f"the directory {shared} is owned by uid {NOBODY}" in refused(path)


def test_a_symlinked_ancestor_is_checked_where_it_leads(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    path = secret_file(real / "d")
    (tmp_path / "link").symlink_to(real)
    real.chmod(0o777)
    assert f"the directory {real} can be written" in refused(tmp_path / "link" / "d" / "secret")
    real.chmod(0o755)
    assert load_secret(tmp_path / "link" / "d" / "secret").auth.client_secret.reveal() == (
        "from-file")
    assert path.exists()


def test_a_file_in_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    path = secret_file(theirs)
    os.chown(theirs, NOBODY, NOBODY)
    assert f"the directory {theirs} is owned by uid {NOBODY}" in refused(path)


def test_what_is_read_is_what_was_checked(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "d")
    read = read_private(path, "k")
    assert (read.text, read.info.st_ino) == ("from-file", path.stat().st_ino)
    assert "from-file" not in repr(read)


def test_one_atomic_0600_write_for_every_private_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a replacement, not the old inode
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary file left behind
    assert read_private(path, "k").text == "new"  # what it writes, the checked reader takes
    keys.add_key(tmp_path / "keys", "one")
    TokenStore(tmp_path / "state" / "tokens.json").save(StoredSession(refresh_token="r"))
    for written in (tmp_path / "keys", tmp_path / "state" / "tokens.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["tokens.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    write_private(path, "old")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_private(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


# --- systemd's credential ----------------------------------------------------------------


def credential(tmp_path: Path, mode: int, owner: int = 0) -> dict[str, str]:
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o500)
    path = directory / "client_secret"
    path.write_text("from-systemd\n")
    path.chmod(mode)
    os.chown(path, owner, owner)
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def load_credential(environ: dict[str, str]) -> Any:
    return load_mapping({"tenant": TENANT, "auth": {"client_id": "app"}}, environ=environ)


@pytest.mark.parametrize("mode", [0o400, 0o440])  # 0440: root's file, the ACL mask for us
def test_a_systemd_credential_is_read(tmp_path: Path, mode: int) -> None:
    settings = load_credential(credential(tmp_path, mode))
    assert settings.auth.client_secret.reveal() == "from-systemd"


@pytest.mark.parametrize(("mode", "owner", "wanted"),
                         [(0o444, 0, "chmod 600"), (0o400, NOBODY, "chown")])
def test_an_unsafe_systemd_credential_is_refused(
    tmp_path: Path, mode: int, owner: int, wanted: str
) -> None:
    with pytest.raises(ConfigError, match=wanted) as caught:
        load_credential(credential(tmp_path, mode, owner))
    assert caught.value.key == "auth.client_secret"


# --- API keys, the token store, the workers' shared token -----------------------------------


def test_an_api_keys_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    keys.add_key(path, "one")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="chown") as caught:
        load_mapping({"tenant": TENANT, "auth": {"client_id": "a", "client_secret": "b"},
                      "access": {"api_keys_file": str(path)}}, environ={})
    assert caught.value.key == "access.api_keys_file"


def test_the_running_key_store_ignores_a_file_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys"
    first = keys.add_key(path, "one")
    store = keys.KeyStore(path)
    elsewhere = tmp_path / "elsewhere"
    second = keys.add_key(elsewhere, "two")
    path.unlink()
    path.symlink_to(elsewhere)
    monkeypatch.setattr(keys, "RELOAD_EVERY", 0.0)
    assert store.find(second) is None  # the link is refused: the keys held stay
    assert store.find(first) is not None


def saved_store(path: Path) -> TokenStore:
    store = TokenStore(path)
    store.save(StoredSession(refresh_token="refresh-secret", access_token="access-secret",
                             expires_at=4e9, user="alice"))
    return store


def test_a_token_store_of_another_user_is_refused(tmp_path: Path) -> None:
    store = saved_store(tmp_path / "state" / "tokens.json")
    os.chown(store.path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="chown") as caught:
        store.load()
    assert caught.value.key == "auth.token_store"
    assert "refresh-secret" not in str(caught.value)


def test_a_token_store_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = saved_store(tmp_path / "state" / "real.json")
    link = real.path.with_name("tokens.json")
    link.symlink_to(real.path)
    with pytest.raises(ConfigError, match="symbolic link"):
        TokenStore(link).load()
    assert TokenStore(tmp_path / "state" / "none.json").load() is None  # missing: none


class NoStoredToken:
    def stored(self) -> None:
        return None


def test_the_shared_token_file_is_used_only_when_safe(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    path = shared / "token.json"
    TokenStore(path).save(StoredSession(refresh_token="", access_token="shared-token",
                                        expires_at=4e9))
    grant = SharedGrant(cast(Grant, NoStoredToken()), path, refresh_margin=60)
    token = grant.stored()
    assert token is not None
    assert token.value == "shared-token"
    os.chown(path, NOBODY, NOBODY)  # not ours any more: not used, a new token is asked for
    assert grant.stored() is None


# --- the CA bundle: whoever may change it can vouch for any tenant -------------------------


def load_ca(path: Path) -> Any:
    return load_mapping({"tenant": {**TENANT, "ca_file": str(path)},
                         "auth": {"client_id": "a", "client_secret": "b"}}, environ={})


def test_a_ca_file_others_may_change_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("PEM\n")
    bundle.chmod(0o644)
    assert load_ca(bundle).tenant.ca_file == bundle  # readable by all is fine
    link = tmp_path / "link.pem"
    link.symlink_to(bundle)  # as in /etc/ssl/certs: resolved, and the target checked
    assert load_ca(link).tenant.ca_file == link
    for mode, owner in ((0o666, 0), (0o644, NOBODY)):
        bundle.chmod(mode)
        os.chown(bundle, owner, owner)
        for given in (bundle, link):
            with pytest.raises(ConfigError, match=r"chmod go-w|chown") as caught:
                load_ca(given)
            assert caught.value.key == "tenant.ca_file"
        bundle.chmod(0o644)
        os.chown(bundle, 0, 0)


async def test_the_tenant_session_trusts_the_checked_ca_file(
    certificate: tuple[Path, Path], aiohttp_server: Any
) -> None:
    import ssl

    from aiohttp import web

    from fwproxy.upstream import create_session

    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="tenant")

    app = web.Application()
    app.router.add_get("/", hello)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=served)
    settings = load_mapping({"tenant": {"url": f"https://127.0.0.1:{server.port}",
                                        "ca_file": str(cert)},
                             "auth": {"client_id": "a", "client_secret": "b"}}, environ={})
    session = create_session(settings.tenant)
    try:
        async with session.get(f"https://127.0.0.1:{server.port}/") as resp:
            assert await resp.text() == "tenant"
    finally:
        await session.close()
