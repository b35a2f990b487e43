"""The whole FotoWeb workflow (tests/sim/workflow.py) through a real `fwproxy run` by a
plain requests session that holds no token: fwproxy adds its own. FotoWeb's paging links
(``…/;o=+;p=N``), the archive's redirect, the rendition polls, the multipart chunks and the
PATCH all pass, and the preview keeps the client's own previewToken (client_authorization:
keep)."""

from __future__ import annotations

import asyncio

import requests
from aiohttp.test_utils import TestServer

from fwproxy.sim import TENANT
from tests.sim.workflow import Outcome, run_sync, saw_what_the_tenant_holds

from .conftest import StartProxy


async def test_a_plain_client_runs_the_fotoweb_workflow_through_fwproxy(
    start_proxy: StartProxy, tenant: TestServer
) -> None:
    proxy = await start_proxy()

    def work() -> Outcome:
        with requests.Session() as session:
            session.trust_env = False
            return run_sync(session, proxy.base, "plain")

    outcome = await asyncio.to_thread(work)
    assert tenant.app is not None
    state = tenant.app[TENANT]
    first = saw_what_the_tenant_holds(outcome, state.catalog, "plain")
    paged = [s.path_qs for s in state.seen if ";" in s.path_qs]
    assert paged == ["/fotoweb/archives/5000/;o=+;p=1?q=norway",
                     "/fotoweb/archives/5000/;o=+;p=2?q=norway"]
    previews = [s for s in state.seen if s.path_qs.startswith("/fotoweb/previews/")]
    assert [s.headers["authorization"] for s in previews] == [[f"Bearer {first.preview_token}"]]
    real = {f"Bearer {token}" for token in state.tokens}
    assert all(s.headers["authorization"][0] in real for s in state.seen if s not in previews)
