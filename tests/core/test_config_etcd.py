"""Configs on etcd leases: [etcd] and [overlay] checked before etcd is asked, then completed by what etcd says."""

import pytest

from vswitch import config
from vswitch.core.wire.addr import Network
from vswitch.errors import ConfigError

ETCD = """
[node]
name = "node1"
state_dir = "/tmp/vswitch-state"

[[ports]]
name = "c1"
type = "tap"
netns = "c1"

[overlay]
leases = "etcd"
public_ip = "10.99.0.1"
{overlay}
[etcd]
endpoints = ["https://10.99.0.254:2379", "https://10.99.0.253:2379"]
prefix = "/my/network"
ca_file = "/etc/ca.pem"
{etcd}
"""
NETWORK = Network.parse("10.244.0.0/16")
SUBNET = Network.parse("10.244.7.0/24")


def load(overlay: str = "", etcd: str = "") -> config.Config:
    return config.loads(ETCD.format(overlay=overlay, etcd=etcd))


def complete(cfg: config.Config, backend: str = "vxlan", port: int | None = None, vni: int | None = None
             ) -> config.Config:
    return config.resolve_lease(cfg, backend=backend, network=NETWORK, subnet=SUBNET, port=port, vni=vni,
                                where="/my/network/config")


def test_an_etcd_config_waits_for_its_lease_and_is_then_a_whole_router_mode_config():
    cfg = load()
    assert cfg.overlay is None and cfg.node.state_path == "/tmp/vswitch-state"
    assert cfg.etcd == config.EtcdConfig(("https://10.99.0.254:2379", "https://10.99.0.253:2379"), "/my/network",
                                         ca_file="/etc/ca.pem")
    cfg.check_runnable()
    done = complete(cfg)
    assert done.overlay is not None and done.overlay.leases == "etcd"
    assert (done.overlay.network, done.overlay.subnet, done.overlay.port, done.overlay.vni, done.overlay.mtu) == \
           (NETWORK, SUBNET, 8472, 1, 1450)
    [gateway] = done.router.interfaces
    assert (gateway.name, str(gateway.address)) == (config.GATEWAY_INTERFACE, "10.244.7.1/24")
    assert done.ports[0].mtu == 1450   # the containers' ports take the overlay's MTU, known only now


def test_a_configured_gateway_inside_the_lease_is_kept():
    cfg = config.loads(ETCD.format(overlay="", etcd="") + '\n[[router.interfaces]]\nname = "gw"\naddress = "10.244.7.1/24"\n')
    assert [i.name for i in complete(cfg).router.interfaces] == ["gw"]


@pytest.mark.parametrize(("overlay", "backend", "port", "key"), [
    ('backend = "udp"', "vxlan", None, "overlay.backend"),
    ('network = "10.245.0.0/16"', "vxlan", None, "overlay.network"),
    ("port = 9000", "vxlan", None, "overlay.port"),
    ("port = 8472", "vxlan", 9000, "overlay.port"),
    ("vni = 2", "vxlan", None, "overlay.vni"),
])
def test_a_local_key_that_contradicts_etcd_is_named(overlay, backend, port, key):
    with pytest.raises(ConfigError) as info:
        complete(load(overlay), backend, port)
    assert info.value.key == key and "/my/network/config" in info.value.reason


def test_local_keys_that_agree_with_etcd_are_fine():
    done = complete(load('backend = "vxlan"\nnetwork = "10.244.0.0/16"\nport = 8472\nvni = 1\nmtu = 1400'))
    assert done.overlay is not None and done.overlay.mtu == 1400


@pytest.mark.parametrize(("overlay", "etcd", "key"), [
    ('subnet = "10.244.1.0/24"', "", "overlay.subnet"),
    ('[[overlay.peers]]\nsubnet = "10.244.1.0/24"\npublic_ip = "10.99.0.2"', "", "overlay.peers"),
    ('backend = "gre"', "", "overlay.backend"),
    ("port = 0", "", "overlay.port"),
    ('vtep_mac = "01:00:00:00:00:00"', "", "overlay.vtep_mac"),
    ('backend = "udp"\nvni = 3', "", "overlay.vni"),
    ('network = "10.99.0.0/16"', "", "overlay.public_ip"),
    ("", 'cert_file = "/etc/c.pem"', "etcd.key_file"),
    ("", 'username = "root"', "etcd.password"),
    ("", "lease_ttl = 5", "etcd.lease_ttl"),
    ("", "renew_margin = 90000", "etcd.renew_margin"),
    ("", "endpoint = 1", "etcd.endpoint"),
])
def test_a_bad_etcd_config_names_its_key(overlay, etcd, key):
    with pytest.raises(ConfigError) as info:
        load(overlay, etcd)
    assert info.value.key == key


def test_endpoints_must_be_urls_and_tls_files_need_https():
    with pytest.raises(ConfigError) as info:
        config.loads('[overlay]\nleases = "etcd"\npublic_ip = "10.99.0.1"\n[etcd]\nendpoints = ["10.0.0.1:2379"]\n')
    assert info.value.key == "etcd.endpoints[0]"
    with pytest.raises(ConfigError) as info:
        config.loads('[overlay]\nleases = "etcd"\npublic_ip = "10.99.0.1"\n[etcd]\nca_file = "/ca.pem"\n')
    assert info.value.key == "etcd.endpoints" and "https" in info.value.reason


def test_an_unknown_lease_source_is_refused():
    with pytest.raises(ConfigError) as info:
        config.loads('[overlay]\nleases = "consul"\npublic_ip = "10.99.0.1"\n')
    assert info.value.key == "overlay.leases" and "static, etcd" in info.value.reason


def test_etcd_without_etcd_leases_is_refused():
    with pytest.raises(ConfigError) as info:
        config.loads('[overlay]\nnetwork = "10.244.0.0/16"\nsubnet = "10.244.1.0/24"\npublic_ip = "10.99.0.1"\n'
                     '[[router.interfaces]]\nname = "gw"\naddress = "10.244.1.1/24"\n[etcd]\n')
    assert info.value.key == "etcd"


def test_the_defaults_are_flanneld_s():
    cfg = config.loads('[overlay]\nleases = "etcd"\npublic_ip = "10.99.0.1"\n')
    assert cfg.etcd == config.EtcdConfig()
    assert cfg.etcd.endpoints == ("http://127.0.0.1:2379",) and cfg.etcd.prefix == "/coreos.com/network"
    assert (cfg.etcd.lease_ttl, cfg.etcd.renew_margin) == (86400, 3600.0)
    assert cfg.node.state_path == "/var/lib/vswitch/vswitch"
    assert complete(cfg, "udp").overlay.port == 8285
