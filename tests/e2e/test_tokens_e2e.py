"""Token handling seen from outside: single flight, one renewal per 401 storm, the
header-stripping fallback, and the `token` and `check` commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from fwproxy.proxy import STRIP_HINT
from fwproxy.sim import TOKEN_PATH, TenantState
from tests.conftest import merge, tenant_config, token_check, wait_until

from .conftest import (
    FwproxyProcess,
    Relay,
    StartProxy,
    curl,
    curl_many,
    established_connections,
    run_fwproxy,
    write_config,
)

pytestmark = pytest.mark.e2e

CURL_PROCESSES = 4
URLS_PER_CURL = 20
CONCURRENT = CURL_PROCESSES * URLS_PER_CURL


async def storm(proxy: FwproxyProcess, path: str) -> list[str]:
    """CONCURRENT simultaneous GETs of `path`: several curl processes, each with -Z."""
    batches = [
        curl_many(
            [proxy.url(f"{path}?n={i * URLS_PER_CURL + j}") for j in range(URLS_PER_CURL)],
            URLS_PER_CURL,
        )
        for i in range(CURL_PROCESSES)
    ]
    codes: list[str] = []
    for batch in await asyncio.gather(*batches):
        codes.extend(batch)
    return codes


async def test_cold_start_fetches_one_token_for_a_crowd(
    start_proxy: StartProxy, token_gate: Relay, tenant_state: TenantState
) -> None:
    # The gate holds the start-up token request, so the proxy is cold when the crowd
    # arrives: every request must wait for that one request instead of starting its own.
    token_gate.hold()
    proxy = await start_proxy({"auth": {"token_url": token_gate.url + TOKEN_PATH}})
    await wait_until(lambda: token_gate.arrived == 1, "the warm-up token request")
    crowd = asyncio.ensure_future(storm(proxy, "/fotoweb/me"))
    try:
        await wait_until(
            lambda: established_connections(proxy.port) >= CONCURRENT or crowd.done(),
            f"{CONCURRENT} connections to the proxy",
        )
        assert tenant_state.token_requests == 0
        assert not crowd.done()  # nobody was answered without a token
    finally:
        token_gate.release()
    codes = await crowd
    assert codes == ["200"] * CONCURRENT
    assert token_gate.arrived == 1
    assert tenant_state.token_requests == 1
    assert len(tenant_state.seen) == CONCURRENT  # no request needed a replay


@pytest.mark.parametrize(
    "hold",
    ["nothing", "renewal", "requests"],
    ids=["natural-timing", "renewal-held-until-all-arrived", "all-sent-with-the-old-token"],
)
async def test_401_storm_renews_once(
    start_proxy: StartProxy,
    token_gate: Relay,
    tenant_relay: Relay,
    tenant_state: TenantState,
    hold: str,
) -> None:
    proxy = await start_proxy(
        {"tenant": {"url": tenant_relay.url}, "auth": {"token_url": token_gate.url + TOKEN_PATH}}
    )
    first = await curl("-o", "/dev/null", "-w", "%{http_code}", proxy.url("/fotoweb/me"))
    assert first.text == "200"
    assert tenant_state.token_requests == 1
    old_tokens = set(tenant_state.tokens)
    seen_before = len(tenant_state.seen)
    relayed_before = tenant_relay.arrived
    if hold == "requests":
        # Every request of the storm leaves the proxy with the old token before the tenant
        # answers any: then all are refused at once, and the later 401s arrive while the
        # renewal runs or after it finished. None of them may drop the new token.
        tenant_relay.hold()
        crowd = asyncio.ensure_future(storm(proxy, "/fotoweb/me"))
        try:
            await wait_until(
                lambda: tenant_relay.arrived - relayed_before >= CONCURRENT or crowd.done(),
                f"{CONCURRENT} requests on their way to the tenant",
            )
            assert not crowd.done()
            tenant_state.revoke_all()
        finally:
            tenant_relay.release()
    elif hold == "renewal":
        # The renewal waits until the whole storm is inside the proxy: the requests that
        # carried the old token got their 401, the later ones wait for the renewal.
        token_gate.hold()
        tenant_state.revoke_all()
        crowd = asyncio.ensure_future(storm(proxy, "/fotoweb/me"))
        try:
            await wait_until(lambda: token_gate.arrived == 2 or crowd.done(), "the renewal")
            await wait_until(
                lambda: established_connections(proxy.port) >= CONCURRENT or crowd.done(),
                f"{CONCURRENT} connections to the proxy",
            )
            assert not crowd.done()
        finally:
            token_gate.release()
    else:
        tenant_state.revoke_all()
        crowd = asyncio.ensure_future(storm(proxy, "/fotoweb/me"))
    codes = await crowd
    assert codes == ["200"] * CONCURRENT
    assert tenant_state.token_requests == 2
    assert token_gate.arrived == 2
    storm_seen = list(tenant_state.seen)[seen_before:]
    # one check that the old token is refused everywhere, however many 401s met it
    assert len([r for r in storm_seen if token_check(r)]) == 1
    storm_seen = [r for r in storm_seen if not token_check(r)]
    rejected = [r for r in storm_seen if bearer(r.headers) in old_tokens]
    accepted = [r for r in storm_seen if bearer(r.headers) in tenant_state.tokens]
    if hold == "requests":
        assert len(rejected) == CONCURRENT
    assert len(rejected) >= 1
    assert len(accepted) == CONCURRENT  # every request reached the tenant with the new token
    assert len(rejected) + len(accepted) == len(storm_seen)
    assert len(tenant_state.tokens) == 1
    await proxy.stop()  # the whole log, up to EOF
    assert proxy.log_count("token rejected by the tenant (401); renewing") == 1


def bearer(headers: dict[str, list[str]]) -> str:
    values = headers.get("authorization", [])
    assert len(values) == 1, values
    scheme, _, token = values[0].partition(" ")
    assert scheme == "Bearer"
    return token


async def test_tenant_stripping_authorization_switches_to_query_after_two_paths(
    start_proxy: StartProxy, tenant_state: TenantState
) -> None:
    tenant_state.strip_authorization = True
    proxy = await start_proxy()  # token_placement: auto (the default)
    first = await curl("-w", "\\n%{http_code}", proxy.url("/fotoweb/me"))
    body, _, status = first.text.rpartition("\n")
    assert status == "200"  # the query probe's answer
    assert json.loads(body)["userName"] == "demo-app"
    assert proxy.log_count(STRIP_HINT) == 0  # one path proves nothing for every client
    second = await curl("-o", "/dev/null", "-w", "%{http_code}",
                        proxy.url("/fotoweb/archives/"))
    assert second.text == "200"
    await proxy.wait_for_line(STRIP_HINT)  # a second path does
    assert proxy.log_count(STRIP_HINT) == 1
    hint_line = next(line for line in proxy.lines if STRIP_HINT in line)
    assert "WARNING" in hint_line
    assert "/fotoweb/me: 401 with the header, 200 in the query" in hint_line
    assert "/fotoweb/archives: 401 with the header, 200 in the query" in hint_line

    third = await curl("-o", "/dev/null", "-w", "%{http_code}", proxy.url("/fotoweb/me"))
    assert third.text == "200"
    # Each of the first two: header (401), header again (401), query probe (200).
    # The third: straight to the query placement, one attempt.
    in_query = ["access_token=" in r.path_qs for r in tenant_state.seen]
    assert in_query == [False, False, True] * 2 + [True]
    await proxy.stop()  # the whole log, up to EOF
    assert proxy.log_count(STRIP_HINT) == 1
    assert tenant_state.token_requests == 2  # the warm-up token and the one renewal
    for token in tenant_state.tokens:  # now in URLs: they must not reach the log with them
        assert token not in proxy.log_text()


async def test_token_command_prints_one_valid_token(
    tenant: TestServer, tenant_state: TenantState, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "fwproxy.yaml", tenant_config(tenant))
    result = await run_fwproxy("token", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0] in tenant_state.tokens
    assert tenant_state.token_requests == 1
    assert lines[0] not in result.stderr


async def test_check_reports_the_user(
    tenant: TestServer, tenant_state: TenantState, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "fwproxy.yaml", tenant_config(tenant))
    result = await run_fwproxy("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fwproxy demo application (client credentials)" in result.stdout
    assert "/fotoweb/me  ok" in result.stdout
    assert tenant_state.seen[-1].path_qs == "/fotoweb/me"
    for token in tenant_state.tokens:
        assert token not in result.stdout + result.stderr


async def test_check_with_a_wrong_secret_says_invalid_client(
    tenant: TestServer, tenant_state: TenantState, tmp_path: Path
) -> None:
    wrong = "wrong-secret-0123456789"
    config = write_config(
        tmp_path / "fwproxy.yaml", merge(tenant_config(tenant), {"auth": {"client_secret": wrong}})
    )
    result = await run_fwproxy("check", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "invalid_client" in result.stdout
    assert wrong not in result.stdout + result.stderr
    assert tenant_state.token_requests == 1
    assert not tenant_state.seen  # no API call without a token
