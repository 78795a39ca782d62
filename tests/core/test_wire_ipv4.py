"""IPv4 headers: parse what scapy builds, build what scapy accepts."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ICMP, IP, UDP, Ether, IPOption_Router_Alert, Raw, raw
from scapy.utils import checksum as scapy_checksum

from vswitch.core.wire import (
    Ipv4,
    Malformed,
    Truncated,
    build_ipv4,
    internet_checksum,
    ip_from_str,
    ipv4,
)


def _refresh_checksum(header: bytearray, ihl: int = 20) -> bytes:
    """Give ``header`` a correct checksum computed by scapy, so only the field under test is wrong."""
    struct.pack_into("!H", header, 10, 0)
    struct.pack_into("!H", header, 10, scapy_checksum(bytes(header[:ihl])))
    return bytes(header)


def test_parse_scapy_packet_fields():
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", ttl=17, id=0x1234, tos=0xB8, flags="DF") / UDP(sport=1, dport=2) / (b"x" * 10)
    buf = raw(pkt)
    hdr = Ipv4.parse(buf)
    assert hdr.ihl == 20
    assert hdr.tos == 0xB8
    assert hdr.total_length == len(buf) == 20 + 8 + 10
    assert hdr.ident == 0x1234
    assert hdr.ttl == 17
    assert hdr.proto == ipv4.PROTO_UDP
    assert hdr.checksum == IP(buf).chksum
    assert hdr.src == ip_from_str("10.0.0.1")
    assert hdr.dst == ip_from_str("10.0.0.2")
    assert hdr.dont_fragment and not hdr.more_fragments
    assert hdr.fragment_offset == 0
    assert hdr.payload(buf) == buf[20:]
    assert UDP(hdr.payload(buf)).load == b"x" * 10


def test_fragment_fields():
    buf = raw(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=185) / Raw(b"\0" * 16))
    hdr = Ipv4.parse(buf)
    assert hdr.more_fragments and not hdr.dont_fragment
    assert hdr.fragment_offset == 185 * 8


def test_parse_at_offset_and_payload_excludes_ethernet_padding():
    packet = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()
    frame = raw(Ether() / packet) + b"\0" * 18  # padded to the 60-byte minimum
    hdr = Ipv4.parse(frame, 14)
    assert hdr.offset == 14
    assert hdr.payload_offset == 34
    assert hdr.total_length == 28
    assert hdr.payload(frame) == raw(ICMP())


def test_options_ihl_greater_than_5():
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_Router_Alert()]) / UDP() / b"data"
    buf = raw(Ether() / pkt)
    hdr = Ipv4.parse(buf, 14)
    assert hdr.ihl == 24
    assert hdr.payload_offset == 14 + 24
    assert hdr.payload(buf) == buf[14 + 24:]
    assert UDP(hdr.payload(buf)).load == b"data"


def test_options_checksum_covers_the_options():
    buf = bytearray(raw(IP(options=[IPOption_Router_Alert()]) / UDP()))
    buf[22] ^= 0x01  # flip a bit inside the option: only the checksum can notice
    with pytest.raises(Malformed, match="checksum"):
        Ipv4.parse(bytes(buf))


GOOD = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"payload!")


def test_version_not_4_is_malformed():
    buf = bytearray(GOOD)
    buf[0] = (6 << 4) | 5
    with pytest.raises(Malformed, match="version"):
        Ipv4.parse(_refresh_checksum(buf))


@pytest.mark.parametrize("ihl_words", [0, 1, 4])
def test_ihl_below_5_is_malformed(ihl_words):
    buf = bytearray(GOOD)
    buf[0] = (4 << 4) | ihl_words
    with pytest.raises(Malformed, match="header length"):
        Ipv4.parse(_refresh_checksum(buf))


@pytest.mark.parametrize("total", [0, 19])
def test_total_length_below_header_is_malformed(total):
    buf = bytearray(GOOD)
    struct.pack_into("!H", buf, 2, total)
    with pytest.raises(Malformed, match="total length"):
        Ipv4.parse(_refresh_checksum(buf))


def test_total_length_below_ihl_with_options_is_malformed():
    buf = bytearray(raw(IP(options=[IPOption_Router_Alert()]) / UDP()))
    struct.pack_into("!H", buf, 2, 20)  # >= 20 but < 24
    with pytest.raises(Malformed, match="total length"):
        Ipv4.parse(_refresh_checksum(buf, 24))


def test_total_length_beyond_buffer_is_truncated():
    buf = bytearray(GOOD)
    struct.pack_into("!H", buf, 2, len(GOOD) + 1)
    with pytest.raises(Truncated):
        Ipv4.parse(_refresh_checksum(buf))


def test_ihl_beyond_buffer_is_truncated():
    buf = bytearray(raw(IP(src="10.0.0.1", dst="10.0.0.2")))  # 20 bytes, exactly
    buf[0] = 0x4F  # says 60 bytes of header
    struct.pack_into("!H", buf, 2, 60)
    with pytest.raises(Truncated):
        Ipv4.parse(bytes(buf))


def test_bad_checksum_is_malformed_unless_not_verified():
    buf = bytearray(GOOD)
    buf[10] ^= 0xFF
    with pytest.raises(Malformed, match="checksum"):
        Ipv4.parse(bytes(buf))
    hdr = Ipv4.parse(bytes(buf), verify_checksum=False)
    assert hdr.checksum == struct.unpack_from("!H", buf, 10)[0]


@pytest.mark.parametrize("length", range(0, 20))
def test_shorter_than_minimum_header_is_truncated(length):
    with pytest.raises(Truncated):
        Ipv4.parse(GOOD[:length])


def test_offset_past_the_end_is_truncated():
    with pytest.raises(Truncated):
        Ipv4.parse(GOOD, len(GOOD) + 5)


def test_build_is_accepted_by_scapy():
    payload = raw(UDP(sport=53, dport=5353) / b"abc")
    buf = build_ipv4(ip_from_str("192.0.2.1"), ip_from_str("198.51.100.2"), ipv4.PROTO_UDP, payload, ttl=9, ident=77)
    pkt = IP(buf)
    assert pkt.version == 4 and pkt.ihl == 5
    assert pkt.len == len(buf) == 20 + len(payload)
    assert pkt.ttl == 9 and pkt.id == 77 and pkt.proto == 17
    assert pkt.flags == "DF" and pkt.frag == 0
    assert pkt.src == "192.0.2.1" and pkt.dst == "198.51.100.2"
    assert pkt[UDP].dport == 5353
    stored = pkt.chksum
    del pkt.chksum
    assert IP(raw(pkt)).chksum == stored
    assert Ipv4.parse(buf).checksum == stored


def test_build_with_options():
    option = raw(IPOption_Router_Alert())
    assert len(option) == 4
    buf = build_ipv4(ip_from_str("10.0.0.1"), ip_from_str("10.0.0.2"), ipv4.PROTO_UDP, b"", options=option)
    pkt = IP(buf)
    assert pkt.ihl == 6
    assert pkt.len == 24
    assert pkt.haslayer(IPOption_Router_Alert)
    stored = pkt.chksum
    del pkt.chksum
    assert IP(raw(pkt)).chksum == stored
    assert Ipv4.parse(buf).ihl == 24


@pytest.mark.parametrize("options", [b"\x01", b"\x01\x01\x01", b"\x01" * 5])
def test_build_rejects_unpadded_options(options):
    with pytest.raises(ValueError):
        build_ipv4(bytes(4), bytes(4), 1, b"", options=options)


ipv4_addr = st.binary(min_size=4, max_size=4)


@given(
    src=ipv4_addr, dst=ipv4_addr, proto=st.integers(0, 255), payload=st.binary(max_size=64),
    ttl=st.integers(0, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255),
    flags_offset=st.integers(0, 0xFFFF), option_words=st.integers(0, 10),
)
def test_build_checksum_equals_scapy(src, dst, proto, payload, ttl, ident, tos, flags_offset, option_words):
    options = b"\x01" * (4 * option_words)  # NOPs
    buf = build_ipv4(src, dst, proto, payload, ttl=ttl, ident=ident, tos=tos, flags_offset=flags_offset, options=options)
    ihl = 20 + len(options)
    stored = IP(buf).chksum
    # scapy's checksum over our header, not a rebuild by scapy: dissecting IGMP adds a router alert to the header
    assert scapy_checksum(buf[:10] + b"\0\0" + buf[12:ihl]) == stored
    assert internet_checksum(buf[:ihl]) == 0
    hdr = Ipv4.parse(buf)
    assert (hdr.ihl, hdr.total_length, hdr.ttl, hdr.proto, hdr.ident, hdr.tos, hdr.flags_offset) == (
        ihl, ihl + len(payload), ttl, proto, ident, tos, flags_offset,
    )
    assert (hdr.src, hdr.dst) == (src, dst)
    assert hdr.payload(buf) == payload
