"""The IPv4 router: scapy builds what arrives and checks what leaves; time is passed in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from l3kit import (
    BCAST,
    IPS,
    MAC,
    REMOTE,
    arp_reply,
    arp_request,
    arp_requests,
    drop_frames,
    drops,
    eth,
    ip,
    ip_checksum_ok,
    l4_checksum_ok,
    mac,
    make_router,
    net,
    only_frame,
    to_router,
    transmits,
)
from scapy.all import (
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    IPerror,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Security,
    IPv6,
    Raw,
    UDPerror,
    defragment,
    raw,
)

from vswitch.core.actions import DropReason, Transmit
from vswitch.core.l3.fragment import fragment
from vswitch.core.l3.icmp import ICMP_BURST, ICMP_PEER_BURST
from vswitch.core.l3.neighbour import State
from vswitch.core.l3.router import Router
from vswitch.core.l3.routes import Route, RouteTable
from vswitch.core.wire.addr import Network
from vswitch.core.wire.checksum import internet_checksum

R = DropReason


def udp(src="h1", dst="h2", *, ttl=64, payload=b"hello", sport=4000, dport=5000, **kw):
    return IP(src=IPS.get(src, src), dst=IPS.get(dst, dst), ttl=ttl, **kw) / UDP(sport=sport, dport=dport) / payload


def icmp_of(frame) -> ICMP:
    pkt = frame if isinstance(frame, Ether) else Ether(frame)
    assert ip_checksum_ok(pkt)
    message = raw(pkt[ICMP])
    check = ICMP(message)
    del check.chksum
    assert ICMP(raw(check)).chksum == pkt[ICMP].chksum
    return pkt[ICMP]


def quoted(message: ICMP) -> bytes:
    """What an ICMP error quotes: everything after its 8-byte header."""
    return raw(message)[8:]


# -- ARP ---------------------------------------------------------------------------------


def test_arp_request_for_own_address_is_answered():
    router = make_router()
    actions = router.handle_frames("a", [arp_request("h1", "a")], 1.0)
    reply = only_frame(actions, "a")
    assert reply.dst == MAC["h1"] and reply.src == MAC["a"]
    assert reply[ARP].op == 2
    assert (reply[ARP].hwsrc, reply[ARP].psrc) == (MAC["a"], IPS["a"])
    assert (reply[ARP].hwdst, reply[ARP].pdst) == (MAC["h1"], IPS["h1"])
    assert drops(actions) == []
    assert router.interfaces["a"].stats.arp_replies == 1


def test_arp_request_for_another_interface_address_or_a_neighbour_is_not_answered():
    router = make_router()
    assert router.handle_frames("a", [arp_request("h1", "b")], 1.0) == []
    assert router.handle_frames("a", [arp_request("h1", "198.51.100.77")], 1.0) == []
    assert router.handle_frames("a", [arp_request("h1", "h2")], 1.0) == []  # routed elsewhere, but no proxy_arp


def test_arp_probe_from_zero_address_is_answered_for_own_address():
    router = make_router()
    probe = raw(Ether(src=MAC["h1"], dst=BCAST) / ARP(op=1, hwsrc=MAC["h1"], psrc="0.0.0.0", pdst=IPS["a"]))
    reply = only_frame(router.handle_frames("a", [probe], 1.0), "a")
    assert reply[ARP].op == 2 and reply[ARP].psrc == IPS["a"] and reply[ARP].pdst == "0.0.0.0"
    assert router.interfaces["a"].neighbours.get(ip("0.0.0.0")) is None


def test_arp_claiming_our_address_is_counted_not_learned():
    router = make_router()
    claim = arp_request("a", "a", sender_mac="x")
    assert router.handle_frames("a", [claim], 1.0) == []
    assert router.interfaces["a"].stats.address_conflicts == 1


@pytest.mark.parametrize("frame", [
    raw(Ether(src=MAC["h1"], dst=BCAST, type=0x0806) / b"\x00\x01\x08\x00\x06\x04"),  # truncated
    raw(Ether(src=MAC["h1"], dst=BCAST) / ARP(hwtype=6, pdst=IPS["a"])),                # not Ethernet
    raw(Ether(src=MAC["h1"], dst=BCAST) / ARP(op=3, pdst=IPS["a"])),                    # unknown operation
])
def test_malformed_arp_is_dropped(frame):
    router = make_router()
    actions = router.handle_frames("a", [frame], 1.0)
    assert drops(actions) == [("a", R.ARP_MALFORMED)] and transmits(actions) == {}
    assert router.drop_counts()[R.ARP_MALFORMED] == 1


def test_request_addressed_to_us_teaches_the_sender_an_overheard_one_does_not():
    router = make_router(neighbours=False)
    router.handle_frames("b", [arp_request("h2", "b")], 1.0)
    router.handle_frames("b", [arp_request("gw", "203.0.113.99")], 1.0)
    table = router.interfaces["b"].neighbours
    assert table.get(ip("h2")).state(1.0, table.reachable_time) is State.STALE
    assert table.get(ip("gw")) is None
    # h2 is known: forwarded at once; gw is not: held while the router asks
    frames = transmits(router.handle_frames("a", [to_router(udp("h1", "h2")), to_router(udp("h1", REMOTE))], 1.5))
    out = [Ether(f) for f in frames["b"]]
    assert [p.dst for p in out if IP in p] == [MAC["h2"]]
    assert arp_requests(frames["b"]) == [IPS["gw"]]


def test_unresolved_next_hop_is_asked_for_once_and_packets_sent_when_the_reply_comes():
    router = make_router(neighbours=False)
    announced = router.interfaces["b"].stats.arp_requests   # the gratuitous ARP
    first, second = udp("h1", "h2", payload=b"one"), udp("h1", "h2", payload=b"two")
    actions = router.handle_frames("a", [to_router(first)], 10.0)
    request = only_frame(actions, "b")
    assert request.dst == BCAST and request.src == MAC["b"]
    assert request[ARP].op == 1 and request[ARP].pdst == IPS["h2"]
    assert (request[ARP].hwsrc, request[ARP].psrc) == (MAC["b"], IPS["b"])
    assert router.handle_frames("a", [to_router(second)], 10.5) == []   # held; one request per retrans_time
    assert router.poll_at() == 11.0
    again = transmits(router.handle_timer(11.0))
    assert arp_requests(again["b"]) == [IPS["h2"]]
    actions = router.handle_frames("b", [arp_reply("h2", "b", dst="b")], 11.2)
    sent = [Ether(f) for f in transmits(actions)["b"]]
    assert [p[Raw].load for p in sent] == [b"one", b"two"]
    for p in sent:
        assert (p.dst, p.src) == (MAC["h2"], MAC["b"])
        assert p[IP].ttl == 63 and ip_checksum_ok(p)
    table = router.interfaces["b"].neighbours
    assert table.get(ip("h2")).state(11.2, table.reachable_time) is State.REACHABLE
    # now resolved: straight out
    assert only_frame(router.handle_frames("a", [to_router(udp())], 11.3), "b").dst == MAC["h2"]
    assert router.interfaces["b"].stats.arp_requests == announced + 2


def test_unanswered_arp_gives_host_unreachable_for_each_held_packet():
    router = make_router(neighbours=False, max_probes=2, retrans_time=1.0)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    packets = [udp("h1", "h2", payload=b"p%d" % i) for i in range(3)]
    router.handle_frames("a", [to_router(p) for p in packets], 0.0)
    assert arp_requests(transmits(router.handle_timer(1.0))["b"]) == [IPS["h2"]]
    assert router.poll_at() == 2.0
    actions = router.handle_timer(2.0)
    assert drops(actions) == [("b", R.NEIGHBOUR_UNREACHABLE)] * 3
    errors = [icmp_of(f) for f in transmits(actions)["a"]]
    assert len(errors) == 3
    for err, frame, sent in zip(errors, transmits(actions)["a"], packets, strict=True):
        assert (err.type, err.code) == (3, 1)
        outer = Ether(frame)
        assert outer.dst == MAC["h1"] and outer[IP].src == IPS["a"] and outer[IP].dst == IPS["h1"]
        inner = err[IPerror]
        assert inner.src == IPS["h1"] and inner.dst == IPS["h2"] and inner.ttl == 63  # quoted as it was held
        assert quoted(err)[20:28] == raw(sent)[20:28]
    assert [raw(f)[20:] for f in drop_frames(actions)] == [raw(p)[20:] for p in packets]
    assert router.statistics().icmp_sent["host-unreachable"] == 3


def test_failed_resolution_of_our_own_reply_sends_nothing_to_ourselves():
    """An echo reply held for a pinger that never answers ARP: no error goes to the router's own address."""
    router = make_router(neighbours=False, max_probes=1)
    ping = to_router(IP(src=IPS["h1"], dst=IPS["a"]) / ICMP(type=8, id=1, seq=1))
    request = only_frame(router.handle_frames("a", [ping], 0.0), "a")
    assert request[ARP].pdst == IPS["h1"]
    actions = router.handle_timer(1.0)
    assert drops(actions) == [("a", R.NEIGHBOUR_UNREACHABLE)]
    assert transmits(actions) == {}
    assert transmits(router.handle_timer(5.0)) == {}


def test_proxy_arp_answers_for_addresses_routed_via_another_interface():
    router = make_router(proxy_arp=True)
    for target in (IPS["h2"], REMOTE):
        reply = only_frame(router.handle_frames("a", [arp_request("h1", target)], 1.0), "a")
        assert reply[ARP].op == 2 and reply[ARP].psrc == target and reply[ARP].hwsrc == MAC["a"]
        assert reply[ARP].pdst == IPS["h1"] and reply.dst == MAC["h1"]
    # never for an address on the asking interface's own network, nor one with no route
    assert router.handle_frames("a", [arp_request("h1", "198.51.100.99")], 1.0) == []
    assert router.handle_frames("a", [arp_request("h1", "100.64.0.1")], 1.0) == []
    assert router.interfaces["a"].stats.arp_replies == 2


def test_gratuitous_arp_after_an_interface_comes_up():
    router = Router()
    router.add_interface("a", ip("a"), 24, mac=mac("a"))
    router.add_interface("t", ip("b"), 24, mac=None)
    assert router.poll_at() == float("-inf")
    announce = only_frame(router.handle_timer(0.0), "a")
    assert announce.dst == BCAST and announce[ARP].op == 1
    assert announce[ARP].psrc == announce[ARP].pdst == IPS["a"]
    assert announce[ARP].hwsrc == MAC["a"]
    assert router.poll_at() is None
    assert router.handle_timer(1.0) == []          # owed once
    assert router.set_interface_up("a", False) == []
    assert router.poll_at() is None                # down: nothing owed
    router.set_interface_up("a", True)
    assert router.poll_at() == float("-inf")
    assert only_frame(router.handle_timer(2.0), "a")[ARP].psrc == IPS["a"]
    router.set_interface_up("t", False)
    router.set_interface_up("t", True)
    assert router.poll_at() is None                # an L3 interface has no ARP to announce with


def test_own_frames_flooded_back_are_ignored():
    router = make_router()
    assert router.handle_frames("a", [arp_request("a", "h1", sender_mac="b")], 1.0) == []
    assert router.handle_frames("a", [eth("b", BCAST, udp("b", "198.51.100.255"))], 1.0) == []


def test_gratuitous_arp_from_a_known_neighbour_moves_it_a_stranger_is_not_learned():
    router = make_router(neighbours=False)
    router.handle_frames("b", [arp_request("h2", "b")], 0.0)
    moved = "02:00:00:00:00:21"
    router.handle_frames("b", [arp_request("h2", "h2", sender_mac=moved)], 1.0)
    router.handle_frames("b", [arp_request("gw", "gw")], 1.0)
    assert router.interfaces["b"].neighbours.get(ip("h2")).mac == mac(moved)
    assert router.interfaces["b"].neighbours.get(ip("gw")) is None
    assert only_frame(router.handle_frames("a", [to_router(udp())], 1.5), "b").dst == moved


# -- Ethernet-level checks -------------------------------------------------------------------


def test_frames_for_another_mac_short_frames_and_other_ethertypes():
    router = make_router()
    frames = [
        eth("h1", "x", udp()),
        b"\x01\x02\x03",
        eth("h1", "a", IPv6()),
        eth("h1", "a", Dot1Q(vlan=5) / udp()),
        eth("h1", BCAST, udp()),
    ]
    actions = router.handle_frames("a", frames, 1.0)
    assert transmits(actions) == {}
    assert drops(actions) == [
        ("a", R.NOT_FOR_ROUTER), ("a", R.TRUNCATED), ("a", R.UNSUPPORTED_ETHERTYPE),
        ("a", R.UNSUPPORTED_ETHERTYPE), ("a", R.NOT_ROUTED),
    ]
    assert drop_frames(actions) == frames
    counts = router.drop_counts()
    assert counts[R.UNSUPPORTED_ETHERTYPE] == 2 and counts[R.NOT_FOR_ROUTER] == 1


def test_unknown_interface_is_misuse():
    with pytest.raises(KeyError):
        make_router().handle_frames("nope", [], 0.0)


# -- IPv4 header checks --------------------------------------------------------------------------


def _corrupt(packet: bytes, offset: int, value: int) -> bytes:
    b = bytearray(packet)
    b[offset] = value
    return bytes(b)


def _fix_checksum(packet: bytes) -> bytes:
    """Recompute the header checksum over what the (possibly corrupted) IHL covers."""
    ihl = min(max((packet[0] & 0x0F) * 4, 20), len(packet))
    fixed = bytearray(packet)
    fixed[10:12] = b"\0\0"
    fixed[10:12] = internet_checksum(bytes(fixed[:ihl])).to_bytes(2, "big")
    return bytes(fixed)


GOOD = raw(udp())


@pytest.mark.parametrize(("packet", "reason"), [
    (GOOD[:19], R.IP_TRUNCATED),
    (_fix_checksum(_corrupt(GOOD, 0, 0x65)), R.IP_VERSION),
    (_fix_checksum(_corrupt(GOOD, 0, 0x44)), R.IP_HEADER_LENGTH),
    (_fix_checksum(_corrupt(GOOD, 0, 0x4F)), R.IP_HEADER_LENGTH),   # 60-byte header in a 33-byte packet
    (_fix_checksum(_corrupt(GOOD, 3, 19)), R.IP_LENGTH),            # total length below the header
    (_fix_checksum(_corrupt(GOOD, 3, len(GOOD) + 1)), R.IP_LENGTH),  # beyond the frame
    (_corrupt(GOOD, 11, GOOD[11] ^ 0x01), R.IP_CHECKSUM),
    (raw(udp("0.0.0.0")), R.MARTIAN_SOURCE),
    (raw(udp("127.0.0.1")), R.MARTIAN_SOURCE),
    (raw(udp("224.0.0.9")), R.MARTIAN_SOURCE),
    (raw(udp("240.0.0.1")), R.MARTIAN_SOURCE),
    (raw(udp("255.255.255.255")), R.MARTIAN_SOURCE),
], ids=[
    "truncated", "version-6", "ihl-16", "ihl-60", "total-19", "total-beyond", "checksum",
    "src-zero", "src-loopback", "src-multicast", "src-class-e", "src-broadcast",
])
def test_header_checks_are_counted_drops(packet, reason):
    router = make_router()
    frame = eth("h1", "a", Raw(packet))
    actions = router.handle_frames("a", [frame], 1.0)
    assert drops(actions) == [("a", reason)]
    assert drop_frames(actions) == [frame]
    assert transmits(actions) == {}       # no ICMP about a packet that failed its checks
    assert router.drop_counts() == {reason: 1}
    assert router.statistics().forwarded == 0


def test_ethernet_padding_is_stripped_when_forwarding():
    router = make_router()
    short = raw(IP(src=IPS["h1"], dst=IPS["h2"]) / UDP(sport=1, dport=2))   # 28 bytes: padded to 46
    frame = eth("h1", "a", Raw(short + b"\0" * 18))
    assert len(frame) == 60
    out = only_frame(router.handle_frames("a", [frame], 1.0), "b")
    assert len(raw(out[IP])) == 28
    assert raw(out)[14 + 20:] == short[20:]


# -- forwarding ----------------------------------------------------------------------------------


def test_forwarding_rewrites_macs_and_decrements_ttl():
    router = make_router()
    sent = IP(raw(udp(ttl=64, tos=0x10, id=777, flags="DF")))
    out = only_frame(router.handle_frames("a", [to_router(sent)], 1.0), "b")
    assert (out.src, out.dst) == (MAC["b"], MAC["h2"])
    assert out[IP].ttl == 63
    assert ip_checksum_ok(out)
    for field in ("src", "dst", "tos", "id", "flags", "frag", "proto", "len"):
        assert getattr(out[IP], field) == getattr(sent, field), field
    assert raw(out[IP])[20:] == raw(sent)[20:]
    stats = router.statistics()
    assert stats.forwarded == 1
    a, b = router.interfaces["a"].stats, router.interfaces["b"].stats
    assert (a.rx_packets, a.rx_bytes) == (1, 14 + len(raw(sent)))
    assert (b.tx_packets, b.tx_bytes) == (2, 42 + len(raw(out)))   # the gratuitous ARP, then this


def test_forwarding_via_a_gateway_uses_the_gateway_mac():
    router = make_router()
    out = only_frame(router.handle_frames("a", [to_router(udp("h1", REMOTE))], 1.0), "b")
    assert out.dst == MAC["gw"] and out[IP].dst == REMOTE


def test_batch_keeps_order_per_interface():
    router = make_router()
    batch = [to_router(udp(payload=b"%d" % i, dst=dst)) for i, dst in enumerate(["h2", REMOTE, "h2", REMOTE])]
    frames = transmits(router.handle_frames("a", batch, 1.0))["b"]
    assert [Ether(f)[Raw].load for f in frames] == [b"0", b"1", b"2", b"3"]


@given(
    ttl=st.integers(2, 255), tos=st.integers(0, 255), ident=st.integers(0, 0xFFFF), df=st.booleans(),
    src=st.integers(0, 0xFFFF), payload=st.binary(max_size=64),
    options=st.sampled_from([[], [IPOption_Router_Alert()], [IPOption_RR(routers=["198.51.100.1"])]]),
)
def test_ttl_decrement_checksum_agrees_with_scapy(ttl, tos, ident, df, src, payload, options):
    router = make_router()
    source = f"198.51.{src >> 8}.{src & 0xFF}" if src >> 8 != 100 else IPS["h1"]
    sent = IP(src=source, dst=IPS["h2"], ttl=ttl, tos=tos, id=ident, flags="DF" if df else 0, options=options)
    sent = IP(raw(sent / UDP(sport=1, dport=2) / payload))
    out = only_frame(router.handle_frames("a", [to_router(sent)], 1.0), "b")
    assert out[IP].ttl == ttl - 1
    assert ip_checksum_ok(out)
    expected = sent.copy()
    expected.ttl = ttl - 1
    del expected.chksum
    assert raw(out[IP]) == raw(expected)


def _with_checksum(target: int, ttl: int) -> bytes:
    """A UDP packet whose header checksum is ``target``, found by choosing its identification field."""
    base = raw(udp(ttl=ttl, id=0))
    c0 = int.from_bytes(base[10:12], "big")
    ident = (~target & 0xFFFF) + c0
    ident = (ident & 0xFFFF) + (ident >> 16)
    for candidate in (ident, ident ^ 0xFFFF, 0xFFFF - ident):
        packet = raw(udp(ttl=ttl, id=candidate & 0xFFFF))
        if int.from_bytes(packet[10:12], "big") == target:
            return packet
    raise AssertionError(f"no identification gives checksum {target:#06x}")


@pytest.mark.parametrize("target", [0x0000, 0x00FF, 0xFEFE, 0xFEFF, 0xFF00, 0xFFFE])
@pytest.mark.parametrize("ttl", [2, 64, 255])
def test_ttl_decrement_checksum_at_the_carry_edges(target, ttl):
    router = make_router()
    sent = _with_checksum(target, ttl)
    out = only_frame(router.handle_frames("a", [to_router(Raw(sent))], 1.0), "b")
    assert out[IP].ttl == ttl - 1
    assert ip_checksum_ok(out)
    assert internet_checksum(raw(out[IP])[:20]) == 0


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_exceeded_sends_time_exceeded_quoting_header_and_8_bytes(ttl):
    router = make_router()
    sent = udp(ttl=ttl, payload=b"0123456789abcdef")
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    assert drops(actions) == [("a", R.TTL_EXCEEDED)]
    reply = only_frame(actions, "a")
    err = icmp_of(reply)
    assert (err.type, err.code) == (11, 0)
    assert reply.dst == MAC["h1"] and reply[IP].src == IPS["a"] and reply[IP].dst == IPS["h1"]
    assert quoted(err) == raw(sent)[:28]
    assert reply[IP].ttl == 64 and reply[IP].tos == 0xC0
    assert router.statistics().icmp_sent["time-exceeded"] == 1


def test_icmp_error_source_is_the_address_of_the_interface_it_leaves_by():
    router = make_router()
    sent = udp(REMOTE, "h1", ttl=1)      # from behind gw, yet arriving on a
    reply = only_frame(router.handle_frames("a", [to_router(sent, src="x")], 1.0), "b")
    assert reply.dst == MAC["gw"]
    assert reply[IP].src == IPS["b"] and reply[IP].dst == REMOTE
    assert icmp_of(reply).type == 11


def test_packet_for_the_router_is_delivered_whatever_its_ttl():
    router = make_router()
    ping = IP(src=IPS["h1"], dst=IPS["a"], ttl=1) / ICMP(type=8, id=7, seq=1) / b"x"
    assert icmp_of(only_frame(router.handle_frames("a", [to_router(ping)], 1.0), "a")).type == 0


def test_no_route_sends_net_unreachable():
    router = make_router()
    sent = udp("h1", "100.64.1.2")
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    assert drops(actions) == [("a", R.NO_ROUTE)]
    err = icmp_of(only_frame(actions, "a"))
    assert (err.type, err.code) == (3, 0)
    assert quoted(err) == raw(sent)[:28]


def test_route_via_a_down_interface_is_no_route():
    router = make_router()
    assert router.set_interface_up("b", False) == []
    actions = router.handle_frames("a", [to_router(udp())], 1.0)
    assert drops(actions) == [("a", R.NO_ROUTE)]
    assert icmp_of(only_frame(actions, "a")).code == 0
    actions = router.handle_frames("b", [eth("h2", "b", udp("h2", "h1"))], 1.0)
    assert drops(actions) == [("b", R.PORT_DOWN)] and transmits(actions) == {}


def test_interface_going_down_drops_the_packets_it_held():
    router = make_router(neighbours=False)
    router.handle_frames("a", [to_router(udp()), to_router(udp())], 1.0)
    actions = router.set_interface_up("b", False)
    assert drops(actions) == [("b", R.PORT_DOWN)] * 2
    assert router.drop_counts()[R.PORT_DOWN] == 2
    assert router.set_interface_up("b", False) == []


def test_default_route_and_more_specific_routes():
    router = make_router()
    router.add_route(net("0.0.0.0/0"), via=ip("h1"))
    router.add_route(net("192.0.2.128/25"), via=ip("h2"))
    assert only_frame(router.handle_frames("b", [eth("h2", "b", udp("h2", "100.64.0.1"))], 1.0), "a").dst == MAC["h1"]
    assert only_frame(router.handle_frames("a", [to_router(udp("h1", "192.0.2.200"))], 1.0), "b").dst == MAC["h2"]
    assert only_frame(router.handle_frames("a", [to_router(udp("h1", "192.0.2.100"))], 1.0), "b").dst == MAC["gw"]


# -- what is never routed ----------------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["255.255.255.255", "224.0.0.5", "239.1.2.3", "198.51.100.255", "203.0.113.255"])
@pytest.mark.parametrize("ttl", [1, 64])
def test_broadcast_and_multicast_are_not_routed_and_get_no_icmp(dst, ttl):
    router = make_router()
    multicast = dst != "255.255.255.255" and int(dst.split(".")[0]) >= 224
    dst_mac = "01:00:5e:00:00:05" if multicast else BCAST
    frame = eth("h1", dst_mac, udp("h1", dst, ttl=ttl))
    actions = router.handle_frames("a", [frame], 1.0)
    assert drops(actions) == [("a", R.NOT_ROUTED)]
    assert transmits(actions) == {}
    # the same packet in a unicast frame to the router
    actions = router.handle_frames("a", [to_router(udp("h1", dst, ttl=ttl))], 1.0)
    assert drops(actions) == [("a", R.NOT_ROUTED)]
    assert transmits(actions) == {}


def test_point_to_point_31_has_no_broadcast_address():
    router = Router()
    router.add_interface("a", ip("a"), 24, mac=mac("a"))
    router.add_interface("p", ip("192.0.2.0"), 31, mac=mac("b"))
    router.add_neighbour("a", ip("h1"), mac("h1"))
    router.add_neighbour("p", ip("192.0.2.1"), mac("gw"))
    out = only_frame(router.handle_frames("a", [to_router(udp("h1", "192.0.2.1"))], 1.0), "p")
    assert out.dst == MAC["gw"] and out[IP].dst == "192.0.2.1"


# -- the router's own addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["a", "b"])
def test_echo_reply_for_own_addresses(target):
    router = make_router()
    ping = IP(src=IPS["h1"], dst=IPS[target], tos=0x28) / ICMP(type=8, id=0x4242, seq=9) / b"payload!"
    actions = router.handle_frames("a", [to_router(ping)], 1.0)
    assert drops(actions) == []
    reply = only_frame(actions, "a")
    echo = icmp_of(reply)
    assert (echo.type, echo.code, echo.id, echo.seq) == (0, 0, 0x4242, 9)
    assert echo.load == b"payload!"
    assert reply[IP].src == IPS[target] and reply[IP].dst == IPS["h1"] and reply.dst == MAC["h1"]
    assert reply[IP].tos == 0x28 and reply[IP].ttl == 64
    assert router.statistics().icmp_sent["echo-reply"] == 1
    assert router.statistics().delivered == 1


def test_icmp_for_the_router_that_is_not_a_request_is_consumed():
    router = make_router()
    frames = [
        to_router(IP(src=IPS["h1"], dst=IPS["a"]) / ICMP(type=0, id=1, seq=1)),
        to_router(IP(src=IPS["h1"], dst=IPS["a"]) / ICMP(type=3, code=3) / IPerror(raw(udp("a", "h1")))),
    ]
    assert router.handle_frames("a", frames, 1.0) == []


def test_bad_icmp_for_the_router_is_dropped():
    router = make_router()
    ping = bytearray(raw(IP(src=IPS["h1"], dst=IPS["a"]) / ICMP(type=8) / b"abcd"))
    ping[-1] ^= 1
    short = raw(IP(src=IPS["h1"], dst=IPS["a"], proto=1) / b"\x08\x00\xf7")
    actions = router.handle_frames("a", [to_router(Raw(bytes(ping))), to_router(Raw(short))], 1.0)
    assert drops(actions) == [("a", R.ICMP_MALFORMED)] * 2 and transmits(actions) == {}


def test_fragment_for_the_router_is_dropped():
    router = make_router()
    frag = IP(src=IPS["h1"], dst=IPS["a"], flags="MF") / ICMP(type=8) / (b"x" * 16)
    later = IP(src=IPS["h1"], dst=IPS["a"], frag=3, proto=1) / (b"x" * 16)
    actions = router.handle_frames("a", [to_router(frag), to_router(later)], 1.0)
    assert drops(actions) == [("a", R.LOCAL_FRAGMENT)] * 2 and transmits(actions) == {}


def test_udp_to_the_router_is_port_unreachable():
    router = make_router()
    sent = udp("h1", "a", dport=53, payload=b"query")
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    assert drops(actions) == [("a", R.PORT_UNREACHABLE)]
    reply = only_frame(actions, "a")
    err = icmp_of(reply)
    assert (err.type, err.code) == (3, 3)
    assert reply[IP].src == IPS["a"]
    assert quoted(err) == raw(sent)[:28]
    assert err[UDPerror].dport == 53 and err[IPerror].dst == IPS["a"]


def test_other_protocol_to_the_router_is_protocol_unreachable():
    router = make_router()
    sent = IP(src=IPS["h1"], dst=IPS["b"], proto=47) / b"gre-ish payload"
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    assert drops(actions) == [("a", R.PORT_UNREACHABLE)]
    err = icmp_of(only_frame(actions, "a"))
    assert (err.type, err.code) == (3, 2)
    assert quoted(err) == raw(sent)[:28]
    assert router.statistics().icmp_sent["protocol-unreachable"] == 1


@pytest.mark.parametrize(("flags", "payload", "expect_flags", "expect_seq", "expect_ack"), [
    ("S", b"", "RA", 0, 1001),
    ("S", b"data", "RA", 0, 1005),          # SYN with data: the data counts
    ("F", b"", "RA", 0, 1001),
    ("SF", b"xy", "RA", 0, 1004),
    ("", b"abc", "RA", 0, 1003),            # no flags at all
    ("A", b"", "R", 5555, 0),               # an ACK: the reset takes its sequence number from it
    ("PA", b"data", "R", 5555, 0),
    ("FA", b"", "R", 5555, 0),
])
def test_tcp_to_the_router_gets_a_reset_by_rfc_793(flags, payload, expect_flags, expect_seq, expect_ack):
    router = make_router()
    seg = IP(src=IPS["h1"], dst=IPS["a"]) / TCP(sport=40000, dport=22, seq=1000, ack=5555, flags=flags) / payload
    actions = router.handle_frames("a", [to_router(seg)], 1.0)
    assert drops(actions) == [("a", R.PORT_UNREACHABLE)]
    reply = only_frame(actions, "a")
    assert ip_checksum_ok(reply) and l4_checksum_ok(reply, TCP)
    rst = reply[TCP]
    assert reply[IP].src == IPS["a"] and reply[IP].dst == IPS["h1"]
    assert (rst.sport, rst.dport) == (22, 40000)
    assert rst.flags == expect_flags
    assert rst.seq == expect_seq
    assert rst.ack == expect_ack
    assert ICMP not in reply
    assert router.statistics().icmp_sent["tcp-reset"] == 1


def test_tcp_reset_ack_wraps_around_the_sequence_space():
    router = make_router()
    seg = IP(src=IPS["h1"], dst=IPS["a"]) / TCP(sport=1, dport=2, seq=0xFFFFFFFF, flags="S")
    reply = only_frame(router.handle_frames("a", [to_router(seg)], 1.0), "a")
    assert reply[TCP].ack == 0


def test_tcp_reset_is_never_answered_and_a_short_segment_gets_nothing():
    router = make_router()
    rst = IP(src=IPS["h1"], dst=IPS["a"]) / TCP(sport=1, dport=2, flags="R")
    short = IP(src=IPS["h1"], dst=IPS["a"], proto=6) / b"\x00\x01\x00\x02"
    actions = router.handle_frames("a", [to_router(rst), to_router(short)], 1.0)
    assert drops(actions) == [("a", R.PORT_UNREACHABLE)] * 2
    assert transmits(actions) == {}


# -- MTU and fragmentation ----------------------------------------------------------------------------


def test_fragmentation_needed_when_df_is_set():
    router = make_router(mtu_b=1000)
    sent = udp(flags="DF", payload=b"z" * 1200)
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    assert drops(actions) == [("a", R.FRAGMENTATION_NEEDED)]
    reply = only_frame(actions, "a")
    err = icmp_of(reply)
    assert (err.type, err.code) == (3, 4)
    assert err.nexthopmtu == 1000
    assert quoted(err) == raw(sent)[:28]
    assert reply[IP].src == IPS["a"]


def test_packet_of_exactly_the_mtu_is_forwarded_whole():
    router = make_router(mtu_b=1000)
    sent = udp(flags="DF", payload=b"z" * (1000 - 28))
    out = only_frame(router.handle_frames("a", [to_router(sent)], 1.0), "b")
    assert out[IP].len == 1000 and out[IP].flags == "DF"


def test_fragmentation_needed_is_not_rate_limited():
    router = make_router(mtu_b=1000)
    sent = to_router(udp(flags="DF", payload=b"z" * 1200))
    actions = router.handle_frames("a", [sent] * 20, 1.0)
    assert len(transmits(actions)["a"]) == 20
    # and it did not spend the tokens of other errors
    actions = router.handle_frames("a", [to_router(udp(ttl=1))] * 10, 1.0)
    assert len(transmits(actions)["a"]) == int(ICMP_PEER_BURST)


def test_fragments_when_df_is_clear_and_scapy_reassembles_them():
    router = make_router(mtu_b=576)
    payload = bytes(range(256)) * 8
    sent = IP(raw(udp(payload=payload, id=0x1234, ttl=30)))
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    assert drops(actions) == []
    pieces = [Ether(f) for f in transmits(actions)["b"]]
    assert len(pieces) == 4
    offsets = []
    for i, piece in enumerate(pieces):
        header = piece[IP]
        assert piece.dst == MAC["h2"]
        assert header.len <= 576 and len(raw(header)) == header.len
        assert ip_checksum_ok(piece)
        assert header.id == 0x1234 and header.ttl == 29
        assert bool(header.flags.MF) == (i < len(pieces) - 1)
        assert (header.len - 20) % 8 == 0 or i == len(pieces) - 1
        offsets.append(header.frag * 8)
    assert offsets == sorted(offsets) and offsets[0] == 0
    whole = defragment([p[IP] for p in pieces])
    assert len(whole) == 1
    assert raw(whole[0])[20:] == raw(sent)[20:]
    assert router.statistics().fragments_created == 4


def test_later_fragments_carry_only_copied_options():
    router = make_router(mtu_b=200)
    options = [IPOption_RR(routers=["0.0.0.0"]), IPOption_Router_Alert(), IPOption_Security()]
    sent = IP(raw(udp(payload=b"q" * 500, options=options)))
    assert sent.ihl * 4 > 20
    pieces = [Ether(f)[IP] for f in transmits(router.handle_frames("a", [to_router(sent)], 1.0))["b"]]
    assert len(pieces) > 2
    first, *later = pieces
    assert raw(first)[20:first.ihl * 4] == raw(sent)[20:sent.ihl * 4]
    for piece in later:
        kinds = [o.option + (o.copy_flag << 7) for o in piece.options if o.option != 0]
        assert sorted(kinds) == sorted([0x94, 0x82])  # router alert and security, not record route
        assert piece.ihl * 4 % 4 == 0
    whole = defragment(pieces)
    assert raw(whole[0])[whole[0].ihl * 4:] == raw(sent)[sent.ihl * 4:]


@given(
    size=st.integers(1, 3000), mtu=st.integers(68, 1500),
    options=st.sampled_from([[], [IPOption_Router_Alert()], [IPOption_RR(routers=["0.0.0.0"] * 3)]]),
    ident=st.integers(0, 0xFFFF),
)
def test_fragment_function_against_scapy(size, mtu, options, ident):
    payload = bytes(i * 7 & 0xFF for i in range(size))
    packet = raw(IP(src="198.51.100.10", dst="203.0.113.20", id=ident, options=options, proto=253) / payload)
    if len(packet) <= mtu:
        mtu = max(68, len(packet) - 1)
        if len(packet) <= mtu:
            return
    pieces = fragment(packet, mtu)
    assert len(pieces) >= 2
    parsed = [IP(p) for p in pieces]
    for i, p in enumerate(parsed):
        assert len(pieces[i]) <= mtu and p.len == len(pieces[i])
        assert ip_checksum_ok(p)
        assert p.id == ident and p.src == "198.51.100.10" and p.proto == 253
        assert bool(p.flags.MF) == (i < len(parsed) - 1)
        assert not p.flags.DF
    data = b"".join(raw(p)[p.ihl * 4:] for p in parsed)
    assert data == payload
    assert [p.frag * 8 for p in parsed] == [sum(len(raw(q)) - q.ihl * 4 for q in parsed[:i]) for i in range(len(parsed))]
    whole = defragment(parsed)
    assert len(whole) == 1 and raw(whole[0])[whole[0].ihl * 4:] == payload


def test_fragmenting_a_fragment_keeps_its_offset_and_more_fragments_flag():
    middle = raw(IP(src="198.51.100.10", dst="203.0.113.20", id=9, flags="MF", frag=100, proto=17) / (b"m" * 400))
    pieces = [IP(p) for p in fragment(middle, 200)]
    assert [p.frag for p in pieces] == [100, 122, 144]
    assert all(p.flags.MF for p in pieces)
    last = raw(IP(src="198.51.100.10", dst="203.0.113.20", id=9, frag=100, proto=17) / (b"m" * 400))
    pieces = [IP(p) for p in fragment(last, 200)]
    assert [bool(p.flags.MF) for p in pieces] == [True, True, False]


# -- when ICMP errors are not sent -------------------------------------------------------------------------


def test_no_icmp_error_about_an_icmp_error():
    router = make_router()
    error = IP(src=IPS["h1"], dst=IPS["h2"], ttl=1) / ICMP(type=3, code=1) / IPerror(raw(udp("h2", "h1")))
    echo = IP(src=IPS["h1"], dst=IPS["h2"], ttl=1) / ICMP(type=8, id=3, seq=4)
    actions = router.handle_frames("a", [to_router(error), to_router(echo)], 1.0)
    assert drops(actions) == [("a", R.TTL_EXCEEDED)] * 2
    errors = [icmp_of(f) for f in transmits(actions)["a"]]
    assert len(errors) == 1 and errors[0][IPerror].proto == 1  # only about the echo request
    assert errors[0].type == 11


def test_no_icmp_error_about_a_non_first_fragment():
    router = make_router()
    later = IP(src=IPS["h1"], dst=IPS["h2"], ttl=1, frag=10, proto=17) / (b"x" * 16)
    first = IP(src=IPS["h1"], dst=IPS["h2"], ttl=1, flags="MF", proto=17) / (b"x" * 16)
    actions = router.handle_frames("a", [to_router(later), to_router(first)], 1.0)
    assert drops(actions) == [("a", R.TTL_EXCEEDED)] * 2
    assert len(transmits(actions)["a"]) == 1
    assert icmp_of(transmits(actions)["a"][0])[IPerror].frag == 0


def test_icmp_errors_per_destination_burst_then_one_per_second():
    router = make_router()
    expired = to_router(udp(ttl=1))

    def count(actions):
        return len(transmits(actions).get("a", []))

    assert count(router.handle_frames("a", [expired] * 10, 100.0)) == ICMP_PEER_BURST == 6
    assert count(router.handle_frames("a", [expired] * 3, 100.5)) == 0
    assert count(router.handle_frames("a", [expired] * 3, 101.0)) == 1
    assert count(router.handle_frames("a", [expired] * 3, 103.0)) == 2
    assert router.statistics().icmp_rate_limited == 4 + 3 + 2 + 1
    # another destination has its own allowance
    other = to_router(udp(REMOTE, "h2", ttl=1), src="gw")
    assert len(transmits(router.handle_frames("a", [other] * 10, 103.0))["b"]) == 6
    # the drops are counted whether or not the error was sent
    assert router.drop_counts()[R.TTL_EXCEEDED] == 10 + 3 + 3 + 3 + 10


def test_icmp_errors_global_limit_burst_then_rate():
    router = make_router()
    sources = [f"192.0.2.{n}" for n in range(1, 121)]
    batch = [to_router(udp(s, "h2", ttl=1), src="gw") for s in sources]
    assert len(transmits(router.handle_frames("a", batch[:60], 64.0))["b"]) == ICMP_BURST == 50
    assert transmits(router.handle_frames("a", batch[60:70], 64.0)) == {}
    # 1000 per second: 15 more after 15.625 ms
    assert len(transmits(router.handle_frames("a", batch[70:100], 64.015625))["b"]) == 15
    # and never more than the burst however long the wait
    assert len(transmits(router.handle_frames("a", batch[:120], 1000.0))["b"]) == 50


# -- configuration -----------------------------------------------------------------------------------------


def test_configuration_errors():
    router = make_router()
    with pytest.raises(ValueError):
        router.add_interface("a", ip("10.9.9.9"), 24, mac=mac("x"))
    with pytest.raises(ValueError):
        router.add_interface("c", ip("a"), 24, mac=mac("x"))
    with pytest.raises(ValueError):
        router.add_interface("c", ip("10.9.9.9"), 24, mac=mac("x"), mtu=67)
    with pytest.raises(ValueError):
        router.add_route(net("10.0.0.0/8"))
    with pytest.raises(ValueError):
        router.add_route(net("10.0.0.0/8"), via=ip("100.64.0.1"))
    with pytest.raises(ValueError):
        router.add_route(net("10.0.0.0/8"), interface="nope")
    route = router.add_route(net("10.0.0.0/8"), via=ip("100.64.0.1"), interface="b")
    assert route.interface == "b" and str(route) == "10.0.0.0/8 via 100.64.0.1 dev b"


# -- longest-prefix match ----------------------------------------------------------------------------------


def _reference(routes: dict[tuple[int, int], str], dst: int) -> str | None:
    best = None
    for (address, length), iface in routes.items():
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        if dst & mask == address and (best is None or length > best[0]):
            best = (length, iface)
    return None if best is None else best[1]


_route = st.tuples(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, 7, 8, 16, 23, 24, 25, 31, 32]), st.integers(0, 5))


@given(
    routes=st.lists(_route, max_size=30),
    later=st.lists(st.tuples(st.booleans(), _route), max_size=10),
    probes=st.lists(st.integers(0, 0xFFFFFFFF), max_size=20),
)
def test_longest_prefix_match_against_brute_force(routes, later, probes):
    table = RouteTable()
    reference: dict[tuple[int, int], str] = {}

    def add(value, length, n):
        network = Network.of(value.to_bytes(4, "big"), length)
        table.add(Route(network, f"if{n}"))
        reference[(network.address, length)] = f"if{n}"

    for route in routes:
        add(*route)
    # the destinations most likely to matter: inside each route, at its edges, and random ones
    destinations = list(probes)
    for (address, length) in reference:
        destinations += [address, address | (0xFFFFFFFF >> length if length else 0xFFFFFFFF)]
    for dst in destinations:
        found = table.lookup(dst.to_bytes(4, "big"))
        assert (found and found.interface) == _reference(reference, dst)
        assert table.lookup(dst.to_bytes(4, "big")) is found   # cached: same answer
    for remove, route in later:
        key = (Network.of(route[0].to_bytes(4, "big"), route[1]).address, route[1])
        if remove and key in reference:
            table.remove(Network(key[0], (0xFFFFFFFF << (32 - key[1])) & 0xFFFFFFFF))
            del reference[key]
        else:
            add(*route)
        for dst in destinations:
            found = table.lookup(dst.to_bytes(4, "big"))
            assert (found and found.interface) == _reference(reference, dst)
    assert len(table) == len(reference)
    assert sorted((r.network.address, r.network.prefix_len) for r in table) == sorted(reference)


def test_route_changes_invalidate_the_cache():
    table = RouteTable()
    table.add(Route(net("10.0.0.0/8"), "wide"))
    dst = ip("10.1.2.3")
    assert table.lookup(dst).interface == "wide"
    table.add(Route(net("10.1.0.0/16"), "narrow"))
    assert table.lookup(dst).interface == "narrow"
    table.add(Route(net("10.1.0.0/16"), "replaced"))
    assert table.lookup(dst).interface == "replaced"
    table.remove(net("10.1.0.0/16"))
    assert table.lookup(dst).interface == "wide"
    table.remove(net("10.0.0.0/8"))
    assert table.lookup(dst) is None
    assert len(table) == 0
    with pytest.raises(KeyError):
        table.remove(net("10.0.0.0/8"))


def test_route_cache_is_bounded():
    table = RouteTable(cache_size=4)
    table.add(Route(net("0.0.0.0/0"), "default"))
    for n in range(20):
        assert table.lookup(bytes((10, 0, 0, n))).interface == "default"
        assert len(table._cache) <= 4


def test_router_route_added_after_traffic_takes_effect():
    router = make_router()
    assert drops(router.handle_frames("a", [to_router(udp("h1", "100.64.0.1"))], 1.0)) == [("a", R.NO_ROUTE)]
    router.add_route(net("100.64.0.0/10"), via=ip("gw"))
    assert only_frame(router.handle_frames("a", [to_router(udp("h1", "100.64.0.1"))], 1.0), "b").dst == MAC["gw"]


# -- an L3 interface (TUN) -------------------------------------------------------------------------------------


def _l3_router() -> Router:
    router = Router()
    router.add_interface("a", ip("a"), 24, mac=mac("a"))
    router.add_interface("t", ip("b"), 24, mac=None, mtu=1400)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    router.handle_timer(0.0)
    return router


def test_l3_interface_sends_raw_ip_packets():
    router = _l3_router()
    sent = udp("h1", "203.0.113.5")
    actions = router.handle_frames("a", [to_router(sent)], 1.0)
    out = transmits(actions)
    assert list(out) == ["t"] and len(out["t"]) == 1
    packet = IP(out["t"][0])               # no Ethernet header, and no ARP first
    assert packet.dst == "203.0.113.5" and packet.ttl == 63 and ip_checksum_ok(packet)
    assert raw(packet)[20:] == raw(sent)[20:]


def test_l3_interface_receives_raw_ip_packets():
    router = _l3_router()
    sent = udp("203.0.113.5", "h1", ttl=10)
    out = only_frame(router.handle_frames("t", [raw(sent)], 1.0), "a")
    assert out.dst == MAC["h1"] and out.src == MAC["a"] and out[IP].ttl == 9
    ping = IP(src="203.0.113.5", dst=IPS["b"]) / ICMP(type=8, id=1, seq=2) / b"tun"
    out = transmits(router.handle_frames("t", [raw(ping)], 1.0))
    reply = IP(out["t"][0])
    assert reply[ICMP].type == 0 and reply[ICMP].load == b"tun" and reply.dst == "203.0.113.5"
    expired = udp("203.0.113.5", "h1", ttl=1)
    out = transmits(router.handle_frames("t", [raw(expired)], 1.0))
    error = IP(out["t"][0])
    assert error[ICMP].type == 11 and error.src == IPS["b"]


def test_l3_interface_checks_headers_and_fragments():
    router = _l3_router()
    actions = router.handle_frames("t", [raw(udp("203.0.113.5", "h1"))[:10]], 1.0)
    assert drops(actions) == [("t", R.IP_TRUNCATED)]
    big = IP(raw(udp("h1", "203.0.113.5", payload=b"b" * 2000)))
    pieces = [IP(p) for p in transmits(router.handle_frames("a", [to_router(big)], 1.0))["t"]]
    assert len(pieces) == 2 and all(p.len <= 1400 for p in pieces)
    assert raw(defragment(pieces)[0])[20:] == raw(big)[20:]


def test_l3_interface_has_no_neighbours():
    router = _l3_router()
    with pytest.raises(ValueError):
        router.add_neighbour("t", ip("203.0.113.5"), mac("x"))
    assert router.interfaces["t"].neighbours is None


def test_actions_name_router_interfaces():
    router = make_router()
    actions = router.handle_frames("a", [to_router(udp()), eth("h1", "x", udp())], 1.0)
    assert {a.port for a in actions} == {"a", "b"}
    assert type(actions[0]) is Transmit


def test_proxy_arp_does_not_answer_duplicate_address_probes_for_others():
    router = make_router(proxy_arp=True)
    probe = raw(Ether(src=MAC["h1"], dst=BCAST) / ARP(op=1, hwsrc=MAC["h1"], psrc="0.0.0.0", pdst=IPS["h2"]))
    assert router.handle_frames("a", [probe], 1.0) == []


def test_a_packet_claiming_a_router_address_as_source_is_martian():
    router = make_router()
    for source in (IPS["a"], IPS["b"]):
        actions = router.handle_frames("a", [to_router(IP(src=source, dst=IPS["h2"]) / ICMP())], 1.0)
        assert drops(actions) == [("a", DropReason.MARTIAN_SOURCE)]


def test_a_stale_neighbour_in_use_is_refreshed_by_unicast_after_a_delay():
    router = make_router(neighbours=False, reachable_time=30.0, delay_first_probe=5.0)
    # h2 answers a request: reachable until 31 s
    router.handle_frames("a", [to_router(IP(src=IPS["h1"], dst=IPS["h2"]) / ICMP())], 1.0)
    router.handle_frames("b", [arp_reply("h2", "b", dst="b")], 1.0)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    # in use after it went stale: sent at once, no request yet
    actions = router.handle_frames("a", [to_router(IP(src=IPS["h1"], dst=IPS["h2"]) / ICMP())], 40.0)
    assert [Ether(f)[IP].dst for f in transmits(actions)["b"]] == [IPS["h2"]]
    assert router.poll_at() == 45.0
    request = only_frame(router.handle_timer(45.0), "b")
    assert request[ARP].op == 1 and request[ARP].pdst == IPS["h2"]
    assert request.dst == MAC["h2"]   # unicast to the MAC we know, as Linux's PROBE
