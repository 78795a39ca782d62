"""``[node] metrics``: host:port, refused with the key named."""

import pytest

from vswitch.config import loads
from vswitch.errors import ConfigError


@pytest.mark.parametrize(("value", "address"), [
    ("127.0.0.1:9101", ("127.0.0.1", 9101)),
    ("[::1]:9101", ("::1", 9101)),
    ("localhost:0", ("localhost", 0)),
])
def test_metrics_is_a_host_and_a_port(value, address):
    assert loads(f'[node]\nmetrics = "{value}"').node.metrics == address


def test_no_metrics_by_default():
    assert loads("[node]\n").node.metrics is None


@pytest.mark.parametrize("value", ["9101", "127.0.0.1", ":9101", "::1:9101", "host:http", "host:65536", "host:-1"])
def test_anything_else_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"node\.metrics: must be host:port") as info:
        loads(f'[node]\nmetrics = "{value}"')
    assert value in str(info.value)


def test_a_number_is_refused_too():
    with pytest.raises(ConfigError, match=r"node\.metrics: must be"):
        loads("[node]\nmetrics = 9101")
