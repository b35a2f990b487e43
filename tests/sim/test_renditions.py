"""The simulated tenant's rendition service (fwproxy/sim/renditions.py): 202 with a Location,
202 while preparing, then the bytes; 410 once cleaned up."""

from __future__ import annotations

import json

import pytest

from fwproxy.sim.media import RENDITION_REQUEST

from .conftest import Client, state_of

HREF = "/fotoweb/archives/5000/Assets/photo-003.jpg.info/__renditions/ORIGINAL"


async def ask(api: Client, href: str = HREF) -> str:
    async with api.post("/fotoweb/services/renditions", data=json.dumps({"href": href}),
                        headers={"Content-Type": RENDITION_REQUEST}) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
        assert (await resp.json())["href"] == location
    return location


@pytest.mark.parametrize("polls", [0, 1, 3])
async def test_a_rendition_is_preparing_for_n_polls_then_200_with_the_bytes(
    api: Client, polls: int
) -> None:
    state_of(api).catalog.rendition_polls = polls
    location = await ask(api)
    for _ in range(polls):
        async with api.get(location) as resp:
            assert resp.status == 202
    for _ in range(2):  # and again, as often as asked
        async with api.get(location) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Disposition"] == 'attachment; filename="photo-003.jpg"'
            body = await resp.read()
    stored = state_of(api).catalog.asset("5000", "photo-003.jpg")
    assert stored is not None
    assert body == stored.content


async def test_the_hook_cleans_tasks_up_and_they_answer_410(api: Client) -> None:
    location = await ask(api)
    async with api.post("/sim/renditions/expire") as resp:
        assert (await resp.json()) == {"expired": 1}
    async with api.get(location) as resp:
        assert resp.status == 410
        assert (await resp.json())["error"] == "gone"
    fresh = await ask(api)  # a new request works again
    assert fresh != location
    async with api.get("/fotoweb/services/renditions/unknown") as resp:
        assert resp.status == 404


@pytest.mark.parametrize(("content_type", "body", "status"), [
    ("application/json", json.dumps({"href": HREF}), 415),
    (None, json.dumps({"href": HREF}), 415),
    (RENDITION_REQUEST, "{", 400),
    (RENDITION_REQUEST, json.dumps({"href": "/fotoweb/archives/5000/"}), 400),
    (RENDITION_REQUEST, json.dumps(["x"]), 400),
])
async def test_a_bad_rendition_request_is_refused(api: Client, content_type: str | None,
                                                  body: str, status: int) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with api.post("/fotoweb/services/renditions", data=body, headers=headers) as resp:
        assert resp.status == status
        assert set(await resp.json()) == {"error", "detail"}
    assert state_of(api).catalog.tasks == {}
