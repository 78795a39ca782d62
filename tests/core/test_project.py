"""The project's own promises: the README's commands are what CI runs."""

import subprocess
import sys
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
