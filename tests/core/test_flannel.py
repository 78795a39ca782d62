"""flannel's etcd layout: the config and its defaults, lease JSON byte for byte, keys, acquiring, the lease book.

The expected bytes and defaults come from flannel-io/flannel: ``pkg/subnet/config_test.go``,
``pkg/subnet/etcd/registry_test.go`` and ``Documentation/reservations.md``.
"""

import json
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vswitch.core.wire.addr import Network, ip_from_str, mac_from_str
from vswitch.overlay.core.flannel import (
    CONFLICT,
    DEFAULT_PREFIX,
    MALFORMED_KEY,
    MALFORMED_VALUE,
    NO_VTEP_MAC,
    OTHER_BACKEND,
    OTHER_VNI,
    OUTSIDE_THE_NETWORK,
    OVER_THE_LIMIT,
    REASONS,
    FlannelError,
    LeaseAttrs,
    LeaseBook,
    NetworkConfig,
    NetworkFull,
    Record,
    Reuse,
    Stale,
    Take,
    config_key,
    free_subnets,
    is_compatible,
    lease_attrs,
    lease_value,
    network_config_json,
    parse_lease_value,
    parse_network_config,
    parse_subnet_key,
    plan_acquire,
    subnet_key,
    subnets_prefix,
)
from vswitch.overlay.core.peers import Lease, PeerTable

net = Network.parse


def config(text: str) -> NetworkConfig:
    return parse_network_config(text.encode())


VXLAN = config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
UDP = config('{"Network": "10.244.0.0/16"}')


def ip(n: int) -> bytes:
    return bytes((10, 99, 0, n))


def mac(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


# -- the network config ----------------------------------------------------------------------------


def test_flannels_own_defaults_test():
    # config_test.go TestConfigDefaults, lower-case key and all: Go matches keys case-insensitively
    cfg = config('{ "network": "10.3.0.0/16" }')
    assert cfg.network == net("10.3.0.0/16")
    assert (cfg.subnet_min, cfg.subnet_max, cfg.subnet_len) == (net("10.3.1.0/24"), net("10.3.255.0/24"), 24)
    assert (cfg.backend, cfg.port, cfg.vni) == ("udp", None, None)      # the code's default, not the docs' vxlan
    assert (cfg.tunnel_port, cfg.tunnel_vni) == (8285, None)
    assert cfg.subnet_count == 255 and list(cfg.subnets())[:2] == [net("10.3.1.0/24"), net("10.3.2.0/24")]


def test_flannels_own_overrides_test():
    cfg = config('{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28 }')
    assert (cfg.subnet_min, cfg.subnet_max, cfg.subnet_len) == (net("10.3.5.0/28"), net("10.3.8.0/28"), 28)
    assert cfg.subnet_count == (0x0800 - 0x0500) // 16 + 1


@pytest.mark.parametrize("network, subnet_len, first, last", [
    ("10.0.0.0/8", 24, "10.0.1.0/24", "10.255.255.0/24"),
    ("10.244.0.0/22", 24, "10.244.1.0/24", "10.244.3.0/24"),     # /22 or wider: /24
    ("10.244.0.0/23", 25, "10.244.0.128/25", "10.244.1.128/25"),  # narrower: prefix + 2
    ("10.244.0.0/28", 30, "10.244.0.4/30", "10.244.0.12/30"),     # the smallest flannel takes
])
def test_subnet_len_and_range_defaults(network, subnet_len, first, last):
    cfg = config(json.dumps({"Network": network}))
    assert (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max) == (subnet_len, net(first), net(last))


def test_backend_settings():
    cfg = config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789}}')
    assert (cfg.backend, cfg.vni, cfg.port, cfg.tunnel_vni, cfg.tunnel_port) == ("vxlan", 4096, 4789, 4096, 4789)
    assert (VXLAN.vni, VXLAN.tunnel_vni, VXLAN.tunnel_port) == (None, 1, 8472)
    # Port 0 and SubnetLen 0 are Go's zero values: the defaults; a udp backend has no VNI
    cfg = config('{"Network": "10.244.0.0/16", "SubnetLen": 0, "Backend": {"type": "udp", "port": 0, "VNI": 7}}')
    assert (cfg.backend, cfg.port, cfg.vni, cfg.subnet_len) == ("udp", None, None, 24)
    cfg = config('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 7890}, "Extra": [1, {"x": null}]}')
    assert cfg.tunnel_port == 7890


def test_go_decoding_rules():
    # the last of a repeated key wins (compared case-insensitively), the host bits of Network are cleared
    cfg = config('{"Network": "192.168.0.0/16", "NETWORK": "10.244.7.9/16", "subnetmin": "10.244.9.0"}')
    assert cfg.network == net("10.244.0.0/16") and cfg.subnet_min == net("10.244.9.0/24")
    # "0.0.0.0" is IP4's zero value: unset, as absent
    assert config('{"Network": "10.244.0.0/16", "SubnetMin": "0.0.0.0"}').subnet_min == net("10.244.1.0/24")
    assert config('{"Network": "10.244.0.0/16", "EnableIPv4": true, "EnableIPv6": false}') == UDP


@pytest.mark.parametrize("text, key", [
    ('{"SubnetLen": 24}', "Network"),
    ('{"Network": null}', "Network"),
    ('{"Network": 10}', "Network"),
    ('{"Network": "10.244.0.0"}', "Network"),
    ('{"Network": "10.244.0.0/33"}', "Network"),
    ('{"Network": "10.244.0.0/+8"}', "Network"),
    ('{"Network": "010.244.0.0/16"}', "Network"),
    ('{"Network": "fc00::/48"}', "Network"),
    ('{"Network": "0.0.0.0/0"}', "Network"),
    ('{"Network": "10.244.0.0/29"}', "Network"),            # too small for four subnets by default
    ('{"Network": "10.244.0.0/16", "SubnetLen": 31}', "SubnetLen"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 17}', "SubnetLen"),   # fewer than four subnets
    ('{"Network": "10.244.0.0/16", "SubnetLen": -1}', "SubnetLen"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 24.0}', "SubnetLen"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": true}', "SubnetLen"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": "24"}', "SubnetLen"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 99999999999999999999999}', "SubnetLen"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.245.1.0"}', "SubnetMin"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.1"}', "SubnetMin"),    # not on a /24 boundary
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.8.0"}', "SubnetMin"),
    ('{"Network": "10.244.0.0/16", "SubnetMax": "10.0.0.0"}', "SubnetMax"),
    ('{"Network": "10.244.0.0/16", "SubnetMax": "10.244.1.128"}', "SubnetMax"),
    ('{"Network": "10.244.0.0/16", "SubnetMax": "nope"}', "SubnetMax"),
    ('{"Network": "10.244.0.0/16", "Backend": null}', "Backend"),
    ('{"Network": "10.244.0.0/16", "Backend": "vxlan"}', "Backend"),
    ('{"Network": "10.244.0.0/16", "Backend": {}}', "Backend.Type"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": 1}}', "Backend.Type"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}', "Backend.Type"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard"}}', "Backend.Type"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "VXLAN"}}', "Backend.Type"),   # flannel's lookup is exact
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 65536}}', "Backend.Port"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": "8285"}}', "Backend.Port"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}', "Backend.VNI"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": -1}}', "Backend.VNI"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": true}}', "Backend.GBP"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}', "Backend.DirectRouting"),
    ('{"Network": "10.244.0.0/16", "EnableIPv4": false}', "EnableIPv4"),
    ('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48"}', "EnableIPv6"),
    ('{"Network": "10.244.0.0/16", "EnableIPv6": "no"}', "EnableIPv6"),
])
def test_a_bad_config_names_the_key(text, key):
    with pytest.raises(FlannelError) as caught:
        config(text)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_vswitch_says_it_does_not_speak_another_backend():
    with pytest.raises(FlannelError, match="vswitch does not speak flannel's host-gw backend, only udp and vxlan"):
        config('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}')


@pytest.mark.parametrize("data", [
    b"", b"[]", b"null", b'"Network"', b"{", b'{"Network": NaN}', b"\xff\xfe{}", b'{"a": 1e99999}x',
    b"[" * 100_000,                                   # over the size bound
    b"[" * 60_000 + b"]" * 60_000,                    # also over it
    b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}",  # deep, within it
    b'{"Network": "' + b"1" * 70_000 + b'"}',
])
def test_a_config_that_is_not_a_json_object_is_refused_plainly(data):
    with pytest.raises(FlannelError) as caught:
        parse_network_config(data)
    assert caught.value.key == ""


def test_network_init_writes_what_flannel_reads():
    assert network_config_json(net("10.244.0.0/16")) == b'{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}'
    data = network_config_json(net("10.244.0.0/16"), backend="vxlan", subnet_len=26, port=4789, vni=3)
    assert data == b'{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan","VNI":3,"Port":4789}}'
    cfg = parse_network_config(data)
    assert (cfg.network, cfg.subnet_len, cfg.backend, cfg.port, cfg.vni) == (net("10.244.0.0/16"), 26, "vxlan", 4789, 3)
    with pytest.raises(FlannelError) as caught:
        network_config_json(net("10.244.0.0/16"), vni=2)
    assert caught.value.key == "Backend.VNI"
    with pytest.raises(FlannelError) as caught:
        network_config_json(net("10.244.0.0/16"), subnet_len=31)
    assert caught.value.key == "SubnetLen"
    with pytest.raises(FlannelError) as caught:
        network_config_json(net("10.244.0.0/16"), backend="host-gw")
    assert caught.value.key == "Backend.Type"


# -- keys ----------------------------------------------------------------------------------------


def test_keys():
    assert subnets_prefix(DEFAULT_PREFIX) == b"/coreos.com/network/subnets/"
    assert config_key(DEFAULT_PREFIX) == b"/coreos.com/network/config"
    assert subnet_key(DEFAULT_PREFIX, net("10.244.1.0/24")) == b"/coreos.com/network/subnets/10.244.1.0-24"
    # as Go's path.Join cleans the prefix
    assert subnets_prefix("/coreos.com/network/") == subnets_prefix("//coreos.com//network") \
        == b"/coreos.com/network/subnets/"
    assert subnet_key("/my/net", net("10.5.52.0/24")) == b"/my/net/subnets/10.5.52.0-24"
    assert parse_subnet_key(DEFAULT_PREFIX, b"/coreos.com/network/subnets/10.244.1.0-24") == net("10.244.1.0/24")
    assert parse_subnet_key("/my/net", b"/my/net/subnets/10.5.52.0-24") == net("10.5.52.0/24")


@given(address=st.integers(0, 0xFFFFFFFF), length=st.integers(0, 31))
def test_a_key_names_its_subnet(address, length):
    subnet = Network.of(address.to_bytes(4, "big"), length)
    assert parse_subnet_key(DEFAULT_PREFIX, subnet_key(DEFAULT_PREFIX, subnet)) == subnet


@pytest.mark.parametrize("key", [
    b"", b"/coreos.com/network/subnets/", b"/coreos.com/network/config",
    b"/other/subnets/10.244.1.0-24",
    b"/coreos.com/network/subnets10.244.1.0-24",
    b"/coreos.com/network/subnets/10.244.1.0-24/",
    b"/coreos.com/network/subnets/x/10.244.1.0-24",
    b"/coreos.com/network/subnets/10.244.1.0",
    b"/coreos.com/network/subnets/10.244.1.0/24",
    b"/coreos.com/network/subnets/10.244.1.0-",
    b"/coreos.com/network/subnets/10.244.1.0-024",
    b"/coreos.com/network/subnets/010.244.1.0-24",
    b"/coreos.com/network/subnets/10.244.1.1-24",      # host bits: MakeSubnetKey never writes them
    b"/coreos.com/network/subnets/10.244.1.0-32",      # ParseSubnetKey takes up to 31
    b"/coreos.com/network/subnets/10.244.256.0-24",
    b"/coreos.com/network/subnets/10.244.1.0-24&fc00::-64",   # dual stack
    b"/coreos.com/network/subnets/10.244.1.0-24\n",
    b"/coreos.com/network/subnets/10.244.\xd9\xa1.0-24",
    b"/coreos.com/network/subnets/" + b"1" * 10_000,
])
def test_malformed_keys_name_no_subnet(key):
    assert parse_subnet_key(DEFAULT_PREFIX, key) is None


# -- lease values ----------------------------------------------------------------------------------


def test_lease_values_byte_for_byte():
    # registry_test.go expects exactly this for a udp lease; reservations.md shows the vxlan one
    assert lease_value(LeaseAttrs(ip_from_str("1.2.3.4"))) == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    assert lease_value(LeaseAttrs(ip(1))) == b'{"PublicIP":"10.99.0.1","PublicIPv6":null}'
    flannels = (b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
                b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')
    attrs = parse_lease_value(flannels)
    assert attrs == LeaseAttrs(ip_from_str("192.168.64.3"), "vxlan", 1, mac_from_str("c6:d2:32:6f:8f:44"))
    assert lease_value(attrs) == flannels
    assert lease_attrs(VXLAN, ip(1), mac(1)) == LeaseAttrs(ip(1), "vxlan", 1, mac(1))
    assert lease_attrs(UDP, ip(1), mac(1)) == LeaseAttrs(ip(1))
    with pytest.raises(ValueError):
        lease_attrs(VXLAN, ip(1))


@given(public=st.binary(min_size=4, max_size=4).filter(lambda b: 0 < b[0] < 224),
       vxlan=st.booleans(), vni=st.integers(0, (1 << 24) - 1), vtep=st.binary(min_size=6, max_size=6))
def test_lease_values_round_trip(public, vxlan, vni, vtep):
    attrs = LeaseAttrs(public, "vxlan", vni, vtep) if vxlan else LeaseAttrs(public)
    data = lease_value(attrs)
    assert parse_lease_value(data) == attrs
    assert json.loads(data)["PublicIPv6"] is None
    assert data == json.dumps(json.loads(data), separators=(",", ":")).encode()   # compact, in field order


def test_lease_values_of_other_backends_and_go_decoding():
    assert parse_lease_value(b'{"PublicIP":"10.99.0.2","PublicIPv6":null,"BackendType":"host-gw"}') \
        == LeaseAttrs(ip(2), "host-gw")
    wireguard = b'{"PublicIP":"10.99.0.3","BackendType":"wireguard","BackendData":{"PublicKey":"abc="}}'
    assert parse_lease_value(wireguard) == LeaseAttrs(ip(3), "wireguard")
    # no BackendData, or no VtepMAC in it: a lease that makes no peer, not a malformed one
    assert parse_lease_value(b'{"PublicIP":"10.99.0.4","BackendType":"vxlan"}') == LeaseAttrs(ip(4), "vxlan")
    assert parse_lease_value(b'{"publicip":"10.99.0.5","backendtype":"vxlan","backenddata":{"vni":2}}') \
        == LeaseAttrs(ip(5), "vxlan", 2)
    assert parse_lease_value(b'{"PublicIP":"10.99.0.6","PublicIPv6":"fc00::6","BackendV6Data":{"x":1}}') \
        == LeaseAttrs(ip(6))


@pytest.mark.parametrize("data, key", [
    (b'{}', "PublicIP"),
    (b'{"PublicIPv6":"fc00::1"}', "PublicIP"),
    (b'{"PublicIP":null}', "PublicIP"),
    (b'{"PublicIP":"2001:db8::1"}', "PublicIP"),       # one of flannel's own fuzz seeds
    (b'{"PublicIP":"10.99.0.256"}', "PublicIP"),
    (b'{"PublicIP":"0.0.0.0"}', "PublicIP"),
    (b'{"PublicIP":"239.1.1.1"}', "PublicIP"),
    (b'{"PublicIP":"10.99.0.1","PublicIPv6":6}', "PublicIPv6"),
    (b'{"PublicIP":"10.99.0.1","BackendType":["vxlan"]}', "BackendType"),
    (b'{"PublicIP":"10.99.0.1","BackendType":"vxlan","BackendData":"x"}', "BackendData"),
    (b'{"PublicIP":"10.99.0.1","BackendType":"vxlan","BackendData":{"VNI":"1"}}', "BackendData.VNI"),
    (b'{"PublicIP":"10.99.0.1","BackendType":"vxlan","BackendData":{"VNI":4294967296}}', "BackendData.VNI"),
    (b'{"PublicIP":"10.99.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":null}}', "BackendData.VtepMAC"),
    (b'{"PublicIP":"10.99.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"02:00:00:00:00"}}',
     "BackendData.VtepMAC"),
    (b"{", ""), (b"[]", ""), (b"\x00", ""), (b'{"PublicIP":"10.99.0.1"}' + b" " * 5000, ""),
])
def test_a_malformed_lease_names_the_key(data, key):
    with pytest.raises(FlannelError) as caught:
        parse_lease_value(data)
    assert caught.value.key == key


def test_vswitch_writes_only_its_own_backends_leases():
    for attrs in (LeaseAttrs(ip(1), "host-gw"), LeaseAttrs(ip(1), "udp"), LeaseAttrs(ip(1), "vxlan", 1),
                  LeaseAttrs(ip(1), "vxlan", 1 << 24, mac(1)), LeaseAttrs(b"\x0a", "")):
        with pytest.raises(ValueError):
            lease_value(attrs)


# -- acquiring -----------------------------------------------------------------------------------


def record(subnet: str, n: int, *, lease_id: int = 7, revision: int = 1, backend: str = "vxlan") -> Record:
    attrs = LeaseAttrs(ip(n), "vxlan", 1, mac(n)) if backend == "vxlan" else LeaseAttrs(ip(n), backend)
    return Record(net(subnet), attrs, lease_id, revision)


def never(free):
    raise AssertionError(f"choose was asked, among {len(free)}")


def test_reuse_the_lease_holding_our_public_address():
    mine = record("10.244.7.0/24", 1)
    records = [record("10.244.2.0/24", 2), mine, record("10.244.3.0/24", 3)]
    # even when the previous subnet is another, free one: flannel looks for its address first
    assert plan_acquire(VXLAN, records, ip(1), net("10.244.9.0/24"), never) == Reuse(mine)


def test_a_reservation_is_reused_and_stays_one():
    reserved = record("10.244.42.0/24", 1, lease_id=0)
    plan = plan_acquire(VXLAN, [reserved], ip(1), None, never)
    assert plan == Reuse(reserved) and plan.record.reservation
    assert not record("10.244.42.0/24", 1).reservation


def test_ours_but_incompatible_is_stale_then_the_decision_is_made_again():
    narrow = config('{"Network": "10.244.0.0/16", "SubnetLen": 26, "Backend": {"Type": "vxlan"}}')
    old = record("10.244.7.0/24", 1)          # from when SubnetLen was 24
    assert plan_acquire(narrow, [old], ip(1), None, never) == Stale(old)
    assert plan_acquire(narrow, [], ip(1), net("10.244.7.64/26"), never) == Take(net("10.244.7.64/26"))
    below = config('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "Backend": {"Type": "vxlan"}}')
    assert not is_compatible(below, net("10.244.7.0/24")) and is_compatible(below, net("10.244.10.0/24"))
    assert plan_acquire(below, [old], ip(1), None, never) == Stale(old)
    # two of ours: the stale one goes first; then the previous subnet's is kept
    fine, other = record("10.244.20.0/24", 1), record("10.244.30.0/24", 1)
    assert plan_acquire(below, [fine, old, other], ip(1), None, never) == Stale(old)
    assert plan_acquire(below, [fine, other], ip(1), net("10.244.30.0/24"), never) == Reuse(other)
    assert plan_acquire(below, [other, fine], ip(1), None, never) == Reuse(fine)


def test_the_previous_subnet_when_it_is_free_and_suits_the_config():
    records = [record("10.244.2.0/24", 2)]
    assert plan_acquire(VXLAN, records, ip(1), net("10.244.5.0/24"), never) == Take(net("10.244.5.0/24"))
    picked = []

    def first(free):
        picked.append(list(free))
        return free[0]

    # taken, overlapped by another's (wider) lease or by an unreadable key, outside SubnetMin..Max, another length
    for previous, extra, occupied in ((net("10.244.2.0/24"), [], []),
                                      (net("10.244.2.0/24"), [record("10.244.0.0/22", 3, revision=2)], []),
                                      (net("10.244.6.0/24"), [], [net("10.244.6.0/24")]),
                                      (net("10.244.0.0/24"), [], []),
                                      (net("10.244.5.0/25"), [], [])):
        plan = plan_acquire(VXLAN, records + extra, ip(1), previous, first, occupied=occupied)
        assert plan == Take(picked[-1][0]) and previous not in picked[-1]
    assert picked[0][:3] == [net("10.244.1.0/24"), net("10.244.3.0/24"), net("10.244.4.0/24")]
    assert picked[1][0] == net("10.244.4.0/24")                  # past the /22
    assert net("10.244.6.0/24") not in picked[2]


def test_a_random_one_of_the_first_hundred_free_subnets_from_subnet_min():
    taken = [record(f"10.244.{k}.0/24", k) for k in range(1, 255, 2)]   # every odd one
    offered = []

    def choose(free):
        offered.append(free)
        return random.Random(3).choice(free)

    plan = plan_acquire(VXLAN, taken, ip(250), None, choose)
    (free,) = offered
    assert free == [net(f"10.244.{k}.0/24") for k in range(2, 202, 2)]    # 100 of them, in order
    assert plan == Take(random.Random(3).choice(free))
    with pytest.raises(ValueError, match="not one of the free subnets"):
        plan_acquire(VXLAN, taken, ip(250), None, lambda free: net("10.244.1.0/24"))


def test_a_full_network_is_a_clear_error():
    small = config('{"Network": "10.244.0.0/28"}')     # /30s: 10.244.0.4, .8 and .12
    records = [record(f"10.244.0.{k}/30", k, backend="") for k in (4, 8, 12)]
    with pytest.raises(NetworkFull, match=r"out of subnets: all 3 /30 subnets from 10.244.0.4/30 to 10.244.0.12/30"):
        plan_acquire(small, records, ip(99), None, never)
    assert plan_acquire(small, records[1:], ip(99), None, lambda free: free[0]) == Take(net("10.244.0.4/30"))
    assert isinstance(NetworkFull("Network", "x"), FlannelError)


networks = st.builds(lambda address, length: Network.of(address.to_bytes(4, "big"), length),
                     st.integers(0x0AF40000, 0x0AF400FF), st.integers(22, 32))


@given(taken=st.lists(networks, max_size=20), subnet_len=st.integers(26, 30), limit=st.integers(1, 100),
       low=st.integers(0, 63), high=st.integers(0, 63))
def test_free_subnets_is_allocate_subnets_loop(taken, subnet_len, limit, low, high):
    size = 1 << (32 - subnet_len)
    low = min(low, 256 // size - 1)
    high = max(low, 256 // size - 1 - high)
    cfg = config(json.dumps({"Network": "10.244.0.0/24", "SubnetLen": subnet_len,
                             "SubnetMin": f"10.244.0.{low * size}", "SubnetMax": f"10.244.0.{high * size}"}))
    # flannel's loop, verbatim: every subnet from SubnetMin to SubnetMax that overlaps no lease, up to the limit
    wanted = [s for s in cfg.subnets() if not any(s.address <= t.address | ~t.mask & 0xFFFFFFFF
                                                   and t.address <= s.address | ~s.mask & 0xFFFFFFFF for t in taken)]
    assert free_subnets(cfg, taken, limit) == wanted[:limit]


def test_free_subnets_is_fast_in_a_big_network():
    cfg = config('{"Network": "10.0.0.0/8"}')          # 65,535 subnets
    rng = random.Random(1)
    taken = [Network(0x0A000000 + k * 256, 0xFFFFFF00) for k in range(1, 5001)]   # the first 5,000
    taken += [Network(0x0A000000 + rng.randrange(5001, 65536) * 256, 0xFFFFFF00) for _ in range(3000)]
    rng.shuffle(taken)
    started = time.perf_counter()
    free = free_subnets(cfg, taken)
    assert time.perf_counter() - started < 1.0      # flannel's nested loop would take minutes here
    assert len(free) == 100 and free[0].address >= 0x0A000000 + 5001 * 256
    assert not set(free) & set(taken)
    assert free_subnets(cfg, [net("0.0.0.0/0")]) == [] and free_subnets(cfg, [net("10.0.0.0/8")]) == []


# -- the lease book ---------------------------------------------------------------------------------


def key(subnet: str) -> bytes:
    return subnet_key(DEFAULT_PREFIX, net(subnet))


def vxlan_value(n: int, vni: int = 1, vtep: int | None = None) -> bytes:
    return lease_value(LeaseAttrs(ip(n), "vxlan", vni, mac(n if vtep is None else vtep)))


def peer(subnet: str, n: int, vtep: int | None = None) -> Lease:
    return Lease(net(subnet), ip(n), mac(n if vtep is None else vtep))


def peers_of(book: LeaseBook) -> list[Lease]:
    return sorted(book.peers(), key=lambda lease: (lease.subnet.address, lease.subnet.mask))


def test_put_and_delete():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN)
    assert book.put(key("10.244.2.0/24"), vxlan_value(2), 7, 10) is None
    assert book.put(key("10.244.3.0/24"), vxlan_value(3), 0, 11) is None      # a reservation is a peer too
    assert peers_of(book) == [peer("10.244.2.0/24", 2), peer("10.244.3.0/24", 3)]
    assert book.records[net("10.244.3.0/24")] == Record(net("10.244.3.0/24"), LeaseAttrs(ip(3), "vxlan", 1, mac(3)), 0, 11)
    assert book.put(key("10.244.2.0/24"), vxlan_value(2, vtep=22), 8, 12) is None   # renewed with a new VTEP MAC
    assert peers_of(book)[0] == peer("10.244.2.0/24", 2, vtep=22)
    assert book.delete(key("10.244.2.0/24")) == net("10.244.2.0/24")
    assert book.delete(key("10.244.2.0/24")) is None
    assert book.delete(b"/coreos.com/network/subnets/garbage") is None
    assert peers_of(book) == [peer("10.244.3.0/24", 3)] and len(book) == 1 and not book.ignored


def test_our_own_lease_is_no_peer():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN, public_ip=ip(1), vtep_mac=mac(1))
    book.put(key("10.244.1.0/24"), vxlan_value(1), 7, 1)
    book.put(key("10.244.2.0/24"), vxlan_value(2), 7, 2)
    book.own = net("10.244.1.0/24")
    assert peers_of(book) == [peer("10.244.2.0/24", 2)]
    assert book.excluded() == {net("10.244.1.0/24"): "own"} and not book.ignored
    assert book.delete(key("10.244.1.0/24")) == book.own      # the shell stops on this, as flanneld does


def test_leases_of_other_backends_are_kept_but_no_peers():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN)
    puts = {
        "10.244.2.0/24": (b'{"PublicIP":"10.99.0.2","PublicIPv6":null}', "backend udp"),
        "10.244.3.0/24": (b'{"PublicIP":"10.99.0.3","PublicIPv6":null,"BackendType":"host-gw"}', "backend host-gw"),
        "10.244.4.0/24": (b'{"PublicIP":"10.99.0.4","BackendType":"\\u00e9"}', OTHER_BACKEND),
        "10.244.5.0/24": (b'{"PublicIP":"10.99.0.5","BackendType":"vxlan"}', NO_VTEP_MAC),
        "10.244.6.0/24": (vxlan_value(6, vni=2), OTHER_VNI),
        "10.245.7.0/24": (vxlan_value(7), OUTSIDE_THE_NETWORK),
        "10.0.0.0/8": (vxlan_value(8), OUTSIDE_THE_NETWORK),
        "10.244.9.0/24": (vxlan_value(9), None),
    }
    for subnet, (value, reason) in puts.items():
        assert book.put(key(subnet), value, 7, 1) == reason, subnet
    assert peers_of(book) == [peer("10.244.9.0/24", 9)]
    assert len(book.records) == 8
    assert book.ignored == {"backend udp": 1, "backend host-gw": 1, OTHER_BACKEND: 1, NO_VTEP_MAC: 1, OTHER_VNI: 1,
                            OUTSIDE_THE_NETWORK: 2}
    assert book.excluded()[net("10.244.3.0/24")] == "backend host-gw"
    udp = LeaseBook(DEFAULT_PREFIX, UDP)
    assert udp.put(key("10.244.2.0/24"), vxlan_value(2), 7, 1) == "backend vxlan"
    assert udp.put(key("10.244.3.0/24"), b'{"PublicIP":"10.99.0.3","PublicIPv6":null}', 7, 1) is None
    assert udp.put(key("10.244.4.0/24"), b'{"PublicIP":"10.99.0.4","BackendType":"udp"}', 7, 1) is None
    assert peers_of(udp) == [Lease(net("10.244.3.0/24"), ip(3)), Lease(net("10.244.4.0/24"), ip(4))]


def test_malformed_keys_and_values_are_counted():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN)
    assert book.put(b"/coreos.com/network/subnets/10.244.1.5-24", vxlan_value(1), 7, 1) == MALFORMED_KEY
    assert book.put(b"/elsewhere/subnets/10.244.1.0-24", vxlan_value(1), 7, 1) == MALFORMED_KEY
    book.put(key("10.244.2.0/24"), vxlan_value(2), 7, 2)
    assert book.put(key("10.244.2.0/24"), b'{"PublicIP":', 7, 3) == MALFORMED_VALUE   # it held a good lease
    assert peers_of(book) == [] and book.records == {} and book.unreadable == {net("10.244.2.0/24"): 3}
    assert book.ignored == {MALFORMED_KEY: 2, MALFORMED_VALUE: 1}
    # a key with an unreadable value still holds its subnet: acquiring does not take it
    plan = plan_acquire(VXLAN, book.records.values(), ip(1), net("10.244.2.0/24"), lambda free: free[0],
                        occupied=book.unreadable)
    assert plan == Take(net("10.244.1.0/24"))
    assert book.put(key("10.244.2.0/24"), vxlan_value(2), 7, 4) is None
    assert book.unreadable == {} and peers_of(book) == [peer("10.244.2.0/24", 2)]
    book.put(key("10.244.3.0/24"), b"nope", 7, 5)
    assert book.delete(key("10.244.3.0/24")) == net("10.244.3.0/24") and len(book) == 1


def test_a_conflict_keeps_the_older_lease():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN)
    book.put(key("10.244.5.0/24"), vxlan_value(2), 7, 20)
    book.put(key("10.244.3.0/24"), vxlan_value(2, vtep=9), 7, 30)   # the same public address, later
    book.put(key("10.244.4.0/24"), vxlan_value(4, vtep=2), 7, 40)   # the first's VTEP MAC, later
    assert peers_of(book) == [peer("10.244.5.0/24", 2)]
    assert book.conflicts == {net("10.244.3.0/24"), net("10.244.4.0/24")}
    assert book.ignored == {CONFLICT: 2}
    book.peers()
    assert book.ignored == {CONFLICT: 2}             # counted when they start to conflict, not at every look
    PeerTable(port=8472).update(book.peers())
    book.delete(key("10.244.5.0/24"))                # the older one goes: the next oldest of the rest is a peer
    assert peers_of(book) == [peer("10.244.3.0/24", 2, vtep=9), peer("10.244.4.0/24", 4, vtep=2)]
    assert book.conflicts == set() and book.excluded() == {}


def test_a_lease_claiming_our_address_or_overlapping_our_subnet_conflicts():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN, public_ip=ip(1), vtep_mac=mac(1))
    book.own = net("10.244.1.0/24")
    book.put(key("10.244.1.0/24"), vxlan_value(1), 7, 1)
    book.put(key("10.244.2.0/24"), vxlan_value(1, vtep=2), 7, 2)   # our public address
    book.put(key("10.244.3.0/24"), vxlan_value(3, vtep=1), 7, 3)   # our VTEP MAC
    book.put(key("10.244.1.128/25"), vxlan_value(4), 7, 4)         # inside our subnet
    book.put(key("10.244.0.0/23"), vxlan_value(5), 7, 5)           # around it
    book.put(key("10.244.6.0/24"), vxlan_value(6), 7, 6)
    assert peers_of(book) == [peer("10.244.6.0/24", 6)]
    assert book.ignored == {CONFLICT: 4}
    assert book.excluded() == {net("10.244.1.0/24"): "own", **{net(s): CONFLICT for s in (
        "10.244.2.0/24", "10.244.3.0/24", "10.244.1.128/25", "10.244.0.0/23")}}


def test_the_book_holds_at_most_max_leases_keys():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN, max_leases=3)
    for k in (2, 3, 4):
        assert book.put(key(f"10.244.{k}.0/24"), vxlan_value(k), 7, k) is None
    assert book.put(key("10.244.5.0/24"), vxlan_value(5), 7, 5) == OVER_THE_LIMIT
    assert book.put(key("10.244.4.0/24"), vxlan_value(4, vtep=40), 7, 6) is None     # a key it holds: renewed
    assert book.put(key("10.244.4.0/24"), b"{}", 7, 7) == MALFORMED_VALUE            # still one of the three
    assert book.put(key("10.244.5.0/24"), vxlan_value(5), 7, 8) == OVER_THE_LIMIT
    assert len(book) == 3 and book.ignored[OVER_THE_LIMIT] == 2
    book.delete(key("10.244.2.0/24"))
    assert book.put(key("10.244.5.0/24"), vxlan_value(5), 7, 9) is None
    with pytest.raises(ValueError):
        LeaseBook(DEFAULT_PREFIX, VXLAN, max_leases=0)


def test_replace_counts_only_what_is_new_and_keeps_held_keys_under_the_limit():
    book = LeaseBook(DEFAULT_PREFIX, VXLAN, max_leases=2)
    book.put(key("10.244.9.0/24"), b'{"PublicIP":"10.99.0.9","BackendType":"host-gw"}', 7, 5)
    book.put(key("10.244.8.0/24"), vxlan_value(8), 7, 6)
    listing = [(key("10.244.2.0/24"), vxlan_value(2), 7, 9),                  # new, and first in key order
               (key("10.244.8.0/24"), vxlan_value(8), 7, 6),
               (key("10.244.9.0/24"), b'{"PublicIP":"10.99.0.9","BackendType":"host-gw"}', 7, 5),
               (b"/coreos.com/network/subnets/junk", b"", 0, 3)]
    book.replace(listing)
    assert set(book.records) == {net("10.244.8.0/24"), net("10.244.9.0/24")}   # held before: kept
    assert book.ignored == {"backend host-gw": 1, OVER_THE_LIMIT: 1, MALFORMED_KEY: 1}
    book.replace(listing[1:2])
    assert set(book.records) == {net("10.244.8.0/24")} and peers_of(book) == [peer("10.244.8.0/24", 8)]


# A small world of keys and values, so that events collide: conflicts, renewals, garbage.
_SUBNETS = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24", "10.244.2.0/23", "10.245.0.0/24"]
_VALUES = [vxlan_value(1), vxlan_value(2), vxlan_value(2, vtep=3), vxlan_value(3), vxlan_value(4, vtep=3),
           vxlan_value(4, vni=9), b'{"PublicIP":"10.99.0.5"}', b"{", b'{"PublicIP":"10.99.0.6","BackendType":"vxlan"}']
_KEYS = [key(s) for s in _SUBNETS] + [b"/coreos.com/network/subnets/bad"]

events = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, len(_KEYS) - 1), st.integers(0, len(_VALUES) - 1), st.integers(0, 2)),
    st.tuples(st.just("delete"), st.integers(0, len(_KEYS) - 1)),
), max_size=60)


def apply(book: LeaseBook, batch, first_revision: int, state: dict) -> None:
    for i, event in enumerate(batch, first_revision):
        if event[0] == "put":
            _, k, v, lease = event
            book.put(_KEYS[k], _VALUES[v], lease, i)
            state[_KEYS[k]] = (_KEYS[k], _VALUES[v], lease, i)
        else:
            book.delete(_KEYS[event[1]])
            state.pop(_KEYS[event[1]], None)


@given(history=events, split=st.integers(0, 60), own=st.sampled_from([None, *_SUBNETS[:3]]))
def test_replace_after_a_compaction_ends_where_the_events_would_have(history, split, own):
    watched = LeaseBook(DEFAULT_PREFIX, VXLAN, public_ip=ip(1), vtep_mac=mac(1))
    relisted = LeaseBook(DEFAULT_PREFIX, VXLAN, public_ip=ip(1), vtep_mac=mac(1))
    for book in (watched, relisted):
        book.own = net(own) if own else None
    state: dict = {}
    apply(watched, history, 1, state)
    apply(relisted, history[:split], 1, {})
    relisted.peers()
    relisted.replace(sorted(state.values()))          # etcd lists in key order
    assert relisted.records == watched.records and relisted.unreadable == watched.unreadable
    assert peers_of(relisted) == peers_of(watched)
    assert relisted.conflicts == watched.conflicts and relisted.excluded() == watched.excluded()
    PeerTable(port=8472).update(watched.peers())     # never a set the peer table refuses
    assert peers_of(watched) == expected_peers(state, net(own) if own else None)


def test_peers_match_their_definition_after_every_event():
    """Random churn in the small world (seeded): after each event, the incremental book agrees with the
    definition and the peer table takes its peers."""
    rng = random.Random(12)
    for run in range(300):
        own = rng.choice([None, *_SUBNETS[:3]])
        book = LeaseBook(DEFAULT_PREFIX, VXLAN, public_ip=ip(1), vtep_mac=mac(1))
        book.own = net(own) if own else None
        state: dict = {}
        table = PeerTable(port=8472)
        for revision in range(1, 40):
            k = rng.randrange(len(_KEYS))
            if rng.random() < 0.25:
                apply(book, [("delete", k)], revision, state)
            else:
                apply(book, [("put", k, rng.randrange(len(_VALUES)), rng.randrange(2))], revision, state)
            if rng.random() < 0.05:
                own = rng.choice([None, *_SUBNETS[:3]])
                book.own = net(own) if own else None
            assert peers_of(book) == expected_peers(state, book.own), (run, revision)
            table.update(book.peers())
        assert set(book.ignored) <= set(REASONS)      # the counters shown are a known few


def expected_peers(state: dict, own: Network | None) -> list[Lease]:
    """The peers by their definition, from the keys as they stand: every usable lease, oldest first, unless
    an older one (or we) took its address or MAC, or it overlaps our subnet."""
    records = []
    for k, value, _, revision in state.values():
        subnet = parse_subnet_key(DEFAULT_PREFIX, k)
        try:
            attrs = parse_lease_value(value)
        except FlannelError:
            continue
        if subnet is not None and subnet.address >> 16 == 0x0AF4 and subnet.prefix_len >= 16 \
                and attrs.backend == "vxlan" and attrs.vtep_mac is not None and attrs.vni == 1:
            records.append((revision, subnet.address, subnet.mask, subnet, attrs))
    addresses, macs = {ip(1)}, {mac(1)}
    mine = [a for *_, s, a in records if s == own]
    addresses |= {a.public_ip for a in mine}
    macs |= {a.vtep_mac for a in mine}
    peers = []
    for *_, subnet, attrs in sorted(records, key=lambda r: r[:3]):
        if subnet == own:
            continue
        if attrs.public_ip in addresses or attrs.vtep_mac in macs or (
                own is not None and (subnet.address & own.mask == own.address or own.address & subnet.mask == subnet.address)):
            continue
        addresses.add(attrs.public_ip)
        macs.add(attrs.vtep_mac)
        peers.append(Lease(subnet, attrs.public_ip, attrs.vtep_mac))
    return sorted(peers, key=lambda lease: (lease.subnet.address, lease.subnet.mask))


def test_peers_stay_cheap_with_thousands_of_leases():
    wide = config('{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}')
    book = LeaseBook(DEFAULT_PREFIX, wide, max_leases=5000)
    subnets = [Network(0x0A000000 + k * 256, 0xFFFFFF00) for k in range(1, 3001)]
    values = [lease_value(LeaseAttrs(k.to_bytes(4, "big"), "vxlan", 1, b"\x02" + k.to_bytes(5, "big")))
              for k in range(0x0B000001, 0x0B000001 + len(subnets))]
    book.replace((subnet_key(DEFAULT_PREFIX, s), v, 7, i) for i, (s, v) in enumerate(zip(subnets, values), 1))
    assert len(book.peers()) == 3000
    started = time.perf_counter()
    for i in range(1000):              # a churn of 1,000 added and removed, the peers asked after each
        subnet = subnets[i]
        book.delete(subnet_key(DEFAULT_PREFIX, subnet))
        book.peers()
        book.put(subnet_key(DEFAULT_PREFIX, subnet), values[i], 7, 10_000 + i)
        book.peers()
    for _ in range(10_000):            # and unchanged, asked again: cached
        book.peers()
    assert time.perf_counter() - started < 10.0
    assert len(book.peers()) == 3000
