"""The Overlay core: inside packets to datagrams and back, in both wire formats; scapy is the oracle.

Node 1 is under test (see overlaykit); nodes 2 and 3 are its peers.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from overlaykit import (
    PORT,
    drops,
    from_peer,
    ip,
    ip_checksum_ok,
    lease,
    mac,
    make_overlay,
    packet,
    pod,
    public,
    transmitted,
    ttl_less,
    unreachables,
    vtep,
    vxlan_payload,
)
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPerror, IPv6, UDPerror, raw
from scapy.layers.vxlan import VXLAN

from vswitch.core.actions import (
    INSIDE,
    UNDERLAY,
    Drop,
    DropReason,
    Transmit,
    Unreachable,
)
from vswitch.core.l3.icmp import ICMP_BURST
from vswitch.core.wire.addr import Network
from vswitch.overlay.core.codec import (
    SOURCE_PORT_MAX,
    SOURCE_PORT_MIN,
    flow_source_port,
)
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.core.tunnel import Overlay

R = DropReason


def only_datagram(actions) -> bytes:
    assert [type(a) for a in actions] == [Transmit], actions
    (sent,) = actions
    assert sent.port == UNDERLAY and len(sent.frames) == 1
    return sent.frames[0]


def only_inside(actions) -> bytes:
    assert [type(a) for a in actions] == [Transmit], actions
    (sent,) = actions
    assert sent.port == INSIDE and len(sent.frames) == 1
    return sent.frames[0]


# -- flannel UDP ------------------------------------------------------------------------------


@given(ttl=st.integers(2, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255),
       payload=st.binary(max_size=64), peer=st.sampled_from([2, 3]))
def test_udp_encapsulation_is_the_packet_with_ttl_one_less(ttl, ident, tos, payload, peer):
    overlay = make_overlay("udp")
    pkt = packet(dst=pod(peer, 77), ttl=ttl, id=ident, tos=tos, payload=payload)
    datagram = only_datagram(overlay.encapsulate([raw(pkt)], 0.0))
    assert datagram[:8] == ip(public(peer)) + PORT["udp"].to_bytes(2, "big") + b"\0\0"
    inner = datagram[8:]
    assert inner == ttl_less(pkt)           # nothing but the TTL and its checksum changes
    assert IP(inner).ttl == ttl - 1 and ip_checksum_ok(inner)


def test_udp_decapsulation_of_a_scapy_packet():
    overlay = make_overlay("udp")
    pkt = IP(src=pod(2, 9), dst=pod(1), ttl=30, id=7) / TCP(sport=80, dport=40000, flags="SA") / b"data"
    inner = only_inside(overlay.decapsulate([from_peer(2, raw(pkt))], 0.0))
    assert inner == ttl_less(pkt)
    assert IP(inner).ttl == 29 and ip_checksum_ok(inner)
    assert IP(inner)[TCP].flags == "SA"


def test_udp_round_trip_between_two_overlays():
    # node 1 sends to node 2, which runs its own overlay with node 1 as a peer
    one = make_overlay("udp")
    two = Overlay(backend="udp", network=Network.parse("10.244.0.0/16"), subnet=Network.parse("10.244.2.0/24"))
    two.set_leases([lease(1), lease(3)])
    pkt = packet(ttl=10)
    datagram = only_datagram(one.encapsulate([raw(pkt)], 0.0))
    received = ip(public(1)) + PORT["udp"].to_bytes(2, "big") + PORT["udp"].to_bytes(2, "big") + datagram[8:]
    assert only_inside(two.decapsulate([received], 0.0)) == ttl_less(pkt, 2)   # flannel's two decrements


# -- VXLAN --------------------------------------------------------------------------------------


@given(ttl=st.integers(1, 255), sport=st.integers(1, 65535), payload=st.binary(max_size=64))
def test_vxlan_encapsulation_is_what_scapy_reads(ttl, sport, payload):
    overlay = make_overlay("vxlan")
    pkt = packet(dst=pod(3, 8), ttl=ttl, sport=sport, payload=payload)
    datagram = only_datagram(overlay.encapsulate([raw(pkt)], 0.0))
    assert datagram[:6] == ip(public(3)) + PORT["vxlan"].to_bytes(2, "big")
    source_port = int.from_bytes(datagram[6:8], "big")
    assert SOURCE_PORT_MIN <= source_port <= SOURCE_PORT_MAX
    assert source_port == flow_source_port(raw(pkt))
    vx = VXLAN(datagram[8:])
    assert (int(vx.flags), vx.vni, vx.reserved1, vx.reserved2) == (0x08, 1, 0, 0)
    inner = vx[Ether]
    assert (inner.dst, inner.src, inner.type) == (vtep(3), vtep(1), 0x0800)
    assert raw(inner.payload) == raw(pkt)    # VXLAN never touches the TTL


def test_vxlan_source_port_follows_the_flow():
    overlay = make_overlay("vxlan")
    one_flow = [raw(packet(payload=bytes(i), id=i)) for i in range(20)]
    many_flows = [raw(packet(sport=10000 + i)) for i in range(200)]
    ports = [int.from_bytes(d[6:8], "big") for d in overlay.encapsulate(one_flow + many_flows, 0.0)[0].frames]
    assert len(set(ports[:20])) == 1
    assert len(set(ports[20:])) >= 190
    assert all(SOURCE_PORT_MIN <= p <= SOURCE_PORT_MAX for p in ports)


def test_vxlan_uses_the_configured_vni_and_port():
    overlay = make_overlay("vxlan", vni=4097, port=4789)
    datagram = only_datagram(overlay.encapsulate([raw(packet())], 0.0))
    assert datagram[4:6] == (4789).to_bytes(2, "big") and VXLAN(datagram[8:]).vni == 4097
    back = from_peer(2, vxlan_payload(packet(src=pod(2), dst=pod(1)), vni=4097), sport=40000)
    assert only_inside(overlay.decapsulate([back], 0.0)) == raw(packet(src=pod(2), dst=pod(1)))
    assert drops(overlay.decapsulate([from_peer(2, vxlan_payload(packet(src=pod(2), dst=pod(1)), vni=1))], 0.0)) == [
        (UNDERLAY, R.FOREIGN_VNI)]


@pytest.mark.parametrize("ttl", [1, 64])
def test_vxlan_decapsulation_of_a_scapy_datagram(ttl):
    overlay = make_overlay("vxlan")
    pkt = IP(src=pod(2, 5), dst=pod(1), ttl=ttl) / ICMP(type=8, id=3, seq=4) / b"ping"
    inner = only_inside(overlay.decapsulate([from_peer(2, vxlan_payload(pkt), sport=50123)], 0.0))
    assert inner == raw(pkt)                 # the TTL as it came, even 1


def test_vxlan_encapsulates_at_ttl_one():
    overlay = make_overlay("vxlan")
    pkt = packet(ttl=1)
    datagram = only_datagram(overlay.encapsulate([raw(pkt)], 0.0))
    assert raw(VXLAN(datagram[8:])[Ether].payload) == raw(pkt)


def test_counters_and_statistics():
    overlay = make_overlay("udp")
    pkt = raw(packet(ttl=9))
    overlay.encapsulate([pkt, pkt, raw(packet(dst=pod(3)))], 0.0)
    overlay.decapsulate([from_peer(2, raw(packet(src=pod(2), dst=pod(1))))], 0.0)
    two, three = (overlay.peers.by_address(ip(public(n))).counters for n in (2, 3))
    assert (two.tx_packets, two.tx_bytes, two.rx_packets) == (2, 2 * len(pkt), 1)
    assert (three.tx_packets, three.rx_packets, three.rx_dropped) == (1, 0, 0)
    stats = overlay.statistics()
    assert (stats.encapsulated, stats.decapsulated) == (3, 1)


# -- TTL ---------------------------------------------------------------------------------------


def test_udp_encapsulation_at_ttl_one_owes_time_exceeded():
    overlay = make_overlay("udp")
    expired, fine = raw(packet(ttl=1)), raw(packet(ttl=2, sport=1))
    actions = overlay.encapsulate([expired, fine], 0.0)
    assert unreachables(actions) == [(11, 0, expired)]
    assert drops(actions) == [(INSIDE, R.TTL_EXCEEDED)]
    (datagram,) = transmitted(actions)[UNDERLAY]
    assert IP(datagram[8:]).ttl == 1
    assert overlay.peers.by_address(ip(public(2))).counters.tx_packets == 1
    assert overlay.drop_counts() == {R.TTL_EXCEEDED: 1}


def test_udp_decapsulation_at_ttl_one_owes_time_exceeded():
    overlay = make_overlay("udp")
    expired = raw(packet(src=pod(2), dst=pod(1), ttl=1))
    fine = raw(packet(src=pod(2), dst=pod(1), ttl=2))
    actions = overlay.decapsulate([from_peer(2, expired), from_peer(2, fine)], 0.0)
    assert unreachables(actions) == [(11, 0, expired)]     # the packet as it arrived
    assert drops(actions) == [(UNDERLAY, R.TTL_EXCEEDED)]
    assert transmitted(actions) == {INSIDE: [ttl_less(IP(fine))]}


# -- no lease ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
@pytest.mark.parametrize("dst", ["10.244.7.7", "10.244.1.9", "192.0.2.1"])
def test_no_lease_owes_net_unreachable(backend, dst):
    overlay = make_overlay(backend)
    lost, fine = raw(packet(dst=dst)), raw(packet())
    actions = overlay.encapsulate([lost, fine], 0.0)
    assert unreachables(actions) == [(3, 0, lost)]
    assert drops(actions) == [(INSIDE, R.NO_LEASE)]
    assert len(transmitted(actions)[UNDERLAY]) == 1
    assert overlay.drop_counts() == {R.NO_LEASE: 1}


@pytest.mark.parametrize("bad, reason", [
    (b"", R.IP_TRUNCATED), (raw(packet())[:19], R.IP_TRUNCATED), (raw(IPv6(dst="fe80::1")), R.IP_VERSION),
    (b"\x65" + raw(packet())[1:], R.IP_VERSION),
], ids=["empty", "short", "ipv6", "version-6"])
def test_inside_packets_that_are_not_ipv4(bad, reason):
    overlay = make_overlay("udp")
    actions = overlay.encapsulate([bad, raw(packet())], 0.0)
    assert drops(actions) == [(INSIDE, reason)]
    assert len(transmitted(actions)[UNDERLAY]) == 1
    assert not unreachables(actions)


# -- length fields that lie, header checksums that are wrong (issue 10) ------------------------------


def lying(*, ihl: int | None = None, total: int | None = None, ttl: int = 64, src: str = "10.244.1.2",
          dst: str = "10.244.2.2") -> bytes:
    """A 33-byte packet whose IHL or total length is not what it holds (checked before its checksum)."""
    data = bytearray(raw(packet(src=src, dst=dst, ttl=ttl)))
    if ihl is not None:
        data[0] = 0x40 | ihl
    if total is not None:
        data[2:4] = total.to_bytes(2, "big")
    return bytes(data)


LYING = {"ihl-3": (dict(ihl=3), R.IP_HEADER_LENGTH), "ihl-past-the-end": (dict(ihl=15), R.IP_HEADER_LENGTH),
         "total-below-header": (dict(total=12), R.IP_LENGTH), "total-past-the-end": (dict(total=34), R.IP_LENGTH)}


@pytest.mark.parametrize("name", list(LYING))
@pytest.mark.parametrize("ttl", [64, 1])
def test_inside_packets_whose_length_fields_lie_are_dropped(name, ttl):
    overlay = make_overlay("udp")
    fields, reason = LYING[name]
    actions = overlay.encapsulate([lying(ttl=ttl, **fields), raw(packet())], 0.0)
    assert drops(actions) == [(INSIDE, reason)]
    assert not unreachables(actions)   # no ICMP error quotes a header that is not one
    assert len(transmitted(actions)[UNDERLAY]) == 1


@pytest.mark.parametrize("name", list(LYING))
@pytest.mark.parametrize("backend, ttl", [("udp", 64), ("udp", 1), ("vxlan", 64)])
def test_datagrams_whose_inner_length_fields_lie_are_malformed(name, backend, ttl):
    overlay = make_overlay(backend)
    bad = lying(src=pod(2), dst=pod(1), ttl=ttl, **LYING[name][0])
    if backend == "vxlan":
        bad = raw(VXLAN(flags=8, vni=1) / Ether(dst=vtep(1), src=vtep(2), type=0x0800)) + bad
    actions = overlay.decapsulate([from_peer(2, bad, backend)], 0.0)
    assert drops(actions) == [(UNDERLAY, R.OVERLAY_MALFORMED)]
    assert not unreachables(actions) and not transmitted(actions)
    assert overlay.peers.by_address(ip(public(2))).counters.rx_dropped == 1


def bad_checksum(pkt) -> bytes:
    data = bytearray(raw(pkt))
    data[10] ^= 0xFF
    return bytes(data)


def test_no_icmp_error_about_a_packet_whose_header_checksum_is_wrong():
    overlay = make_overlay("udp")
    expired, unleased = bad_checksum(packet(ttl=1)), bad_checksum(packet(dst="10.244.7.7"))
    actions = overlay.encapsulate([expired, unleased], 0.0)
    assert drops(actions) == [(INSIDE, R.IP_CHECKSUM), (INSIDE, R.IP_CHECKSUM)]
    assert not unreachables(actions)
    actions = overlay.decapsulate([from_peer(2, bad_checksum(packet(src=pod(2), dst=pod(1), ttl=1)))], 0.0)
    assert drops(actions) == [(UNDERLAY, R.IP_CHECKSUM)]
    assert not unreachables(actions)


# -- ICMP errors in front of a flannel device ----------------------------------------------------


def icmp_error(overlay: Overlay, pkt, type_: int = 3, code: int = 0, now: float = 0.0) -> bytes | None:
    return overlay.icmp_error(Unreachable(raw(pkt), type_, code), now)


@pytest.mark.parametrize("type_, code, kind", [(3, 0, "net-unreachable"), (11, 0, "time-exceeded")])
def test_icmp_error_is_valid_and_quotes_header_and_eight_bytes(type_, code, kind):
    overlay = make_overlay("udp")
    pkt = packet(src="10.244.1.5", dst="10.244.9.9", payload=b"a long payload that is not quoted")
    error = icmp_error(overlay, pkt, type_, code)
    reply = IP(error)
    assert (reply.src, reply.dst, reply.proto, reply.ttl) == ("10.244.1.0", "10.244.1.5", 1, 64)
    assert ip_checksum_ok(error) and reply.len == len(error)
    message = reply[ICMP]
    assert (message.type, message.code) == (type_, code)
    check = message.copy()
    del check.chksum
    assert ICMP(raw(check)).chksum == message.chksum
    assert raw(message)[8:] == raw(pkt)[:28]
    assert message[IPerror].dst == "10.244.9.9" and message[IPerror][UDPerror].dport == 5000
    assert overlay.statistics().icmp_sent == {kind: 1}


def test_icmp_error_quotes_ip_options_too():
    overlay = make_overlay("udp")
    pkt = IP(src="10.244.1.5", dst="10.244.9.9", options=b"\x94\x04\x00\x00") / UDP(sport=1, dport=2) / b"xxxxxxxxxx"
    error = icmp_error(overlay, pkt)
    assert raw(IP(error)[ICMP])[8:] == raw(pkt)[:24 + 8]


@pytest.mark.parametrize("pkt", [
    IP(src="10.244.1.5", dst="10.244.9.9") / ICMP(type=3, code=1) / raw(packet()),      # about an ICMP error
    IP(src="10.244.1.5", dst="10.244.9.9") / ICMP(type=11) / raw(packet()),
    IP(src="10.244.1.5", dst="10.244.9.9", frag=185, proto=17) / (b"x" * 40),          # a later fragment
    packet(src="224.0.0.5", dst="10.244.9.9"),                                         # multicast source
    packet(src="0.0.0.0", dst="10.244.9.9"),                                           # unspecified source
    packet(src="255.255.255.255", dst="10.244.9.9"),
    packet(src="10.244.1.5", dst="224.0.0.22"),                                        # to multicast (IGMP, mDNS)
    packet(src="10.244.1.5", dst="255.255.255.255"),                                   # to broadcast
], ids=["dest-unreachable", "time-exceeded", "later-fragment", "multicast-src", "zero-src", "broadcast-src",
        "multicast-dst", "broadcast-dst"])
def test_icmp_error_refused_where_rfc_1812_forbids(pkt):
    overlay = make_overlay("udp")
    assert icmp_error(overlay, pkt) is None
    assert overlay.statistics().icmp_sent == {} and overlay.statistics().icmp_rate_limited == 0


@pytest.mark.parametrize("pkt", [
    IP(src="10.244.1.5", dst="10.244.9.9") / ICMP(type=8) / b"ping",                    # about an echo request: fine
    IP(src="10.244.1.5", dst="10.244.9.9", flags="MF") / UDP() / (b"x" * 40),           # a first fragment: fine
])
def test_icmp_error_allowed_about_queries_and_first_fragments(pkt):
    assert icmp_error(make_overlay("udp"), pkt) is not None


def test_icmp_error_rate_limit_burst_then_rate():
    overlay = make_overlay("udp")
    pkt = packet(src="10.244.1.5", dst="10.244.9.9")
    # refusals under RFC 1812 take no tokens
    for _ in range(100):
        assert icmp_error(overlay, IP(src="10.244.1.5", dst="10.244.9.9") / ICMP(type=3) / raw(pkt)) is None
    sent = [icmp_error(overlay, pkt, now=100.0) for _ in range(int(ICMP_BURST) + 10)]
    assert sum(e is not None for e in sent) == ICMP_BURST == 50
    assert sent[:50] == [sent[0]] * 50 and sent[50:] == [None] * 10
    assert overlay.statistics().icmp_rate_limited == 10
    # 1000 per second: 4 ms later, four more
    later = [icmp_error(overlay, pkt, now=100.004) for _ in range(6)]
    assert [e is not None for e in later] == [True] * 4 + [False] * 2
    # a second later the burst is back, and no more than it
    assert sum(icmp_error(overlay, pkt, now=101.004) is not None for _ in range(80)) == 50
    assert overlay.statistics().icmp_sent == {"net-unreachable": 104}


# -- who may send --------------------------------------------------------------------------------


def good_udp(host: int = 2) -> bytes:
    return raw(packet(src=pod(2, host), dst=pod(1)))


def test_udp_datagram_from_a_stranger():
    overlay = make_overlay("udp")
    stranger = from_peer(9, good_udp())
    actions = overlay.decapsulate([stranger, from_peer(2, good_udp())], 0.0)
    assert drops(actions) == [(UNDERLAY, R.UNKNOWN_PEER)]
    assert len(transmitted(actions)[INSIDE]) == 1
    assert all(p.counters.rx_dropped == 0 for p in overlay.peers)


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
@pytest.mark.parametrize("src", [pod(3), pod(1, 5), "192.0.2.1", "10.244.250.1"])
def test_inner_source_outside_the_senders_subnet_is_forged(backend, src):
    overlay = make_overlay(backend)
    forged = packet(src=src, dst=pod(1))
    honest = packet(src=pod(2), dst=pod(1))
    wrap = (lambda p: from_peer(2, raw(p))) if backend == "udp" else (lambda p: from_peer(2, vxlan_payload(p), "vxlan"))
    actions = overlay.decapsulate([wrap(forged), wrap(honest)], 0.0)
    assert drops(actions) == [(UNDERLAY, R.FORGED_SOURCE)]
    assert len(transmitted(actions)[INSIDE]) == 1
    assert overlay.peers.by_address(ip(public(2))).counters.rx_dropped == 1
    assert overlay.peers.by_address(ip(public(3))).counters.rx_dropped == 0
    assert overlay.drop_counts() == {R.FORGED_SOURCE: 1}


@pytest.mark.parametrize("payload", [b"", b"\x45\x00", raw(IPv6(src="fe80::1", dst="fe80::2"))],
                         ids=["empty", "short", "ipv6"])
def test_udp_datagram_that_is_no_ipv4_packet(payload):
    overlay = make_overlay("udp")
    actions = overlay.decapsulate([from_peer(2, payload), from_peer(2, good_udp())], 0.0)
    assert drops(actions) == [(UNDERLAY, R.OVERLAY_MALFORMED)]
    assert len(transmitted(actions)[INSIDE]) == 1
    assert overlay.peers.by_address(ip(public(2))).counters.rx_dropped == 1


def vx(payload: bytes) -> bytes:
    return from_peer(2, payload, "vxlan", sport=45000)


GOOD_INNER = packet(src=pod(2), dst=pod(1))
BAD_VXLAN = {
    R.FOREIGN_VNI: vxlan_payload(GOOD_INNER, vni=2),
    R.OVERLAY_MALFORMED: vxlan_payload(GOOD_INNER, flags=0x00),
    R.NOT_FOR_VTEP: vxlan_payload(GOOD_INNER, dst=vtep(3)),
    R.UNSUPPORTED_ETHERTYPE: vxlan_payload(ARP(op=1, psrc=pod(2), pdst=pod(1))),
}


@pytest.mark.parametrize("reason", list(BAD_VXLAN), ids=str)
def test_vxlan_refusals(reason):
    overlay = make_overlay("vxlan")
    actions = overlay.decapsulate([vx(BAD_VXLAN[reason]), vx(vxlan_payload(GOOD_INNER))], 0.0)
    assert drops(actions) == [(UNDERLAY, reason)]
    assert transmitted(actions) == {INSIDE: [raw(GOOD_INNER)]}
    assert overlay.peers.by_address(ip(public(2))).counters.rx_dropped == 1


@pytest.mark.parametrize("payload", [
    b"", vxlan_payload(GOOD_INNER)[:29], vxlan_payload(GOOD_INNER)[:40],
    raw(VXLAN(flags=8, vni=1) / Ether(dst=vtep(1), src=vtep(2), type=0x0800) / IPv6()),
], ids=["empty", "no-ethernet", "short-ip", "ipv6-as-ipv4"])
def test_vxlan_too_short_or_not_ipv4_is_malformed(payload):
    overlay = make_overlay("vxlan")
    assert drops(overlay.decapsulate([vx(payload)], 0.0)) == [(UNDERLAY, R.OVERLAY_MALFORMED)]


def test_vxlan_non_ipv4_inner_frame():
    overlay = make_overlay("vxlan")
    v6 = raw(VXLAN(flags=8, vni=1) / Ether(dst=vtep(1), src=vtep(2)) / IPv6(src="fe80::1", dst="fe80::2"))
    assert drops(overlay.decapsulate([vx(v6)], 0.0)) == [(UNDERLAY, R.UNSUPPORTED_ETHERTYPE)]


def test_one_bad_datagram_never_stops_the_others():
    overlay = make_overlay("vxlan")
    good = [packet(src=pod(2, h), dst=pod(1)) for h in range(10, 14)]
    batch = [
        vx(vxlan_payload(good[0])),
        from_peer(8, vxlan_payload(good[0]), "vxlan"),                 # a stranger
        *[vx(bad) for bad in BAD_VXLAN.values()],
        vx(vxlan_payload(good[1])),
        vx(vxlan_payload(packet(src=pod(3), dst=pod(1)))),            # forged
        vx(b"\x08"),
        vx(vxlan_payload(good[2])),
        vx(vxlan_payload(good[3])),
    ]
    actions = overlay.decapsulate(batch, 0.0)
    assert transmitted(actions) == {INSIDE: [raw(p) for p in good]}
    assert [reason for _, reason in drops(actions)] == [
        R.UNKNOWN_PEER, *BAD_VXLAN, R.FORGED_SOURCE, R.OVERLAY_MALFORMED]
    counters = overlay.peers.by_address(ip(public(2))).counters
    assert (counters.rx_packets, counters.rx_dropped) == (4, 6)
    assert overlay.statistics().decapsulated == 4


# -- Ethernet inside: a TAP standing in for flannel.1 ---------------------------------------------


def frame_to(n: int, inner=None, *, src: str = vtep(1)) -> bytes:
    return raw(Ether(dst=vtep(n), src=src) / (inner if inner is not None else packet(dst=pod(n))))


def test_ethernet_inside_needs_vxlan():
    with pytest.raises(ValueError, match="vxlan"):
        make_overlay("udp", inside="ethernet")


@pytest.mark.parametrize("peer", [2, 3])
def test_ethernet_frames_go_to_the_peer_of_their_vtep_mac(peer):
    overlay = make_overlay("vxlan", inside="ethernet")
    frame = frame_to(peer)
    datagram = only_datagram(overlay.encapsulate([frame], 0.0))
    assert datagram[:6] == ip(public(peer)) + PORT["vxlan"].to_bytes(2, "big")
    parsed = VXLAN(datagram[8:])
    assert (int(parsed.flags), parsed.vni) == (0x08, 1)
    assert raw(parsed[Ether]) == frame                     # the frame as the kernel wrote it
    # the same flow hash as in router mode
    ip_mode = make_overlay("vxlan")
    assert datagram[6:8] == only_datagram(ip_mode.encapsulate([raw(packet(dst=pod(peer)))], 0.0))[6:8]


def test_ethernet_non_ipv4_unicast_goes_with_a_fixed_source_port():
    overlay = make_overlay("vxlan", inside="ethernet")
    frames = [frame_to(2, ARP(op=2, psrc=pod(1), pdst=pod(2))), frame_to(2, IPv6(src="fe80::1", dst="fe80::2"))]
    datagrams = transmitted(overlay.encapsulate(frames + frames, 0.0))[UNDERLAY]
    assert len(datagrams) == 4
    ports = [int.from_bytes(d[6:8], "big") for d in datagrams]
    assert all(SOURCE_PORT_MIN <= p <= SOURCE_PORT_MAX for p in ports)
    assert ports[0] == ports[2] and ports[1] == ports[3]
    assert [raw(VXLAN(d[8:])[Ether]) for d in datagrams] == frames + frames


@pytest.mark.parametrize("frame, reason", [
    (raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=vtep(1)) / ARP(pdst=pod(2))), R.NO_FLOODING),
    (raw(Ether(dst="01:00:5e:00:00:16", src=vtep(1)) / IP(dst="224.0.0.22")), R.NO_FLOODING),
    (raw(Ether(dst="33:33:00:00:00:01", src=vtep(1)) / IPv6()), R.NO_FLOODING),
    (raw(Ether(dst="02:00:00:00:09:ff", src=vtep(1)) / packet()), R.UNKNOWN_VTEP),
    (b"\x02\x00\x00\x00\x02\xff\x02", R.TRUNCATED),
], ids=["broadcast", "multicast", "ipv6-multicast", "unknown-vtep", "truncated"])
def test_ethernet_frames_refused(frame, reason):
    overlay = make_overlay("vxlan", inside="ethernet")
    actions = overlay.encapsulate([frame, frame_to(2)], 0.0)
    assert drops(actions) == [(INSIDE, reason)]
    assert len(transmitted(actions)[UNDERLAY]) == 1
    assert not unreachables(actions)


def test_ethernet_decapsulation_gives_the_inner_frame():
    overlay = make_overlay("vxlan", inside="ethernet")
    inner = Ether(dst=vtep(1), src=vtep(2)) / IP(src=pod(2), dst=pod(1), ttl=1) / TCP()
    payload = raw(VXLAN(flags=8, vni=1) / inner)
    assert only_inside(overlay.decapsulate([vx(payload)], 0.0)) == raw(inner)
    assert drops(overlay.decapsulate([vx(vxlan_payload(GOOD_INNER, dst="ff:ff:ff:ff:ff:ff"))], 0.0)) == [
        (UNDERLAY, R.NOT_FOR_VTEP)]


# -- leases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    (Lease(Network.parse("10.245.0.0/24"), ip("10.99.0.8")), "not inside the cluster network"),
    (Lease(Network.parse("10.0.0.0/8"), ip("10.99.0.8")), "not inside the cluster network"),
    (Lease(Network.parse("10.244.1.128/25"), ip("10.99.0.8")), "overlaps this node's subnet"),
    (Lease(Network.parse("10.244.0.0/23"), ip("10.99.0.8")), "overlaps this node's subnet"),
    (Lease(Network.parse("10.244.1.0/24"), ip("10.99.0.8")), "overlaps this node's subnet"),
])
def test_set_leases_refuses_leases_outside_or_over_ours(bad, match):
    overlay = make_overlay("udp")
    before = list(overlay.peers)
    with pytest.raises(ValueError, match=match):
        overlay.set_leases([lease(2), bad])
    assert list(overlay.peers) == before and len(overlay.peers) == 2


def test_set_leases_vxlan_needs_a_vtep_mac_that_is_not_ours():
    overlay = make_overlay("vxlan")
    with pytest.raises(ValueError, match="VTEP MAC"):
        overlay.set_leases([Lease(Network.parse(pod(2, 0) + "/24"), ip(public(2)))])
    with pytest.raises(ValueError, match="own VTEP MAC"):
        overlay.set_leases([Lease(Network.parse("10.244.2.0/24"), ip(public(2)), mac(vtep(1)))])
    assert len(overlay.peers) == 2


def test_changed_vtep_mac_is_used_at_once():
    overlay = make_overlay("vxlan")
    new = Lease(Network.parse("10.244.2.0/24"), ip(public(2)), mac("02:00:00:00:22:ff"))
    changes = overlay.set_leases([new, lease(3, "vxlan")])
    assert changes.changed == (new,) and changes.kept == 1
    datagram = only_datagram(overlay.encapsulate([raw(packet())], 0.0))
    assert VXLAN(datagram[8:])[Ether].dst == "02:00:00:00:22:ff"
    # and a removed peer has no lease any more
    overlay.set_leases([lease(3, "vxlan")])
    assert unreachables(overlay.encapsulate([raw(packet())], 0.0))[0][:2] == (3, 0)
    assert drops(overlay.decapsulate([vx(vxlan_payload(GOOD_INNER, src="02:00:00:00:22:ff"))], 0.0)) == [
        (UNDERLAY, R.UNKNOWN_PEER)]


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "gre"}, "backend"),
    ({"backend": "vxlan"}, "VTEP MAC"),
    ({"backend": "vxlan", "vtep_mac": mac("01:00:5e:00:00:01")}, "VTEP MAC"),
    ({"backend": "udp", "inside": "tun"}, "inside"),
    ({"backend": "udp", "subnet": Network.parse("10.245.1.0/24")}, "not inside network"),
    ({"backend": "udp", "subnet": Network.parse("10.0.0.0/8")}, "not inside network"),
])
def test_overlay_refuses_bad_settings(kwargs, match):
    settings = {"network": Network.parse("10.244.0.0/16"), "subnet": Network.parse("10.244.1.0/24"), **kwargs}
    with pytest.raises(ValueError, match=match):
        Overlay(**settings)


def test_defaults_and_describe():
    udp, vxlan = make_overlay("udp"), make_overlay("vxlan")
    assert (udp.port, udp.overhead, vxlan.port, vxlan.overhead) == (8285, 28, 8472, 50)
    assert udp.address == vxlan.address == ip("10.244.1.0")
    assert udp.describe() == {"backend": "udp", "network": "10.244.0.0/16", "subnet": "10.244.1.0/24",
                              "address": "10.244.1.0", "port": 8285}
    assert vxlan.describe()["vni"] == 1 and vxlan.describe()["vtep_mac"] == vtep(1)


def test_drop_actions_carry_the_frame():
    overlay = make_overlay("udp")
    stranger = from_peer(9, good_udp())
    (drop,) = [a for a in overlay.decapsulate([stranger], 0.0) if isinstance(a, Drop)]
    assert drop.frame == stranger
