"""The simulated tenant's assets (fwproxy/sim/assets.py): listings and search results in
pages, an asset, the metadata PATCH, previews that take their own previewToken."""

from __future__ import annotations

from typing import Any

import pytest

from fwproxy.sim.catalog import preview_bytes
from fwproxy.sim.media import ASSET, ASSET_LIST, ASSET_UPDATE, COLLECTION_INFO, JPEG

from .conftest import Client, state_of

PHOTO = "/fotoweb/archives/5000/Assets/photo-007.jpg.info"


async def pages(api: Client, url: str) -> list[dict[str, Any]]:
    """Every page from `url` on, following paging.next."""
    found = []
    while url:
        async with api.get(url, headers={"Accept": ASSET_LIST}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == ASSET_LIST
            found.append(await resp.json())
        url = found[-1]["paging"]["next"]
    return found


async def test_an_archive_lists_its_assets_in_pages_of_ten(api: Client) -> None:
    listed = await pages(api, "/fotoweb/archives/5000/;o=+")
    assert [len(p["data"]) for p in listed] == [10, 10, 5]
    assert [p["paging"]["next"] for p in listed] == [
        "/fotoweb/archives/5000/;o=+;p=1", "/fotoweb/archives/5000/;o=+;p=2", ""]
    assert next(p["paging"]["prev"] for p in listed) == ""
    names = [a["filename"] for p in listed for a in p["data"]]
    assert names == [f"photo-{i:03}.jpg" for i in range(1, 26)]
    reverse = await pages(api, "/fotoweb/archives/5000/;o=-")
    assert [a["filename"] for p in reverse for a in p["data"]] == names[::-1]


async def test_the_search_url_template_gives_results_in_pages(api: Client) -> None:
    async with api.get("/fotoweb/archives/5000/", headers={"Accept": COLLECTION_INFO}) as resp:
        template = (await resp.json())["searchURL"]
    url = template.replace("{?q}", "?q=norway")
    listed = await pages(api, url)
    assert [len(p["data"]) for p in listed] == [10, 10, 5]
    assert listed[0]["paging"]["next"] == "/fotoweb/archives/5000/;o=+;p=1?q=norway"
    assert {p["searchString"] for p in listed} == {"norway"}
    one = await pages(api, "/fotoweb/archives/5000/?q=harbour")
    assert [a["filename"] for a in one[0]["data"]] == [
        f"photo-{i:03}.jpg" for i in (4, 9, 14, 19, 24)]
    assert one[0]["paging"]["next"] == ""
    none = await pages(api, "/fotoweb/archives/5000/?q=nothing-like-this")
    assert (none[0]["data"], none[0]["assetCount"]) == ([], 0)


@pytest.mark.parametrize(("path", "status"), [
    ("/fotoweb/archives/5000/;o=+;p=3", 404),  # past the last page
    ("/fotoweb/archives/5000/;o=x", 400),
    ("/fotoweb/archives/5000/;p=one", 400),
    ("/fotoweb/archives/9999/;o=+", 404),
])
async def test_a_bad_listing_is_a_clear_error(api: Client, path: str, status: int) -> None:
    async with api.get(path) as resp:
        assert resp.status == status
        assert set(await resp.json()) == {"error", "detail"}


async def test_an_asset_has_its_fields_previews_and_one_original(api: Client) -> None:
    async with api.get(PHOTO, headers={"Accept": ASSET}) as resp:
        assert resp.content_type == ASSET
        asset = await resp.json()
    stored = state_of(api).catalog.asset("5000", "photo-007.jpg")
    assert stored is not None
    assert (asset["href"], asset["filename"], asset["filesize"]) == (
        PHOTO, "photo-007.jpg", len(stored.content))
    assert asset["metadata"]["5"] == {"value": "City no. 7"}
    assert asset["metadata"]["25"] == {"value": ["norway", "city"]}
    assert {f["field"]: f["value"] for f in asset["builtinFields"]} == {
        "title": "City no. 7", "tags": ["norway", "city"],
        "description": "A city in Norway, picture 7"}
    assert asset["previewToken"] == stored.preview_token
    assert [p["size"] for p in asset["previews"]] == [200, 800]
    assert [r["original"] for r in asset["renditions"]] == [True]
    async with api.get("/fotoweb/archives/5000/Assets/nope.jpg.info") as resp:
        assert resp.status == 404


async def test_patch_changes_the_metadata(api: Client) -> None:
    update = {"metadata": {"5": {"value": "Renamed"}, "25": {"value": ["x"]}}}
    async with api.patch(PHOTO, json=update,
                         headers={"Content-Type": ASSET_UPDATE, "Accept": ASSET}) as resp:
        assert resp.status == 200
        assert resp.content_type == ASSET
        answered = await resp.json()
    assert answered["metadata"]["5"] == {"value": "Renamed"}
    async with api.get(PHOTO) as resp:
        asset = await resp.json()
    assert asset["metadata"]["25"] == {"value": ["x"]}
    assert asset["metadata"]["80"] == {"value": "Ola Nordmann"}  # untouched


@pytest.mark.parametrize(("content_type", "body", "status"), [
    ("application/json", b'{"metadata": {}}', 415),
    (ASSET, b'{"metadata": {}}', 415),
    (None, b'{"metadata": {}}', 415),
    (ASSET_UPDATE, b"{not json", 400),
    (ASSET_UPDATE, b'{"metadata": {"7": {"value": "x"}}}', 400),
    (ASSET_UPDATE, b'{"metadata": {"5": {"value": 5}}}', 400),
])
async def test_a_bad_patch_changes_nothing(api: Client, content_type: str | None, body: bytes,
                                           status: int) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with api.patch(PHOTO, data=body, headers=headers) as resp:
        assert resp.status == status
        assert set(await resp.json()) == {"error", "detail"}
    stored = state_of(api).catalog.asset("5000", "photo-007.jpg")
    assert stored is not None
    assert stored.metadata["5"] == "City no. 7"


async def test_a_preview_takes_its_own_preview_token_as_bearer(api: Client) -> None:
    async with api.get(PHOTO) as resp:
        asset = await resp.json()
    preview, token = asset["previews"][0]["href"], asset["previewToken"]
    stored = state_of(api).catalog.asset("5000", "photo-007.jpg")
    assert stored is not None
    for headers in ({}, {"Authorization": f"Bearer {token}"}):  # the tenant's token or its own
        async with api.get(preview, headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == JPEG
            assert await resp.read() == preview_bytes(stored, 200)
    async with api.get(preview, headers={"Authorization": ""},
                       params={"access_token": token}) as resp:
        assert resp.status == 200
    async with api.get(preview, headers={"Accept": "application/json"}) as resp:
        assert resp.status == 406


@pytest.mark.parametrize("path", [
    PHOTO,  # the asset itself
    "/fotoweb/previews/5000/photo-008.jpg/200.jpg",  # another asset's preview
    "/fotoweb/me",
])
async def test_a_preview_token_opens_nothing_else(api: Client, path: str) -> None:
    async with api.get(PHOTO) as resp:
        token = (await resp.json())["previewToken"]
    async with api.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 401
