"""A capture of the underlay shows each datagram as the UDP frame it is on the wire, decoded by scapy."""

from scapy.all import ICMP, IP, UDP, VXLAN, Ether, raw

from vswitch.overlay.core.codec import address_header, capture_frame

LOCAL = bytes([10, 99, 0, 1])
PEER = bytes([10, 99, 0, 2])


def test_an_arriving_datagram_goes_from_the_peer_to_us():
    inner = raw(IP(src="10.244.2.2", dst="10.244.1.2") / ICMP())
    frame = Ether(capture_frame(address_header(PEER, 8285, 8285) + inner, LOCAL, 8285))
    assert (frame[IP].src, frame[IP].dst, frame[UDP].sport, frame[UDP].dport) == ("10.99.0.2", "10.99.0.1", 8285, 8285)
    assert bytes(frame[UDP].payload) == inner and frame[UDP].len == 8 + len(inner)
    check = frame[IP].copy()
    del check.chksum
    assert IP(raw(check)).chksum == frame[IP].chksum


def test_a_leaving_datagram_goes_from_us_from_its_own_source_port_or_the_bound_one():
    payload = raw(VXLAN(vni=1) / Ether() / IP())
    hashed = Ether(capture_frame(address_header(PEER, 8472, 40001) + payload, LOCAL, 8472))
    assert (hashed[IP].src, hashed[IP].dst, hashed[UDP].sport, hashed[UDP].dport) == ("10.99.0.1", "10.99.0.2", 40001, 8472)
    bound = Ether(capture_frame(address_header(PEER, 8472, 0) + payload, LOCAL, 8472))
    assert (bound[UDP].sport, bound[UDP].dport) == (8472, 8472)
    assert Ether(raw(bound))[VXLAN].vni == 1   # 8472 is not scapy's VXLAN port: the bytes are the same anyway


def test_a_datagram_longer_than_udp_carries_is_cut_to_fit():
    # The fuzzer's reproducer (issue 10): a 65,531-byte payload made build_ipv4 raise ValueError (and from
    # 65,528 bytes on, the UDP length field overflowed: struct.error); the socket would refuse it (EMSGSIZE).
    for size in (65507, 65508, 65531, 65600):
        frame = capture_frame(address_header(PEER, 8472, 50000) + bytes(size), LOCAL, 8472)
        parsed = Ether(frame)
        assert parsed[IP].len == len(frame) - 14 == 20 + 8 + min(size, 65507)
        assert parsed[UDP].len == 8 + min(size, 65507)
