"""TCP super-frames through the router and NAT: forwarded and translated once, whole, and cut only where they
must be; scapy checks what leaves and the segments it is cut into."""

import struct

import l3kit
import test_nat_router as natkit
from l3kit import REMOTE, drops, ip, mac, make_router, transmits
from scapy.all import ICMP, IP, TCP, Ether, IPerror, TCPerror, raw

from vswitch.core.actions import DropReason
from vswitch.core.wire.checksum import ones_complement_sum
from vswitch.core.wire.ipv4 import pseudo_header_sum
from vswitch.core.wire.offload import GSO_TCPV4, SuperFrame, segment, super_frame

GSO_SIZE = 1448
PAYLOAD = bytes(range(256)) * 40   # 10,240 bytes: seven full segments and a short one


def _partial_field(src: str, dst: str, tcp_length: int) -> int:
    """The folded pseudo-header sum a CHECKSUM_PARTIAL TCP field holds."""
    return ones_complement_sum(b"", pseudo_header_sum(ip(src), ip(dst), 6, tcp_length))


def _super(ether: Ether, src: str, dst: str, *, df: bool = True, ttl: int = 64, sport: int = 40000,
           dport: int = 443, payload: bytes = PAYLOAD) -> SuperFrame:
    """One TSO super-frame as a container's stack hands it over: the TCP field the pseudo-header sum only."""
    frame = bytearray(raw(ether / IP(src=src, dst=dst, ttl=ttl, flags="DF" if df else 0, id=7)
                          / TCP(sport=sport, dport=dport, seq=1000, ack=5, flags="PA",
                                options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload))
    tcp_length = len(frame) - 14 - 20
    struct.pack_into("!H", frame, 14 + 20 + 16, _partial_field(src, dst, tcp_length))
    return super_frame(bytes(frame), GSO_TCPV4, GSO_SIZE)


def _valid_ip(packet) -> bool:
    header = packet[IP].copy()
    del header.chksum
    return IP(raw(header))[IP].chksum == packet[IP].chksum


def _valid_segment(frame: bytes) -> Ether:
    """scapy's view of one segment, asserting both its checksums are right."""
    packet = Ether(frame)
    assert _valid_ip(packet)
    check = packet.copy()
    del check[TCP].chksum
    assert Ether(raw(check))[TCP].chksum == packet[TCP].chksum
    return packet


def _payload(segments: list[bytes]) -> bytes:
    return b"".join(bytes(Ether(s)[TCP].payload) for s in segments)


def test_a_routed_super_frame_leaves_whole_once_ttl_and_checksum_are_done():
    router = make_router()
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], REMOTE)
    out = transmits(router.handle_frames("a", [sent], 1.0))
    (frame,) = out["b"]
    assert type(frame) is SuperFrame and (frame.gso_type, frame.gso_size) == (GSO_TCPV4, GSO_SIZE)
    packet = Ether(frame)
    assert packet.dst == l3kit.MAC["gw"] and packet.src == l3kit.MAC["b"]
    assert packet[IP].ttl == 63 and _valid_ip(packet)
    assert packet[IP].len == len(sent) - 14   # one packet, not cut
    assert packet[TCP].chksum == _partial_field(l3kit.IPS["h1"], REMOTE, len(sent) - 34)   # left as it came
    segments = segment(frame)
    assert len(segments) == 8 and all(len(s) <= 14 + 1500 for s in segments)
    for piece in segments:
        assert _valid_segment(piece)[IP].ttl == 63
    assert _payload(segments) == PAYLOAD
    assert router.statistics().forwarded == 1


def test_a_super_frame_whose_segments_exceed_the_mtu_with_df_gets_fragmentation_needed():
    router = make_router(mtu_b=1200)
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], REMOTE)
    actions = router.handle_frames("a", [sent], 1.0)
    assert drops(actions) == [("a", DropReason.FRAGMENTATION_NEEDED)]
    (error,) = transmits(actions)["a"]
    packet = Ether(error)
    assert packet[ICMP].type == 3 and packet[ICMP].code == 4 and packet[ICMP].nexthopmtu == 1200
    # the error quotes the first segment the sender's stack would have sent, not a 10 KB packet
    assert packet[IPerror].len == 20 + 32 + GSO_SIZE and packet[TCPerror].seq == 1000


def test_a_super_frame_too_big_for_the_mtu_without_df_is_cut_to_the_mss_that_fits():
    router = make_router(mtu_b=1000)
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], REMOTE, df=False)
    actions = router.handle_frames("a", [sent], 1.0)
    assert drops(actions) == []
    segments = transmits(actions)["b"]
    assert all(type(s) is bytes for s in segments)
    assert [len(s) - 14 for s in segments] == [1000] * 10 + [20 + 32 + len(PAYLOAD) - 10 * (1000 - 52)]
    for piece in segments:
        packet = _valid_segment(piece)
        assert packet[IP].ttl == 63 and packet.dst == l3kit.MAC["gw"]
    assert _payload(segments) == PAYLOAD
    assert router.statistics().fragments_created == 0


def test_a_super_frame_held_for_arp_leaves_as_one_when_the_neighbour_answers():
    router = make_router(neighbours=False)
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], l3kit.IPS["h2"])
    assert "a" not in transmits(router.handle_frames("a", [sent], 1.0))   # held; an ARP request goes out on b
    reply = raw(Ether(src=l3kit.MAC["h2"], dst=l3kit.MAC["b"]) / l3kit.ARP(
        op=2, hwsrc=l3kit.MAC["h2"], psrc=l3kit.IPS["h2"], hwdst=l3kit.MAC["b"], pdst=l3kit.IPS["b"]))
    (frame,) = transmits(router.handle_frames("b", [reply], 1.1))["b"]
    assert type(frame) is SuperFrame and frame.gso_size == GSO_SIZE
    assert Ether(frame).dst == l3kit.MAC["h2"] and Ether(frame)[IP].ttl == 63
    assert _payload(segment(frame)) == PAYLOAD


def test_a_super_frame_with_its_ttl_run_out_gets_one_time_exceeded():
    router = make_router()
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], REMOTE, ttl=1)
    actions = router.handle_frames("a", [sent], 1.0)
    assert drops(actions) == [("a", DropReason.TTL_EXCEEDED)]
    (error,) = transmits(actions)["a"]
    assert Ether(error)[ICMP].type == 11 and Ether(error)[IPerror].len == 20 + 32 + GSO_SIZE


def test_a_super_frame_for_the_router_itself_is_answered_once():
    router = make_router()
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], l3kit.IPS["a"])
    actions = router.handle_frames("a", [sent], 1.0)
    (reset,) = transmits(actions)["a"]
    assert Ether(reset)[TCP].flags == "R" and Ether(reset)[TCP].seq == 5
    assert router.statistics().delivered == 1


# -- NAT --------------------------------------------------------------------------------


def test_a_masqueraded_super_frame_is_translated_once_and_cut_into_valid_segments():
    router = natkit.make_router()
    sent = _super(Ether(src=natkit.MAC[natkit.A], dst=natkit.MAC["lan"]), natkit.A, natkit.S)
    (frame,) = transmits(router.handle_frames("lan", [sent], 1.0))["wan"]
    assert type(frame) is SuperFrame and (frame.gso_type, frame.gso_size) == (GSO_TCPV4, GSO_SIZE)
    packet = Ether(frame)
    assert packet[IP].src == natkit.WAN_ADDR and packet[IP].dst == natkit.S and _valid_ip(packet)
    assert packet[IP].ttl == 63
    assert packet[TCP].chksum == _partial_field(natkit.WAN_ADDR, natkit.S, len(sent) - 34)
    port = packet[TCP].sport
    segments = segment(frame)
    for piece in segments:
        seg = _valid_segment(piece)
        assert (seg[IP].src, seg[TCP].sport, seg[IP].dst, seg[TCP].dport) == (natkit.WAN_ADDR, port, natkit.S, 443)
    assert _payload(segments) == PAYLOAD
    (conn,) = router.nat.connections()
    assert conn.packets == [1, 0] and conn.bytes[0] == len(sent) - 14   # one packet to conntrack
    assert router.nat.statistics().translated == 1

    # the answer, a super-frame too, goes back to the inside host's address and port
    back = _super(Ether(src=natkit.MAC[natkit.UPSTREAM], dst=natkit.MAC["wan"]), natkit.S, natkit.WAN_ADDR,
                  sport=443, dport=port)
    (frame,) = transmits(router.handle_frames("wan", [back], 2.0))["lan"]
    assert type(frame) is SuperFrame
    packet = Ether(frame)
    assert (packet[IP].dst, packet[TCP].dport) == (natkit.A, 40000) and _valid_ip(packet)
    assert packet[TCP].chksum == _partial_field(natkit.S, natkit.A, len(back) - 34)
    for piece in segment(frame):
        seg = _valid_segment(piece)
        assert (seg[IP].dst, seg[TCP].dport) == (natkit.A, 40000)
    assert conn.packets == [1, 1] and str(conn.state) == "ESTABLISHED"


def test_a_port_forwarded_super_frame_keeps_its_partial_field_right_for_the_new_address():
    router = natkit.make_router()
    sent = _super(Ether(src=natkit.MAC[natkit.UPSTREAM], dst=natkit.MAC["wan"]), natkit.X, natkit.WAN_ADDR,
                  dport=8080)
    (frame,) = transmits(router.handle_frames("wan", [sent], 1.0))["lan"]
    packet = Ether(frame)
    assert (packet[IP].dst, packet[TCP].dport) == (natkit.B, 80)
    assert packet[TCP].chksum == _partial_field(natkit.X, natkit.B, len(sent) - 34)
    for piece in segment(frame):
        _valid_segment(piece)


def test_a_super_frame_routed_to_an_l3_interface_leaves_whole_as_bare_ip_and_one_from_it_comes_in_whole():
    router = make_router()
    router.add_interface("tun", ip("10.9.0.1"), 24, mac=None)
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], "10.9.0.5")
    (packet,) = transmits(router.handle_frames("a", [sent], 1.0))["tun"]
    # whole, as bare IP: the overlay cuts it for its peers, the switch for a TUN without offloads
    assert type(packet) is SuperFrame and packet.gso_size == sent.gso_size and packet[0] == 0x45
    segments = [raw(Ether(src=l3kit.MAC["a"], dst=l3kit.MAC["h1"]) / IP(p)) for p in segment(packet, ip_at=0)]
    assert len(segments) == 8
    for piece in segments:
        assert _valid_segment(piece)[IP].ttl == 63
    assert _payload(segments) == PAYLOAD
    # and the way back: a bare super-frame from the L3 interface (the overlay's joined segments) leaves whole
    back = super_frame(raw(IP(src="10.9.0.5", dst=l3kit.IPS["h1"], ttl=64, flags="DF")
                           / TCP(sport=5201, dport=40000, flags="A") / PAYLOAD), GSO_TCPV4, 1448)
    router.handle_frames("a", [raw(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]) / IP(src=l3kit.IPS["h1"], dst="10.9.0.5")
                                   / b"warm the neighbour")], 1.0)
    (frame,) = transmits(router.handle_frames("tun", [back], 1.0))["a"]
    assert type(frame) is SuperFrame and Ether(frame)[IP].ttl == 63 and Ether(frame).dst == l3kit.MAC["h1"]
    assert _payload(segment(frame)) == PAYLOAD


def test_a_super_frame_held_for_a_neighbour_that_never_answers_gets_one_host_unreachable():
    router = make_router(neighbours=False, retrans_time=1.0, max_probes=1)
    router.add_neighbour("a", ip("h1"), mac("h1"))
    sent = _super(Ether(src=l3kit.MAC["h1"], dst=l3kit.MAC["a"]), l3kit.IPS["h1"], l3kit.IPS["h2"])
    router.handle_frames("a", [sent], 1.0)
    actions = router.handle_timer(5.0)
    assert drops(actions) == [("b", DropReason.NEIGHBOUR_UNREACHABLE)]
    (error,) = transmits(actions)["a"]
    assert Ether(error)[ICMP].type == 3 and Ether(error)[ICMP].code == 1
    assert Ether(error)[IPerror].len == 20 + 32 + GSO_SIZE
