"""Bodies both ways: a POST replayed after a 401, gzip passed through untouched, redirects
pointed at the proxy and never followed."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from fwproxy.replay import SPILL_AT
from fwproxy.sim import GZIP_PAYLOAD, TenantState
from tests.conftest import token_check

from .conftest import FwproxyProcess, StartProxy, curl

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "size",
    [300 * 1024, SPILL_AT + 512 * 1024],
    ids=["300KiB-in-memory", "1.5MiB-spilled-to-disk"],
)
async def test_post_body_is_replayed_whole_after_a_401(
    fwproxy: FwproxyProcess, tenant_state: TenantState, tmp_path: Path, size: int
) -> None:
    warm = await curl("-o", "/dev/null", "-w", "%{http_code}", fwproxy.url("/fotoweb/me"))
    assert warm.text == "200"
    body = os.urandom(size)
    upload = tmp_path / "body.bin"
    upload.write_bytes(body)
    seen_before = len(tenant_state.seen)
    tenant_state.revoke_all()

    result = await curl(
        "-H", "Content-Type: application/octet-stream",
        "--data-binary", f"@{upload}",
        "-w", "\n%{http_code}",
        fwproxy.url("/sim/upload"),
    )
    answer, _, status = result.text.rpartition("\n")
    assert status == "200", result.text
    assert json.loads(answer) == {
        "body_size": size, "body_sha256": hashlib.sha256(body).hexdigest()
    }
    # Two attempts reached the tenant: the refused one, then the replay with every byte;
    # between them fwproxy's one check that the token it had used is refused everywhere.
    attempts = list(tenant_state.seen)[seen_before:]
    assert [(r.method, r.path_qs) for r in attempts if not token_check(r)] == [
        ("POST", "/sim/upload")] * 2
    assert [(r.method, r.path_qs) for r in attempts if token_check(r)] == [
        ("GET", "/fotoweb/me")]
    assert tenant_state.upload_sizes == [size]
    assert tenant_state.token_requests == 2
    await fwproxy.stop()  # the whole log, up to EOF
    access = [line for line in fwproxy.lines if '"POST /sim/upload"' in line]
    assert len(access) == 1
    assert f"in={size} " in access[0]
    assert "replays=1" in access[0]


async def test_body_beyond_the_replay_limit_gets_the_401(
    start_proxy: StartProxy, tenant_state: TenantState, tmp_path: Path
) -> None:
    # A body larger than auth.replay_max_body is streamed without a copy, so it cannot be
    # sent again: the client gets the tenant's 401, and the next request a fresh token.
    proxy = await start_proxy({"auth": {"replay_max_body": "100KiB"}})
    upload = tmp_path / "body.bin"
    upload.write_bytes(os.urandom(300 * 1024))
    await proxy.wait_for_line("token obtained")  # the start-up token, revoked next
    tenant_state.revoke_all()
    refused = await curl("--data-binary", f"@{upload}", "-o", "/dev/null", "-w", "%{http_code}",
                         proxy.url("/sim/upload"))
    assert refused.text == "401"
    assert [r.path_qs for r in tenant_state.seen] == ["/sim/upload"]  # not replayed
    assert tenant_state.upload_sizes == []
    after = await curl("-o", "/dev/null", "-w", "%{http_code}", proxy.url("/fotoweb/me"))
    assert after.text == "200"
    assert tenant_state.token_requests == 2


async def test_head_is_forwarded_without_a_body(fwproxy: FwproxyProcess) -> None:
    result = await curl("-I", fwproxy.url("/fotoweb/me"))
    assert result.returncode == 0, result.stderr
    statuses, fields, body = parse_head(result.stdout)
    assert statuses == ["HTTP/1.1 200 OK"]
    assert int(fields["content-length"][0]) > 0  # the GET's length, as the tenant said
    assert body == b""


async def test_gzip_passes_through_untouched(fwproxy: FwproxyProcess, tmp_path: Path) -> None:
    headers = tmp_path / "headers.txt"
    body = tmp_path / "body.bin"
    result = await curl(
        "-H", "Accept-Encoding: gzip",
        "-D", str(headers), "-o", str(body),
        fwproxy.url("/sim/gzip"),
    )
    assert result.returncode == 0, result.stderr
    raw = body.read_bytes()
    assert raw == gzip.compress(GZIP_PAYLOAD, mtime=0)
    assert gzip.decompress(raw) == GZIP_PAYLOAD
    lines = headers.read_text().splitlines()
    assert lines[0].startswith("HTTP/1.1 200")
    fields = {name.strip().lower(): value.strip()
              for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    assert fields["content-encoding"] == "gzip"
    assert int(fields["content-length"]) == len(raw)


def parse_head(raw: bytes) -> tuple[list[str], dict[str, list[str]], bytes]:
    """`curl -si` output: every status line seen, the last response's headers, its body."""
    text_head, _, body = raw.partition(b"\r\n\r\n")
    lines = text_head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    statuses = [line for line in raw.decode("latin-1").split("\r\n") if line.startswith("HTTP/")]
    return statuses, fields, body


async def test_redirect_to_the_tenant_points_at_the_proxy(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    result = await curl("-i", fwproxy.url("/sim/redirect"))
    assert result.returncode == 0, result.stderr
    statuses, fields, _ = parse_head(result.stdout)
    assert statuses == ["HTTP/1.1 302 Found"]  # not followed
    assert fields["location"] == [f"http://127.0.0.1:{fwproxy.port}/fotoweb/me"]
    assert fields["content-location"] == [f"http://127.0.0.1:{fwproxy.port}/fotoweb/me"]
    assert [r.path_qs for r in tenant_state.seen] == ["/sim/redirect"]


async def test_redirect_elsewhere_is_left_alone(
    fwproxy: FwproxyProcess, tenant_state: TenantState
) -> None:
    result = await curl("-i", fwproxy.url("/sim/redirect?elsewhere=https://example.org/x"))
    assert result.returncode == 0, result.stderr
    statuses, fields, _ = parse_head(result.stdout)
    assert statuses == ["HTTP/1.1 302 Found"]
    assert fields["location"] == ["https://example.org/x"]
    assert len(tenant_state.seen) == 1
