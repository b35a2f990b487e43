"""Local tokens: format and pure verification (no event loop, `now` passed in)."""

from __future__ import annotations

import base64
import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from fwproxy.exceptions import ConfigError
from fwproxy.keys import ApiKey, digest
from fwproxy.localtokens import (
    MAX_LIFETIME,
    MAX_SKEW,
    MAX_TOKEN,
    OPEN,
    PREFIX,
    Claims,
    Holder,
    Refused,
    SigningKey,
    StaticKeys,
    file_signing_keys,
    fingerprint,
    format_keys,
    issue,
    looks_local,
    publish,
    verify,
)
from fwproxy.log import REDACT

SIGNING = SigningKey(1, b"k" * 32)
KEYS = StaticKeys((SIGNING,))
ROBOT_KEY = ApiKey("robot", digest("fwp_robot-secret"))
VIEWER_KEY = ApiKey("viewer", digest("fwp_viewer-secret"), read_only=True)
ROBOT = Holder.of_key(ROBOT_KEY)
VIEWER = Holder.of_key(VIEWER_KEY)
LIVE = {"robot": ROBOT, "viewer": VIEWER}
NOW = 1_800_000_000.0


def fixed_rng(n: int) -> bytes:
    return bytes(range(n))


def token_for(holder: Holder = ROBOT, now: float = NOW, lifetime: float = 3600,
              signing: SigningKey = SIGNING) -> str:
    return issue(signing, holder, now, lifetime, fixed_rng)


def test_a_token_verifies_and_carries_the_live_holder() -> None:
    claims = verify(KEYS, token_for(), NOW + 10, LIVE.get)
    assert claims == Claims(ROBOT, int(NOW), int(NOW) + 3600, 1)
    assert claims.holder.key is ROBOT_KEY
    assert not claims.read_only


def test_exact_wire_format() -> None:
    token = token_for()
    assert token.startswith(PREFIX)
    assert looks_local(token)
    body, mac = token[len(PREFIX):].split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert payload[:2] == b"\x01\x01"  # version, kid
    assert int.from_bytes(payload[2:10], "big") == int(NOW)
    assert int.from_bytes(payload[10:18], "big") == int(NOW) + 3600
    assert payload[18:34] == bytes(range(16))  # nonce
    assert payload[34:50] == fingerprint(ROBOT_KEY.digest)
    assert payload[50:] == b"\x05robot"
    assert len(mac) == 43
    assert "=" not in token


def test_nonce_makes_tokens_issued_together_differ() -> None:
    assert issue(SIGNING, ROBOT, NOW, 60) != issue(SIGNING, ROBOT, NOW, 60)


def test_rights_come_from_the_live_key_not_the_token() -> None:
    token = token_for(ROBOT)
    demoted = Holder.of_key(ApiKey("robot", ROBOT_KEY.digest, read_only=True))
    claims = verify(KEYS, token, NOW, {"robot": demoted}.get)
    assert isinstance(claims, Claims)
    assert claims.read_only
    viewer = verify(KEYS, token_for(VIEWER), NOW, LIVE.get)
    assert isinstance(viewer, Claims)
    assert viewer.read_only


@pytest.mark.parametrize(("now", "reason"), [
    (NOW + 3600, "expired"),  # expires_at itself is too late
    (NOW + 10**6, "expired"),
    (NOW - MAX_SKEW - 1, "not_yet_valid"),  # issued by a clock ahead of ours
])
def test_time_bounds(now: float, reason: str) -> None:
    assert verify(KEYS, token_for(), now, LIVE.get) == Refused(reason)  # type: ignore[arg-type]


@pytest.mark.parametrize("now", [NOW - MAX_SKEW, NOW, NOW + 3599.9])
def test_inside_time_bounds(now: float) -> None:
    assert isinstance(verify(KEYS, token_for(), now, LIVE.get), Claims)


def test_removing_a_key_revokes_its_tokens() -> None:
    assert verify(KEYS, token_for(), NOW, {"viewer": VIEWER}.get) == Refused("revoked")


def test_a_key_added_again_under_the_same_name_does_not_revive_them() -> None:
    again = Holder.of_key(ApiKey("robot", digest("fwp_a-new-key")))
    assert verify(KEYS, token_for(), NOW, {"robot": again}.get) == Refused("revoked")


def test_tokens_issued_without_keys_die_when_keys_are_configured_and_back() -> None:
    open_token = token_for(Holder.open("robot"))
    assert isinstance(verify(KEYS, open_token, NOW, Holder.open), Claims)
    assert verify(KEYS, open_token, NOW, LIVE.get) == Refused("revoked")
    assert verify(KEYS, token_for(), NOW, Holder.open) == Refused("revoked")
    assert Holder.open("x").fingerprint == OPEN != ROBOT.fingerprint


def test_fingerprint_reveals_nothing_of_the_key() -> None:
    key = "fwp_robot-secret"
    token = token_for()
    for form in (key, digest(key).hex(), _b64(digest(key)), _b64(digest(key)[:16])):
        assert form not in token
    assert fingerprint(digest(key)) != digest(key)[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_every_changed_character_is_refused() -> None:
    token = token_for()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    for i, original in enumerate(token):
        for replacement in alphabet:
            if replacement == original:
                continue
            forged = token[:i] + replacement + token[i + 1:]
            verdict = verify(KEYS, forged, NOW, LIVE.get)
            assert isinstance(verdict, Refused), (i, replacement)


def test_every_flipped_bit_of_the_decoded_token_is_refused() -> None:
    token = token_for()
    body, mac = token[len(PREFIX):].split(".")
    raw = [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in (body, mac)]
    for which in (0, 1):
        for i in range(len(raw[which])):
            for bit in range(8):
                parts = list(raw)
                changed = bytearray(parts[which])
                changed[i] ^= 1 << bit
                parts[which] = bytes(changed)
                forged = PREFIX + _b64(parts[0]) + "." + _b64(parts[1])
                expected = "malformed" if (which, i) == (0, 0) else "bad_signature"  # version
                assert verify(KEYS, forged, NOW, LIVE.get) == Refused(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("mangle", [
    lambda t: t + "A",  # a longer mac, or a non-canonical last character
    lambda t: t + "=",
    lambda t: t[:-1],
    lambda t: t + "\n",
    lambda t: " " + t,
    lambda t: t.replace(".", ".."),
    lambda t: t.replace(PREFIX, "FWPL_"),
    lambda t: t.replace(PREFIX, "fwp_"),
    lambda t: t.split(".")[0],
    lambda t: t.split(".")[0] + "==." + t.split(".")[1],
    lambda t: PREFIX + "." + t.split(".")[1],
    lambda t: t[:len(PREFIX)] + "A" * (MAX_TOKEN + 1),
    lambda t: "",
])
def test_malformed(mangle: object) -> None:
    forged = mangle(token_for())  # type: ignore[operator]
    assert verify(KEYS, forged, NOW, LIVE.get) in (Refused("malformed"),
                                                   Refused("bad_signature"))


def test_non_canonical_base64_is_refused_though_it_decodes_the_same() -> None:
    token = token_for()
    body, mac = token[len(PREFIX):].split(".")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(mac[-1])
    twin = mac[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    assert twin != mac
    assert base64.urlsafe_b64decode(twin + "=") == \
        base64.urlsafe_b64decode(mac + "=")
    assert verify(KEYS, f"{PREFIX}{body}.{twin}", NOW, LIVE.get) == Refused("malformed")


def test_another_proxys_key_or_an_unknown_kid_is_a_bad_signature() -> None:
    other = SigningKey(1, b"x" * 32)
    assert verify(KEYS, token_for(signing=other), NOW, LIVE.get) == Refused("bad_signature")
    unknown = SigningKey(9, b"k" * 32)
    assert verify(KEYS, token_for(signing=unknown), NOW, LIVE.get) == Refused("bad_signature")


def test_rotation_a_list_of_keys_verifies_by_kid() -> None:
    new = SigningKey(2, b"n" * 32)
    both = StaticKeys((new, SIGNING))
    assert both.current() is new
    assert isinstance(verify(both, token_for(signing=SIGNING), NOW, LIVE.get), Claims)
    assert isinstance(verify(both, token_for(signing=new), NOW, LIVE.get), Claims)


@pytest.mark.parametrize("lifetime", [0, 0.5, MAX_LIFETIME + 1, -1])
def test_lifetime_outside_one_second_to_a_day_is_refused(lifetime: float) -> None:
    with pytest.raises(ValueError, match="lifetime must be 1 to 86400 seconds"):
        issue(SIGNING, ROBOT, NOW, lifetime)


@pytest.mark.parametrize("name", ["", "x" * 256, "caf\u00e9", "a\nb", "a\x7fb"])
def test_names_that_cannot_be_a_client_id_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        issue(SIGNING, Holder.open(name), NOW, 60)


def test_longest_name_fits_under_max_token() -> None:
    token = token_for(Holder.open("~" * 255))
    assert len(token) <= MAX_TOKEN
    assert isinstance(verify(KEYS, token, NOW, Holder.open), Claims)


def test_secrets_stay_out_of_repr() -> None:
    assert "kkkk" not in repr(SIGNING)
    assert "kkkk" not in repr(KEYS)
    assert repr(ROBOT.fingerprint) not in repr(ROBOT)


@pytest.mark.parametrize("shape", [
    "Authorization: Bearer {t}",
    "GET /fotoweb/archives/?access_token={t}&x=1",
    '{{"access_token": "{t}", "token_type": "bearer"}}',
])
def test_the_shapes_a_token_travels_in_are_redacted(shape: str) -> None:
    token = token_for()
    assert token not in REDACT(shape.format(t=token))


@pytest.mark.parametrize("shape", [
    "refused {t}",
    "GET /fotoweb/?access%5Ftoken={t}",  # yarl decodes the name: a real access_token
    "GET /fotoweb/?token={t}",
    "Bearer%20{t}",
])
def test_a_local_token_anywhere_is_redacted(shape: str) -> None:
    token = token_for()
    assert token not in REDACT(shape.format(t=token))


# -- the signing key file -----------------------------------------------------------------

def test_key_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "local-token.key"
    keys = file_signing_keys(path, rng=lambda n: b"\x07" * n)
    assert keys.current() == SigningKey(1, b"\x07" * 32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert file_signing_keys(path).current() == keys.current()  # a restart: the same key
    assert [p.name for p in tmp_path.iterdir()] == ["local-token.key"]  # no temp left


def test_the_loser_of_a_race_reads_the_winners_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    assert publish(path, format_keys([SigningKey(1, b"w" * 32)]))
    assert not publish(path, format_keys([SigningKey(1, b"l" * 32)]))
    assert file_signing_keys(path).current().secret == b"w" * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    barrier = threading.Barrier(8)
    found: list[bytes] = []

    def start() -> None:
        barrier.wait()
        found.append(file_signing_keys(path).current().secret)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8
    assert len(set(found)) == 1


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    file_signing_keys(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="local_tokens"):
        file_signing_keys(path)


def test_key_file_symlink_is_refused(tmp_path: Path) -> None:
    file_signing_keys(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(ConfigError, match="symbolic link"):
        file_signing_keys(tmp_path / "link")


def test_key_file_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        file_signing_keys(tmp_path / "missing" / "k")


def test_key_file_that_cannot_be_created_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(ConfigError, match=r"cannot create .*Operation not permitted"):
        file_signing_keys(tmp_path / "k")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize("text", [
    "", "# only a comment\n", "1 abcd\n", "256 " + "00" * 32 + "\n", "x " + "00" * 32 + "\n",
    "1 " + "00" * 32 + "\n1 " + "11" * 32 + "\n", "1 " + "zz" * 32 + "\n",
])
def test_broken_key_file_names_the_setting(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="local_tokens") as caught:
        file_signing_keys(path)
    assert "zz" * 4 not in str(caught.value)
    assert "11" * 8 not in str(caught.value)
