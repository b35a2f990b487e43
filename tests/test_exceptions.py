"""The exception tree: every error fwproxy raises on purpose is in exceptions.py, drawn in
its docstring, and `error` / `reason` mean one thing each."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import fwproxy
from fwproxy import exceptions
from fwproxy.exceptions import (
    OAUTH_ERRORS,
    ClientFault,
    FwproxyError,
    NoTokenAvailable,
    TokenEndpointError,
    TokenEndpointUnreachable,
    TokenError,
    TokenStoreBusy,
    UpstreamError,
)

PACKAGE = Path(fwproxy.__file__).parent


def _exception_classes(tree: ast.Module) -> list[str]:
    """Classes whose bases name an exception (…Error, …Exception, or one of the tree)."""
    ours = {name for name, value in vars(exceptions).items()
            if isinstance(value, type) and issubclass(value, BaseException)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
            if any(b.endswith(("Error", "Exception")) or b in ours for b in bases):
                found.append(node.name)
    return found


def test_no_module_defines_an_exception_outside_the_tree() -> None:
    strays = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in PACKAGE.rglob("*.py") if path.name != "exceptions.py"
        for name in _exception_classes(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert strays == set()


def _tree_classes() -> list[type[BaseException]]:
    return [value for _, value in inspect.getmembers(exceptions, inspect.isclass)
            if issubclass(value, BaseException) and value.__module__ == exceptions.__name__]


def _drawn() -> list[tuple[int, str]]:
    """(indent, class name) of each line of the docstring's tree."""
    doc = exceptions.__doc__ or ""
    drawn = []
    for line in doc.splitlines():
        match = re.match(r"^([\s│├└─]*)([A-Z]\w+)\b", line)
        if match and isinstance(getattr(exceptions, match.group(2), None), type):
            drawn.append((len(match.group(1)), match.group(2)))
    return drawn


def test_the_docstring_draws_every_class_under_its_parent() -> None:
    drawn = _drawn()
    names = [name for _, name in drawn]
    for cls in _tree_classes():
        assert cls.__name__ in names, f"{cls.__name__} is missing from the drawn tree"
        if cls is FwproxyError:
            continue
        at = names.index(cls.__name__)
        depth = drawn[at][0]
        above = next(name for indent, name in reversed(drawn[:at]) if indent < depth)
        assert above == cls.__mro__[1].__name__, f"{cls.__name__} is drawn under {above}"


def test_every_class_is_a_fwproxy_error() -> None:
    assert all(issubclass(cls, FwproxyError) for cls in _tree_classes())


@pytest.mark.parametrize("cls", [c for c in _tree_classes()
                                 if issubclass(c, (ClientFault, UpstreamError, NoTokenAvailable))])
def test_error_is_a_client_facing_code_with_its_status(cls: type[FwproxyError]) -> None:
    status, error = cls.status, cls.error  # type: ignore[attr-defined]
    assert 400 <= status <= 599
    assert re.fullmatch(r"[a-z_]+", error)


def test_reason_is_a_closed_set_label_and_error_is_not_the_endpoints_words() -> None:
    refused = TokenEndpointError(400, "made up by the endpoint", "free text")
    assert refused.oauth_error == "made up by the endpoint"
    # `error` and `status` are only ever what a client is answered
    assert not hasattr(refused, "error")
    assert not hasattr(refused, "status")
    assert refused.endpoint_status == 400
    assert refused.reason == "other"
    reasons = {TokenEndpointUnreachable("x").reason, TokenStoreBusy("x").reason,
               TokenError("x").reason, *OAUTH_ERRORS}
    assert all(re.fullmatch(r"[a-z_]+", reason) for reason in reasons)
    assert TokenStoreBusy("x").reason != TokenEndpointUnreachable("x").reason
    assert NoTokenAvailable(TokenStoreBusy("x"), 1).reason == "token_store_busy"
