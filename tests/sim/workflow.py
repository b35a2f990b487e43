"""A whole FotoWeb workflow as an integration writes it, for any generic OAuth client.

Theory of operation: the client has its token already (each client fetches it its own
way); the workflow then does what a FotoWeb integration does, naming every FotoWeb media
type: the API descriptor (``/fotoweb/me``) -> the archive list -> an archive (through its
redirect) -> a search with the archive's ``searchURL`` template, following ``paging.next``
over every page -> an asset -> its original rendition (202, poll while 202, 200 with the
bytes) -> a chunked upload (multipart field ``chunk``) -> a metadata PATCH -> a preview
fetched with the asset's own ``previewToken`` as bearer, by a plain HTTP session (the OAuth
session would put its own token on it). It is written twice, once for a requests-like
session (authlib's and requests-oauthlib's ``OAuth2Session``) and once for authlib's async
httpx client, step for step the same, and returns what it saw (`Outcome`) for the tests to
compare with the tenant. Nothing here knows whether a proxy sits between client and tenant:
`base` is where the client talks to, `preview_headers` what else a preview request needs
(an API key for fwproxy, for instance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import requests
from authlib.integrations.httpx_client import AsyncOAuth2Client

from fwproxy.sim.catalog import Asset, Catalog, preview_bytes
from fwproxy.sim.media import (
    ASSET,
    ASSET_LIST,
    ASSET_UPDATE,
    COLLECTION_INFO,
    COLLECTION_LIST,
    FULL_API_DESCRIPTOR,
    RENDITION_REQUEST,
    UPLOAD_INFO,
    UPLOAD_STATUS,
)

QUERY = "norway"
UPLOAD_NAME = "workflow-upload.bin"
UPLOAD = bytes(range(256)) * 600  # 150 KiB: three chunks of the tenant's 64 KiB
MAX_POLLS = 50  # a hang guard: the tenant prepares for a few polls only
MAX_PAGES = 20


@dataclass
class Outcome:
    """What the workflow saw."""

    user: str = ""
    archive: dict[str, Any] = field(default_factory=dict)
    redirected: bool = False
    pages: int = 0
    hits: list[str] = field(default_factory=list)  # asset hrefs, in the order of the pages
    asset: dict[str, Any] = field(default_factory=dict)
    polls: int = 0  # 202 answers before the rendition's bytes
    rendition: bytes = b""
    uploaded: dict[str, Any] = field(default_factory=dict)
    patched: dict[str, Any] = field(default_factory=dict)
    preview: bytes = b""


def search_url(template: str, q: str) -> str:
    """Expand a FotoWeb ``{?q}`` URI template (RFC 6570 form-style query)."""
    assert template.endswith("{?q}"), template
    return template[: -len("{?q}")] + "?q=" + quote(q, safe="")


def upload_request(archive_href: str) -> dict[str, Any]:
    return {"destination": archive_href, "filename": UPLOAD_NAME, "fileSize": len(UPLOAD),
            "metadata": {"5": {"value": "Uploaded by the workflow"}}}


def patch_body(who: str) -> dict[str, Any]:
    return {"metadata": {"5": {"value": f"Patched by {who}"},
                         "25": {"value": ["workflow", who]}}}


def chunks(info: dict[str, Any]) -> list[bytes]:
    size = int(info["chunkSize"])
    parts = [UPLOAD[i * size:(i + 1) * size] for i in range(int(info["numChunks"]))]
    assert b"".join(parts) == UPLOAD
    return parts


def _check(status: int, expected: int, what: str, body: bytes) -> None:
    assert status == expected, f"{what}: {status} {body[:300]!r}"


def run_sync(session: requests.Session, base: str, who: str,
             preview_headers: dict[str, str] | None = None) -> Outcome:
    """The workflow with a requests-like session that holds its token."""
    seen = Outcome()

    def get(url: str, accept: str) -> Any:
        resp = session.get(base + url, headers={"Accept": accept}, timeout=30)
        _check(resp.status_code, 200, f"GET {url}", resp.content)
        assert resp.headers["Content-Type"].startswith(accept), resp.headers
        return resp.json()

    me = get("/fotoweb/me", FULL_API_DESCRIPTOR)
    seen.user = me["userName"]
    archives = get(me["archives"], COLLECTION_LIST)["data"]
    photos = next(a for a in archives if a["name"] == "Photos")
    resp = session.get(base + photos["href"].rstrip("/"), headers={"Accept": COLLECTION_INFO},
                       timeout=30)
    _check(resp.status_code, 200, "the archive", resp.content)
    seen.redirected = [r.status_code for r in resp.history] == [301]
    seen.archive = resp.json()
    url = search_url(seen.archive["searchURL"], QUERY)
    while url and seen.pages < MAX_PAGES:
        page = get(url, ASSET_LIST)
        seen.pages += 1
        seen.hits += [asset["href"] for asset in page["data"]]
        url = page["paging"]["next"]
    seen.asset = get(seen.hits[0], ASSET)
    original = next(r for r in seen.asset["renditions"] if r["original"])
    resp = session.post(base + me["services"]["rendition_request"],
                        data=json.dumps({"href": original["href"]}), timeout=30,
                        headers={"Content-Type": RENDITION_REQUEST})
    _check(resp.status_code, 202, "the rendition request", resp.content)
    location = resp.headers["Location"]
    while True:
        resp = session.get(base + location, timeout=30)
        if resp.status_code != 202 or seen.polls >= MAX_POLLS:
            break
        seen.polls += 1
    _check(resp.status_code, 200, "the rendition", resp.content)
    seen.rendition = resp.content
    upload = me["services"]["upload"]
    resp = session.post(base + upload, data=json.dumps(upload_request(seen.archive["href"])),
                        headers={"Content-Type": "application/json", "Accept": UPLOAD_INFO},
                        timeout=30)
    _check(resp.status_code, 200, "the upload", resp.content)
    info = resp.json()
    for index, part in enumerate(chunks(info)):
        resp = session.post(f"{base}{upload}/{info['id']}/chunks/{index}", timeout=30,
                            files={"chunk": ("chunk", part, "application/octet-stream")})
        _check(resp.status_code, 204, f"chunk {index}", resp.content)
    status = get(f"{upload}/{info['id']}/status", UPLOAD_STATUS)
    assert status["status"] == "done", status
    seen.uploaded = status["asset"]
    resp = session.patch(base + seen.asset["href"], data=json.dumps(patch_body(who)),
                         headers={"Content-Type": ASSET_UPDATE, "Accept": ASSET}, timeout=30)
    _check(resp.status_code, 200, "the PATCH", resp.content)
    seen.patched = resp.json()
    with requests.Session() as plain:  # not the OAuth session: it would send its own token
        plain.trust_env = False
        resp = plain.get(base + seen.patched["previews"][0]["href"], timeout=30, headers={
            "Authorization": f"Bearer {seen.patched['previewToken']}",
            **(preview_headers or {})})
    _check(resp.status_code, 200, "the preview", resp.content)
    seen.preview = resp.content
    return seen


async def run_async(client: AsyncOAuth2Client, base: str, who: str,
                    preview_headers: dict[str, str] | None = None) -> Outcome:
    """The same workflow with authlib's AsyncOAuth2Client (an httpx client)."""
    seen = Outcome()

    async def get(url: str, accept: str) -> Any:
        resp = await client.get(base + url, headers={"Accept": accept})
        _check(resp.status_code, 200, f"GET {url}", resp.content)
        assert resp.headers["Content-Type"].startswith(accept), resp.headers
        return resp.json()

    me = await get("/fotoweb/me", FULL_API_DESCRIPTOR)
    seen.user = me["userName"]
    archives = (await get(me["archives"], COLLECTION_LIST))["data"]
    photos = next(a for a in archives if a["name"] == "Photos")
    resp = await client.get(base + photos["href"].rstrip("/"),
                            headers={"Accept": COLLECTION_INFO}, follow_redirects=True)
    _check(resp.status_code, 200, "the archive", resp.content)
    seen.redirected = [r.status_code for r in resp.history] == [301]
    seen.archive = resp.json()
    url = search_url(seen.archive["searchURL"], QUERY)
    while url and seen.pages < MAX_PAGES:
        page = await get(url, ASSET_LIST)
        seen.pages += 1
        seen.hits += [asset["href"] for asset in page["data"]]
        url = page["paging"]["next"]
    seen.asset = await get(seen.hits[0], ASSET)
    original = next(r for r in seen.asset["renditions"] if r["original"])
    resp = await client.post(base + me["services"]["rendition_request"],
                             content=json.dumps({"href": original["href"]}),
                             headers={"Content-Type": RENDITION_REQUEST})
    _check(resp.status_code, 202, "the rendition request", resp.content)
    location = resp.headers["Location"]
    while True:
        resp = await client.get(base + location)
        if resp.status_code != 202 or seen.polls >= MAX_POLLS:
            break
        seen.polls += 1
    _check(resp.status_code, 200, "the rendition", resp.content)
    seen.rendition = resp.content
    upload = me["services"]["upload"]
    resp = await client.post(base + upload,
                             content=json.dumps(upload_request(seen.archive["href"])),
                             headers={"Content-Type": "application/json",
                                      "Accept": UPLOAD_INFO})
    _check(resp.status_code, 200, "the upload", resp.content)
    info = resp.json()
    for index, part in enumerate(chunks(info)):
        resp = await client.post(f"{base}{upload}/{info['id']}/chunks/{index}",
                                 files={"chunk": ("chunk", part, "application/octet-stream")})
        _check(resp.status_code, 204, f"chunk {index}", resp.content)
    status = await get(f"{upload}/{info['id']}/status", UPLOAD_STATUS)
    assert status["status"] == "done", status
    seen.uploaded = status["asset"]
    resp = await client.patch(base + seen.asset["href"], content=json.dumps(patch_body(who)),
                              headers={"Content-Type": ASSET_UPDATE, "Accept": ASSET})
    _check(resp.status_code, 200, "the PATCH", resp.content)
    seen.patched = resp.json()
    async with aiohttp.ClientSession() as plain, plain.get(  # not the OAuth client
        base + seen.patched["previews"][0]["href"], headers={
            "Authorization": f"Bearer {seen.patched['previewToken']}",
            **(preview_headers or {})}) as answer:
        preview = await answer.read()
        _check(answer.status, 200, "the preview", preview)
    seen.preview = preview
    return seen


def saw_what_the_tenant_holds(outcome: Outcome, catalog: Catalog, who: str) -> Asset:
    """The workflow's findings match the tenant's catalogue: every page of the search, the
    rendition after its polls, the uploaded asset, the patched metadata, the preview.
    Returns the first asset of archive 5000 (the one the workflow worked on)."""
    assert outcome.redirected
    assert outcome.pages == 3
    assert outcome.hits == [a.href for a in catalog.search("5000", QUERY)]
    first = catalog.assets["5000"][0]
    assert (outcome.polls, outcome.rendition) == (catalog.rendition_polls, first.content)
    stored = catalog.asset("5000", UPLOAD_NAME)
    assert stored is not None
    assert stored.content == UPLOAD
    assert first.metadata["5"] == f"Patched by {who}"
    assert outcome.preview == preview_bytes(first, 200)
    return first
