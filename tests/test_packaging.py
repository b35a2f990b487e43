"""What `make demo`, `make test` and `pip install fwproxy` install (dry runs: no network)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent


def make_dry_run(venv: Path, *args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    done = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", *args],
                          capture_output=True, text=True, check=True, timeout=30)
    return [line for line in done.stdout.splitlines() if not line.startswith("make")]


def fake_venv(path: Path, *stamps: str) -> Path:
    """A .venv as an earlier make left it (newer than setup.cfg)."""
    (path / "bin").mkdir(parents=True)
    for name in ("bin/python", *stamps):
        (path / name).touch()
    return path


def test_make_demo_installs_the_runtime_only_and_takes_port(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert make_dry_run(venv, "demo", "PORT=9999") == [
        f"python3 -m venv {venv}",
        f"{venv}/bin/python -m pip install --quiet --upgrade pip",
        f"{venv}/bin/python -m pip install --quiet -e .",
        f"touch {venv}/.runtime",
        f"{venv}/bin/fwproxy demo --port 9999 --write-config demo.yaml",
    ]
    assert make_dry_run(venv, "demo")[-1].endswith("fwproxy demo --port 8080 "
                                                   "--write-config demo.yaml")


def test_make_test_after_make_demo_adds_the_test_extras_to_the_same_venv(
    tmp_path: Path
) -> None:
    venv = fake_venv(tmp_path / "venv", ".runtime")
    lines = make_dry_run(venv, "test")
    assert lines[:2] == [
        f"{venv}/bin/python -m pip install --quiet -e '.[test]'",
        f"touch {venv}/.installed {venv}/.runtime",
    ]
    # and `make demo` after `make test` installs nothing more
    venv = fake_venv(tmp_path / "tested", ".runtime", ".installed")
    assert make_dry_run(venv, "demo") == [f"{venv}/bin/fwproxy demo --port 8080 "
                                          "--write-config demo.yaml"]


def requirements(section: str, key: str) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = config[section][key].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_pip_install_fwproxy_brings_uvloop_where_it_builds() -> None:
    (uvloop,) = [r for r in requirements("options", "install_requires") if r.name == "uvloop"]
    assert str(uvloop.specifier) == ">=0.17"
    assert uvloop.marker is not None
    assert uvloop.marker.evaluate()  # here: Linux, CPython
    assert not uvloop.marker.evaluate({"sys_platform": "win32"})
    assert not uvloop.marker.evaluate({"platform_python_implementation": "PyPy"})
    # the old instructions (`pip install 'fwproxy[uvloop]'`) still work
    assert [r.name for r in requirements("options.extras_require", "uvloop")] == ["uvloop"]
    assert "uvloop" not in {r.name for r in requirements("options.extras_require", "test")}


def test_no_cache_library_is_installed_for_one_token() -> None:
    """The token manager holds one token in one slot: no cache dependency, nor its stubs."""
    needed = [*requirements("options", "install_requires"),
              *requirements("options.extras_require", "test")]
    assert not [r.name for r in needed if "cachetools" in r.name]
