"""The parts of the project depend on each other one way only (docs/architecture.md, "The rules between the parts").

The core imports nothing else of the project; the overlay's core imports the
core and nothing else; and the graph of the parts has no cycle. The names of
the parts are the folders, so a module in a new folder is a new part, and
the test sees it.
"""

from pathlib import Path

import pytest
from importkit import ROOT, imports, module_name, module_path

PACKAGE = ROOT / "vswitch"


def project_modules() -> list[Path]:
    # vswitch/overlay links to the checkout's overlay/: rglob does not follow it, so add it by hand
    paths = sorted(p for p in PACKAGE.rglob("*.py") if "overlay" not in p.relative_to(PACKAGE).parts)
    return paths + sorted((PACKAGE / "overlay").rglob("*.py"))


def part_of(module: str) -> str:
    """vswitch.core, vswitch.shell, ..., and the overlay's two halves vswitch.overlay.core and .shell."""
    parts = module.split(".")
    depth = 3 if parts[:2] == ["vswitch", "overlay"] and len(parts) > 2 else 2
    return ".".join(parts[:depth])


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports; ``from pkg import sub`` counts as sub alone when sub is a module."""
    found = set()
    names = [name for _, name in imports(path)]
    for name in names:
        if name.split(".")[0] != "vswitch" or module_path(name) is None:
            continue
        # `from vswitch import config` lists both vswitch and vswitch.config: the package only if nothing under it is named
        if any(other.startswith(name + ".") and module_path(other) is not None for other in names):
            continue
        found.add(name)
    return found


def part_graph(paths: list[Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in paths:
        source = part_of(module_name(path))
        targets = graph.setdefault(source, set())
        targets |= {part_of(name) for name in project_imports(path)} - {source}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path that starts and ends on one node, or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        stack.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


GRAPH = part_graph(project_modules())


def test_the_parts_are_the_folders():
    assert {"vswitch.core", "vswitch.shell", "vswitch.control", "vswitch.config", "vswitch.cli", "vswitch.daemon",
            "vswitch.errors", "vswitch.overlay.core", "vswitch.overlay.shell"} <= set(GRAPH)


def test_no_cycle_between_the_parts():
    assert find_cycle(GRAPH) is None


def test_the_core_imports_nothing_else_of_the_project():
    assert GRAPH["vswitch.core"] == set()


def test_the_overlay_core_imports_only_the_core():
    assert GRAPH["vswitch.overlay.core"] <= {"vswitch.core"}


def test_the_errors_import_nothing():
    assert GRAPH["vswitch.errors"] == set()


@pytest.mark.parametrize("path", project_modules(), ids=module_name)
def test_nothing_imports_the_overlay_by_its_checkout_name(path):
    # installed, there is no top-level `overlay`: only vswitch.overlay
    assert not [name for _, name in imports(path) if name.split(".")[0] == "overlay"]


# -- the checker itself must be able to fail ------------------------------------

def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_a_back_import_makes_a_cycle(tmp_path):
    # a core module that imported the shell would close a cycle (the shell imports the core)
    bad = PACKAGE / "core" / "_layers_probe.py"
    bad.write_text("from vswitch.shell import switch\n")
    try:
        graph = part_graph(project_modules())
    finally:
        bad.unlink()
    assert "vswitch.shell" in graph["vswitch.core"]
    assert find_cycle(graph) is not None


def test_from_package_import_submodule_counts_the_submodule(tmp_path):
    module = PACKAGE / "cli" / "_layers_probe.py"
    module.write_text("from vswitch import config\n")
    try:
        assert project_imports(module) == {"vswitch.config"}
    finally:
        module.unlink()
