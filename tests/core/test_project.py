"""The project's own promises: the README's commands are what CI runs."""

from pathlib import Path

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
