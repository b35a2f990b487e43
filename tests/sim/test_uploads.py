"""The simulated tenant's chunked uploads (fwproxy/sim/uploads.py)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from fwproxy.sim.catalog import known_bytes
from fwproxy.sim.media import ASSET_LIST

from .conftest import Client, state_of

SERVICE = "/fotoweb/api/uploads"
FILE = known_bytes("upload", 150)


def chunk_form(data: bytes, field: str = "chunk") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(field, data, filename="blob", content_type="application/octet-stream")
    return form


async def start(api: Client, **overrides: Any) -> dict[str, Any]:
    body = {"destination": "/fotoweb/archives/5001/", "filename": "new-logo.png",
            "fileSize": len(FILE), "metadata": {"5": {"value": "New logo"}}, **overrides}
    async with api.post(SERVICE, data=json.dumps(body),
                        headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_chunks_become_a_new_asset(api: Client) -> None:
    state_of(api).catalog.chunk_size = 64
    opened = await start(api)
    assert (opened["chunkSize"], opened["numChunks"]) == (64, 3)
    status_url = f"{SERVICE}/{opened['id']}/status"
    for index in (2, 0):  # any order
        async with api.post(f"{SERVICE}/{opened['id']}/chunks/{index}",
                            data=chunk_form(FILE[index * 64:(index + 1) * 64])) as resp:
            assert resp.status == 204
    async with api.get(status_url) as resp:
        assert await resp.json() == {"status": "awaitingData", "missingChunks": [1]}
    async with api.post(f"{SERVICE}/{opened['id']}/chunks/1", data=chunk_form(FILE[64:128])
                        ) as resp:
        assert resp.status == 204
    async with api.get(status_url) as resp:
        done = await resp.json()
    assert done["status"] == "done"
    asset = done["asset"]
    assert (asset["filename"], asset["filesize"]) == ("new-logo.png", len(FILE))
    assert asset["metadata"]["5"] == {"value": "New logo"}
    stored = state_of(api).catalog.asset("5001", "new-logo.png")
    assert stored is not None
    assert stored.content == FILE
    async with api.get("/fotoweb/archives/5001/?q=new", headers={"Accept": ASSET_LIST}
                       ) as resp:
        assert [a["href"] for a in (await resp.json())["data"]] == [asset["href"]]
    async with api.post(f"{SERVICE}/{opened['id']}/chunks/1", data=chunk_form(FILE[64:128])
                        ) as resp:
        assert resp.status == 409


@pytest.mark.parametrize("overrides", [
    {"destination": "/fotoweb/archives/9999/"},
    {"filename": "../x.png"},
    {"filename": ""},
    {"fileSize": -1},
    {"fileSize": "10"},
    {"fileSize": True},
    {"metadata": {"999": {"value": "x"}}},
])
async def test_a_bad_upload_is_refused(api: Client, overrides: dict[str, Any]) -> None:
    body = {"destination": "/fotoweb/archives/5001/", "filename": "x.png", "fileSize": 10,
            **overrides}
    async with api.post(SERVICE, data=json.dumps(body),
                        headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert set(await resp.json()) == {"error", "detail"}
    async with api.post(SERVICE, data=json.dumps(body),
                        headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415


async def test_a_bad_chunk_is_refused(api: Client) -> None:
    state_of(api).catalog.chunk_size = 64
    opened = await start(api)
    chunks = f"{SERVICE}/{opened['id']}/chunks"
    for url, data, status in [
        (f"{chunks}/0", chunk_form(FILE[:63]), 400),  # short
        (f"{chunks}/3", chunk_form(FILE[:22]), 400),  # no such chunk
        (f"{chunks}/0", chunk_form(FILE[:64], field="file"), 400),  # not in `chunk`
        (f"{SERVICE}/nope/chunks/0", chunk_form(FILE[:64]), 404),
    ]:
        async with api.post(url, data=data) as resp:
            assert resp.status == status
            assert set(await resp.json()) == {"error", "detail"}
    async with api.post(f"{chunks}/0", data=FILE[:64],
                        headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 415
    assert state_of(api).catalog.uploads[opened["id"]].chunks == {}
