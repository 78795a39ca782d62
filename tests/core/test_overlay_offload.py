"""Super-frames across the overlay: cut into whole packets for the peers on the way out, runs of one flow's
segments joined into super-frames on the way in. scapy is the oracle for every checksum."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from overlaykit import from_peer, make_overlay, vtep, vxlan_payload
from scapy.all import IP, TCP, UDP, Ether, raw

from vswitch.core.actions import (
    INSIDE,
    UNDERLAY,
    Drop,
    DropReason,
    Transmit,
    Unreachable,
)
from vswitch.core.wire.ipv4 import pseudo_header_sum
from vswitch.core.wire.offload import GSO_TCPV4, SuperFrame, segment_ipv4, super_frame
from vswitch.overlay.core.codec import ADDRESS_LEN, VXLAN_HEADER_LEN
from vswitch.overlay.core.dropin import DeviceOverlay
from vswitch.overlay.core.gro import DatagramRun
from vswitch.overlay.core.gro import datagrams as split

OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))]   # 12 bytes, as Linux sends


def super_packet(payload_len: int, *, gso_size: int = 1448, seq: int = 1000, flags: str = "PA", ident: int = 7,
                 src: str = "10.244.1.2", dst: str = "10.244.2.2", ttl: int = 64) -> tuple[SuperFrame, bytes]:
    """A bare IPv4/TCP super-packet as the router hands it to the overlay (the TCP checksum partial, as the
    kernel leaves it), and its payload."""
    payload = bytes((i * 7 + 3) & 0xFF for i in range(payload_len))
    pkt = IP(src=src, dst=dst, id=ident, flags="DF", ttl=ttl) / TCP(sport=40000, dport=5201, seq=seq, ack=5, flags=flags,
                                                           options=OPTIONS) / payload
    data = bytearray(raw(pkt))
    partial = pseudo_header_sum(data[12:16], data[16:20], 6, len(data) - 20) % 0xFFFF
    data[36:38] = partial.to_bytes(2, "big")
    return super_frame(bytes(data), GSO_TCPV4, gso_size), payload


def checksums_ok(pkt: IP) -> bool:
    """scapy recomputes both checksums and agrees with the ones in the packet."""
    again = pkt.copy()
    del again.chksum, again[TCP].chksum
    again = IP(raw(again))
    return (again.chksum, again[TCP].chksum) == (pkt.chksum, pkt[TCP].chksum)


def inner_of(datagram: bytes, backend: str) -> IP:
    if backend == "udp":
        return IP(datagram[ADDRESS_LEN:])
    inner = Ether(datagram[ADDRESS_LEN + VXLAN_HEADER_LEN:])
    assert (inner.dst, inner.src) == (vtep(2), vtep(1))
    return inner[IP]


def joins_in_one_sendmsg(datagrams: list[bytes]) -> bool:
    """What UdpPort._write_some asks of a run it sends with UDP GSO: one address header (peer and local port),
    every datagram of the first one's size but the last, which may be shorter."""
    key, size = datagrams[0][:ADDRESS_LEN], len(datagrams[0])
    return (all(d[:ADDRESS_LEN] == key for d in datagrams)
            and all(len(d) == size for d in datagrams[:-1]) and len(datagrams[-1]) <= size)


@settings(max_examples=25, deadline=None)
@given(backend=st.sampled_from(["udp", "vxlan"]), payload_len=st.integers(1, 65000 - 52),
       gso_size=st.integers(500, 9000), seq=st.integers(0, 0xFFFFFFFF), flags=st.sampled_from(["A", "PA", "FPA"]))
def test_a_super_frame_leaves_as_whole_packets_of_the_mtu_that_join_in_one_sendmsg(
        backend, payload_len, gso_size, seq, flags):
    overlay = make_overlay(backend)
    frame, payload = super_packet(payload_len, gso_size=gso_size, seq=seq, flags=flags)
    (sent,) = overlay.encapsulate([frame], 0.0)
    assert type(sent) is Transmit and sent.port == UNDERLAY
    (run,) = sent.frames   # one buffer, built in one copy, for the underlay port's GSO
    datagrams = split(sent.frames)
    mss = min(gso_size, overlay.mtu - 20 - 32)
    assert len(datagrams) == -(-payload_len // mss)
    assert type(run) is DatagramRun if len(datagrams) > 1 else run == datagrams[0]
    assert joins_in_one_sendmsg(datagrams)
    data = b""
    for index, datagram in enumerate(datagrams):
        inner = inner_of(datagram, backend)
        assert len(raw(inner)) <= overlay.mtu and inner.len == len(raw(inner))
        assert checksums_ok(inner)
        assert inner.ttl == (63 if backend == "udp" else 64)   # flannel's proxy takes a hop; VXLAN does not
        assert inner.id == (7 + index) & 0xFFFF and inner[TCP].seq == (seq + len(data)) & 0xFFFFFFFF
        last = index == len(datagrams) - 1
        assert str(inner[TCP].flags) == (flags if last else "A")
        data += bytes(inner[TCP].payload)
    assert data == payload
    assert overlay.peers.lookup(bytes((10, 244, 2, 2))).counters.tx_packets == len(datagrams)


def test_the_mtu_bounds_the_segments_below_the_senders_mss():
    overlay = make_overlay("vxlan", mtu=1000)
    frame, _ = super_packet(20000, gso_size=1448)
    (sent,) = overlay.encapsulate([frame], 0.0)
    assert {len(raw(inner_of(d, "vxlan"))) for d in split(sent.frames)[:-1]} == {1000}


@pytest.mark.parametrize("ttl", [1, 2])
def test_the_udp_backend_takes_a_super_frames_hop_in_each_segment_or_answers_for_its_first(ttl):
    """flannel's proxy takes a hop off every packet: a super-frame's is taken in its segments' headers, and one
    that has none left is owed one ICMP time exceeded, about its first segment, and dropped whole."""
    overlay = make_overlay("udp")
    frame, _ = super_packet(10000, gso_size=1400, ttl=ttl)
    actions = overlay.encapsulate([frame], 0.0)
    if ttl == 2:
        (sent,) = actions
        inners = [inner_of(d, "udp") for d in split(sent.frames)]
        assert len(inners) == 8 and all(inner.ttl == 1 and checksums_ok(inner) for inner in inners)
        return
    unreachable, drop = actions   # about the first segment, as the sender sent it
    assert type(unreachable) is Unreachable and (unreachable.type, unreachable.code) == (11, 0)
    assert unreachable.packet == segment_ipv4(frame, 1400)[0]
    assert type(drop) is Drop and drop.reason is DropReason.TTL_EXCEEDED and drop.frame is frame


def test_a_super_frame_from_a_flannel_1_tap_leaves_as_whole_frames():
    overlay = make_overlay("vxlan", inside="ethernet")
    packet, payload = super_packet(30000)
    frame = super_frame(raw(Ether(dst=vtep(2), src=vtep(1), type=0x0800)) + packet, GSO_TCPV4, 1398)
    (sent,) = overlay.encapsulate([frame], 0.0)
    assert joins_in_one_sendmsg(split(sent.frames))
    inners = [inner_of(d, "vxlan") for d in split(sent.frames)]
    assert all(checksums_ok(i) and len(raw(i)) <= 1450 for i in inners)
    assert b"".join(bytes(i[TCP].payload) for i in inners) == payload


def test_a_super_frame_that_cannot_be_cut_is_dropped_and_the_rest_goes():
    overlay = make_overlay("udp")
    frame, _ = super_packet(5000)
    broken = super_frame(frame[:32] + bytes([0x20]) + frame[33:], GSO_TCPV4, 1448)   # TCP data offset 2
    plain = raw(IP(src="10.244.1.2", dst="10.244.2.2") / UDP() / b"x")
    actions = overlay.encapsulate([broken, plain], 0.0)
    assert [(type(a), a.port) for a in actions] == [(Drop, INSIDE), (Transmit, UNDERLAY)]
    assert actions[0].reason is DropReason.SUPER_FRAME_MALFORMED and len(actions[1].frames) == 1


# -- the way in ---------------------------------------------------------------------------


def segments(count: int, *, size: int = 1398, seq: int = 5000, src: str = "10.244.2.2") -> list[IP]:
    out = []
    for i in range(count):
        payload = bytes((seq + i * size + j) & 0xFF for j in range(size))
        out.append(IP(src=src, dst="10.244.1.2", id=100 + i, ttl=64) / TCP(
            sport=5201, dport=40000, seq=seq + i * size, ack=9, flags="PA" if i == count - 1 else "A",
            options=OPTIONS) / payload)
    return out


def datagrams_of(pkts, backend: str) -> list[bytes]:
    if backend == "udp":
        return [from_peer(2, raw(p)) for p in pkts]
    return [from_peer(2, vxlan_payload(p), "vxlan", sport=40000) for p in pkts]


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_a_run_of_one_flows_segments_comes_in_as_one_super_frame(backend):
    overlay = make_overlay(backend, coalesce=True)
    pkts = segments(45)
    (sent,) = overlay.decapsulate(datagrams_of(pkts, backend), 0.0)
    assert sent.port == INSIDE
    (joined,) = sent.frames
    assert type(joined) is SuperFrame and (joined.gso_type, joined.gso_size) == (GSO_TCPV4, 1398)
    parsed = IP(bytes(joined))
    assert parsed.len == len(joined) and parsed.ttl == (63 if backend == "udp" else 64)
    check = parsed.copy()
    del check.chksum
    assert IP(raw(check)).chksum == parsed.chksum
    pieces = segment_ipv4(joined, joined.gso_size)   # cut back: the same payload, each with full checksums
    assert b"".join(bytes(IP(p)[TCP].payload) for p in pieces) == b"".join(bytes(p[TCP].payload) for p in pkts)
    assert all(checksums_ok(IP(p)) for p in pieces)
    assert overlay.statistics().decapsulated == 45


def test_a_vxlan_flannel_1_inside_gets_a_super_frame_with_its_ethernet_header():
    overlay = make_overlay("vxlan", inside="ethernet", coalesce=True)
    (sent,) = overlay.decapsulate(datagrams_of(segments(10), "vxlan"), 0.0)
    (joined,) = sent.frames
    assert type(joined) is SuperFrame and Ether(joined[:14]).dst == vtep(1)
    assert len(segment_ipv4(joined, joined.gso_size, 14)) == 10


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_what_cannot_join_passes_unchanged_and_in_order(backend):
    overlay = make_overlay(backend, coalesce=True)
    pkts = segments(6)
    corrupt = bytearray(raw(pkts[3]))
    corrupt[-1] ^= 0xFF   # a bad TCP checksum
    udp = IP(src="10.244.2.2", dst="10.244.1.2") / UDP(sport=1, dport=2) / b"between"
    wire = [raw(p) for p in pkts[:3]] + [bytes(corrupt), raw(udp)] + [raw(p) for p in pkts[4:]]
    if backend == "vxlan":
        wire = [vxlan_payload(IP(w)) for w in wire]
    (sent,) = overlay.decapsulate([from_peer(2, w, backend) for w in wire], 0.0)
    packets = sent.frames   # bare IP: the router's L3 interface is inside
    if backend == "vxlan":
        # VXLAN may come with no outer UDP checksum: only the inner one protects the segment, so one that is
        # wrong joins nothing, and the container's stack sees it and drops it, not a super-frame taken on trust
        assert [type(f) is SuperFrame for f in sent.frames] == [True, False, False, True]
        assert bytes(IP(packets[1])[TCP].payload) == bytes(corrupt[52:])   # as it came (vxlan takes no hop)
    else:
        # flannel's udp backend always has one, which our kernel checked: the inner checksum is the peer's own
        # business (flanneld's come from its TUN, whole), and the run joins across it
        assert [type(f) is SuperFrame for f in sent.frames] == [True, False, True]
        assert IP(packets[0]).ttl == 63 and IP(packets[0]).len == 20 + 32 + 4 * 1398
    assert IP(packets[-2])[UDP].load == b"between"
    assert IP(packets[-1]).len == 20 + 32 + 2 * 1398


def test_without_coalescing_every_segment_comes_in_alone():
    overlay = make_overlay("udp")
    (sent,) = overlay.decapsulate(datagrams_of(segments(5), "udp"), 0.0)
    assert len(sent.frames) == 5 and not any(type(f) is SuperFrame for f in sent.frames)


def test_drop_in_mode_cuts_a_super_frame_from_flannel0_as_router_mode_does():
    overlay = make_overlay("udp")
    dropin = DeviceOverlay(overlay, "flannel0", "underlay")
    dropin.add_port("flannel0")
    dropin.add_port("underlay")
    frame, payload = super_packet(20000)
    (sent,) = dropin.handle_frames("flannel0", [frame], 0.0)
    assert sent.port == "underlay" and joins_in_one_sendmsg(split(sent.frames))
    inners = [inner_of(d, "udp") for d in split(sent.frames)]
    assert all(checksums_ok(i) and len(raw(i)) <= overlay.mtu for i in inners)
    assert b"".join(bytes(i[TCP].payload) for i in inners) == payload


@settings(max_examples=200)
@given(backend=st.sampled_from(["udp", "vxlan", "ethernet"]), length=st.integers(20, 200),
       edits=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
       gso_size=st.integers(0, 2000), gso_type=st.sampled_from([GSO_TCPV4, GSO_TCPV4 | 0x80, 4, 3]))
def test_a_mangled_super_frame_is_cut_or_dropped_never_an_exception(backend, length, edits, gso_size, gso_type):
    overlay = make_overlay("vxlan" if backend == "ethernet" else backend,
                           inside="ethernet" if backend == "ethernet" else "ip")
    packet, _ = super_packet(400)
    data = bytearray((raw(Ether(dst=vtep(2), src=vtep(1), type=0x0800)) if backend == "ethernet" else b"") + packet)
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    frame = super_frame(bytes(data[:length + (14 if backend == "ethernet" else 0)]), gso_type, gso_size)
    for action in overlay.encapsulate([frame], 0.0):
        if type(action) is Transmit:
            assert action.port == UNDERLAY and joins_in_one_sendmsg(action.frames)
