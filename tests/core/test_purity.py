"""The core is sans-I/O: no trio, socket, os or time, directly or through another project module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = frozenset({"trio", "socket", "os", "time"})
PROJECT_PACKAGES = ("vswitch", "overlay")


def core_modules() -> list[Path]:
    vswitch = ROOT / "vswitch"
    overlay = ROOT / "overlay"
    paths = [vswitch / "bridge.py", vswitch / "fdb.py", vswitch / "actions.py"]
    paths += sorted((vswitch / "wire").glob("*.py"))
    paths += [p for p in (vswitch / "arp.py", vswitch / "router.py", vswitch / "nat.py", vswitch / "datapath.py",
                          overlay / "__init__.py", overlay / "peers.py", overlay / "core.py", overlay / "dropin.py")
              if p.exists()]
    paths += sorted(overlay.glob("codec*.py"))
    paths += sorted(p for d in overlay.glob("codec*") if d.is_dir() for p in d.rglob("*.py"))
    return paths


def module_name(path: Path) -> str:
    if not path.is_relative_to(ROOT):
        return path.stem  # a loose file (the checker's own tests): a top-level module
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything ``path`` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            # `from pkg import sub` may name a submodule
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def forbidden_imports(path: Path) -> list[str]:
    """Forbidden imports of ``path`` and of every project module it pulls in (packages' __init__ included)."""
    problems = []
    seen: set[Path] = set()
    queue = [path]
    while queue:
        current = queue.pop()
        if current in seen:
            continue
        seen.add(current)
        for line, name in imports(current):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                where = current.relative_to(ROOT) if current.is_relative_to(ROOT) else current
                problems.append(f"{where}:{line} imports {name}")
            if top in PROJECT_PACKAGES:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                    target = module_path(".".join(parts[:i]))
                    if target is not None:
                        queue.append(target)
    return problems


def test_the_core_exists():
    names = {module_name(p) for p in core_modules()}
    assert {"vswitch.bridge", "vswitch.fdb", "vswitch.actions", "vswitch.wire.checksum", "vswitch.wire.ethernet"} <= names
    # the overlay's cores (overlay/node.py is its shell side: leases, files, devices)
    assert {"overlay.codec", "overlay.peers", "overlay.core", "overlay.dropin"} <= names
    assert "overlay.node" not in names


@pytest.mark.parametrize("path", core_modules(), ids=module_name)
def test_core_module_is_pure(path):
    assert forbidden_imports(path) == []


# -- the checker itself must be able to fail ------------------------------------

@pytest.mark.parametrize("source", [
    "import os",
    "import os.path",
    "import time as clock",
    "import attrs, socket",
    "from time import monotonic",
    "from os.path import join",
    "from trio import lowlevel",
    "import trio.lowlevel",
    "def f():\n    import socket\n",
    "importlib.import_module('socket')",
    "__import__('os')",
])
def test_checker_catches(tmp_path, source):
    module = tmp_path / "bad.py"
    module.write_text(source + "\n")
    assert forbidden_imports(module)


@pytest.mark.parametrize("source", [
    "import struct", "import ipaddress", "from collections import Counter", "import timeit", "import osmium",
    "from . import errors",
])
def test_checker_allows(tmp_path, source):
    module = tmp_path / "fine.py"
    module.write_text(source + "\n")
    assert forbidden_imports(module) == []


def test_checker_follows_project_imports(tmp_path):
    # vswitch.switch is the Trio shell: a module importing it is impure even with no trio of its own
    module = tmp_path / "indirect.py"
    module.write_text("from vswitch import switch\n")
    problems = forbidden_imports(module)
    assert any(p.startswith("vswitch/switch.py:") and p.endswith("imports trio") for p in problems)
    module.write_text("from vswitch.wire import checksum\nimport vswitch.fdb\n")
    assert forbidden_imports(module) == []
