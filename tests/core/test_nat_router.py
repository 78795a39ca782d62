"""NAT inside the router: Ethernet frames in, actions out, scapy checks the frames that leave.

The router translates before it routes and passes its own ICMP errors
through NAT, so these check the order of things: TTL, MTU, fragmentation and
errors about translated packets.
"""

import random

from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    Ether,
    checksum,
    defragment,
    fragment,
    in4_chksum,
    raw,
)

from vswitch.core.actions import Drop, DropReason, Transmit
from vswitch.core.l3.router import Router
from vswitch.core.nat import TCP as PROTO_TCP
from vswitch.core.nat import UDP as PROTO_UDP
from vswitch.core.nat import Forward, Masquerade, Nat
from vswitch.core.wire.addr import Network, ip_from_str, mac_from_str

LAN_ADDR, A, B = "10.0.0.1", "10.0.0.2", "10.0.0.3"
WAN_ADDR, UPSTREAM = "192.0.2.1", "192.0.2.254"
S, X = "198.51.100.7", "203.0.113.9"
MAC = {
    "lan": "02:00:00:00:01:01", "wan": "02:00:00:00:02:01",
    A: "02:00:00:00:00:0a", B: "02:00:00:00:00:0b", UPSTREAM: "02:00:00:00:00:fe",
}
WEB = Forward(PROTO_TCP, 8080, ip_from_str(B), 80)


def make_router(*, wan_mtu: int = 1500) -> Router:
    router = Router()
    router.add_interface("lan", ip_from_str(LAN_ADDR), 24, mac=mac_from_str(MAC["lan"]))
    router.add_interface("wan", ip_from_str(WAN_ADDR), 24, mac=mac_from_str(MAC["wan"]), mtu=wan_mtu)
    router.add_route(Network.parse("0.0.0.0/0"), via=ip_from_str(UPSTREAM))
    for iface, host in (("lan", A), ("lan", B), ("wan", UPSTREAM)):
        router.add_neighbour(iface, ip_from_str(host), mac_from_str(MAC[host]))
    router.nat = Nat(
        router, masquerade=(Masquerade(Network.parse("10.0.0.0/24"), "wan"),), forwards=(WEB,), rng=random.Random(5),
    )
    router.handle_timer(0.0)   # the gratuitous ARPs owed since the interfaces were added
    return router


def from_lan(host: str, packet) -> tuple[str, list[bytes]]:
    return "lan", [raw(Ether(src=MAC[host], dst=MAC["lan"]) / packet)]


def from_wan(packet) -> tuple[str, list[bytes]]:
    return "wan", [raw(Ether(src=MAC[UPSTREAM], dst=MAC["wan"]) / packet)]


def handle(router: Router, arriving: tuple[str, list[bytes]], now: float) -> tuple[dict[str, list[bytes]], list[Drop]]:
    actions = router.handle_frames(*arriving, now)
    sent = {a.port: a.frames for a in actions if isinstance(a, Transmit)}
    return sent, [a for a in actions if isinstance(a, Drop)]


def checked(frame: bytes, *, to: str, iface: str) -> IP:
    """The frame leaves ``iface`` for ``to``'s MAC; every checksum in it holds (scapy's arithmetic)."""
    eth = Ether(frame)
    assert (eth.src, eth.dst, eth.type) == (MAC[iface], MAC[to], 0x0800)
    packet = frame[14:]
    pkt = IP(packet)
    ihl = pkt.ihl * 4
    assert pkt.len == len(packet) and checksum(packet[:ihl]) == 0
    if pkt.flags.MF or pkt.frag:
        return pkt
    body = packet[ihl:]
    if pkt.proto == PROTO_TCP or (pkt.proto == PROTO_UDP and body[6:8] != b"\0\0"):
        assert in4_chksum(pkt.proto, pkt, body) == 0
    if pkt.proto == 1:
        assert checksum(body) == 0
        if pkt[ICMP].type in (3, 11):
            assert checksum(body[8:8 + (body[8] & 0x0F) * 4]) == 0
    return pkt


def one(sent: dict[str, list[bytes]], iface: str) -> bytes:
    assert list(sent) == [iface]
    (frame,) = sent[iface]
    return frame


def test_masquerade_through_the_router():
    router = make_router()
    sent, drops = handle(router, from_lan(A, IP(src=A, dst=S, ttl=64) / TCP(sport=40000, dport=443, flags="S")), 1.0)
    out = checked(one(sent, "wan"), to=UPSTREAM, iface="wan")
    assert (out.src, out[TCP].sport, out.dst, out.ttl) == (WAN_ADDR, 40000, S, 63) and drops == []
    sent, _ = handle(router, from_wan(IP(src=S, dst=WAN_ADDR, ttl=50) / TCP(sport=443, dport=40000, flags="SA")), 2.0)
    back = checked(one(sent, "lan"), to=A, iface="lan")
    assert (back.src, back.dst, back[TCP].dport, back.ttl) == (S, A, 40000, 49)
    assert router.statistics().forwarded == 2 and router.nat.statistics().translated == 2


def test_fragmentation_needed_reaches_the_inside_sender_quoting_its_own_header():
    router = make_router(wan_mtu=1280)
    handle(router, from_lan(B, IP(src=B, dst=S) / UDP(sport=5000, dport=53)), 0.5)   # A will need another port
    big = raw(IP(src=A, dst=S, flags="DF") / UDP(sport=5000, dport=53) / (b"q" * 1400))
    sent, drops = handle(router, from_lan(A, IP(big)), 1.0)
    error = checked(one(sent, "lan"), to=A, iface="lan")
    assert (error.src, error.dst, error[ICMP].type, error[ICMP].code, error[ICMP].nexthopmtu) == (LAN_ADDR, A, 3, 4, 1280)
    assert error.original[28:] == big[:28]     # the quote: A's own header and ports
    assert [d.reason for d in drops] == [DropReason.FRAGMENTATION_NEEDED]


def test_time_exceeded_for_an_answer_reaches_the_outside_sender():
    router = make_router()
    handle(router, from_lan(A, IP(src=A, dst=S) / UDP(sport=5000, dport=53)), 1.0)
    answer = raw(IP(src=S, dst=WAN_ADDR, ttl=1) / UDP(sport=53, dport=5000) / b"late")
    sent, drops = handle(router, from_wan(IP(answer)), 2.0)
    error = checked(one(sent, "wan"), to=UPSTREAM, iface="wan")
    assert (error.src, error.dst, error[ICMP].type) == (WAN_ADDR, S, 11)
    assert error.original[28:] == answer[:28]   # what S sent, not A's address
    assert [d.reason for d in drops] == [DropReason.TTL_EXCEEDED]


def test_translated_datagrams_are_fragmented_and_answers_reassemble():
    router = make_router(wan_mtu=576)
    handle(router, from_lan(B, IP(src=B, dst=S) / UDP(sport=5000, dport=9)), 0.5)
    datagram = IP(src=A, dst=S, id=4242) / UDP(sport=5000, dport=9) / (bytes(range(200)) * 7)
    sent, _ = handle(router, from_lan(A, datagram), 1.0)
    pieces = [checked(f, to=UPSTREAM, iface="wan") for f in sent["wan"]]
    assert len(pieces) == 3 and all(p.src == WAN_ADDR and len(p) <= 576 for p in pieces)
    (whole,) = defragment(pieces)
    whole = IP(raw(whole))
    assert in4_chksum(PROTO_UDP, whole, raw(whole)[20:]) == 0
    port = whole[UDP].sport
    assert port != 5000 and raw(whole)[28:] == bytes(range(200)) * 7

    answer = IP(src=S, dst=WAN_ADDR, id=77) / UDP(sport=9, dport=port) / (b"a" * 3000)
    frames = [raw(Ether(src=MAC[UPSTREAM], dst=MAC["wan"]) / f) for f in fragment(answer, fragsize=1000)]
    sent, drops = handle(router, ("wan", frames), 2.0)
    pieces = [checked(f, to=A, iface="lan") for f in sent["lan"]]
    assert len(pieces) == 4 and drops == []
    (whole,) = defragment(pieces)
    whole = IP(raw(whole))
    assert (whole.dst, whole[UDP].dport, raw(whole)[28:]) == (A, 5000, b"a" * 3000)
    assert in4_chksum(PROTO_UDP, whole, raw(whole)[20:]) == 0


def test_port_forward_and_its_hairpin():
    router = make_router()
    sent, _ = handle(router, from_wan(IP(src=X, dst=WAN_ADDR) / TCP(sport=33000, dport=8080, flags="S")), 1.0)
    there = checked(one(sent, "lan"), to=B, iface="lan")
    assert (there.src, there.dst, there[TCP].dport) == (X, B, 80)
    sent, _ = handle(router, from_lan(B, IP(src=B, dst=X) / TCP(sport=80, dport=33000, flags="SA")), 1.5)
    back = checked(one(sent, "wan"), to=UPSTREAM, iface="wan")
    assert (back.src, back[TCP].sport, back.dst) == (WAN_ADDR, 8080, X)
    # from inside, through the public address: B must answer through the router
    sent, _ = handle(router, from_lan(A, IP(src=A, dst=WAN_ADDR) / TCP(sport=34000, dport=8080, flags="S")), 2.0)
    there = checked(one(sent, "lan"), to=B, iface="lan")
    assert (there.src, there[TCP].sport, there.dst, there[TCP].dport) == (LAN_ADDR, 34000, B, 80)
    sent, _ = handle(router, from_lan(B, IP(src=B, dst=LAN_ADDR) / TCP(sport=80, dport=34000, flags="SA")), 2.5)
    back = checked(one(sent, "lan"), to=A, iface="lan")
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (WAN_ADDR, 8080, A, 34000)


def test_hairpin_to_a_mapping_through_the_router():
    router = make_router()
    handle(router, from_lan(A, IP(src=A, dst=S) / UDP(sport=5000, dport=53)), 1.0)
    sent, _ = handle(router, from_lan(B, IP(src=B, dst=WAN_ADDR) / UDP(sport=6000, dport=5000) / b"hi"), 2.0)
    there = checked(one(sent, "lan"), to=A, iface="lan")
    assert (there.src, there[UDP].sport, there.dst, there[UDP].dport) == (WAN_ADDR, 6000, A, 5000)


def test_a_stranger_to_a_mapped_port_is_refused_by_the_router():
    router = make_router()
    handle(router, from_lan(A, IP(src=A, dst=S) / UDP(sport=5000, dport=53)), 1.0)
    sent, drops = handle(router, from_wan(IP(src=X, dst=WAN_ADDR) / UDP(sport=53, dport=5000) / b"hello"), 2.0)
    error = checked(one(sent, "wan"), to=UPSTREAM, iface="wan")   # nothing reaches the inside
    assert (error.src, error.dst, error[ICMP].type, error[ICMP].code) == (WAN_ADDR, X, 3, 3)
    assert [d.reason for d in drops] == [DropReason.PORT_UNREACHABLE]


def test_unsupported_protocol_is_dropped_and_counted():
    router = make_router()
    sent, drops = handle(router, from_lan(A, IP(src=A, dst=S, proto=47) / b"\0\0\x08\0gre"), 1.0)
    assert sent == {} and [d.reason for d in drops] == [DropReason.NAT_UNSUPPORTED]
    assert router.drop_counts()[DropReason.NAT_UNSUPPORTED] == 1


def test_router_timer_expires_nat_connections():
    router = make_router()
    handle(router, from_lan(A, IP(src=A, dst=S) / UDP(sport=5000, dport=53)), 1.0)
    assert router.poll_at() == 31.0
    router.handle_timer(30.9)
    assert len(router.nat) == 1
    router.handle_timer(31.0)
    assert len(router.nat) == 0 and router.poll_at() is None
    sent, drops = handle(router, from_wan(IP(src=S, dst=WAN_ADDR) / UDP(sport=53, dport=5000)), 32.0)
    assert "lan" not in sent and [d.reason for d in drops] == [DropReason.PORT_UNREACHABLE]
