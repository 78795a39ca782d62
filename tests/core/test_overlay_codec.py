"""The overlay's wire helpers: TTL decrement, VXLAN header, address header, flow hash."""

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from overlaykit import packet
from scapy.all import IP, TCP, UDP, fragment, raw
from scapy.layers.vxlan import VXLAN

from vswitch.core.wire.checksum import internet_checksum, ones_complement_sum
from vswitch.core.wire.ipv4 import decrement_ttl
from vswitch.overlay.core.codec import (
    ADDRESS_LEN,
    MAX_VNI,
    SOURCE_PORT_MAX,
    SOURCE_PORT_MIN,
    address_header,
    arrival,
    flow_source_port,
    parse_address,
    vxlan_header,
)

# -- decrement_ttl ---------------------------------------------------------------------


def header_with_checksum(target: int, ttl: int, proto: int, src: bytes, dst: bytes, options: bytes = b"") -> bytes:
    """A valid IPv4 header whose checksum is ``target`` (the identification field is solved for it).

    A valid header never has checksum 0xFFFF (the sum of non-zero data is
    never +0), so that target gives its neighbour instead.
    """
    ihl = 5 + len(options) // 4

    def build(ident: int) -> bytearray:
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + 8, ident, 0, ttl, proto, 0,
                                       src, dst) + options)
        struct.pack_into("!H", header, 10, internet_checksum(header))
        return header

    base = ones_complement_sum(bytes(build(0)[:10]) + b"\0\0" + bytes(build(0)[12:]))
    want = ~target & 0xFFFF                        # the folded sum the checksum is the complement of
    ident = (want + (~base & 0xFFFF))              # want - base, in ones' complement
    ident = (ident & 0xFFFF) + (ident >> 16)
    header = build(ident & 0xFFFF)
    assert internet_checksum(bytes(header)) == 0
    return bytes(header) + b"\x12\x34\x56\x78\x00\x08\x00\x00"


def full_recomputation(header: bytes) -> bytes:
    ihl = (header[0] & 0x0F) * 4
    new = bytearray(header)
    new[8] -= 1
    new[10:12] = b"\0\0"
    struct.pack_into("!H", new, 10, internet_checksum(bytes(new[:ihl])))
    return bytes(new)


@given(
    target=st.integers(0, 0xFFFF), ttl=st.integers(0, 255), proto=st.integers(0, 255),
    src=st.binary(min_size=4, max_size=4), dst=st.binary(min_size=4, max_size=4),
    options=st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00\x01\x01\x01\x00"]),
)
@example(target=0x0000, ttl=64, proto=17, src=b"\n\xf4\x01\x02", dst=b"\n\xf4\x02\x02", options=b"")
@example(target=0xFEFF, ttl=64, proto=17, src=b"\n\xf4\x01\x02", dst=b"\n\xf4\x02\x02", options=b"")  # sum becomes -0
@example(target=0xFF00, ttl=2, proto=6, src=b"\n\xf4\x01\x02", dst=b"\n\xf4\x02\x02", options=b"")    # end-around carry
@example(target=0xFFFE, ttl=255, proto=1, src=b"\n\xf4\x01\x02", dst=b"\n\xf4\x02\x02", options=b"")
def test_decrement_ttl_matches_a_full_recomputation(target, ttl, proto, src, dst, options):
    header = header_with_checksum(target, ttl, proto, src, dst, options)
    result = decrement_ttl(header)
    if ttl <= 1:
        assert result is None
        return
    assert result == full_recomputation(header)
    ihl = (header[0] & 0x0F) * 4
    assert internet_checksum(result[:ihl]) == 0
    # at an offset (inside a datagram), only the packet comes back
    assert decrement_ttl(b"\xaa" * 30 + header, 30) == result


def test_the_checksum_targets_are_reached():
    # the helper above really produces the edge-case checksums the examples name
    for target in (0x0000, 0x00FF, 0xFEFF, 0xFF00, 0xFFFE):
        header = header_with_checksum(target, 64, 17, b"\n\xf4\x01\x02", b"\n\xf4\x02\x02")
        assert int.from_bytes(header[10:12], "big") == target


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_refuses_to_reach_zero(ttl):
    assert decrement_ttl(raw(packet(ttl=ttl))) is None


def test_decrement_ttl_against_scapy():
    pkt = packet(ttl=17, tos=0xB8, id=0xBEEF, flags="DF")
    result = IP(decrement_ttl(raw(pkt)))
    expected = pkt.copy()
    expected.ttl = 16
    del expected.chksum
    assert raw(result) == raw(expected)


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("vni", [0, 1, 0x123456, MAX_VNI])
def test_vxlan_header_is_what_scapy_reads(vni):
    header = vxlan_header(vni)
    assert len(header) == 8
    parsed = VXLAN(header)
    assert (int(parsed.flags), parsed.vni, parsed.reserved1, parsed.reserved2) == (0x08, vni, 0, 0)
    assert header == bytes((0x08, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\0"


@pytest.mark.parametrize("vni", [-1, MAX_VNI + 1])
def test_vxlan_header_rejects_a_vni_out_of_range(vni):
    with pytest.raises(ValueError, match="VNI"):
        vxlan_header(vni)


@given(ip=st.binary(min_size=4, max_size=4), port=st.integers(0, 65535), local=st.integers(0, 65535))
def test_address_header_round_trips(ip, port, local):
    header = address_header(ip, port, local)
    assert len(header) == ADDRESS_LEN
    assert parse_address(header + b"payload") == (ip, port, local)
    assert address_header(ip, port) == ip + port.to_bytes(2, "big") + b"\0\0"


# -- the flow hash ------------------------------------------------------------------------------


def test_one_flow_keeps_its_source_port():
    ports = {flow_source_port(raw(packet(payload=bytes([i]) * i, id=i, ttl=64 - i))) for i in range(1, 40)}
    assert len(ports) == 1


def test_flows_spread_over_linux_range():
    ports = [flow_source_port(raw(packet(sport=1024 + i))) for i in range(300)]
    assert all(SOURCE_PORT_MIN <= p <= SOURCE_PORT_MAX for p in ports)
    assert len(set(ports)) >= 290            # 300 flows in 28232 ports: a collision or two at most
    assert min(ports) < 35000 and max(ports) > 58000
    # each part of the flow counts: destination port, addresses, protocol
    base = packet()
    variants = [
        packet(dport=5001), packet(src="10.244.1.3"), packet(dst="10.244.2.3"),
        IP(src=base.src, dst=base.dst) / TCP(sport=4000, dport=5000),
    ]
    assert len({flow_source_port(raw(base))} | {flow_source_port(raw(v)) for v in variants}) == 5


def test_later_fragments_hash_without_ports():
    # Two flows between the same addresses: their later fragments carry no ports, so they hash alike,
    # and unlike the unfragmented packets of those flows, which differ.
    big = b"x" * 3000
    flows = [IP(src="10.244.1.2", dst="10.244.2.2", id=i) / UDP(sport=sport, dport=53) / big
             for i, sport in ((1, 1111), (2, 2222))]
    assert flow_source_port(raw(flows[0])) != flow_source_port(raw(flows[1]))
    later = [raw(f) for flow in flows for f in fragment(flow, fragsize=1000)[1:]]
    assert len(later) == 6 and all(IP(f).frag > 0 for f in later)
    assert len({flow_source_port(f) for f in later}) == 1
    # The hash of a later fragment is that of its addresses and protocol alone.
    bare = raw(IP(src="10.244.1.2", dst="10.244.2.2", proto=17, frag=100) / (b"\xff" * 8))
    assert flow_source_port(later[0]) == flow_source_port(bare)


@pytest.mark.parametrize("ihl", [0, 3, 4])
def test_a_header_length_below_20_hashes_without_ports(ihl):
    # No transport header can be found behind such a header (a flannel.1 frame is not checked before the
    # hash): the IP header's own bytes were taken for ports. Its hash is that of its addresses and protocol.
    data = bytearray(raw(packet(sport=4321)))
    data[0] = 0x40 | ihl
    bare = raw(IP(src="10.244.1.2", dst="10.244.2.2", proto=17, frag=100) / (b"\xff" * 8))
    assert flow_source_port(bytes(data)) == flow_source_port(bare)


def test_flow_hash_reads_at_an_offset():
    pkt = raw(packet(sport=4321))
    assert flow_source_port(b"\0" * 14 + pkt, 14) == flow_source_port(pkt)


def test_one_ping_session_keeps_its_source_port_and_sessions_spread():
    from scapy.all import ICMP

    def port(ident, seq):
        return flow_source_port(raw(IP(src="10.244.1.2", dst="10.244.2.2") / ICMP(id=ident, seq=seq) / (b"x" * seq)))

    assert len({port(7, seq) for seq in range(20)}) == 1   # the checksum changes with seq; the flow does not
    assert len({port(ident, 1) for ident in range(64)}) > 32


def test_every_fragment_of_a_datagram_hashes_alike():
    pieces = fragment(IP(src="10.244.1.2", dst="10.244.2.2") / UDP(sport=1, dport=2) / (b"z" * 3000), fragsize=1000)
    assert len({flow_source_port(raw(p)) for p in pieces}) == 1


def test_arrival_is_what_udp_delivers():
    me = bytes([10, 99, 0, 1]) + (8285).to_bytes(2, "big")
    sent = address_header(bytes([10, 99, 0, 2]), 8472, 0) + b"payload"
    assert parse_address(arrival(sent, me)) == (bytes([10, 99, 0, 1]), 8285, 8472)   # from our port, to theirs
    flow = address_header(bytes([10, 99, 0, 2]), 8472, 40000) + b"payload"
    assert parse_address(arrival(flow, me)) == (bytes([10, 99, 0, 1]), 40000, 8472)   # a chosen source port wins
    assert arrival(flow, me)[8:] == b"payload"
