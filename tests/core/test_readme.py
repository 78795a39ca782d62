"""The README tells the truth: its configuration reference lists the keys the loader takes, and its core example runs."""

import re
from pathlib import Path

import pytest

from vswitch import Drop, DropReason, Transmit, loads_config
from vswitch.errors import ConfigError

README = (Path(__file__).parents[2] / "README.md").read_text()

# The smallest config that reaches each section's key check, with {bogus} where an unknown key goes.
REACH = {
    "node": "[node]\n{bogus}",
    "bridge": "[bridge]\n{bogus}",
    "ports": "[[ports]]\n{bogus}",
    "ports.host": '[[ports]]\nname = "p1"\ntype = "memory"\n[ports.host]\n{bogus}',
    "router": "[router]\n{bogus}",
    "router.interfaces": "[[router.interfaces]]\n{bogus}",
    "router.routes": "[[router.routes]]\n{bogus}",
    "router.neighbours": "[[router.neighbours]]\n{bogus}",
    "nat": "[nat]\n{bogus}",
    "nat.masquerade": "[[nat.masquerade]]\n{bogus}",
    "nat.forward": "[[nat.forward]]\n{bogus}",
    "overlay": "[overlay]\n{bogus}",
    "overlay.peers": '[overlay]\nnetwork = "10.244.0.0/16"\nsubnet = "10.244.1.0/24"\npublic_ip = "192.0.2.1"\n'
                     "[[overlay.peers]]\n{bogus}",
    "etcd": '[overlay]\nleases = "etcd"\npublic_ip = "192.0.2.1"\n[etcd]\n{bogus}',
}


def readme_keys() -> dict[str, set[str]]:
    """Section → keys, from the rows of the README's configuration table (`[[ports]] name`, `[ports.host] mac`, ...)."""
    table = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    keys: dict[str, set[str]] = {section: set() for section in REACH}
    for row in re.findall(r"^\| (`\[.*?)\s\|", table, re.M):
        section, first = re.match(r"`\[+([a-z_.]+)\]+ (\w+)`", row).groups()
        keys[section] |= {first, *re.findall(r", `(\w+)`", row)}
    return keys


def loader_keys(section: str) -> set[str]:
    """The keys the loader takes in ``section``, as its unknown-key error lists them, less the nested sections."""
    with pytest.raises(ConfigError) as error:
        loads_config(REACH[section].format(bogus="no_such_key = 1"))
    assert error.value.key.endswith("no_such_key"), error.value
    listed = re.search(r"expected one of: (.*)\)", error.value.reason).group(1)
    return {key for key in listed.split(", ") if f"{section}.{key}" not in REACH}


@pytest.mark.parametrize("section", REACH)
def test_the_configuration_reference_lists_the_keys_the_loader_takes(section):
    assert readme_keys()[section] == loader_keys(section)


def test_the_core_example_runs_as_printed():
    code = re.search(r"Using the core directly:\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    transmit, drop = namespace["actions"]
    assert isinstance(transmit, Transmit) and transmit.port == "b" and transmit.frames == [namespace["frame1"]]
    assert isinstance(drop, Drop) and drop.reason is DropReason.TRUNCATED
    printed = re.search(r"# \[(Transmit.*)\]\n", code).group(1)
    assert repr(drop) in printed
    assert namespace["bridge"].poll_at() is None, "the timer in the example aged the entry out"
