"""ICMP echo and errors, checked by scapy."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ICMP, IP, UDP, IPerror, IPOption_Router_Alert, UDPerror, raw

from vswitch.core.wire import (
    Icmp,
    Malformed,
    Truncated,
    build_echo,
    build_error,
    build_icmp,
    icmp,
    internet_checksum,
)


def _scapy_recomputed_checksum(message: bytes) -> int:
    pkt = ICMP(message)
    del pkt.chksum
    return ICMP(raw(pkt)).chksum


def test_echo_request_matches_scapy():
    message = build_echo(0x1234, 7, b"hello, world")
    pkt = ICMP(message)
    assert pkt.type == 8 and pkt.code == 0
    assert pkt.id == 0x1234 and pkt.seq == 7
    assert pkt.load == b"hello, world"
    assert pkt.chksum == _scapy_recomputed_checksum(message)
    assert message == raw(ICMP(type=8, id=0x1234, seq=7) / b"hello, world")


def test_echo_reply_type():
    message = build_echo(1, 2, b"abc", reply=True)
    pkt = ICMP(message)
    assert pkt.type == 0
    assert pkt.chksum == _scapy_recomputed_checksum(message)


@given(ident=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFF), payload=st.binary(max_size=200))
def test_echo_checksum_any_payload_including_odd_lengths(ident, seq, payload):
    message = build_echo(ident, seq, payload)
    assert internet_checksum(message) == 0
    assert ICMP(message).chksum == _scapy_recomputed_checksum(message)
    parsed = Icmp.parse(message)
    assert (parsed.type, parsed.ident, parsed.seq, parsed.body) == (icmp.ECHO_REQUEST, ident, seq, payload)
    assert not parsed.is_error


def test_parse_scapy_echo():
    message = raw(ICMP(type=8, id=99, seq=3) / b"ping")
    parsed = Icmp.parse(message)
    assert parsed.type == icmp.ECHO_REQUEST and parsed.code == 0
    assert parsed.ident == 99 and parsed.seq == 3
    assert parsed.body == b"ping"
    assert parsed.checksum == ICMP(message).chksum


def test_parse_bad_checksum_is_malformed_unless_not_verified():
    message = bytearray(raw(ICMP(type=8, id=99, seq=3) / b"ping"))
    message[-1] ^= 0x20
    with pytest.raises(Malformed):
        Icmp.parse(bytes(message))
    assert Icmp.parse(bytes(message), verify_checksum=False).body == b"pinG"


@pytest.mark.parametrize("length", range(0, icmp.HEADER_LEN))
def test_short_is_truncated(length):
    with pytest.raises(Truncated):
        Icmp.parse(raw(ICMP())[:length], verify_checksum=False)


OFFENDING = raw(IP(src="10.0.0.1", dst="203.0.113.5", ttl=1) / UDP(sport=4000, dport=33434) / (b"z" * 100))


def test_time_exceeded_quotes_header_and_8_bytes():
    message = build_error(icmp.TIME_EXCEEDED, 0, OFFENDING)
    assert message[icmp.HEADER_LEN:] == OFFENDING[:28]
    packet = IP(raw(IP(src="10.0.0.254", dst="10.0.0.1", proto=1) / message))
    assert packet[ICMP].type == 11 and packet[ICMP].code == 0
    assert packet[ICMP].chksum == _scapy_recomputed_checksum(message)
    quoted = packet[IPerror]
    assert quoted.src == "10.0.0.1" and quoted.dst == "203.0.113.5"
    assert packet[UDPerror].sport == 4000 and packet[UDPerror].dport == 33434
    parsed = Icmp.parse(message)
    assert parsed.is_error
    assert parsed.body == OFFENDING[:28]


def test_error_quotes_options_too():
    offending = raw(IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_Router_Alert()]) / UDP() / (b"q" * 40))
    message = build_error(icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE, offending)
    assert message[icmp.HEADER_LEN:] == offending[:24 + 8]
    assert internet_checksum(message) == 0


def test_error_about_short_packet_quotes_what_there_is():
    offending = raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=17))  # header only
    message = build_error(icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE, offending)
    assert message[icmp.HEADER_LEN:] == offending
    assert ICMP(message).chksum == _scapy_recomputed_checksum(message)


@pytest.mark.parametrize("mtu", [68, 576, 1400, 1500, 0xFFFF])
def test_fragmentation_needed_carries_next_hop_mtu(mtu):
    message = build_error(icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED, OFFENDING, mtu=mtu)
    pkt = ICMP(message)
    assert pkt.type == 3 and pkt.code == 4
    assert pkt.nexthopmtu == mtu
    assert struct.unpack_from("!H", message, 4)[0] == 0  # the unused half stays zero
    assert pkt.chksum == _scapy_recomputed_checksum(message)
    assert Icmp.parse(message).seq == mtu


def test_build_icmp_generic():
    message = build_icmp(13, 0, b"\0" * 12, ident=5, seq=6)  # timestamp request
    assert ICMP(message).type == 13
    assert ICMP(message).chksum == _scapy_recomputed_checksum(message)
    assert not Icmp.parse(message).is_error
