"""Ethernet II and 802.1Q: parsed by us, built by scapy (and the other way round)."""

import pytest
from scapy.all import ARP, IP, Dot1AD, Dot1Q, Ether, raw

from vswitch.core.wire import (
    Ethernet,
    Truncated,
    build_ethernet,
    ethernet,
    mac_from_str,
)

DST = "02:00:00:00:00:02"
SRC = "02:00:00:00:00:01"


def test_untagged_frame():
    frame = raw(Ether(dst=DST, src=SRC) / IP(src="10.0.0.1", dst="10.0.0.2"))
    eth = Ethernet.parse(frame)
    assert eth.dst == mac_from_str(DST)
    assert eth.src == mac_from_str(SRC)
    assert eth.ethertype == ethernet.ETH_P_IP
    assert eth.vlan is None
    assert eth.pcp == 0
    assert eth.payload_offset == ethernet.HEADER_LEN == 14
    assert frame[eth.payload_offset:] == raw(IP(src="10.0.0.1", dst="10.0.0.2"))
    assert frame[ethernet.DST] == eth.dst and frame[ethernet.SRC] == eth.src


def test_arp_ethertype():
    frame = raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=SRC) / ARP())
    assert Ethernet.parse(frame).ethertype == ethernet.ETH_P_ARP


@pytest.mark.parametrize(("vlan", "prio", "dei"), [(1, 0, 0), (100, 5, 0), (4095, 7, 1), (0, 3, 1)])
def test_8021q_tagged_frame(vlan, prio, dei):
    inner = IP(src="10.0.0.1", dst="10.0.0.2")
    frame = raw(Ether(dst=DST, src=SRC) / Dot1Q(vlan=vlan, prio=prio, dei=dei) / inner)
    eth = Ethernet.parse(frame)
    assert eth.vlan == vlan
    assert eth.pcp == prio  # the DEI bit must not leak into either field
    assert eth.ethertype == ethernet.ETH_P_IP
    assert eth.payload_offset == 18
    assert frame[eth.payload_offset:] == raw(inner)
    assert eth.src == mac_from_str(SRC)


def test_8021ad_outer_tag_is_recognised():
    frame = raw(Ether(dst=DST, src=SRC) / Dot1AD(vlan=30, prio=2) / Dot1Q(vlan=40) / IP())
    eth = Ethernet.parse(frame)
    assert eth.vlan == 30
    assert eth.pcp == 2
    assert eth.ethertype == ethernet.ETH_P_8021Q  # the inner tag is the payload
    assert eth.payload_offset == 18


@pytest.mark.parametrize("length", range(0, 14))
def test_shorter_than_header_is_truncated(length):
    frame = raw(Ether(dst=DST, src=SRC) / IP())
    with pytest.raises(Truncated):
        Ethernet.parse(frame[:length])


@pytest.mark.parametrize("length", range(14, 18))
def test_tag_cut_short_is_truncated(length):
    frame = raw(Ether(dst=DST, src=SRC) / Dot1Q(vlan=7) / IP())
    with pytest.raises(Truncated):
        Ethernet.parse(frame[:length])


def test_header_only_frame_parses():
    eth = Ethernet.parse(raw(Ether(dst=DST, src=SRC, type=0x88B5)))
    assert eth.ethertype == 0x88B5
    assert eth.payload_offset == 14


def test_build_untagged_parsed_by_scapy():
    payload = raw(IP(src="10.1.2.3", dst="10.3.2.1"))
    frame = build_ethernet(mac_from_str(DST), mac_from_str(SRC), ethernet.ETH_P_IP, payload)
    pkt = Ether(frame)
    assert pkt.dst == DST and pkt.src == SRC and pkt.type == 0x0800
    assert not pkt.haslayer(Dot1Q)
    assert pkt[IP].src == "10.1.2.3"
    assert frame == raw(Ether(dst=DST, src=SRC) / IP(src="10.1.2.3", dst="10.3.2.1"))


def test_build_tagged_parsed_by_scapy():
    payload = raw(IP(src="10.1.2.3", dst="10.3.2.1"))
    frame = build_ethernet(mac_from_str(DST), mac_from_str(SRC), ethernet.ETH_P_IP, payload, vlan=42, pcp=6)
    pkt = Ether(frame)
    assert pkt.type == 0x8100
    assert pkt[Dot1Q].vlan == 42
    assert pkt[Dot1Q].prio == 6
    assert pkt[Dot1Q].dei == 0
    assert pkt[Dot1Q].type == 0x0800
    assert pkt[IP].dst == "10.3.2.1"
    again = Ethernet.parse(frame)
    assert (again.vlan, again.pcp, again.ethertype, again.payload_offset) == (42, 6, 0x0800, 18)
