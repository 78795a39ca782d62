"""The one ICMP error policy of the router and the overlay: RFC 1812's rules, Linux's rate limits, the error."""

import pytest
from scapy.all import ICMP, IP, TCP, UDP, IPerror, UDPerror, raw

from vswitch.core.l3.icmp import (
    ICMP_BURST,
    ICMP_PEER_BURST,
    ErrorPolicy,
    error_name,
    error_packet,
    may_report,
)
from vswitch.core.wire import icmp
from vswitch.core.wire.addr import ip_from_str

NET_UNREACHABLE = (icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE)
FRAG_NEEDED = (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED)


def udp(src="10.0.0.2", dst="198.51.100.7", **kw) -> bytes:
    return raw(IP(src=src, dst=dst, **kw) / UDP(sport=4000, dport=53) / b"query")


@pytest.mark.parametrize("packet", [
    udp(),
    udp(flags="MF"),                                                   # the first fragment
    raw(IP(src="10.0.0.2", dst="198.51.100.7") / ICMP(type=8)),          # a query
    raw(IP(src="10.0.0.2", dst="198.51.100.7") / TCP(flags="S")),
], ids=["udp", "first-fragment", "echo-request", "tcp"])
def test_errors_may_be_sent_about(packet):
    assert may_report(packet)


@pytest.mark.parametrize("packet", [
    udp(frag=2),                                                       # a later fragment
    udp(src="224.0.0.5"), udp(src="255.255.255.255"), udp(src="0.0.0.0"),
    udp(dst="239.1.2.3"), udp(dst="255.255.255.255"),
    raw(IP(src="10.0.0.2", dst="198.51.100.7") / ICMP(type=3, code=1) / IPerror() / UDPerror()),
    raw(IP(src="10.0.0.2", dst="198.51.100.7") / ICMP(type=11) / IPerror() / UDPerror()),
], ids=["later-fragment", "multicast-source", "broadcast-source", "no-source", "to-multicast", "to-broadcast",
        "about-unreachable", "about-time-exceeded"])
def test_errors_are_never_sent_about(packet):
    assert not may_report(packet)
    assert not ErrorPolicy(per_destination=False).permits(packet, *NET_UNREACHABLE, 0.0)


def test_one_destination_gets_a_burst_of_six_then_one_a_second():
    policy = ErrorPolicy(per_destination=True)
    sent = [policy.permits(udp(), *NET_UNREACHABLE, 5.0) for _ in range(10)]
    assert sum(sent) == ICMP_PEER_BURST == 6
    assert policy.permits(udp(src="10.0.0.3"), *NET_UNREACHABLE, 5.0)   # another destination has its own
    assert policy.rate_limited == 4
    assert policy.permits(udp(), *NET_UNREACHABLE, 6.0)                 # one a second after that


def test_without_a_per_destination_limit_only_the_global_burst_counts():
    policy = ErrorPolicy(per_destination=False)
    sent = [policy.permits(udp(), *NET_UNREACHABLE, 5.0) for _ in range(60)]
    assert sum(sent) == ICMP_BURST == 50
    assert policy.rate_limited == 10


@pytest.mark.parametrize("per_destination", [True, False])
def test_fragmentation_needed_is_never_limited(per_destination):
    policy = ErrorPolicy(per_destination=per_destination)
    assert all(policy.permits(udp(), *FRAG_NEEDED, 5.0) for _ in range(100))
    assert policy.rate_limited == 0


def test_the_error_quotes_the_header_and_eight_bytes_and_goes_to_the_sender():
    offending = udp(ttl=1, tos=0x10)
    error = IP(error_packet(ip_from_str("192.0.2.1"), offending, *FRAG_NEEDED, mtu=1400, ident=7))
    assert (error.src, error.dst, error.ttl, error.id, error.flags) == ("192.0.2.1", "10.0.0.2", 64, 7, 0)
    assert (error[ICMP].type, error[ICMP].code, error[ICMP].nexthopmtu) == (3, 4, 1400)
    assert raw(error[ICMP].payload) == offending[:28]
    assert error_name(*FRAG_NEEDED) == "fragmentation-needed" and error_name(5, 1) == "icmp-5-1"
