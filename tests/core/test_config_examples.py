"""The example configurations in config/: each one loads, and the overlay pair mirrors itself."""

from pathlib import Path

import pytest

from vswitch import config

CONFIG = Path(__file__).parents[2] / "config"
EXAMPLES = sorted(CONFIG.glob("*.toml"))


def test_the_examples_the_readme_and_the_demo_name_are_there():
    assert {p.name for p in EXAMPLES} >= {"memory.toml", "router.toml", "overlay-node1.toml", "overlay-node2.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    loaded = config.load(path)
    assert loaded.node.name
    assert all(p.type == "memory" for p in loaded.ports)   # runnable without root


def test_the_overlay_pair_names_each_other():
    node1, node2 = (config.load(CONFIG / f"overlay-node{n}.toml") for n in (1, 2))
    for this, other in ((node1, node2), (node2, node1)):
        (peer,) = this.overlay.peers
        assert (peer.subnet, peer.public_ip) == (other.overlay.subnet, other.overlay.public_ip)
        assert this.overlay.backend == other.overlay.backend and this.overlay.port == other.overlay.port
        assert this.node.control != other.node.control
    targets = {p.host.address.ip for c in (node1, node2) for p in c.ports}
    assert {t for c in (node1, node2) for p in c.ports for t in p.host.ping} <= targets
