"""FotoWeb's media types and the simulated tenant's Accept negotiation (fwproxy/sim/media.py),
as pure decisions."""

from __future__ import annotations

import pytest

from fwproxy.sim.media import (
    ASSET,
    ASSET_LIST,
    COLLECTION_INFO,
    JPEG,
    content_type_is,
    negotiate,
)

ARCHIVE = [COLLECTION_INFO, ASSET_LIST]


@pytest.mark.parametrize(("accept", "offered", "chosen"), [
    (None, ARCHIVE, COLLECTION_INFO),
    ("", ARCHIVE, COLLECTION_INFO),
    ("*/*", ARCHIVE, COLLECTION_INFO),
    ("application/*", ARCHIVE, COLLECTION_INFO),
    ("application/json", ARCHIVE, COLLECTION_INFO),  # every vendor type is +json
    (ASSET_LIST, ARCHIVE, ASSET_LIST),
    (ASSET_LIST.upper(), ARCHIVE, ASSET_LIST),
    (f"{COLLECTION_INFO};q=0.5, {ASSET_LIST}", ARCHIVE, ASSET_LIST),
    (f"{ASSET_LIST};q=0.2, */*;q=0.5", ARCHIVE, COLLECTION_INFO),
    (f"{COLLECTION_INFO};q=0, */*", ARCHIVE, ASSET_LIST),  # q=0 excludes
    (f"{ASSET}", ARCHIVE, None),  # another resource's type: 406
    ("text/html", ARCHIVE, None),
    ("application/xml, text/*", ARCHIVE, None),
    ("*/*;q=0", ARCHIVE, None),
    ("*/*;q=oops", ARCHIVE, None),  # a bad weight counts as 0
    ("image/*", [JPEG], JPEG),
    ("application/json", [JPEG], None),
    (" , ,", ARCHIVE, COLLECTION_INFO),
])
def test_negotiate(accept: str | None, offered: list[str], chosen: str | None) -> None:
    assert negotiate(accept, offered) == chosen


@pytest.mark.parametrize(("header", "expected", "ok"), [
    (ASSET, ASSET, True),
    (f"{ASSET}; charset=utf-8", ASSET, True),
    (ASSET.upper(), ASSET, True),
    ("application/json", ASSET, False),
    (None, ASSET, False),
    ("", ASSET, False),
    ("multipart/form-data; boundary=x", "multipart/form-data", True),
])
def test_content_type_is(header: str | None, expected: str, ok: bool) -> None:
    assert content_type_is(header, expected) is ok
