"""tests/README_CONTRACT.md names the test that holds each README promise: every test it
names exists, so a renamed or deleted test cannot leave a promise silently unheld."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).parent
LEDGER = TESTS / "README_CONTRACT.md"


def named_tests() -> list[tuple[str, str]]:
    """(file, test) for every `file.py::test_name` and every `::test_name` after it."""
    found: list[tuple[str, str]] = []
    current = ""
    for line in LEDGER.read_text(encoding="utf-8").splitlines():
        if line.startswith(("|", "- ")):  # a row or a bullet names its own file first
            current = ""
        for match in re.finditer(r"([\w/]+\.py)?::(test_\w+)", line):
            current = match.group(1) or current
            assert current, f"a ::test without a file: {line}"
            found.append((current, match.group(2)))
    return found


def test_every_test_the_ledger_names_exists() -> None:
    named = named_tests()
    assert len(named) > 150
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^(async )?def {name}\(", (TESTS / path).read_text(
                   encoding="utf-8"), re.MULTILINE)]
    assert missing == []
