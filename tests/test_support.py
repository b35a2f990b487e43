"""tests/support, the harness the e2e tests, bench/bench.py and bench/soak.py share."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import clean_env
from tests.support.procfs import (
    established_connections,
    open_fds,
    process_tree,
    rss,
    tree_peak_rss_kib,
)

SUPPORT = Path(__file__).parent / "support"


def test_support_imports_no_pytest() -> None:
    """The bench scripts run it outside a test session."""
    for path in SUPPORT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("pytest", "_pytest")], path


def test_established_connections_counts_the_ones_not_yet_accepted() -> None:
    """Connections waiting in the accept queue have no inode yet: each still counts."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            assert established_connections(port) == 3
        finally:
            for client in clients:
                client.close()


def test_process_tree_and_its_peak_rss_include_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert child.pid in process_tree(os.getpid())
        assert tree_peak_rss_kib(os.getpid()) > tree_peak_rss_kib(child.pid) > 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)


def test_own_readers() -> None:
    before = open_fds()
    with open(__file__, encoding="utf-8"):
        assert open_fds() == before + 1
    assert rss() > 1 << 20


def test_clean_env_drops_proxies_and_fwproxy_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"HTTPS_PROXY": "x", "no_proxy": "x", "FWPROXY_TENANT_URL": "x", "HOME": "/h"}
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert clean_env({"EXTRA": "1"}) == {"HOME": "/h", "EXTRA": "1"}
