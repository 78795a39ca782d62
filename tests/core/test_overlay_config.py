"""[overlay] in the config, and the overlay's pure shell-side helpers: subnet.env, restart keys, leases, ip-masq rules."""

from ipaddress import IPv4Address

import attrs
import pytest

from vswitch import config
from vswitch.core.wire.addr import Network, ip_from_str, mac_from_str
from vswitch.daemon import build_core, stable_mac
from vswitch.errors import ConfigError
from vswitch.overlay.core.backends import BACKENDS
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.shell.leases import config_leases
from vswitch.overlay.shell.masq import masquerade_rules
from vswitch.overlay.shell.node import build_overlay, device_name, restart_needed
from vswitch.overlay.shell.subnet_env import subnet_env

GATEWAY = """
[[router.interfaces]]
name = "cni0"
address = "10.244.1.1/24"
"""


def overlay_text(backend: str = "udp", extra: str = "", peers: str = "") -> str:
    return f"""
[overlay]
backend = "{backend}"
network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
public_ip = "10.99.0.1"
{extra}
{peers}
"""


def peer(subnet: str = "10.244.2.0/24", public_ip: str = "10.99.0.2", vtep_mac: str | None = None) -> str:
    mac = f'vtep_mac = "{vtep_mac}"\n' if vtep_mac else ""
    return f'[[overlay.peers]]\nsubnet = "{subnet}"\npublic_ip = "{public_ip}"\n{mac}'


def load(backend: str = "udp", extra: str = "", peers: str = "", rest: str = GATEWAY) -> config.Config:
    return config.loads(rest + overlay_text(backend, extra, peers))


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    return info.value


# -- good configs -----------------------------------------------------------------------------------


def test_udp_overlay_with_defaults():
    oc = load(peers=peer() + peer("10.244.3.0/24", "10.99.0.3")).overlay
    assert (oc.backend, str(oc.network), str(oc.subnet), str(oc.public_ip)) == ("udp", "10.244.0.0/16", "10.244.1.0/24", "10.99.0.1")
    assert (oc.port, oc.mtu, oc.vni, oc.vtep_mac, oc.ip_masq, oc.subnet_env, oc.device) == (
        8285, 1472, 1, None, False, None, None)
    assert oc.peers == (config.PeerConfig(Network.parse("10.244.2.0/24"), IPv4Address("10.99.0.2")),
                        config.PeerConfig(Network.parse("10.244.3.0/24"), IPv4Address("10.99.0.3")))


def test_vxlan_overlay_with_every_key():
    oc = load("vxlan", extra='port = 4789\nmtu = 1400\nvni = 42\nvtep_mac = "02:00:00:00:01:ff"\nip_masq = true\n'
                             'subnet_env = "/run/flannel/subnet.env"',
              peers=peer(vtep_mac="02:00:00:00:02:ff")).overlay
    assert (oc.port, oc.mtu, oc.vni, oc.vtep_mac, oc.ip_masq, oc.subnet_env) == (
        4789, 1400, 42, mac_from_str("02:00:00:00:01:ff"), True, "/run/flannel/subnet.env")
    assert oc.peers[0].vtep_mac == mac_from_str("02:00:00:00:02:ff")


def test_vxlan_defaults():
    oc = load("vxlan", peers=peer(vtep_mac="02:00:00:00:02:ff")).overlay
    assert (oc.port, oc.mtu, oc.vni) == (8472, 1450, 1)


def test_backend_defaults_to_udp():
    text = GATEWAY + overlay_text().replace('backend = "udp"\n', "")
    assert config.loads(text).overlay.backend == "udp"


def test_drop_in_mode_without_ports_or_router():
    oc = config.loads(overlay_text("vxlan", 'device = "flannel.1"')).overlay
    assert oc.device == "flannel.1"


PORTS = """
[[ports]]
name = "c1"
type = "tap"
[[ports]]
name = "m1"
type = "memory"
host = { address = "10.244.1.5/24" }
[[ports]]
name = "uplink"
type = "packet"
device = "eth1"
[[ports]]
name = "c2"
type = "tap"
mtu = 9000
[[router.interfaces]]
name = "cni0"
address = "10.244.1.1/24"
[[router.interfaces]]
name = "wan"
address = "192.0.2.1/24"
port = "uplink"
[[router.interfaces]]
name = "jumbo"
address = "203.0.113.1/24"
mtu = 9000
"""


@pytest.mark.parametrize("backend, mtu", [("udp", 1472), ("vxlan", 1450)])
def test_overlay_mtu_is_the_default_inside(backend, mtu):
    cfg = load(backend, peers=peer(vtep_mac="02:00:00:00:02:ff" if backend == "vxlan" else None), rest=PORTS)
    ports = {p.name: p.mtu for p in cfg.ports}
    assert ports == {"c1": mtu, "m1": mtu, "uplink": 1500, "c2": 9000}     # a packet port is an uplink
    interfaces = {i.name: i.mtu for i in cfg.router.interfaces}
    assert interfaces == {"cni0": mtu, "wan": 1500, "jumbo": 9000}
    # and build_core gives the overlay interface the overlay's MTU
    _, router, _, _ = build_core(cfg)
    assert router.interfaces["overlay"].mtu == mtu and router.interfaces["cni0"].mtu == mtu


def test_an_explicit_overlay_mtu_is_the_inside_default():
    cfg = load(extra="mtu = 1400", rest=PORTS)
    assert {p.name: p.mtu for p in cfg.ports}["c1"] == 1400
    assert {i.name: i.mtu for i in cfg.router.interfaces}["cni0"] == 1400


def test_without_an_overlay_ports_stay_at_1500():
    cfg = config.loads(PORTS.replace('[[router.interfaces]]\nname = "jumbo"', '[[router.interfaces]]\nname = "j"'))
    assert {p.name: p.mtu for p in cfg.ports}["c1"] == 1500


# -- bad configs: each names its key ---------------------------------------------------------------------


@pytest.mark.parametrize("extra, key, reason", [
    ('backend = "gre"', "overlay.backend", "is not one of udp, vxlan"),
    ('port = 0', "overlay.port", "between 1 and 65535"),
    ('port = "8285"', "overlay.port", "must be an integer"),
    ('mtu = 67', "overlay.mtu", "between 68"),
    ('mtu = 65535', "overlay.mtu", "between 68 and 65507"),
    ('vni = 5', "overlay.vni", "vxlan backend only"),
    ('vtep_mac = "02:00:00:00:01:ff"', "overlay.vtep_mac", "vxlan backend only"),
    ('ip_masq = "yes"', "overlay.ip_masq", "true or false"),
    ('device = "a/b"', "overlay.device", "not a valid device name"),
    ('device = "much-too-long-name"', "overlay.device", "not a valid device name"),
    ('colour = "blue"', "overlay.colour", "unknown key"),
])
def test_bad_overlay_key(extra, key, reason):
    if extra.startswith("backend"):
        text = GATEWAY + overlay_text().replace('backend = "udp"', extra)
    else:
        text = GATEWAY + overlay_text(extra=extra)
    error = error_of(text)
    assert error.key == key and reason in error.reason, error


@pytest.mark.parametrize("change, key, reason", [
    (("subnet = \"10.244.1.0/24\"", "subnet = \"10.245.1.0/24\""), "overlay.subnet", "not inside the network"),
    (("subnet = \"10.244.1.0/24\"", "subnet = \"10.244.1.0/31\""), "overlay.subnet", "no room"),
    (("subnet = \"10.244.1.0/24\"", "subnet = \"10.244.1.1/24\""), "overlay.subnet", "IPv4 network"),
    (("network = \"10.244.0.0/16\"", "network = \"10.244.0.0/33\""), "overlay.network", "IPv4 network"),
    (("public_ip = \"10.99.0.1\"", "public_ip = \"10.244.7.1\""), "overlay.public_ip", "underlay address"),
    (("public_ip = \"10.99.0.1\"", "public_ip = \"10.99.0\""), "overlay.public_ip", "not an IPv4 address"),
    (("public_ip = \"10.99.0.1\"\n", ""), "overlay.public_ip", "is required"),
])
def test_bad_addresses(change, key, reason):
    error = error_of(GATEWAY + overlay_text().replace(*change))
    assert error.key == key and reason in error.reason, error


@pytest.mark.parametrize("extra, peers, key, reason", [
    ('vtep_mac = "00:00:00:00:00:00"', "", "overlay.vtep_mac", "all-zero"),
    ("", peer(vtep_mac="00:00:00:00:00:00"), "overlay.peers[0].vtep_mac", "all-zero"),
    ('device = "flannel.1-sixtee"', "", "overlay.device", "16 bytes, at most 15"),
    ('device = ""', "", "overlay.device", "must not be empty"),
    ('subnet_env = ""', "", "overlay.subnet_env", "must not be empty"),
])
def test_vxlan_values_beyond_bounds_name_the_key(extra, peers, key, reason):
    error = error_of(GATEWAY + overlay_text("vxlan", extra, peers))
    assert error.key == key and reason in error.reason, error


def test_vxlan_vni_out_of_range():
    error = error_of(GATEWAY + overlay_text("vxlan", "vni = 16777216"))
    assert error.key == "overlay.vni" and "16777215" in error.reason


@pytest.mark.parametrize("backend, peers, key, reason", [
    ("vxlan", peer(), "overlay.peers[0].vtep_mac", "needs each peer's VTEP MAC"),
    ("udp", peer(vtep_mac="02:00:00:00:02:ff"), "overlay.peers[0].vtep_mac", "vxlan backend only"),
    ("vxlan", peer(vtep_mac="01:00:5e:00:00:01"), "overlay.peers[0].vtep_mac", "multicast"),
    ("udp", peer("10.245.2.0/24"), "overlay.peers[0].subnet", "not inside the network"),
    ("udp", peer("10.244.1.128/25"), "overlay.peers[0].subnet", "overlaps this node's subnet"),
    ("udp", peer("10.244.0.0/23"), "overlay.peers[0].subnet", "overlaps this node's subnet"),
    ("udp", peer() + peer("10.244.2.128/25", "10.99.0.3"), "overlay.peers[1].subnet", "overlaps the subnet of overlay.peers[0]"),
    ("udp", peer() + peer("10.244.3.0/24", "10.99.0.2"), "overlay.peers[1].public_ip", "same as overlay.peers[0]"),
    ("vxlan", peer(vtep_mac="02:00:00:00:02:ff") + peer("10.244.3.0/24", "10.99.0.3", "02:00:00:00:02:ff"),
     "overlay.peers[1].vtep_mac", "same as overlay.peers[0]"),
    ("udp", peer(public_ip="10.99.0.1"), "overlay.peers[0].public_ip", "this node's own public_ip"),
    ("udp", peer(public_ip="10.244.7.7"), "overlay.peers[0].public_ip", "inside the overlay network"),
    ("udp", peer(public_ip="10.99.0.300"), "overlay.peers[0].public_ip", "not an IPv4 address"),
    ("udp", '[[overlay.peers]]\nsubnet = "10.244.2.0/24"\n', "overlay.peers[0].public_ip", "is required"),
    ("udp", '[[overlay.peers]]\nsubnet = "10.244.2.0/24"\npublic_ip = "10.99.0.2"\nport = 1\n', "overlay.peers[0].port",
     "unknown key"),
])
def test_bad_peers(backend, peers, key, reason):
    error = error_of(GATEWAY + overlay_text(backend, peers=peers))
    assert error.key == key and reason in error.reason, error


def test_peers_must_be_an_array_of_tables():
    error = error_of(GATEWAY + overlay_text(extra='peers = "10.244.2.0/24"'))
    assert error.key == "overlay.peers"


def test_peer_with_our_own_vtep_mac_is_refused_when_built():
    cfg = load("vxlan", extra='vtep_mac = "02:00:00:00:01:ff"', peers=peer(vtep_mac="02:00:00:00:01:ff"))
    with pytest.raises(ConfigError) as info:
        build_core(cfg)
    assert info.value.key == "overlay.peers" and "own VTEP MAC" in info.value.reason


def test_router_mode_needs_a_gateway_in_the_subnet():
    for rest in ("", '[[router.interfaces]]\nname = "lan"\naddress = "192.168.1.1/24"\n'):
        error = error_of(rest + overlay_text())
        assert error.key == "overlay.subnet" and "10.244.1.1/24" in error.reason, error


def test_router_mode_gateway_on_a_port_of_its_own_is_not_one():
    text = ('[[ports]]\nname = "t"\ntype = "tun"\n'
            '[[router.interfaces]]\nname = "tun"\naddress = "10.244.1.1/24"\nport = "t"\n') + overlay_text()
    assert error_of(text).key == "overlay.subnet"


def test_router_interface_reaching_into_other_nodes_subnets():
    text = '[[router.interfaces]]\nname = "cni0"\naddress = "10.244.1.1/16"\n' + overlay_text()
    error = error_of(text)
    assert error.key == "router.interfaces[0].address" and "beyond this node's subnet" in error.reason


def test_router_interface_named_overlay_is_taken():
    text = GATEWAY + '[[router.interfaces]]\nname = "overlay"\naddress = "192.0.2.1/24"\n' + overlay_text()
    assert error_of(text).key == "router.interfaces[1].name"


@pytest.mark.parametrize("section", [
    '[[ports]]\nname = "c1"\ntype = "tap"\n',
    GATEWAY,
])
def test_drop_in_mode_refuses_ports_and_router(section):
    error = error_of(section + overlay_text(extra='device = "flannel0"'))
    assert error.key == "overlay.device" and "drop-in mode" in error.reason


@pytest.mark.parametrize("text", ["", "[node]\n", '[node]\ncontrol = "/run/x.sock"\n'])
def test_node_name_defaults_to_vswitch(text):
    # The default MACs (VTEP, router interfaces, simulated hosts) hash the node's name: it must be a string.
    assert config.loads(text).node.name == "vswitch"


def test_build_core_vtep_mac_default_is_stable():
    cfg = load("vxlan", peers=peer(vtep_mac="02:00:00:00:02:ff"))
    _, _, overlay, vtep_mac = build_core(cfg)
    assert vtep_mac == stable_mac("vswitch", "vtep") == overlay.vtep_mac
    assert not vtep_mac[0] & 1 and vtep_mac[0] & 2      # unicast, locally administered
    assert build_core(cfg)[3] == vtep_mac


# -- subnet.env, restart keys, leases, masquerade rules -----------------------------------------------


def test_subnet_env_is_what_flanneld_writes():
    oc = load(peers=peer()).overlay
    assert subnet_env(oc) == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1472\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_subnet_env_vxlan_with_ip_masq_and_an_odd_subnet():
    text = """
[overlay]
backend = "vxlan"
network = "172.16.0.0/12"
subnet = "172.20.64.0/20"
public_ip = "192.0.2.7"
ip_masq = true
device = "flannel.1"
"""
    assert subnet_env(config.loads(text).overlay) == (
        "FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.20.64.1/20\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def test_restart_needed_lists_the_changed_keys():
    old = load(peers=peer()).overlay
    assert restart_needed(old, old) == []
    assert restart_needed(old, attrs.evolve(old, peers=())) == []          # peers reload alone
    new = attrs.evolve(old, mtu=1400, ip_masq=True, subnet="10.244.5.0/24")
    assert restart_needed(old, new) == ["subnet", "mtu", "ip_masq"]
    assert restart_needed(old, attrs.evolve(old, device="flannel0", port=9999)) == ["port", "device"]


def test_config_leases():
    oc = load("vxlan", peers=peer(vtep_mac="02:00:00:00:02:ff") + peer("10.244.3.0/25", "10.99.0.3", "02:00:00:00:03:ff")).overlay
    assert config_leases(oc) == [
        Lease(Network.parse("10.244.2.0/24"), ip_from_str("10.99.0.2"), mac_from_str("02:00:00:00:02:ff")),
        Lease(Network.parse("10.244.3.0/25"), ip_from_str("10.99.0.3"), mac_from_str("02:00:00:00:03:ff")),
    ]
    assert config_leases(load().overlay) == []


def test_masquerade_rules_are_flannels():
    oc = load(extra="ip_masq = true").overlay
    interfaces = {"cni0": Network.parse("10.244.1.0/24"), "wan": Network.parse("192.0.2.0/24"),
                  "overlay": Network.parse("10.244.1.0/32")}
    rules = masquerade_rules(oc, interfaces, "overlay")
    assert sorted(r.out for r in rules) == ["overlay", "wan"]      # never the containers' own interface

    def masqueraded(src: str, dst: str, out: str) -> bool:
        return any(r.matches(ip_from_str(src), ip_from_str(dst), out) for r in rules)

    assert masqueraded("10.244.1.2", "198.51.100.1", "wan")             # pod → outside
    assert masqueraded("10.244.7.2", "198.51.100.1", "wan")             # any cluster source → outside
    assert not masqueraded("10.244.1.2", "239.1.1.1", "wan")            # not multicast
    assert not masqueraded("10.244.1.2", "10.244.2.2", "overlay")       # pod ↔ pod: never
    assert not masqueraded("10.244.1.2", "10.244.2.2", "wan")
    assert masqueraded("198.51.100.1", "10.244.2.2", "overlay")         # outside → other nodes' pods
    assert masqueraded("10.244.1.0", "10.244.2.2", "overlay") is False  # the overlay's own address is cluster
    assert not masqueraded("198.51.100.1", "10.244.1.2", "cni0")        # outside → own pods: as flannel, left alone
    assert not masqueraded("198.51.100.1", "192.0.2.9", "wan")          # outside → outside: not flannel's business


# -- the backend table: the config, the tunnel and the node wiring read the one table --------------------


@pytest.mark.parametrize("name", ["udp", "vxlan"])
def test_the_backend_table_is_what_the_config_the_tunnel_and_the_wiring_use(name):
    backend = BACKENDS[name]
    vxlan = backend.carries_ethernet
    oc = load(name, peers=peer(vtep_mac="02:00:00:00:02:ff" if vxlan else None)).overlay
    assert (oc.port, oc.mtu) == (backend.default_port, 1500 - backend.overhead)
    vtep_mac = mac_from_str("02:00:00:00:01:ff") if vxlan else None
    overlay = build_overlay(oc, vtep_mac)
    assert (overlay.port, overlay.overhead, overlay.inside) == (backend.default_port, backend.overhead, "ip")
    assert device_name(oc) == backend.device == ("flannel.1" if vxlan else "flannel0")   # drop-in's default device
    # in drop-in mode the inside is flannel's device: frames from a TAP for VXLAN, packets from a TUN for udp
    assert build_overlay(attrs.evolve(oc, device=backend.device), vtep_mac).inside == ("ethernet" if vxlan else "ip")

