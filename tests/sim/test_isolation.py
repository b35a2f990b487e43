"""The product never imports the simulator: `fwproxy run` does not load fwproxy.sim, and
the only import of it outside the package is the CLI's `demo` command, inside the function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent.parent / "fwproxy"
# The simulator's package, and the modules it was before issue 13 (so none comes back).
SIMULATOR = ("fwproxy.sim", "fwproxy.demo", "fwproxy.sim")

RUN_PATH = """
import importlib, json, os, pkgutil, sys
import fwproxy
for info in pkgutil.iter_modules(fwproxy.__path__, "fwproxy."):
    if info.name not in ("fwproxy.sim", "fwproxy.__main__"):
        importlib.import_module(info.name)
from fwproxy import cli
served = []
def run(coro, loop):
    served.append(coro.__qualname__)
    coro.close()
    return 0
cli.eventloop.run = run
code = cli.main(["run", "--config", sys.argv[1]], environ={})
print(json.dumps({"code": code, "served": served, "modules": sorted(sys.modules)}))
"""


def is_simulator(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in SIMULATOR)


def test_fwproxy_run_and_every_product_module_load_no_simulator(tmp_path: Path) -> None:
    config = tmp_path / "fwproxy.yaml"
    config.write_text("tenant: {url: 'https://tenant.example'}\n"
                      "auth: {client_id: app, client_secret: s3cret}\n", encoding="utf-8")
    config.chmod(0o600)
    result = subprocess.run([sys.executable, "-c", RUN_PATH, str(config)],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert (seen["code"], seen["served"]) == (0, ["serve"])  # it got as far as serving
    assert {"fwproxy.cli", "fwproxy.server", "fwproxy.app"} <= set(seen["modules"])
    assert [name for name in seen["modules"] if is_simulator(name)] == []


def imports_of(tree: ast.Module, package: str) -> list[tuple[str, str | None]]:
    """(imported module, enclosing function or None) for every import in `tree`, the
    relative ones resolved against `package` (the module's own package); ``from X import
    Y`` counts as importing X.Y too, since Y may be a submodule."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name if function is None else f"{function}.{node.name}"
        if isinstance(node, ast.Import):
            found.extend((alias.name, function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append((base, function))
            found.extend((f"{base}.{alias.name}", function) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def product_modules() -> dict[str, tuple[str, ast.Module]]:
    """Every module of the fwproxy package: name -> (its package, its syntax tree)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("fwproxy", *path.relative_to(PACKAGE).with_suffix("").parts)
        package = ".".join(parts[:-1])
        name = package if parts[-1] == "__init__" else ".".join(parts)
        modules[name] = (package, ast.parse(path.read_text(encoding="utf-8")))
    return modules


def test_only_the_cli_demo_command_imports_the_simulator() -> None:
    importers = {
        (module, function)
        for module, (package, tree) in product_modules().items() if not is_simulator(module)
        for imported, function in imports_of(tree, package) if is_simulator(imported)
    }
    assert importers == {("fwproxy.cli", "demo")}


def test_the_simulator_does_not_import_the_cli() -> None:
    for module, (package, tree) in product_modules().items():
        if is_simulator(module):
            assert not [name for name, _ in imports_of(tree, package)
                        if name == "fwproxy.cli" or name.startswith("fwproxy.cli.")], module


def test_imports_of_resolves_relative_and_nested_imports() -> None:
    tree = ast.parse("from .sim import runner\nimport os\n"
                     "def demo():\n    from . import sim\n    from ..x import y\n")
    assert imports_of(tree, "fwproxy.sub") == [
        ("fwproxy.sub.sim", None), ("fwproxy.sub.sim.runner", None), ("os", None),
        ("fwproxy.sub", "demo"), ("fwproxy.sub.sim", "demo"),
        ("fwproxy.x", "demo"), ("fwproxy.x.y", "demo"),
    ]
