"""listen.event_loop: which loop `fwproxy run` gets."""

from __future__ import annotations

import asyncio

import pytest

from fwproxy import eventloop


async def loop_name() -> str:
    return eventloop.loop_name(asyncio.get_running_loop())


def test_asyncio_is_the_plain_loop() -> None:
    assert eventloop.resolve("asyncio") == "asyncio"
    assert eventloop.run(loop_name(), "asyncio") == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_installed", lambda: False)
    assert eventloop.resolve("auto") == "asyncio"
    assert eventloop.run(loop_name(), "auto") == "asyncio"


@pytest.mark.skipif(not eventloop.uvloop_installed(), reason="uvloop is not installed")
def test_auto_and_uvloop_run_on_uvloop() -> None:
    from importlib.metadata import version

    for choice in ("auto", "uvloop"):
        assert eventloop.resolve(choice) == "uvloop"
        assert eventloop.run(loop_name(), choice) == f"uvloop {version('uvloop')}"
    assert asyncio.get_event_loop_policy().__class__.__module__.startswith("asyncio")
