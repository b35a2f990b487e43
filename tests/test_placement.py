"""Pure decisions about the token in the query: when a probe proves it (where it is echoed:
test_upstream)."""

from __future__ import annotations

import pytest

from fwproxy.placement import Probe, weigh

A, B = "/fotoweb/me", "/fotoweb/archives"


@pytest.mark.parametrize(
    ("header", "query", "proves"),
    [
        (401, 200, True),
        (401, 204, True),
        (401, 299, True),
        (401, 300, False),
        (401, 301, False),
        (401, 302, False),  # the forms-auth login redirect: proves nothing
        (401, 303, False),
        (401, 304, False),
        (401, 307, False),
        (401, 308, False),
        (401, 400, False),
        (401, 401, False),
        (401, 403, False),
        (401, 404, False),
        (401, 414, False),
        (401, 500, False),
        (401, 503, False),
        (403, 200, False),  # the header was not refused as unauthenticated
        (200, 200, False),
        (302, 200, False),
    ],
)
def test_one_probe_proves_only_401_then_2xx(header: int, query: int, proves: bool) -> None:
    assert Probe(A, header, query).proves is proves


def ok(path: str, status: int = 200) -> Probe:
    return Probe(path, 401, status)


@pytest.mark.parametrize(
    ("probes", "learned_at"),
    [
        ([ok(A)], None),  # one path: no
        ([ok(A), ok(A)], None),  # the same path twice: no
        ([ok(A), ok(A), ok(A)], None),
        ([ok(A), ok(B)], 1),  # two paths: yes
        ([ok(A), ok(A), ok(B)], 2),
        ([ok(A, 302), ok(B)], None),  # a redirect is no evidence
        ([ok(A, 302), ok(B, 302)], None),
        ([ok(A, 404), ok(B), ok(B)], None),
        ([ok(A, 302), ok(B), ok(A)], 2),
        ([ok(A), ok(B, 500)], None),
        ([Probe(A, 403, 200), ok(B)], None),
    ],
)
def test_two_paths_prove_the_query(probes: list[Probe], learned_at: int | None) -> None:
    seen: tuple[Probe, ...] = ()
    learned = []
    for i, probe in enumerate(probes):
        seen, proven = weigh(seen, probe)
        if proven:
            learned.append(i)
        assert len(seen) <= 2
        assert len({p.path for p in seen}) == len(seen)  # one a path
        assert all(p.proves for p in seen)
    assert learned[:1] == ([] if learned_at is None else [learned_at])


def test_probe_shows_path_and_statuses_only() -> None:
    assert str(Probe("/fotoweb/a b\x1b", 401, 204)) == (
        "/fotoweb/a%20b%1B: 401 with the header, 204 in the query"
    )
    assert len(str(Probe("/" + "x" * 5000, 401, 200))) < 300
