"""The simulated tenant's API entry points (fwproxy/sim/api.py): the full API descriptor at
/fotoweb/me, the archive lists, an archive, the cross-archive search, the bearer check."""

from __future__ import annotations

import pytest

from fwproxy.sim.media import (
    API_DESCRIPTOR,
    ASSET,
    ASSET_LIST,
    COLLECTION_INFO,
    COLLECTION_LIST,
    FULL_API_DESCRIPTOR,
)

from .conftest import Client, state_of


async def test_me_is_the_full_api_descriptor(api: Client) -> None:
    async with api.get("/fotoweb/me", headers={"Accept": FULL_API_DESCRIPTOR}) as resp:
        assert resp.status == 200
        assert resp.content_type == FULL_API_DESCRIPTOR
        me = await resp.json()
    assert (me["userName"], me["isGuest"]) == ("demo-app", False)
    assert me["fullName"] == "fwproxy demo application (client credentials)"
    assert me["archives"] == "/fotoweb/me/archives/"
    assert me["searchURL"] == "/fotoweb/archives/{?q}"
    assert me["services"]["search"] == "/fotoweb/archives/"
    assert me["services"]["rendition_request"] == "/fotoweb/services/renditions"
    assert me["services"]["upload"] == "/fotoweb/api/uploads"


async def test_the_api_descriptor_names_the_services(api: Client) -> None:
    async with api.get("/fotoweb/") as resp:
        assert resp.content_type == API_DESCRIPTOR
        assert (await resp.json())["services"]["rendition_request"]


@pytest.mark.parametrize("path", ["/fotoweb/archives/", "/fotoweb/me/archives/"])
async def test_the_archive_lists_are_collection_lists(api: Client, path: str) -> None:
    async with api.get(path, headers={"Accept": COLLECTION_LIST}) as resp:
        assert resp.status == 200
        assert resp.content_type == COLLECTION_LIST
        listed = await resp.json()
    assert [(a["id"], a["name"], a["href"]) for a in listed["data"]] == [
        ("5000", "Photos", "/fotoweb/archives/5000/"),
        ("5001", "Logos", "/fotoweb/archives/5001/"),
        ("5002", "Documents", "/fotoweb/archives/5002/")]
    assert listed["data"][0]["assetCount"] == 25
    assert listed["paging"]["next"] == ""


async def test_an_archive_redirects_to_its_slash_form_and_is_a_collection(api: Client) -> None:
    async with api.get("/fotoweb/archives/5000?x=1", allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == "/fotoweb/archives/5000/?x=1"
    async with api.get("/fotoweb/archives/5000") as resp:  # followed
        assert resp.status == 200
        assert resp.content_type == COLLECTION_INFO
        archive = await resp.json()
    assert archive["searchURL"] == "/fotoweb/archives/5000/{?q}"
    assert archive["data"] == "/fotoweb/archives/5000/;o=+"
    assert {f["id"] for f in archive["metadataEditor"]["fields"]} == {"5", "25", "80", "120"}
    async with api.get("/fotoweb/archives/9999") as resp:
        assert resp.status == 404


async def test_an_archive_asked_for_an_asset_list_answers_its_first_page(api: Client) -> None:
    async with api.get("/fotoweb/archives/5000/", headers={"Accept": ASSET_LIST}) as resp:
        assert resp.content_type == ASSET_LIST
        page = await resp.json()
    assert len(page["data"]) == 10
    assert page["paging"]["next"] == "/fotoweb/archives/5000/;o=+;p=1"


async def test_the_cross_archive_search_lists_the_archives_with_hits(api: Client) -> None:
    async with api.get("/fotoweb/archives/", params={"q": "logo"}) as resp:
        assert resp.content_type == COLLECTION_LIST
        hits = (await resp.json())["data"]
    assert [(a["id"], a["assetCount"], a["data"]) for a in hits] == [
        ("5001", 3, "/fotoweb/archives/5001/;o=+?q=logo")]


@pytest.mark.parametrize(("path", "accept"), [
    ("/fotoweb/me", "text/html"),
    ("/fotoweb/me", COLLECTION_LIST),
    ("/fotoweb/archives/", ASSET),
    ("/fotoweb/archives/5000/", ASSET),
    ("/fotoweb/archives/5000/?q=sea", COLLECTION_INFO),  # a search result is an asset list
])
async def test_an_unacceptable_accept_is_406_naming_what_is_offered(
    api: Client, path: str, accept: str
) -> None:
    async with api.get(path, headers={"Accept": accept}) as resp:
        assert resp.status == 406
        body = await resp.json()
    assert body["error"] == "not_acceptable"
    assert "application/vnd.fotoware." in body["detail"]


@pytest.mark.parametrize("path", [
    "/fotoweb/me", "/fotoweb/me/archives/", "/fotoweb/archives/", "/fotoweb/archives/5000/",
    "/fotoweb/archives/5000/;o=+;p=1", "/fotoweb/archives/5000/Assets/photo-001.jpg.info",
    "/fotoweb/previews/5000/photo-001.jpg/200.jpg", "/fotoweb/services/renditions/x",
    "/fotoweb/api/uploads/x/status",
])
async def test_every_api_path_wants_the_tenants_bearer_token(api: Client, path: str) -> None:
    async with api.get(path, headers={"Authorization": "Bearer not-a-token"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    token = next(iter(state_of(api).tokens))
    async with api.get(path, headers={"Authorization": ""},
                       params={"access_token": token}) as resp:
        assert resp.status != 401  # the token in the query still counts
