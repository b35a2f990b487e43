"""Which event loop runs the proxy: uvloop when it is installed (``listen.event_loop``).

uvloop (a dependency of fwproxy wherever it builds) is a drop-in asyncio loop written in Cython;
with it fwproxy does about a quarter more requests per CPU second (bench/PROFILE.md).
``auto`` uses it when it can be imported, ``asyncio`` never does, ``uvloop`` insists.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "asyncio", "uvloop")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``listen.event_loop: choice`` means here: ``asyncio`` or ``uvloop``."""
    if choice == "uvloop" or (choice == "auto" and uvloop_installed()):
        return "uvloop"
    return "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """`asyncio.run`, on the chosen loop."""
    if resolve(choice) != "uvloop":
        return asyncio.run(main)
    import uvloop

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # pragma: no cover (3.10)
    return asyncio.run(main)  # pragma: no cover


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """For the startup line: ``uvloop 0.21.0`` or ``asyncio``."""
    module = type(loop).__module__
    if module.startswith("uvloop"):
        return f"uvloop {getattr(sys.modules.get('uvloop'), '__version__', '')}".strip()
    return "asyncio"
