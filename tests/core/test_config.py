"""The TOML loader: good configs load, every bad one names its key and reason."""

from ipaddress import IPv4Address, IPv4Interface

import pytest

from vswitch import config
from vswitch.core.wire.addr import Network
from vswitch.core.wire.ipv4 import PROTO_UDP
from vswitch.errors import ConfigError

GOOD = """
[node]
name = "node1"
control = "/run/vswitch/node1.sock"

[bridge]
ageing = 120
max_entries = 4096

[[ports]]
name = "p1"
type = "memory"
mtu = 1400
pcap = "/tmp/p1.pcap"
host = { address = "10.0.0.1/24", mac = "02:00:00:00:00:01", ping = ["10.0.0.2"], ping_interval = 0.5 }

[[ports]]
name = "p2"
type = "memory"
[ports.host]
address = "10.0.0.2/24"
gateway = "10.0.0.254"
"""


def test_good_config_loads_every_key():
    cfg = config.loads(GOOD)
    assert cfg.node == config.NodeConfig("node1", "/run/vswitch/node1.sock")
    assert cfg.bridge == config.BridgeConfig(120.0, 4096)
    p1, p2 = cfg.ports
    assert (p1.name, p1.type, p1.mtu, p1.pcap) == ("p1", "memory", 1400, "/tmp/p1.pcap")
    assert p1.host.mac == bytes.fromhex("020000000001")
    assert tuple(map(str, p1.host.ping)) == ("10.0.0.2",) and p1.host.ping_interval == 0.5
    assert str(p2.host.gateway) == "10.0.0.254" and p2.host.mac is None


def test_tap_and_packet_ports_load():
    cfg = config.loads("""
[[ports]]
name = "c1"
type = "tap"
netns = "c1"
address = "10.244.1.2/24"
gateway = "10.244.1.1"
mtu = 1472
[[ports]]
name = "uplink"
type = "packet"
device = "eth1"
""")
    c1, uplink = cfg.ports
    assert (c1.type, c1.netns, str(c1.address), str(c1.gateway), c1.mtu) == ("tap", "c1", "10.244.1.2/24", "10.244.1.1", 1472)
    assert (uplink.type, uplink.device) == ("packet", "eth1")


def test_defaults():
    cfg = config.loads("")
    assert cfg.bridge.ageing == 300.0 and cfg.bridge.max_entries == 65536
    assert cfg.ports == ()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[bridge]\nageing = 0", "bridge.ageing", "positive"),
        ("[bridge]\nageing = 'long'", "bridge.ageing", "must be a number"),
        ("[bridge]\nmax_entries = 0", "bridge.max_entries", "at least 1"),
        ("[bridge]\nmax_entries = true", "bridge.max_entries", "must be an integer"),
        ("[bridge]\nagein = 3", "bridge.agein", "unknown key"),
        ("colour = 'blue'", "colour", "unknown key"),
        ("bridge = 3", "bridge", "must be a table"),
        ("[[ports]]\ntype = 'memory'", "ports[0].name", "is required"),
        ("[[ports]]\nname = 'p1'", "ports[0].type", "is required"),
        ("[[ports]]\nname = 'p1'\ntype = 'bogus'", "ports[0].type", "not one of tap, tun, packet, memory"),
        ("[[ports]]\nname = 'p1'\ntype = 'tun'", "ports[0].type", "must be the port of a router interface"),
        ("[[ports]]\nname = 'p1'\ntype = 'packet'", "ports[0].device", "binds an existing interface"),
        ("[[ports]]\nname = 'p1'\ntype = 'packet'\ndevice = 'eth1'\nnetns = 'c1'", "ports[0].netns",
         "tap ports only"),
        ("[[ports]]\nname = 'p1'\ntype = 'tap'\ndevice = 'eth1'", "ports[0].device", "packet ports only"),
        ("[[ports]]\nname = 'p1'\ntype = 'tap'\nhost = {address = '10.0.0.1/24'}", "ports[0].host",
         "only memory ports"),
        ("[[ports]]\nname = 'p1'\ntype = 'tap'\ngateway = '10.0.0.1'", "ports[0].gateway", "needs an address"),
        ("[[ports]]\nname = 'p1'\ntype = 'tap'\naddress = '10.0.0.2'", "ports[0].address", "prefix length"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'", "ports[0].host", "needs a simulated host"),
        ("[[ports]]\nname = 'a-name-far-too-long'\ntype = 'memory'", "ports[0].name", "not a valid device name"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nmtu = 20\nhost = {address = '10.0.0.1/24'}", "ports[0].mtu",
         "between 68 and 65535"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.1'}", "ports[0].host.address",
         "needs a prefix length"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.300/24'}", "ports[0].host.address",
         "not an IPv4 address"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.1/24', mac = '02:00'}",
         "ports[0].host.mac", "not a MAC address"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.1/24', mac = '01:00:5e:00:00:01'}",
         "ports[0].host.mac", "multicast"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.1/24', ping = ['nowhere']}",
         "ports[0].host.ping[0]", "not an IPv4 address"),
        ("[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.1/24'}\n"
         "[[ports]]\nname = 'p1'\ntype = 'memory'\nhost = {address = '10.0.0.2/24'}", "ports[1].name",
         "already used by ports[0]"),
        ("[overlay]\nbackend = 'udp'", "overlay.network", "is required"),
        ("[node\nname = 'x'", "config", "not valid TOML"),
    ],
)
def test_bad_config_names_key_and_reason(text, key, reason):
    with pytest.raises(ConfigError) as info:
        config.loads(text, source="node.toml")
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"node.toml: {key}: ")


MEMORY_PORT = "[[ports]]\nname = 'p1'\ntype = 'memory'\n"
ROUTER = "[[router.interfaces]]\nname = 'gw'\naddress = '10.0.0.1/24'\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        # non-finite and out-of-range numbers
        ("[bridge]\nageing = nan", "bridge.ageing", "finite"),
        ("[bridge]\nageing = inf", "bridge.ageing", "finite"),
        ("[bridge]\nageing = -inf", "bridge.ageing", "positive"),
        ("[bridge]\nageing = 1e7", "bridge.ageing", "at most 1e+06"),
        (MEMORY_PORT + "host = {address = '10.0.0.1/24', ping_interval = nan}", "ports[0].host.ping_interval",
         "finite"),
        (MEMORY_PORT + "host = {address = '10.0.0.1/24', ping_interval = inf}", "ports[0].host.ping_interval",
         "finite"),
        ("[bridge]\nmax_entries = 1000000000000", "bridge.max_entries", "at most 1,048,576"),
        # MACs that no interface may have
        (MEMORY_PORT + "host = {address = '10.0.0.1/24', mac = '00:00:00:00:00:00'}", "ports[0].host.mac", "all-zero"),
        (ROUTER + "mac = '00:00:00:00:00:00'", "router.interfaces[0].mac", "all-zero"),
        (ROUTER + "mac = 'ff:ff:ff:ff:ff:ff'", "router.interfaces[0].mac", "multicast"),
        (ROUTER + "[[router.neighbours]]\ninterface = 'gw'\naddress = '10.0.0.9'\nmac = '00:00:00:00:00:00'",
         "router.neighbours[0].mac", "all-zero"),
        # empty names and paths
        ("[node]\nname = ''", "node.name", "must not be empty"),
        ("[node]\ncontrol = ''", "node.control", "must not be empty"),
        ("[node]\ncontrol = '/run/" + "x" * 120 + ".sock'", "node.control", "at most 107 bytes"),
        ("[[ports]]\nname = ''\ntype = 'tap'", "ports[0].name", "must not be empty"),
        ("[[ports]]\nname = 'c1'\ntype = 'tap'\nnetns = ''", "ports[0].netns", "must not be empty"),
        ("[[ports]]\nname = 'c1'\ntype = 'tap'\npcap = ''", "ports[0].pcap", "must not be empty"),
        ("[[ports]]\nname = 'c1'\ntype = 'tap'\npcap = '  '", "ports[0].pcap", "must not be empty"),
        ("[[ports]]\nname = 'up'\ntype = 'packet'\ndevice = ''", "ports[0].device", "must not be empty"),
        ("[[router.interfaces]]\nname = ''\naddress = '10.0.0.1/24'", "router.interfaces[0].name", "must not be empty"),
        # device and namespace names the kernel would refuse
        ("[[ports]]\nname = 'sixteen-chars-xx'\ntype = 'tap'", "ports[0].name", "16 bytes, at most 15"),
        ("[[ports]]\nname = 'c:1'\ntype = 'tap'", "ports[0].name", "not a valid device name"),
        ("[[ports]]\nname = '..'\ntype = 'tap'", "ports[0].name", "not a valid device name"),
        ("[[ports]]\nname = 'up'\ntype = 'packet'\ndevice = 'sixteen-chars-xx'", "ports[0].device",
         "16 bytes, at most 15"),
        ("[[ports]]\nname = 'c1'\ntype = 'tap'\nnetns = 'a/b'", "ports[0].netns", "not a network namespace name"),
        ("[[ports]]\nname = 'c1'\ntype = 'tap'\nnetns = '..'", "ports[0].netns", "not a network namespace name"),
        # router interfaces whose networks overlap: a packet could leave by either
        (ROUTER + "[[router.interfaces]]\nname = 'gw2'\naddress = '10.0.0.254/32'", "router.interfaces[1].address",
         "overlaps router.interfaces[0]'s network 10.0.0.0/24"),
        (ROUTER + "[[router.interfaces]]\nname = 'big'\naddress = '10.0.0.0/8'\n", "router.interfaces[1].address",
         "overlaps"),
    ],
)
def test_values_beyond_their_bounds_are_refused_naming_the_key(text, key, reason):
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    assert info.value.key == key
    assert reason in info.value.reason


def test_the_largest_values_within_bounds_load():
    cfg = config.loads(f"[bridge]\nageing = {config.MAX_AGEING}\nmax_entries = {config.MAX_BRIDGE_ENTRIES}\n"
                       + MEMORY_PORT + f"host = {{address = '10.0.0.1/24', ping_interval = {config.MAX_PING_INTERVAL}}}"
                       + "\n[[ports]]\nname = 'fifteen-chars-x'\ntype = 'tap'\nnetns = 'ns-1.a_b'")
    assert cfg.bridge.max_entries == 1 << 20 and cfg.ports[1].name == "fifteen-chars-x"


def test_a_config_with_nothing_to_run_is_refused():
    with pytest.raises(ConfigError) as info:
        config.loads("").check_runnable()
    assert info.value.key == "config" and "nothing to run" in info.value.reason
    config.loads("[node]\ncontrol = '/run/vswitch/n.sock'").check_runnable()   # containers attach at run time
    config.loads(MEMORY_PORT + "host = {address = '10.0.0.1/24'}").check_runnable()


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "absent.toml")


def test_example_configs_load():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[2] / "config").glob("*.toml"))
    assert examples, "config/ should hold example configurations"
    for path in examples:
        config.load(path)


NAT_ROUTER = """
[[router.interfaces]]
name = "gw"
address = "10.244.1.1/24"
[nat]
"""


def test_nat_limits_and_their_defaults():
    assert config.loads(NAT_ROUTER).nat == config.NatConfig(max_connections=65536, max_per_source=None)
    cfg = config.loads(NAT_ROUTER + "max_connections = 4194304\nmax_per_source = 4194304")
    assert (cfg.nat.max_connections, cfg.nat.max_per_source) == (4194304, 4194304)
    cfg = config.loads(NAT_ROUTER + "max_connections = 1\nmax_per_source = 1")
    assert (cfg.nat.max_connections, cfg.nat.max_per_source) == (1, 1)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("max_connections = 0", "nat.max_connections", "at least 1 and at most 4,194,304 (each connection takes about 1.4 KB of memory), got 0"),
        ("max_connections = 4194305", "nat.max_connections", "at most 4,194,304 (each connection takes about 1.4 KB of memory), got 4,194,305"),
        ("max_connections = 1_000_000_000_000", "nat.max_connections", "about 1.4 KB of memory"),
        ("max_connections = 1.5", "nat.max_connections", "must be an integer"),
        ("max_per_source = 0", "nat.max_per_source", "at least 1 and at most 65,536 (max_connections), got 0"),
        ("max_per_source = 65537", "nat.max_per_source", "at most 65,536 (max_connections), got 65,537"),
        ("max_connections = 100\nmax_per_source = 101", "nat.max_per_source", "at most 100 (max_connections), got 101"),
        ("max_per_source = true", "nat.max_per_source", "must be an integer"),
        ("max_per_sauce = 10", "nat.max_per_sauce", "unknown key"),
    ],
)
def test_bad_nat_limits_name_key_and_reason(text, key, reason):
    with pytest.raises(ConfigError) as info:
        config.loads(NAT_ROUTER + text, source="node.toml")
    assert info.value.key == key
    assert reason in info.value.reason


PARSED = """
[[ports]]
name = "c1"
type = "tap"
address = "10.244.1.2/24"
gateway = "10.244.1.1"
[[ports]]
name = "m1"
type = "memory"
host = { address = "10.244.1.5/24", gateway = "10.244.1.1", ping = ["10.244.1.2"] }
[[ports]]
name = "uplink"
type = "packet"
device = "eth1"
[[router.interfaces]]
name = "gw"
address = "10.244.1.1/24"
[[router.interfaces]]
name = "ext"
port = "uplink"
address = "198.51.100.2/24"
[[router.routes]]
to = "0.0.0.0/0"
via = "198.51.100.1"
[[router.neighbours]]
interface = "ext"
address = "198.51.100.1"
mac = "02:00:00:00:00:99"
[[nat.masquerade]]
source = "10.244.0.0/16"
out = "ext"
exclude = ["10.244.0.0/16", "192.0.2.0/25"]
[[nat.forward]]
protocol = "udp"
port = 5353
to = "10.244.1.2:53"
"""


def test_values_are_parsed_once_into_what_their_users_take():
    cfg = config.loads(PARSED)
    c1, m1, _ = cfg.ports
    assert (c1.address, c1.gateway) == (IPv4Interface("10.244.1.2/24"), IPv4Address("10.244.1.1"))
    assert (m1.host.address, m1.host.gateway, m1.host.ping) == (
        IPv4Interface("10.244.1.5/24"), IPv4Address("10.244.1.1"), (IPv4Address("10.244.1.2"),))
    gw, ext = cfg.router.interfaces
    assert (gw.address.ip.packed, gw.address.network.prefixlen) == (bytes((10, 244, 1, 1)), 24)
    (route,) = cfg.router.routes
    assert route.to == Network(0, 0) and route.via.packed == bytes((198, 51, 100, 1))
    (neighbour,) = cfg.router.neighbours
    assert (neighbour.address.packed, neighbour.mac) == (bytes((198, 51, 100, 1)), bytes.fromhex("020000000099"))
    (masquerade,) = cfg.nat.masquerade
    assert masquerade.source == masquerade.exclude[0] == Network.of(bytes((10, 244, 0, 0)), 16)
    assert bytes((10, 244, 7, 1)) in masquerade.source and bytes((10, 245, 0, 1)) not in masquerade.source
    (forward,) = cfg.nat.forward
    assert (forward.protocol, forward.port, forward.to.packed, forward.to_port) == (
        PROTO_UDP, 5353, bytes((10, 244, 1, 2)), 53)


def test_parsed_values_render_as_the_config_writes_them():
    cfg = config.loads(PARSED)
    (route,), (masquerade,) = cfg.router.routes, cfg.nat.masquerade
    assert [str(i.address) for i in cfg.router.interfaces] == ["10.244.1.1/24", "198.51.100.2/24"]
    assert (str(route.to), str(route.via)) == ("0.0.0.0/0", "198.51.100.1")
    assert [str(n) for n in (masquerade.source, *masquerade.exclude)] == ["10.244.0.0/16", "10.244.0.0/16",
                                                                           "192.0.2.0/25"]


@pytest.mark.parametrize(
    ("parse", "text", "reason"),
    [
        (config.parse_interface, "10.0.0.2", "needs a prefix length, like 10.0.0.1/24"),
        (config.parse_interface, "10.0.0.300/24", "not an IPv4 address with prefix"),
        (config.parse_interface, "eth0/24", "not an IPv4 address with prefix"),
        (config.parse_ip, "10.0.0.2/24", "not an IPv4 address"),
        (config.parse_ip, "fe80::1", "not an IPv4 address"),
    ],
)
def test_an_address_from_elsewhere_is_checked_as_the_config_checks_its_own(parse, text, reason):
    # `vswitch attach --address` reaches the daemon through these: the same reasons, the key its caller names
    with pytest.raises(ConfigError) as info:
        parse(text, "address")
    assert info.value.key == "address" and reason in info.value.reason
    assert parse("10.0.0.2/24" if parse is config.parse_interface else "10.0.0.2", "address") is not None
