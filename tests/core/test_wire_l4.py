"""UDP and TCP builders and parsers: scapy recomputes every checksum we write."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, raw

from vswitch.core.wire import (
    Malformed,
    Tcp,
    Truncated,
    Udp,
    build_ipv4,
    build_tcp,
    build_udp,
    internet_checksum,
    ipv4,
    tcp,
)
from vswitch.core.wire.ipv4 import pseudo_header_sum

SRC = bytes([192, 0, 2, 1])
DST = bytes([198, 51, 100, 2])

ipv4_addr = st.binary(min_size=4, max_size=4)
port = st.integers(0, 0xFFFF)


def _rechecked(segment: bytes, src: bytes, dst: bytes, proto: int, layer):
    """(stored checksum, scapy's own checksum for the same segment inside an IP packet)."""
    pkt = IP(build_ipv4(src, dst, proto, segment))
    stored = pkt[layer].chksum
    del pkt[layer].chksum
    return stored, IP(raw(pkt))[layer].chksum


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def test_udp_matches_scapy_byte_for_byte():
    segment = build_udp(SRC, DST, 5353, 53, b"query")
    assert segment == raw(IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=5353, dport=53) / b"query")[20:]
    pkt = UDP(segment)
    assert pkt.sport == 5353 and pkt.dport == 53 and pkt.len == 13


@given(src=ipv4_addr, dst=ipv4_addr, sport=port, dport=port, payload=st.binary(max_size=300))
def test_udp_checksum_agrees_with_scapy(src, dst, sport, dport, payload):
    segment = build_udp(src, dst, sport, dport, payload)
    stored, recomputed = _rechecked(segment, src, dst, ipv4.PROTO_UDP, UDP)
    assert stored == recomputed
    assert stored != 0  # zero would mean "no checksum"
    assert internet_checksum(_pseudo_header(src, dst, 17, len(segment)) + segment) == 0
    parsed = Udp.parse(segment)
    assert (parsed.src_port, parsed.dst_port, parsed.length, parsed.checksum) == (sport, dport, len(segment), stored)


def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff():
    # Pick a payload word that makes the ones' complement sum 0xFFFF, so the
    # computed checksum is 0x0000, which UDP must transmit as 0xFFFF.
    base = build_udp(SRC, DST, 1000, 2000, b"\0\0")
    word = struct.unpack_from("!H", base, 6)[0]
    segment = build_udp(SRC, DST, 1000, 2000, struct.pack("!H", word))
    assert struct.unpack_from("!H", segment, 6)[0] == 0xFFFF
    stored, recomputed = _rechecked(segment, SRC, DST, ipv4.PROTO_UDP, UDP)
    assert stored == recomputed == 0xFFFF
    assert internet_checksum(_pseudo_header(SRC, DST, 17, len(segment)) + segment) == 0


def test_udp_parse_errors():
    good = build_udp(SRC, DST, 1, 2, b"12345678")
    for length in range(8):
        with pytest.raises(Truncated):
            Udp.parse(good[:length])
    with pytest.raises(Truncated):  # length field says more than there is
        Udp.parse(good[:-1])
    short = bytearray(good)
    struct.pack_into("!H", short, 4, 7)
    with pytest.raises(Malformed):
        Udp.parse(bytes(short))
    assert Udp.parse(b"\0" * 20 + good, 20).length == 16


def test_tcp_matches_scapy():
    segment = build_tcp(SRC, DST, 40000, 80, seq=1000, ack=2000, flags=tcp.SYN | tcp.ACK, window=1234, payload=b"GET /")
    reference = raw(
        IP(src="192.0.2.1", dst="198.51.100.2")
        / TCP(sport=40000, dport=80, seq=1000, ack=2000, flags="SA", window=1234) / b"GET /"
    )[20:]
    assert segment == reference
    pkt = TCP(segment)
    assert pkt.flags == "SA"
    assert pkt.dataofs == 5


def test_tcp_with_options():
    mss = b"\x02\x04\x05\xb4"
    segment = build_tcp(SRC, DST, 1, 2, options=mss)
    pkt = TCP(segment)
    assert pkt.dataofs == 6
    assert ("MSS", 1460) in pkt.options
    stored, recomputed = _rechecked(segment, SRC, DST, ipv4.PROTO_TCP, TCP)
    assert stored == recomputed
    assert Tcp.parse(segment).header_len == 24


@pytest.mark.parametrize("options", [b"\x01", b"\x01\x01", b"\x01" * 7])
def test_tcp_rejects_unpadded_options(options):
    with pytest.raises(ValueError):
        build_tcp(SRC, DST, 1, 2, options=options)


@given(
    src=ipv4_addr, dst=ipv4_addr, sport=port, dport=port, seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1), flags=st.integers(0, 0xFF), window=port,
    payload=st.binary(max_size=300), option_words=st.integers(0, 10),
)
def test_tcp_checksum_agrees_with_scapy(src, dst, sport, dport, seq, ack, flags, window, payload, option_words):
    options = b"\x01" * (4 * option_words)
    segment = build_tcp(src, dst, sport, dport, seq=seq, ack=ack, flags=flags, window=window, payload=payload, options=options)
    stored, recomputed = _rechecked(segment, src, dst, ipv4.PROTO_TCP, TCP)
    assert stored == recomputed
    assert internet_checksum(segment, pseudo_header_sum(src, dst, ipv4.PROTO_TCP, len(segment))) == 0
    parsed = Tcp.parse(segment)
    assert (parsed.src_port, parsed.dst_port, parsed.seq, parsed.ack, parsed.flags, parsed.window) == (
        sport, dport, seq, ack, flags, window,
    )
    assert parsed.header_len == 20 + len(options)
    assert parsed.checksum == stored


def test_tcp_parse_errors():
    good = build_tcp(SRC, DST, 1, 2, options=b"\x01" * 8)
    for length in range(20):
        with pytest.raises(Truncated):
            Tcp.parse(good[:length])
    with pytest.raises(Truncated):  # data offset says 28 bytes
        Tcp.parse(good[:27])
    bad = bytearray(good)
    bad[12] = 4 << 4
    with pytest.raises(Malformed):
        Tcp.parse(bytes(bad))
    assert Tcp.parse(b"\0" * 20 + good, 20).header_len == 28
