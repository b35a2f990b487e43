"""The supervisor's bookkeeping of dead workers (the processes themselves: e2e)."""

from __future__ import annotations

import os
import time

from fwproxy.config import parse_config
from fwproxy.workers import DEATH_WINDOW, MAX_DEATHS, Reaped, Supervisor


def _supervisor() -> Supervisor:
    settings = parse_config({
        "tenant": {"url": "https://t.example"},
        "auth": {"client_id": "a", "client_secret": "b"},
        "listen": {"workers": 2},
    }, environ={})
    return Supervisor(settings, None)


def _dead_child() -> int:
    """A child process that has exited, not yet collected (WNOWAIT: left to `_reap`)."""
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    return pid


def test_a_death_is_counted_and_its_restart_planned() -> None:
    supervisor = _supervisor()
    supervisor.children = {_dead_child(): 1}
    assert supervisor._reap(during_start=False) == Reaped(died=1, give_up=False)
    assert [index for _, index in supervisor.pending] == [1]


def test_too_many_deaths_is_giving_up_not_a_death_count() -> None:
    """Giving up is its own answer: no count of deaths can be mistaken for it."""
    supervisor = _supervisor()
    now = time.monotonic()
    supervisor.deaths = [now - DEATH_WINDOW / 2] * MAX_DEATHS
    supervisor.children = {_dead_child(): 0}
    assert supervisor._reap(during_start=False) == Reaped(died=1, give_up=True)
    assert supervisor.pending == []
