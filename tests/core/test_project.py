"""The project's own promises: the README's commands are what CI runs."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TEST_COMMAND = "pip install '.[test]' && python -m pytest"
DEMO_COMMAND = "pip install . && vswitch demo"


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:12]
    assert any(line.strip().startswith(DEMO_COMMAND) for line in head)
    assert any(line.strip().startswith(TEST_COMMAND) for line in head)


def test_ci_runs_exactly_the_readme_test_command():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == TEST_COMMAND


def test_the_public_api_resolves_every_name_it_declares():
    import vswitch
    import vswitch.config

    for name in vswitch.__all__:
        assert getattr(vswitch, name) is not None, name
    assert vswitch.load_config is vswitch.config.load
    with pytest.raises(AttributeError):
        vswitch.NoSuchThing  # noqa: B018


def test_importing_the_core_does_not_import_trio():
    # the public names load lazily: a pure part must not drag the shell in through vswitch/__init__
    code = "import sys, vswitch.core.l2.bridge, vswitch.core.nat; print('trio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_the_wheel_installs_one_name_with_its_overlay_examples_and_license(tmp_path):
    # build from a copy (links kept as links): pip builds in the source tree, and the checkout is left as it is
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("vswitch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("vswitch-")}
    assert tops == {"vswitch"}, "no top-level `overlay` (or anything else) beside vswitch"
    assert {"vswitch/overlay/core/tunnel.py", "vswitch/overlay/shell/node.py"} <= set(names)
    examples = {Path(name).name for name in names if name.startswith("vswitch/examples/")}
    assert examples == {path.name for path in (ROOT / "config").glob("*.toml")}
    assert "vswitch/contrib/vswitch@.service" in names, "`vswitch systemd-unit` prints it from the package"
    assert any(name.endswith("/LICENSE") for name in names)


def test_the_architecture_page_lists_folders_and_files_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text.split("## The parts are the folders", 1)[1].split("```")[1]
    parents: list[str] = []
    checked = 0
    for line in tree.strip("\n").splitlines():
        indent = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        parents = parents[:indent]
        if name.endswith("/") or name.endswith(".py"):
            path = ROOT.joinpath(*parents, name.rstrip("/"))
            assert path.exists(), f"docs/architecture.md lists {path.relative_to(ROOT)}, which does not exist"
            checked += 1
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
    assert checked >= 15
