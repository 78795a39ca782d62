"""Software offloads: checksum completion and TSO segmentation, checked by scapy."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, raw

from vswitch.wire import Malformed, Truncated
from vswitch.wire.ipv4 import pseudo_header_sum
from vswitch.wire.offload import (
    F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_UDP, VNET_HDR, UnsupportedOffload, complete_checksum, from_vnet,
    segment_tcp4,
)

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _partial(pkt, l4_offset, field):
    """The frame as a kernel hands it over with CHECKSUM_PARTIAL: the field holds the pseudo-header sum."""
    frame = bytearray(raw(pkt))
    ip = pkt[IP]
    length = ip.len - ip.ihl * 4
    seed = pseudo_header_sum(bytes(map(int, ip.src.split("."))), bytes(map(int, ip.dst.split("."))), ip.proto, length)
    folded = seed % 0xFFFF
    struct.pack_into("!H", frame, l4_offset + field, folded)
    return bytes(frame)


@pytest.mark.parametrize("layer,field", [(TCP(sport=1, dport=2, flags="S"), 16), (UDP(sport=53, dport=99), 6)])
def test_complete_checksum_matches_scapy(layer, field):
    pkt = Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / layer / (b"payload" * 30)
    pkt = Ether(raw(pkt))
    frame = _partial(pkt, 34, field)
    done = Ether(complete_checksum(frame, 34, field))
    l4 = done[type(layer)]
    stored = l4.chksum
    del l4.chksum
    assert Ether(raw(done))[type(layer)].chksum == stored


def test_complete_checksum_beyond_frame_is_truncated():
    with pytest.raises(Truncated):
        complete_checksum(bytes(40), 34, 16)


def _super_frame(payload_len, flags="PA", ident=7, seq=1000):
    pkt = Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", id=ident) / TCP(
        sport=40000, dport=5201, seq=seq, ack=5, flags=flags, options=[("NOP", None), ("NOP", None)],
    ) / bytes(i & 0xFF for i in range(payload_len))
    return raw(pkt), pkt


@settings(max_examples=40)
@given(payload_len=st.integers(1, 20000), mss=st.integers(500, 9000), fin=st.booleans())
def test_segments_are_valid_tcp_that_reassemble(payload_len, mss, fin):
    frame, pkt = _super_frame(payload_len, flags="FPA" if fin else "PA", seq=0xFFFFFF00)
    segments = segment_tcp4(frame, mss)
    assert len(segments) == -(-payload_len // mss)
    data = b""
    for i, seg in enumerate(segments):
        parsed = Ether(seg)
        ip, tcp = parsed[IP], parsed[TCP]
        assert len(bytes(tcp.payload)) <= mss
        assert ip.id == (7 + i) & 0xFFFF
        assert tcp.seq == (0xFFFFFF00 + len(data)) & 0xFFFFFFFF
        last = i == len(segments) - 1
        assert bool(tcp.flags & 0x01) == (fin and last)  # FIN only on the last
        assert bool(tcp.flags & 0x08) == last             # PSH only on the last
        check = Ether(seg)  # scapy recomputes both checksums; ours must equal them
        c_ip, c_tcp = check[IP].chksum, check[TCP].chksum
        del check[IP].chksum
        del check[TCP].chksum
        again = Ether(raw(check))
        assert (again[IP].chksum, again[TCP].chksum) == (c_ip, c_tcp)
        data += bytes(tcp.payload)
    assert data == bytes(pkt[TCP].payload)


def test_from_vnet_plain_and_needs_csum_and_tso():
    frame, _ = _super_frame(100)
    assert from_vnet(VNET_HDR.pack(0, 0, 0, 0, 0, 0) + frame) == [frame]
    pkt = Ether(frame)
    partial = _partial(pkt, 34, 16)
    (done,) = from_vnet(VNET_HDR.pack(F_NEEDS_CSUM, 0, 0, 0, 34, 16) + partial)
    assert done == frame  # completing the partial checksum gives scapy's checksum back
    big, _ = _super_frame(4000)
    segments = from_vnet(VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 1448, 34, 16) + big)
    assert [len(Ether(s)[TCP].payload) for s in segments] == [1448, 1448, 1104]


def test_from_vnet_rejects_what_it_cannot_do():
    with pytest.raises(UnsupportedOffload):
        from_vnet(VNET_HDR.pack(0, GSO_UDP, 0, 1400, 0, 0) + bytes(100))
    with pytest.raises(Truncated):
        from_vnet(bytes(5))
    with pytest.raises(Malformed):
        from_vnet(VNET_HDR.pack(0, GSO_TCPV4, 0, 0, 0, 0) + _super_frame(100)[0])  # gso_size 0
