"""The value parsers of values.py, as tables: each raw value (YAML or environment text) to
its typed value. How values become Settings is tests/test_config.py."""

from __future__ import annotations

import pytest

from fwproxy import values
from fwproxy.exceptions import ConfigError
from fwproxy.values import AUTO_WORKERS, parse_duration, parse_list, parse_size, parse_workers


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64MiB", 64 * 2**20), ("1.5GB", 1_500_000_000), (1024, 1024), ("512 KiB", 524288),
     ("10", 10), ("0", 0)],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text, "k") == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("5m", 300.0), ("90", 90.0), (1.5, 1.5), ("500ms", 0.5), ("1h", 3600.0)]
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text, "k") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a", ["a"]), ("a,b", ["a", "b"]), ("a b", ["a", "b"]), ("a, b", ["a", "b"]),
     (" a\tb\n", ["a", "b"]), ("a,,b", ["a", "b"]), (",", []), ("", []), (["a b"], ["a b"]),
     (("a", "a", "b"), ["a", "b"]), ([1, 2.5], ["1", "2.5"])],
)
def test_parse_list(text: object, expected: list[str]) -> None:
    assert list(parse_list(text, "k", str)) == expected


@pytest.mark.parametrize(("value", "expected"),
                         [("auto", AUTO_WORKERS), (" Auto ", AUTO_WORKERS), (1, 1), ("4", 4),
                          (256, 256)])
def test_workers_auto_is_counted_later_not_here(value: object, expected: int) -> None:
    """Parsing asks the machine nothing: loading.resolve_files counts the CPUs."""
    assert parse_workers(value, "listen.workers") == expected


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0.0), ("2.5", 2.5), (0.2, 0.2), ("10", 10.0)])
def test_parse_rate(value: object, expected: float) -> None:
    assert values.parse_rate(value, "tenant.max_rate") == expected


@pytest.mark.parametrize("value", [-1, "x", True, "nan", "inf", None])
def test_parse_rate_refuses_and_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^tenant\.max_rate: expected a number"):
        values.parse_rate(value, "tenant.max_rate")


def test_parse_methods() -> None:
    assert values.parse_methods(["get", "PUT", "get"], "k") == ("GET", "PUT")
    assert values.parse_methods("GET, HEAD", "k") == ("GET", "HEAD")
    assert values.parse_methods([], "k") == ()
    with pytest.raises(ConfigError, match=r"^tenant\.retry_methods: 'G T' is not"):
        values.parse_methods(["G T"], "tenant.retry_methods")
