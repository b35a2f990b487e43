"""An aiohttp test client against the simulated tenant's app, and a valid bearer token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fwproxy.sim import TENANT, TenantState, create_tenant_app

Client = TestClient[Any, Any]


@pytest.fixture
async def api(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    """A client of the simulated tenant that sends a valid bearer token by default."""
    state = TenantState()
    token, _ = state.issue()
    client = await aiohttp_client(create_tenant_app(state),
                                  headers={"Authorization": f"Bearer {token}"})
    assert client.app is not None
    assert client.app[TENANT] is state
    return client


def state_of(client: Client) -> TenantState:
    assert client.app is not None
    state: TenantState = client.app[TENANT]
    return state
