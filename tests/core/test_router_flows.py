"""The router's per-flow fast path: a flow's later packets leave exactly as the slow path would send them, and
every change the decision rests on takes effect at once (routes, interfaces, neighbours, connections, port
forwards). Each test warms the flow with two packets first (the first decides, the second takes the fast path)."""

import random

import l3kit
import pytest
import test_nat_router as natkit
from l3kit import REMOTE, drops, ip, mac, make_router, net, transmits
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, raw

from vswitch.core.actions import DropReason
from vswitch.core.nat import TCP as PROTO_TCP
from vswitch.core.nat import Forward, Nat
from vswitch.core.wire.addr import ip_from_str


def _to(dst: str, *, sport: int = 1234, ttl: int = 64, payload: bytes = b"data") -> bytes:
    return l3kit.to_router(IP(src=l3kit.IPS["h1"], dst=dst, ttl=ttl) / UDP(sport=sport, dport=53) / payload)


def _send(router, frame: bytes, now: float, iface: str = "a") -> dict[str, list[bytes]]:
    return transmits(router.handle_frames(iface, [frame], now))


def _warm(router, frame: bytes, now: float, iface: str = "a") -> dict[str, list[bytes]]:
    first = _send(router, frame, now, iface)
    assert _send(router, frame, now + 0.01, iface) == first   # the fast path sends what the slow path sent
    return first


def _arp_reply(host: str, hw: str, iface: str) -> bytes:
    return raw(Ether(src=hw, dst=l3kit.MAC[iface]) / ARP(
        op=2, hwsrc=hw, psrc=l3kit.IPS[host], hwdst=l3kit.MAC[iface], pdst=l3kit.IPS[iface]))


@pytest.mark.parametrize("packet", [
    IP(src="198.51.100.10", dst="192.0.2.7", ttl=9) / UDP(sport=1, dport=2) / b"x",
    IP(src="198.51.100.10", dst="192.0.2.7", flags="DF") / TCP(sport=1, dport=2, flags="A") / (b"y" * 1000),
    IP(src="198.51.100.10", dst="192.0.2.7", id=0xFFFF, ttl=2) / ICMP() / b"z",
    IP(src="198.51.100.10", dst="203.0.113.20", tos=0xFF) / UDP(sport=9, dport=9, chksum=0),
])
def test_later_packets_of_a_flow_leave_as_the_first_did_with_a_valid_header(packet):
    router = make_router()
    (frame,) = next(iter(_warm(router, l3kit.to_router(packet), 1.0).values()))
    out = Ether(frame)
    assert out[IP].ttl == packet.ttl - 1 and natkit.checksum(raw(out[IP])[:20]) == 0
    assert router.statistics().forwarded == 2


def test_padding_is_left_behind_on_the_fast_path():
    router = make_router()
    frame = _to(REMOTE, payload=b"")
    padded = frame + bytes(60 - len(frame))
    assert _warm(router, padded, 1.0) == _send(router, frame, 1.1)


def test_a_bad_header_checksum_is_dropped_on_a_warm_flow():
    router = make_router()
    frame = _to(REMOTE)
    _warm(router, frame, 1.0)
    broken = bytearray(frame)
    broken[14 + 10] ^= 0x01
    assert drops(router.handle_frames("a", [bytes(broken)], 1.1)) == [("a", DropReason.IP_CHECKSUM)]


def test_ttl_one_on_a_warm_flow_is_still_time_exceeded():
    router = make_router()
    _warm(router, _to(REMOTE), 1.0)
    assert drops(router.handle_frames("a", [_to(REMOTE, ttl=1)], 1.1)) == [("a", DropReason.TTL_EXCEEDED)]


def test_a_martian_source_on_a_warm_destination_is_dropped():
    router = make_router()
    _warm(router, _to(REMOTE), 1.0)
    spoofed = l3kit.to_router(IP(src=l3kit.IPS["b"], dst=REMOTE) / UDP(sport=1, dport=53))
    assert drops(router.handle_frames("a", [spoofed], 1.1)) == [("a", DropReason.MARTIAN_SOURCE)]


def test_a_route_added_takes_over_a_warm_flow_at_once():
    router = make_router()
    assert Ether(_warm(router, _to(REMOTE), 1.0)["b"][0]).dst == l3kit.MAC["gw"]
    router.add_route(net("192.0.2.0/25"), via=ip("h2"))
    assert Ether(_send(router, _to(REMOTE), 1.1)["b"][0]).dst == l3kit.MAC["h2"]


def test_a_route_removed_stops_a_warm_flow():
    router = make_router()
    _warm(router, _to(REMOTE), 1.0)
    router.routes.remove(net("192.0.2.0/24"))
    assert drops(router.handle_frames("a", [_to(REMOTE)], 1.1)) == [("a", DropReason.NO_ROUTE)]


def test_an_interface_going_down_stops_a_warm_flow():
    router = make_router()
    _warm(router, _to(REMOTE), 1.0)
    router.set_interface_up("b", False)
    assert drops(router.handle_frames("a", [_to(REMOTE)], 1.1)) == [("a", DropReason.NO_ROUTE)]


def test_a_static_neighbour_changed_takes_effect_on_a_warm_flow():
    router = make_router()
    _warm(router, _to(REMOTE), 1.0)
    router.add_neighbour("b", ip("gw"), mac("x"))
    assert Ether(_send(router, _to(REMOTE), 1.1)["b"][0]).dst == l3kit.MAC["x"]


def test_a_neighbour_that_moves_to_another_mac_takes_the_flow_with_it():
    router = make_router(neighbours=False)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    _send(router, _to(l3kit.IPS["h2"]), 1.0)   # held while ARP asks
    (released,) = _send(router, _arp_reply("h2", l3kit.MAC["h2"], "b"), 1.0, "b")["b"]
    assert Ether(released).dst == l3kit.MAC["h2"]
    _warm(router, _to(l3kit.IPS["h2"]), 1.1)
    _send(router, _arp_reply("h2", l3kit.MAC["x"], "b"), 1.2, "b")
    assert Ether(_send(router, _to(l3kit.IPS["h2"]), 1.3)["b"][0]).dst == l3kit.MAC["x"]


def test_a_neighbour_gone_stale_is_probed_even_while_its_flow_is_warm():
    router = make_router(neighbours=False, reachable_time=5.0, delay_first_probe=1.0)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    _send(router, _to(l3kit.IPS["h2"]), 1.0)
    _send(router, _arp_reply("h2", l3kit.MAC["h2"], "b"), 1.0, "b")   # REACHABLE until 6.0
    for step in range(60):   # a packet every 0.1 s, on past the neighbour's reachable time
        assert _send(router, _to(l3kit.IPS["h2"]), 1.1 + step / 10)["b"]
    # it went STALE at 6.0 while in use: asked again by unicast after the delay
    probes = [f for f in _send_timer(router, 7.5).get("b", []) if Ether(f).type == 0x0806]
    assert probes and Ether(probes[0]).dst == l3kit.MAC["h2"]


def _send_timer(router, now: float) -> dict[str, list[bytes]]:
    return transmits(router.handle_timer(now))


def test_a_neighbour_forgotten_when_unused_is_asked_for_again():
    router = make_router(neighbours=False, reachable_time=5.0, gc_stale_time=10.0)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    _send(router, _to(l3kit.IPS["h2"]), 1.0)
    _send(router, _arp_reply("h2", l3kit.MAC["h2"], "b"), 1.0, "b")
    _warm(router, _to(l3kit.IPS["h2"]), 1.1)
    router.handle_timer(30.0)   # unused since 1.1: collected
    (request,) = _send(router, _to(l3kit.IPS["h2"]), 30.1)["b"]
    assert Ether(request)[ARP].op == 1 and Ether(request).dst == l3kit.BCAST


# -- NAT --------------------------------------------------------------------------------


def _udp_from_a(now: float, router, sport: int = 5000) -> bytes:
    sent, _ = natkit.handle(router, natkit.from_lan(natkit.A, IP(src=natkit.A, dst=natkit.S) / UDP(sport=sport, dport=53)),
                            now)
    return natkit.one(sent, "wan")


def test_translated_later_packets_leave_as_the_first_did_both_ways():
    router = natkit.make_router()
    first = _udp_from_a(1.0, router)
    assert _udp_from_a(1.1, router) == first
    port = Ether(first)[UDP].sport
    answer = natkit.from_wan(IP(src=natkit.S, dst=natkit.WAN_ADDR) / UDP(sport=53, dport=port) / b"answer")
    back = natkit.handle(router, answer, 1.2)[0]
    assert natkit.handle(router, answer, 1.3)[0] == back
    natkit.checked(natkit.one(back, "lan"), to=natkit.A, iface="lan")
    (conn,) = router.nat.connections()
    assert conn.packets == [2, 2] and str(conn.state) == "REPLIED"
    assert router.nat.statistics().translated == 4


def test_a_tcp_flow_on_the_fast_path_still_moves_through_its_states():
    router = natkit.make_router()
    lan = lambda flags: natkit.from_lan(natkit.A, IP(src=natkit.A, dst=natkit.S) / TCP(sport=40000, dport=443, flags=flags))  # noqa: E731
    sent, _ = natkit.handle(router, lan("S"), 1.0)
    port = Ether(natkit.one(sent, "wan"))[TCP].sport
    wan = lambda flags: natkit.from_wan(IP(src=natkit.S, dst=natkit.WAN_ADDR) / TCP(sport=443, dport=port, flags=flags))  # noqa: E731
    natkit.handle(router, wan("SA"), 1.1)
    for when, flags in ((1.2, "A"), (1.3, "A"), (1.4, "PA")):
        natkit.handle(router, lan(flags), when)
    (conn,) = router.nat.connections()
    assert str(conn.state) == "ESTABLISHED"
    natkit.handle(router, lan("FA"), 1.5)
    natkit.handle(router, wan("FA"), 1.6)
    assert str(conn.state) == "LAST_ACK"
    natkit.handle(router, lan("A"), 1.7)
    assert str(conn.state) == "TIME_WAIT"


def test_an_expired_connection_is_not_translated_from_the_fast_path():
    router = natkit.make_router()
    _udp_from_a(1.0, router)
    _udp_from_a(1.1, router)
    timeout = router.nat.timeouts.udp_unreplied
    _udp_from_a(1.1 + timeout + 1, router)   # the old one is past its time: a new connection
    stats = router.nat.statistics()
    assert (stats.created, stats.expired) == (2, 1)


def test_a_connection_removed_by_the_timer_is_not_translated_from_the_fast_path():
    router = natkit.make_router()
    _udp_from_a(1.0, router)
    _udp_from_a(1.1, router)
    router.handle_timer(1.1 + router.nat.timeouts.udp_unreplied + 1)
    assert len(router.nat) == 0
    _udp_from_a(100.0, router)
    assert router.nat.statistics().created == 2 and len(router.nat) == 1


def test_port_forwards_added_and_removed_with_warm_flows():
    router = natkit.make_router()
    web = lambda sport: natkit.from_wan(IP(src=natkit.X, dst=natkit.WAN_ADDR) / TCP(sport=sport, dport=8080, flags="A"))  # noqa: E731
    sent, _ = natkit.handle(router, web(1000), 1.0)
    sent, _ = natkit.handle(router, web(1000), 1.1)
    assert Ether(natkit.one(sent, "lan"))[IP].dst == natkit.B
    router.nat.remove_forwards(protocol=PROTO_TCP, port=8080)
    sent, _ = natkit.handle(router, web(1000), 1.2)   # the forwarded connection lives on
    assert Ether(natkit.one(sent, "lan"))[IP].dst == natkit.B
    sent, _ = natkit.handle(router, web(1001), 1.3)   # a new one is not forwarded: the router resets it
    assert Ether(natkit.one(sent, "wan"))[TCP].flags == "R"
    router.nat.add_forward(Forward(PROTO_TCP, 8080, ip_from_str(natkit.A), 80))
    sent, _ = natkit.handle(router, web(1002), 1.4)
    assert Ether(natkit.one(sent, "lan"))[IP].dst == natkit.A
    sent, _ = natkit.handle(router, web(1000), 1.5)   # and the old one still goes where it went
    assert Ether(natkit.one(sent, "lan"))[IP].dst == natkit.B


def test_a_route_change_redirects_a_translated_warm_flow():
    router = natkit.make_router()
    _udp_from_a(1.0, router)
    _udp_from_a(1.1, router)
    router.add_neighbour("wan", ip_from_str("192.0.2.253"), mac("x"))
    router.add_route(net(f"{natkit.S}/32"), via=ip_from_str("192.0.2.253"))
    assert Ether(_udp_from_a(1.2, router)).dst == l3kit.MAC["x"]


def test_a_connection_dropped_early_is_not_translated_from_the_fast_path():
    router = natkit.make_router()
    router.nat = Nat(router, masquerade=router.nat.masquerade, max_connections=1, rng=random.Random(5))
    _udp_from_a(1.0, router)
    _udp_from_a(1.1, router)
    sent, _ = natkit.handle(router, natkit.from_lan(natkit.B, IP(src=natkit.B, dst=natkit.S) / UDP(sport=7, dport=53)),
                            1.2)   # the table is full: A's unanswered connection is dropped for B's
    assert router.nat.statistics().early_dropped == 1
    _udp_from_a(1.3, router)      # A's next packet is a new connection again (B's goes in its turn)
    assert router.nat.statistics().created == 3
