"""The simulated tenant's seeded catalogue and its pure decisions (fwproxy/sim/catalog.py)."""

from __future__ import annotations

import pytest

from fwproxy.sim.catalog import (
    FIELDS,
    Catalog,
    Upload,
    check_metadata,
    listing_url,
    matches,
    page_of,
    parse_listing,
)

MULTI = {fid: multi for fid, (_, multi, _) in FIELDS.items()}


def test_the_seed_is_deterministic_but_preview_tokens_are_secret() -> None:
    one, two = Catalog.seeded(), Catalog.seeded()
    assert list(one.archives) == ["5000", "5001", "5002"]
    assert [len(one.assets[a]) for a in one.archives] == [25, 3, 2]
    for a, b in zip(one.assets["5000"], two.assets["5000"], strict=True):
        assert (a.filename, a.content, a.metadata) == (b.filename, b.content, b.metadata)
        assert a.preview_token != b.preview_token
        assert a.preview_token not in repr(a)
    assert len(one.search("5000", "norway")) == 25  # three pages of 10
    assert len(one.search("5000", "NORWAY sea")) == 5


@pytest.mark.parametrize(("params", "parsed"), [
    ("", ("+", 0)),
    (";o=+", ("+", 0)),
    (";o=+;p=2", ("+", 2)),
    (";p=3;o=-", ("-", 3)),
    (";o= ;p=1", ("+", 1)),  # a + decoded as a space
    (";o=x", None),
    (";p=-1", None),
    (";p=", None),
    (";p=99999999", None),
    (";z=1", None),
    (";", None),
])
def test_parse_listing(params: str, parsed: tuple[str, int] | None) -> None:
    assert parse_listing(params) == parsed


@pytest.mark.parametrize(("count", "page", "size", "bounds"), [
    (25, 0, 10, (0, 10)), (25, 2, 10, (20, 25)), (25, 3, 10, None),
    (0, 0, 10, (0, 0)), (0, 1, 10, None), (20, 1, 10, (10, 20)), (20, 2, 10, None),
])
def test_page_of(count: int, page: int, size: int, bounds: tuple[int, int] | None) -> None:
    assert page_of(count, page, size) == bounds


def test_listing_url_keeps_the_query_escaped() -> None:
    assert listing_url("5000", "+", 1, "") == "/fotoweb/archives/5000/;o=+;p=1"
    assert listing_url("5000", "-", 2, "a b&c") == "/fotoweb/archives/5000/;o=-;p=2?q=a%20b%26c"


def test_matches_every_word_in_filename_or_fields() -> None:
    asset = Catalog.seeded().assets["5000"][0]  # photo-001.jpg, forest
    assert matches(asset, "")
    assert matches(asset, "photo-001")
    assert matches(asset, "Forest norway")
    assert not matches(asset, "forest city")


@pytest.mark.parametrize(("update", "result"), [
    ({"metadata": {"5": {"value": "T"}, "25": {"value": ["a", "b"]}}},
     {"5": "T", "25": ["a", "b"]}),
    ({"metadata": {}}, {}),
    ({"metadata": {"999": {"value": "x"}}}, "unknown metadata field '999'"),
    ({"metadata": {"5": {"value": ["x"]}}}, "field 5 takes a string as 'value'"),
    ({"metadata": {"25": {"value": "x"}}}, "field 25 takes a list of strings as 'value'"),
    ({"metadata": {"25": {"value": [1]}}}, "field 25 takes a list of strings as 'value'"),
    ({"metadata": {"5": "x"}}, "field 5 takes a string as 'value'"),
    ({"metadata": []}, "the body must be an object with a 'metadata' object"),
    ([], "the body must be an object with a 'metadata' object"),
])
def test_check_metadata(update: object, result: object) -> None:
    assert check_metadata(update, MULTI) == result


@pytest.mark.parametrize(("size", "chunk", "count", "lengths"), [
    (150, 64, 3, [64, 64, 22]), (128, 64, 2, [64, 64]), (0, 64, 1, [0]), (1, 64, 1, [1]),
])
def test_upload_chunks(size: int, chunk: int, count: int, lengths: list[int]) -> None:
    upload = Upload("5001", "x.bin", size, chunk, {})
    assert upload.num_chunks == count
    assert [upload.chunk_length(i) for i in range(count)] == lengths
