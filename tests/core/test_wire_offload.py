"""Software offloads: checksum completion and TSO segmentation, checked by scapy."""

import functools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    IPOption_Router_Alert,
    IPv6,
    IPv6ExtHdrHopByHop,
    raw,
)

from vswitch.core.wire import Malformed, Truncated
from vswitch.core.wire.ipv4 import pseudo_header_sum
from vswitch.core.wire.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    VNET_HDR,
    SuperFrame,
    UnsupportedOffload,
    coalesce_ipv4,
    coalesce_tcp4,
    complete_checksum,
    cut_super_frames,
    first_segment,
    from_vnet,
    read_vnet,
    segment,
    segment_ipv4,
    segment_tcp4,
    segment_tcp6,
    super_frame,
    vnet_header,
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


def _super_frame6(payload_len, flags="PA", seq=1000, vlan=False):
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=5, flags=flags, options=[("NOP", None), ("NOP", None)])
    ip = IPv6(src="fd00::1", dst="fd00::2", hlim=64) / tcp / bytes(i & 0xFF for i in range(payload_len))
    pkt = Ether(**ETH) / (Dot1Q(vlan=5) / ip if vlan else ip)
    return raw(pkt), pkt


@settings(max_examples=30)
@given(payload_len=st.integers(1, 20000), mss=st.integers(500, 9000), fin=st.booleans(), vlan=st.booleans())
def test_tcp6_segments_are_valid_tcp_that_reassemble(payload_len, mss, fin, vlan):
    frame, pkt = _super_frame6(payload_len, flags="FPA" if fin else "PA", seq=0xFFFFFF00, vlan=vlan)
    segments = segment_tcp6(frame, mss)
    assert len(segments) == -(-payload_len // mss)
    data = b""
    for i, seg in enumerate(segments):
        parsed = Ether(seg)
        ip, tcp = parsed[IPv6], parsed[TCP]
        assert ip.plen == len(raw(tcp)) and len(bytes(tcp.payload)) <= mss
        assert tcp.seq == (0xFFFFFF00 + len(data)) & 0xFFFFFFFF
        last = i == len(segments) - 1
        assert bool(tcp.flags & 0x01) == (fin and last)
        assert bool(tcp.flags & 0x08) == last
        check = Ether(seg)
        stored = check[TCP].chksum
        del check[TCP].chksum
        assert Ether(raw(check))[TCP].chksum == stored   # scapy's checksum, over the IPv6 pseudo-header
        data += bytes(tcp.payload)
    assert data == bytes(pkt[TCP].payload)


def test_from_vnet_segments_tcp6_and_refuses_what_it_cannot_cut():
    big, _ = _super_frame6(4000)
    segments = from_vnet(VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV6, 74, 1428, 54, 16) + big)
    assert [len(Ether(s)[TCP].payload) for s in segments] == [1428, 1428, 1144]
    behind_options = raw(Ether(**ETH) / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop()
                         / TCP(flags="A") / bytes(3000))
    with pytest.raises(UnsupportedOffload):
        segment_tcp6(behind_options, 1400)
    short = bytearray(big)
    short[18:20] = (len(big) - 14 - 40 + 1).to_bytes(2, "big")   # a payload length one past the frame
    with pytest.raises(Truncated):
        segment_tcp6(bytes(short), 1400)
    with pytest.raises(Malformed):
        segment_tcp6(_super_frame(100)[0], 1400)    # IPv4 is not IPv6
    with pytest.raises(Malformed):
        segment_tcp6(big, 0)


def test_a_tcp_header_past_the_ip_total_length_is_truncated():
    # The IP total length covers half the TCP header, the frame goes on: the segment was made of bytes
    # beyond the packet, with a longer IP length than the original.
    frame = raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", len=30) / TCP(sport=1, dport=2, flags="A") / bytes(100))
    with pytest.raises(Truncated):
        segment_tcp4(frame, 1000)
    with pytest.raises(Truncated):
        from_vnet(VNET_HDR.pack(0, GSO_TCPV4, 0, 1000, 0, 0) + frame)


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


# -- coalescing: GRO's rules, for writing super-frames to a TAP ------------------------------------


def _stream(sizes, *, seq=1000, flags=None, options=(), sport=40000):
    frames = []
    for i, size in enumerate(sizes):
        tcp = TCP(sport=sport, dport=5201, seq=seq, ack=7, flags=(flags or {}).get(i, "A"), window=512, options=list(options))
        frames.append(raw(Ether(**ETH) / IP(src="10.244.1.2", dst="10.244.2.2", id=i, flags="DF") / tcp / (bytes([i]) * size)))
        seq += size
    return frames


def test_a_run_of_one_flow_becomes_one_super_frame_that_segments_back_to_the_same_segments():
    frames = _stream([1400, 1400, 1400, 600], flags={3: "PA"}, options=[("Timestamp", (5, 6))])
    joined, count = coalesce_tcp4(frames, 0)
    assert count == 4 and type(joined) is SuperFrame
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(vnet_header(joined))
    assert (flags, gso_type, gso_size, csum_start, csum_offset) == (F_NEEDS_CSUM, GSO_TCPV4, 1400, 34, 16)
    assert hdr_len == 14 + 20 + 32
    whole = Ether(joined)
    assert whole[IP].len == 20 + 32 + 4800 and whole[TCP].flags == "PA" and whole[TCP].seq == 1000
    recomputed = whole[IP].copy()
    del recomputed.chksum
    assert whole[IP].chksum == IP(raw(recomputed)).chksum
    assert segment(joined) == from_vnet(vnet_header(joined) + joined)
    again = segment(joined)   # the kernel's segmentation, done by our own segmenter
    assert [bytes(Ether(f)[TCP].payload) for f in again] == [bytes(Ether(f)[TCP].payload) for f in frames]
    for ours, theirs in zip(again, frames):
        check = Ether(ours)
        del check[IP].chksum, check[TCP].chksum
        assert Ether(raw(check))[TCP].chksum == Ether(ours)[TCP].chksum   # full, valid checksums
        assert Ether(ours)[TCP].seq == Ether(theirs)[TCP].seq


@pytest.mark.parametrize("break_at, change", [
    (2, dict(sport=40001)),                 # another flow
    (2, dict(seq=99999)),                   # a gap in the sequence
    (2, dict(flags={0: "S"})),              # not a plain ACK
    (2, dict(options=[("Timestamp", (9, 6))])),   # other options (GRO compares them)
])
def test_a_run_stops_where_a_segment_does_not_follow(break_at, change):
    head = _stream([1000, 1000])
    tail = _stream([1000], seq=3000 if "seq" not in change else change["seq"], sport=change.get("sport", 40000),
                   flags=change.get("flags"), options=change.get("options", ()))
    joined, count = coalesce_tcp4(head + tail, 0)
    assert count == break_at
    assert Ether(joined)[IP].len == 20 + 20 + 2000


def test_a_shorter_segment_or_psh_ends_the_run_and_the_limit_holds():
    frames = _stream([1000, 500, 1000])
    assert coalesce_tcp4(frames, 0)[1] == 2
    frames = _stream([1000, 1000, 1000], flags={1: "PA"})
    assert coalesce_tcp4(frames, 0)[1] == 2
    frames = _stream([100] * 10)
    assert coalesce_tcp4(frames, 0, limit=4)[1] == 4
    assert coalesce_tcp4(frames, 8)[1] == 2


def test_what_cannot_join_goes_alone_as_it_was():
    udp = raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"x")
    lone = _stream([1000])[0]
    fragment = raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(flags="A") / b"y")
    for frame in (udp, lone, fragment, b"short"):
        joined, count = coalesce_tcp4([frame, frame], 0)
        assert (joined, count) == (frame, 1) and type(joined) is not SuperFrame


@pytest.mark.parametrize("data_offset", [0, 1, 2, 3, 4])
def test_a_data_offset_below_five_never_joins(data_offset):
    # The audit's two 146-byte frames (issue 10): one flow, the second with PSH and the sequence number
    # that follows the first (146 - 14 - 20 - 4 * data_offset bytes on), a data offset of 3 (0 to 4 alike).
    # The header slice was shorter than 14 bytes and writing its flags raised IndexError.
    ip = IP(src="10.244.1.2", dst="10.244.1.3", flags="DF")
    size = 146 - 14 - 20 - 4 * data_offset
    first = raw(Ether(**ETH) / ip / TCP(sport=40000, dport=5201, seq=1000, ack=7, dataofs=data_offset, flags="A") / bytes(92))
    second = raw(Ether(**ETH) / ip / TCP(sport=40000, dport=5201, seq=1000 + size, ack=7, dataofs=data_offset, flags="PA")
                 / bytes(92))
    assert len(first) == len(second) == 146
    assert coalesce_tcp4([first, second], 0) == (first, 1)


# -- properties: segmenting and coalescing undo each other; checksums against scapy; coalescing never raises --

TCP_OPTIONS = [[], [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))], [("SAck", (1000, 2000)), ("NOP", None)],
               [("NOP", None)] * 40]


@st.composite
def super_frames(draw):
    """A TSO super-frame as a stack hands it over, with the MSS it is to be cut at (at most 64 segments)."""
    mss = draw(st.integers(88, 9000))
    payload = draw(st.binary(min_size=1, max_size=min(64 * mss, 60000)))
    tcp = TCP(sport=draw(st.integers(1, 65535)), dport=5201, seq=draw(st.integers(0, 0xFFFFFFFF)), ack=5,
              flags=draw(st.sampled_from(["A", "PA"])), window=draw(st.integers(0, 65535)),
              options=draw(st.sampled_from(TCP_OPTIONS)))
    ip = IP(src="10.244.1.2", dst="10.244.2.2", id=draw(st.integers(0, 65535)), tos=draw(st.integers(0, 255)),
            flags=draw(st.sampled_from(["DF", 0])), ttl=draw(st.integers(1, 255)))
    return raw(Ether(**ETH) / ip / tcp / payload), mss


def _headers_but_lengths_ids_and_checksums(frame: bytes, headers: int) -> bytes:
    out = bytearray(frame[:headers])
    for field in (16, 18, 24, 50):   # IP total length, identification, IP checksum, TCP checksum
        out[field:field + 2] = b"\0\0"
    return bytes(out)


@given(super_frames())
def test_segmenting_then_coalescing_gives_back_the_super_frame(case):
    frame, mss = case
    headers = 34 + (frame[46] >> 4) * 4
    segments = segment_tcp4(frame, mss)
    joined, count = coalesce_tcp4(segments, 0)
    if len(segments) == 1:
        assert (joined, count) == (segments[0], 1)
        return
    assert count == len(segments)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(vnet_header(joined))
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (F_NEEDS_CSUM, GSO_TCPV4, headers, mss, 34, 16)
    whole = bytes(joined)
    assert whole[headers:] == frame[headers:]                       # the same payload bytes
    assert _headers_but_lengths_ids_and_checksums(whole, headers) == _headers_but_lengths_ids_and_checksums(frame, headers)
    parsed = Ether(whole)
    assert parsed[IP].len == len(whole) - 14
    check = parsed[IP].copy()
    del check.chksum
    assert IP(raw(check)).chksum == parsed[IP].chksum               # a valid IP header checksum
    done = Ether(complete_checksum(whole, 34, 16))                  # and a TCP checksum the kernel can finish
    recomputed = done.copy()
    del recomputed[TCP].chksum
    theirs, ours = Ether(raw(recomputed))[TCP].chksum, done[TCP].chksum
    assert ours == theirs or (theirs == 0 and ours == 0xFFFF)   # Linux's CSUM_MANGLED_0, as below


@given(super_frames(), st.booleans(), st.booleans())
def test_every_segment_has_valid_ip_and_tcp_checksums(case, ip_options, vlan):
    frame, mss = case
    pkt = Ether(frame)
    if ip_options:
        pkt[IP].options = [IPOption_Router_Alert()]
        del pkt[IP].ihl, pkt[IP].len, pkt[IP].chksum, pkt[TCP].chksum
    if vlan:
        pkt = Ether(**ETH) / Dot1Q(vlan=7) / pkt[IP]
    frame = raw(pkt)
    segments = segment_tcp4(frame, mss)
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segments) == bytes(Ether(frame)[TCP].payload)
    for piece in segments:
        parsed = Ether(piece)
        assert len(bytes(parsed[TCP].payload)) <= mss and parsed[IP].len == len(piece) - (18 if vlan else 14)
        check = Ether(piece)   # scapy recomputes both checksums, an independent oracle
        del check[IP].chksum, check[TCP].chksum
        again = Ether(raw(check))
        assert (again[IP].chksum, again[TCP].chksum) == (parsed[IP].chksum, parsed[TCP].chksum)


@given(st.sampled_from([TCP, UDP]), st.binary(max_size=2000), st.integers(1, 65535), st.integers(1, 65535))
def test_complete_checksum_gives_what_scapy_computes(layer, payload, sport, dport):
    pkt = Ether(raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / layer(sport=sport, dport=dport) / payload))
    field = 16 if layer is TCP else 6
    ours = Ether(complete_checksum(_partial(pkt, 34, field), 34, field))[layer].chksum
    theirs = pkt[layer].chksum
    # a sum of zero is written 0xFFFF, as Linux's CSUM_MANGLED_0 (the same in ones' complement); scapy writes
    # it so for UDP only
    assert ours == theirs or (theirs == 0 and ours == 0xFFFF)


def _write_all(frames):
    """As a TAP's _write_some: join what joins, write it, go on; every super-frame segments back to its frames."""
    start = 0
    while start < len(frames):
        joined, count = coalesce_tcp4(frames, start)
        assert 1 <= count <= len(frames) - start
        if count == 1:
            assert joined is frames[start]
        else:
            headers = 34 + (frames[start][46] >> 4) * 4
            payload = b"".join(f[headers:14 + int.from_bytes(f[16:18], "big")] for f in frames[start:start + count])
            assert b"".join(s[headers:] for s in segment(joined)) == payload
        start += count


@given(st.lists(st.binary(max_size=120), min_size=1, max_size=8))
def test_coalescing_never_raises_on_arbitrary_bytes(frames):
    _write_all(frames)


HEADER_FIELDS = st.sampled_from([14, 16, 17, 20, 21, 23, 38, 46, 47])   # IHL, IP length, fragments, protocol, seq, offset, flags
BOUNDARY_VALUES = st.sampled_from([0x00, 0x10, 0x18, 0x30, 0x40, 0x45, 0x50, 0xF0, 0xFF]) | st.integers(0, 255)


@functools.cache
def _run() -> list[bytes]:
    return _stream([500, 500, 500, 200], flags={3: "PA"})


@settings(max_examples=500)   # cheap examples; a crash needs a few things at once (the audit's: offset, PSH, seq)
@given(st.lists(st.tuples(HEADER_FIELDS | st.integers(0, 80), BOUNDARY_VALUES), max_size=4),
       st.sampled_from([None, 14, 34, 46, 54, 60]), st.booleans(), st.data())
def test_coalescing_never_raises_on_mutated_runs(edits, cut, alike, data):
    # A run of one flow, its bytes changed (in every segment alike, the sequence numbers then following on as
    # a run's do, or in one segment only) and perhaps cut: what does not join goes alone, never an exception.
    frames = [bytearray(f) for f in _run()]
    targets = range(len(frames)) if alike else [data.draw(st.integers(0, len(frames) - 1))]
    for i in targets:
        for at, value in edits:
            frames[i][at] = value
        if cut is not None:
            del frames[i][cut:]
    if alike:
        for before, frame in zip(frames, frames[1:]):
            if len(before) >= 47 and len(frame) >= 42:
                size = int.from_bytes(before[16:18], "big") - 20 - (before[46] >> 4) * 4
                frame[38:42] = ((int.from_bytes(before[38:42], "big") + size) & 0xFFFFFFFF).to_bytes(4, "big")
    _write_all([bytes(f) for f in frames])


# -- super-frames whole: what a TSO device hands over, the header that hands one back, cutting at the hand-over


def test_a_tso_read_becomes_a_super_frame_whose_header_says_the_same():
    big, pkt = _super_frame(4000)
    header = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 1448, 34, 16)
    frame = read_vnet(header + big)
    assert type(frame) is SuperFrame and frame == big
    assert (frame.gso_type, frame.gso_size) == (GSO_TCPV4 | GSO_ECN, 1448)
    assert vnet_header(frame) == VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 14 + 20 + len(pkt[TCP]) - 4000, 1448, 34, 16)
    assert segment(frame) == segment_tcp4(big, 1448)
    assert [len(Ether(s)[TCP].payload) for s in segment(frame, 1000)] == [1000] * 4   # a smaller next hop
    six, _ = _super_frame6(3000)
    frame6 = read_vnet(VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV6, 74, 1428, 54, 16) + six)
    assert type(frame6) is SuperFrame and segment(frame6) == segment_tcp6(six, 1428)
    assert VNET_HDR.unpack(vnet_header(frame6))[2:] == (54 + 20 + 4, 1428, 54, 16)


def test_a_plain_read_stays_plain_and_a_partial_checksum_is_completed():
    frame, pkt = _super_frame(100)
    assert read_vnet(VNET_HDR.pack(0, 0, 0, 0, 0, 0) + frame) == frame
    done = read_vnet(VNET_HDR.pack(F_NEEDS_CSUM, 0, 0, 0, 34, 16) + _partial(Ether(frame), 34, 16))
    assert done == frame and type(done) is not SuperFrame


@pytest.mark.parametrize("gso_type, frame", [
    (GSO_UDP, raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / bytes(3000))),       # UFO
    (GSO_TCPV4, raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / bytes(3000))),     # not TCP
    (GSO_TCPV6, raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / bytes(3000))),     # not IPv6
    (GSO_TCPV4, raw(Ether(**ETH) / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / bytes(3000))),
    (GSO_TCPV4, raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP())[:60]),               # too short
])
def test_what_is_not_a_plain_tcp_super_frame_is_refused(gso_type, frame):
    with pytest.raises(Malformed):
        read_vnet(VNET_HDR.pack(F_NEEDS_CSUM, gso_type, 0, 1400, 0, 0) + frame)
    with pytest.raises(Truncated):
        read_vnet(bytes(9))


def test_cutting_at_the_hand_over_keeps_order_and_counts_what_cannot_be_cut():
    plain = _stream([100, 100])
    assert cut_super_frames(plain) == (plain, 0)
    big, _ = _super_frame(3000)
    whole = super_frame(big, GSO_TCPV4, 1000)
    broken = super_frame(b"not a frame at all", GSO_TCPV4, 1000)
    frames, malformed = cut_super_frames([plain[0], whole, broken, plain[1]])
    assert frames == [plain[0], *segment_tcp4(big, 1000), plain[1]] and malformed == 1
    assert whole.like(big[:-1]).gso_size == 1000 and type(whole.like(big)) is SuperFrame


# -- bare IP packets (an L3 interface, the overlay) and segments behind a prefix


@given(super_frames(), st.sampled_from([b"", b"\x01" * 8, b"\x02" * 23]), st.booleans())
def test_segmenting_a_bare_ip_packet_behind_a_prefix_is_what_scapy_computes(case, prefix, partial):
    frame, mss = case
    packet = bytearray(frame[14:])
    if partial:   # as a TSO device leaves it: only the pseudo-header sum; it makes no difference to the segments
        seed = pseudo_header_sum(bytes(packet[12:16]), bytes(packet[16:20]), 6, len(packet) - 20) % 0xFFFF
        packet[36:38] = seed.to_bytes(2, "big")
    pieces = segment_ipv4(bytes(packet), mss, 0, prefix)
    assert pieces == [prefix + s[14:] for s in segment_tcp4(frame, mss)]   # as the Ethernet segmenter cuts
    for piece in pieces:
        assert piece.startswith(prefix)
        parsed = IP(piece[len(prefix):])
        assert len(bytes(parsed[TCP].payload)) <= mss and parsed.len == len(piece) - len(prefix)
        check = parsed.copy()
        del check.chksum, check[TCP].chksum
        again = IP(raw(check))
        assert (again.chksum, again[TCP].chksum) == (parsed.chksum, parsed[TCP].chksum)


@given(super_frames())
def test_the_first_segment_alone_is_the_first_of_all_the_segments(case):
    frame, mss = case
    assert first_segment(frame[14:], mss) == segment_ipv4(frame[14:], mss)[0]


@given(super_frames())
def test_bare_ip_segments_coalesce_back_into_a_super_packet(case):
    frame, mss = case
    pieces = segment_ipv4(frame[14:], mss)
    joined, count = coalesce_ipv4(pieces, 0, verify=True)
    if len(pieces) == 1:
        assert (joined, count) == (pieces[0], 1)
        return
    assert count == len(pieces) and type(joined) is SuperFrame and joined.gso_size == mss
    assert segment_ipv4(joined, mss) == pieces   # cut again: the very same packets, byte for byte


def test_verifying_coalescer_leaves_a_segment_with_a_bad_checksum_alone():
    frames = _stream([500, 500, 500, 500])
    bad = bytearray(frames[2])
    bad[-1] ^= 1
    frames[2] = bytes(bad)
    assert coalesce_tcp4(frames, 0)[1] == 4                  # unchecked: as a TAP's own frames are trusted
    joined, count = coalesce_tcp4(frames, 0, verify=True)
    assert count == 2
    assert coalesce_tcp4(frames, 2, verify=True) == (frames[2], 1)
    packets = [f[14:] for f in frames]
    assert coalesce_ipv4(packets, 0, verify=True)[1] == 2 and coalesce_ipv4(packets, 2, verify=True)[1] == 1


@given(st.binary(min_size=1, max_size=3000))
def test_odd_and_even_payloads_get_the_checksum_scapy_computes(payload):
    packet = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="PA") / payload)
    for mss in (1, 7, 536, 1448):
        for piece in segment_ipv4(packet, mss)[:50]:
            parsed = IP(piece)
            stored = parsed[TCP].chksum
            del parsed[TCP].chksum
            assert IP(raw(parsed))[TCP].chksum == stored
