"""ARP: our parser and builder against scapy's."""

import struct

import pytest
from scapy.all import ARP, Ether, raw

from vswitch.core.wire import Arp, Malformed, Truncated, arp, ip_from_str, mac_from_str

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def test_parse_scapy_request_inside_a_frame():
    frame = raw(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_A)
        / ARP(op="who-has", hwsrc=MAC_A, psrc="10.0.0.1", hwdst="00:00:00:00:00:00", pdst="10.0.0.2")
    )
    msg = Arp.parse(frame, 14)
    assert msg.op == arp.OP_REQUEST
    assert msg.sender_mac == mac_from_str(MAC_A)
    assert msg.sender_ip == ip_from_str("10.0.0.1")
    assert msg.target_mac == bytes(6)
    assert msg.target_ip == ip_from_str("10.0.0.2")


def test_parse_scapy_reply():
    msg = Arp.parse(raw(ARP(op="is-at", hwsrc=MAC_B, psrc="10.0.0.2", hwdst=MAC_A, pdst="10.0.0.1")))
    assert msg.op == arp.OP_REPLY
    assert msg.sender_mac == mac_from_str(MAC_B)
    assert msg.target_mac == mac_from_str(MAC_A)
    assert msg.target_ip == ip_from_str("10.0.0.1")


def test_build_matches_scapy_and_round_trips():
    msg = Arp(arp.OP_REPLY, mac_from_str(MAC_B), ip_from_str("192.0.2.7"), mac_from_str(MAC_A), ip_from_str("192.0.2.9"))
    wire = msg.build()
    assert len(wire) == arp.LEN
    assert wire == raw(ARP(op=2, hwsrc=MAC_B, psrc="192.0.2.7", hwdst=MAC_A, pdst="192.0.2.9"))
    pkt = ARP(wire)
    assert (pkt.hwtype, pkt.ptype, pkt.hwlen, pkt.plen) == (1, 0x0800, 6, 4)
    assert pkt.op == 2
    assert pkt.hwsrc == MAC_B and pkt.psrc == "192.0.2.7"
    assert pkt.hwdst == MAC_A and pkt.pdst == "192.0.2.9"
    assert Arp.parse(wire) == msg


def _mutate(wire: bytes, fmt: str, offset: int, value: int) -> bytes:
    buf = bytearray(wire)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


GOOD = raw(ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))


@pytest.mark.parametrize(("fmt", "offset", "value"), [
    ("!H", 0, 6),        # htype IEEE 802
    ("!H", 2, 0x86DD),   # ptype IPv6
    ("!B", 4, 8),        # hlen
    ("!B", 5, 16),       # plen
])
def test_not_ethernet_ipv4_is_malformed(fmt, offset, value):
    Arp.parse(GOOD)  # the unmutated message is fine
    with pytest.raises(Malformed):
        Arp.parse(_mutate(GOOD, fmt, offset, value))


@pytest.mark.parametrize("op", [0, 3, 4, 0xFFFF])
def test_unknown_operation_is_malformed(op):
    with pytest.raises(Malformed):
        Arp.parse(_mutate(GOOD, "!H", 6, op))


@pytest.mark.parametrize("length", range(0, arp.LEN))
def test_short_is_truncated(length):
    with pytest.raises(Truncated):
        Arp.parse(GOOD[:length])


def test_short_at_offset_is_truncated():
    frame = raw(Ether() / ARP())
    with pytest.raises(Truncated):
        Arp.parse(frame[:-1], 14)
