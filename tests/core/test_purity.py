"""The core is sans-I/O: no trio, socket, os or time, directly or through another project module."""

from pathlib import Path

import pytest
from importkit import ROOT, imports, module_name, module_path

FORBIDDEN = frozenset({"trio", "socket", "os", "time"})
PROJECT_PACKAGES = ("vswitch",)
# every folder named core is pure: vswitch's and the overlay's (vswitch/overlay links to the checkout's overlay/)
CORE_FOLDERS = (ROOT / "vswitch" / "core", ROOT / "vswitch" / "overlay" / "core")


def core_modules() -> list[Path]:
    return [path for folder in CORE_FOLDERS for path in sorted(folder.rglob("*.py"))]


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
    assert {"vswitch.core.l2.bridge", "vswitch.core.l2.fdb", "vswitch.core.actions", "vswitch.core.datapath",
            "vswitch.core.wire.checksum", "vswitch.core.wire.ethernet", "vswitch.core.l3.router",
            "vswitch.core.nat"} <= names
    # the overlay's core (overlay/shell is its shell side: leases, files, devices)
    assert {"vswitch.overlay.core.codec", "vswitch.overlay.core.peers", "vswitch.overlay.core.tunnel",
            "vswitch.overlay.core.dropin"} <= names
    assert not any(".shell" in name for name in names)


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
    # vswitch.shell.switch is the Trio shell: a module importing it is impure even with no trio of its own
    module = tmp_path / "indirect.py"
    module.write_text("from vswitch.shell import switch\n")
    problems = forbidden_imports(module)
    assert any(p.startswith("vswitch/shell/switch.py:") and p.endswith("imports trio") for p in problems)
    module.write_text("from vswitch.core.wire import checksum\nimport vswitch.core.l2.fdb\n")
    assert forbidden_imports(module) == []
