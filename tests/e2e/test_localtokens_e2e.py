"""Local tokens through `fwproxy run`: a token outlives a restart, every worker accepts every
other's, and no token appears in the log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.keys import add_key
from fwproxy.sim import TenantState
from tests.conftest import merge, tenant_config
from tests.support.processes import FwproxyProcess, launch_fwproxy

from .conftest import curl, curl_many, write_config

pytestmark = pytest.mark.e2e

TOKEN_PATH = "/fotoweb/oauth2/token"


async def token(proxy: FwproxyProcess, client_id: str, secret: str) -> str:
    result = await curl("-u", f"{client_id}:{secret}", "-d", "grant_type=client_credentials",
                        proxy.url(TOKEN_PATH))
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.text)
    assert answer["token_type"] == "bearer"
    value: str = answer["access_token"]
    return value


def config(tenant: TestServer, keys: Path, **listen: Any) -> dict[str, Any]:
    return merge(tenant_config(tenant), {"local_tokens": {"enabled": True},
                                         "access": {"api_keys_file": str(keys)},
                                         "listen": listen})


async def test_a_local_token_survives_a_restart_and_stays_out_of_the_log(
        tenant: TestServer, tenant_state: TenantState, tmp_path: Path) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    state.mkdir(mode=0o700)
    secret = add_key(keys, "robot")
    path = write_config(tmp_path / "fwproxy.yaml", config(tenant, keys))
    env = {"STATE_DIRECTORY": str(state)}
    first = await launch_fwproxy(path, env=env)
    try:
        local = await token(first, "robot", secret)
        assert (await curl("-H", f"Authorization: Bearer {local}",
                           first.url("/fotoweb/me"))).text.count('"demo-app"') == 1
        statuses = await curl_many([first.url(f"/sim/echo?access_token={local}")], 1)
        assert statuses == ["200"]
    finally:
        assert await asyncio.wait_for(first.stop(), 60) == 0
    log = first.log_text()
    assert local not in log
    assert local.split(".")[1] not in log  # not even its signature
    assert (state / "local-tokens.key").stat().st_mode & 0o077 == 0
    again = await launch_fwproxy(path, env=env)  # a restart: the same token is still good
    try:
        result = await curl("-H", f"Authorization: Bearer {local}", "-w", "\n%{http_code}",
                            again.url("/fotoweb/me"))
        assert result.text.endswith("\n200"), result.text
    finally:
        await again.stop()
    assert local not in again.log_text()
    for seen in tenant_state.seen:
        assert "fwpl_" not in seen.path_qs + repr(seen.headers)


async def test_workers_accept_each_others_tokens(
        tenant: TestServer, tenant_state: TenantState, tmp_path: Path) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    state.mkdir(mode=0o700)
    secret = add_key(keys, "robot")
    path = write_config(tmp_path / "fwproxy.yaml", config(tenant, keys, workers=2))
    proxy = await launch_fwproxy(path, env={"STATE_DIRECTORY": str(state)})
    try:
        # each token from its own connection, each used on ten connections of its own: the
        # kernel spreads connections over both workers, so a worker with a key of its own
        # would refuse about half of these
        tokens = [await token(proxy, "robot", secret) for _ in range(6)]
        for local in tokens:
            statuses = await curl_many([proxy.url("/fotoweb/me")] * 10, 10,
                                       "-H", f"Authorization: Bearer {local}")
            assert statuses == ["200"] * 10
        assert proxy.log_count("listening on") >= 1
    finally:
        assert await asyncio.wait_for(proxy.stop(), 60) == 0
    assert all(local not in proxy.log_text() for local in tokens)
    assert [p.name for p in state.iterdir()] == ["local-tokens.key"]  # one key, shared
