"""The named field offsets read what scapy wrote there, and the one TTL decrement is the one incremental update."""

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from vswitch.core.wire import ethernet, icmp, ipv4, tcp, udp
from vswitch.core.wire.checksum import adjust, delta, internet_checksum
from vswitch.core.wire.field import at


def _u16(data: bytes) -> int:
    return int.from_bytes(data, "big")


def test_ethernet_fields():
    frame = raw(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x88B5) / b"payload")
    assert frame[ethernet.DST] == bytes.fromhex("020000000002")
    assert frame[ethernet.SRC] == bytes.fromhex("020000000001")
    assert _u16(frame[ethernet.ETHERTYPE]) == 0x88B5
    assert frame[ethernet.HEADER_LEN:] == b"payload"


def test_ipv4_fields():
    pkt = IP(src="10.1.2.3", dst="192.0.2.9", ttl=17, id=0x1234, tos=0xB8, flags="MF", frag=5, proto=200) / (b"x" * 30)
    packet = raw(pkt)
    checked = IP(packet)
    assert packet[ipv4.VER_IHL] == 0x45
    assert packet[ipv4.TOS] == 0xB8
    assert _u16(packet[ipv4.LENGTH]) == len(packet) == checked.len
    assert _u16(packet[ipv4.IDENT]) == 0x1234
    assert packet[ipv4.FLAGS] & 0x20 and _u16(packet[ipv4.FRAGMENT]) == ipv4.FLAG_MF | 5
    assert packet[ipv4.TTL] == 17
    assert packet[ipv4.PROTOCOL] == 200
    assert _u16(packet[ipv4.CHECKSUM]) == checked.chksum
    assert packet[ipv4.SRC] == socket.inet_aton("10.1.2.3")
    assert packet[ipv4.DST] == socket.inet_aton("192.0.2.9")
    assert packet[ipv4.ADDRESSES] == packet[ipv4.SRC] + packet[ipv4.DST]


def test_tcp_fields():
    segment = raw(TCP(sport=40000, dport=443, seq=0x01020304, ack=0x0A0B0C0D, flags="PA", window=4321, urgptr=7,
                      options=[("NOP", None)] * 4))
    checked = TCP(segment)
    assert _u16(segment[tcp.SRC_PORT]) == 40000 and _u16(segment[tcp.DST_PORT]) == 443
    assert segment[tcp.PORTS] == segment[tcp.SRC_PORT] + segment[tcp.DST_PORT]
    assert int.from_bytes(segment[tcp.SEQ_NUM], "big") == 0x01020304
    assert int.from_bytes(segment[tcp.ACK_NUM], "big") == 0x0A0B0C0D
    assert segment[tcp.DATA_OFFSET] >> 4 == 6
    assert segment[tcp.FLAGS] == tcp.PSH | tcp.ACK
    assert _u16(segment[tcp.WINDOW]) == 4321
    assert _u16(segment[tcp.CHECKSUM]) == checked.chksum
    assert _u16(segment[tcp.URGENT]) == 7


def test_udp_fields():
    datagram = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=53) / b"query")[20:]
    assert _u16(datagram[udp.SRC_PORT]) == 5353 and _u16(datagram[udp.DST_PORT]) == 53
    assert datagram[udp.PORTS] == datagram[udp.SRC_PORT] + datagram[udp.DST_PORT]
    assert _u16(datagram[udp.LENGTH]) == len(datagram)
    assert _u16(datagram[udp.CHECKSUM]) == UDP(datagram).chksum != 0


def test_icmp_fields():
    message = raw(ICMP(type=8, code=0, id=0x4242, seq=9) / b"ping")
    assert message[icmp.TYPE] == icmp.ECHO_REQUEST and message[icmp.CODE] == 0
    assert _u16(message[icmp.IDENT]) == 0x4242 and _u16(message[icmp.SEQ]) == 9
    assert _u16(message[icmp.CHECKSUM]) == ICMP(message).chksum
    assert internet_checksum(message) == 0


def test_a_field_at_an_offset():
    frame = raw(Ether() / IP(src="10.9.8.7", dst="10.6.5.4") / UDP(sport=1, dport=2))
    assert frame[at(ethernet.HEADER_LEN, ipv4.SRC)] == socket.inet_aton("10.9.8.7")
    assert frame[at(ethernet.HEADER_LEN + ipv4.MIN_HEADER_LEN, udp.DST_PORT)] == b"\x00\x02"


# -- the TTL decrement and the incremental update ---------------------------------------------


_HEADER = raw(IP(src="10.0.0.1", dst="10.0.0.2", ttl=64, proto=17))


def _header(checksum: int, ttl: int = 64) -> bytes:
    """A 20-byte header holding ``checksum`` as it stands (valid or not: only the arithmetic is under test)."""
    header = bytearray(_HEADER)
    header[ipv4.TTL] = ttl
    header[ipv4.CHECKSUM] = checksum.to_bytes(2, "big")
    return bytes(header)


def test_decrement_ttl_is_adjust_by_the_change_of_a_decrement_for_every_checksum():
    # the TTL is the high byte of its word: one less removes 0x0100, which adds ~0x0100 to the ones' complement sum
    change = delta(b"\x40\x11", b"\x3f\x11")
    assert change == ~0x0100 & 0xFFFF
    for checksum in range(0x10000):
        result = ipv4.decrement_ttl(_header(checksum))
        assert result is not None and _u16(result[ipv4.CHECKSUM]) == adjust(checksum, change), hex(checksum)


def test_decrement_ttl_at_an_offset_returns_the_packet_alone():
    header = _header(0x1234)
    result = ipv4.decrement_ttl(b"\xaa" * 8 + header, 8)
    assert result == ipv4.decrement_ttl(header)
    assert result is not None and result[ipv4.TTL] == 63


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_refuses_to_reach_zero(ttl):
    assert ipv4.decrement_ttl(_header(0, ttl)) is None


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=8, max_size=8))
def test_adjust_by_a_delta_equals_a_full_recompute(header, addresses):
    header = bytearray(header)
    header[ipv4.VER_IHL] = 0x45   # a real header is never all zero, whose checksum has two spellings
    header[ipv4.CHECKSUM] = b"\0\0"
    header[ipv4.CHECKSUM] = internet_checksum(bytes(header)).to_bytes(2, "big")
    rewritten = bytearray(header)
    rewritten[ipv4.ADDRESSES] = addresses
    incremental = adjust(_u16(header[ipv4.CHECKSUM]), delta(bytes(header[ipv4.ADDRESSES]), addresses))
    rewritten[ipv4.CHECKSUM] = incremental.to_bytes(2, "big")
    assert internet_checksum(bytes(rewritten)) == 0
