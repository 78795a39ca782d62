"""The host port: a tap left in the daemon's namespace, with routes for the cluster network via the router."""

from ipaddress import IPv4Address, IPv4Interface

import pytest

from vswitch import config
from vswitch.core.wire.addr import Network
from vswitch.daemon import restore
from vswitch.daemon.lease import address_pool, addressed, gateway
from vswitch.errors import ConfigError
from vswitch.shell.state import StateDir

STATIC = """
[[ports]]
name = "host0"
type = "{type}"
{port}

[[router.interfaces]]
name = "gw"
address = "10.244.1.1/24"

[overlay]
network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
public_ip = "10.99.0.1"
{overlay}
"""
HOST_PORT = 'address = "10.244.1.254/24"\ngateway = "10.244.1.1"\nroutes = ["10.244.0.0/16"]'

ETCD = """
[node]
state_dir = "{state}"

[[ports]]
name = "host0"
type = "tap"
routes = ["10.244.0.0/16", "10.96.0.0/12"]

[[ports]]
name = "c1"
type = "tap"
netns = "c1"

[overlay]
leases = "etcd"
public_ip = "10.99.0.1"
{overlay}
[etcd]
endpoints = ["http://10.99.0.254:2379"]
"""


def static(port: str = HOST_PORT, *, type: str = "tap", overlay: str = "") -> config.Config:
    return config.loads(STATIC.format(port=port, type=type, overlay=overlay))


def test_a_host_port_has_its_address_its_gateway_and_its_routes_and_no_namespace():
    [port] = static().ports
    assert (port.netns, port.address, port.gateway, port.routes) == (
        None, IPv4Interface("10.244.1.254/24"), IPv4Address("10.244.1.1"), (Network.parse("10.244.0.0/16"),))
    assert static('address = "10.0.0.2/24"\ngateway = "10.0.0.1"').ports[0].routes == ()   # a default route, as before


@pytest.mark.parametrize(("port", "key", "reason"), [
    ('address = "10.244.1.254/24"\nroutes = ["10.244.0.0/16"]', "ports[0].routes", "set gateway"),
    ('routes = ["10.244.0.0/16"]', "ports[0].address", "needs an address and a gateway"),
    (HOST_PORT.replace('["10.244.0.0/16"]', '"10.244.0.0/16"'), "ports[0].routes", "must be an array"),
    (HOST_PORT.replace('["10.244.0.0/16"]', "[16]"), "ports[0].routes[0]", "must be a network string"),
    (HOST_PORT.replace('["10.244.0.0/16"]', '["10.244.0.1/16"]'), "ports[0].routes[0]", "not an IPv4 network"),
    (HOST_PORT.replace('["10.244.0.0/16"]', str([f"10.{i}.0.0/16" for i in range(65)])), "ports[0].routes",
     "at most 64"),
])
def test_bad_routes_are_refused_naming_the_key(port, key, reason):
    with pytest.raises(ConfigError) as error:
        static(port)
    assert error.value.key == key and reason in error.value.reason


def test_routes_apply_to_tap_ports_only_and_not_in_drop_in_mode():
    with pytest.raises(ConfigError) as error:
        static('device = "eth0"\nroutes = ["10.244.0.0/16"]', type="packet")
    assert error.value.key == "ports[0].routes" and "tap ports only" in error.value.reason
    with pytest.raises(ConfigError) as error:
        config.loads('[[ports]]\nname = "host0"\ntype = "tap"\n' + HOST_PORT + '\n[overlay]\nnetwork = "10.244.0.0/16"'
                     '\nsubnet = "10.244.1.0/24"\npublic_ip = "10.99.0.1"\ndevice = "flannel0"\n')
    assert error.value.key == "ports[0].routes" and "drop-in mode" in error.value.reason


def test_with_etcd_leases_the_host_port_takes_an_address_of_the_lease_and_routes_via_its_gateway(tmp_path):
    cfg = config.loads(ETCD.format(state=tmp_path, overlay=""))
    cfg = config.resolve_lease(cfg, backend="vxlan", network=Network.parse("10.244.0.0/16"),
                               subnet=Network.parse("10.244.7.0/24"), port=None, vni=None, where="config")
    pool = address_pool(cfg, StateDir(str(tmp_path)))
    assert pool is not None
    host, container = (addressed(p, pool, gateway(cfg, pool)) for p in cfg.ports)
    # the subnet's first address is the router's (the gateway), so the host has the next, as a container would
    assert (host.address, host.gateway, host.netns) == (IPv4Interface("10.244.7.2/24"), IPv4Address("10.244.7.1"), None)
    assert [str(r) for r in host.routes] == ["10.244.0.0/16", "10.96.0.0/12"]
    assert (container.address, container.routes) == (IPv4Interface("10.244.7.3/24"), ())
    with pytest.raises(ConfigError) as error:   # drop-in mode has no router for its routes
        config.loads(ETCD.format(state=tmp_path, overlay='device = "flannel.1"'))
    assert error.value.key == "ports[0].routes"


def test_live_restore_keeps_a_host_ports_routes(tmp_path):
    state = StateDir(str(tmp_path))
    port = restore.completed(static().ports[0], "node1")
    restore.save(state, {"host0": restore.Attachment(port, "config", None)})
    assert restore.load(state) == {"host0": restore.Attachment(port, "config", None)}
