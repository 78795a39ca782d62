"""`vswitch trace`'s pure parts: the flow spec, the packet and frame it makes (scapy reads them), the summaries,
and a trace through a copy of a datapath that leaves the original as it was."""

import copy

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from vswitch.core.datapath import Datapath, OnBridge
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l3.router import Router
from vswitch.core.trace import (
    Flow,
    build_frame,
    build_packet,
    describe,
    frame_summary,
    parse_flow,
)
from vswitch.core.wire.addr import ip_from_str
from vswitch.overlay.core.trace import UNKNOWN_HOST_MAC, trace

A, B = ip_from_str("10.244.1.2"), ip_from_str("10.244.2.3")
MAC_A, MAC_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")


@pytest.mark.parametrize(("spec", "flow"), [
    ("tcp 10.244.1.2:40000 > 10.244.2.3:80", Flow(6, A, B, 40000, 80)),
    ("  UDP 10.244.1.2:1>10.244.2.3:65535 ", Flow(17, A, B, 1, 65535)),
    ("icmp 10.244.1.2 > 10.244.2.3", Flow(1, A, B)),
])
def test_flow_specs_parse(spec, flow):
    assert parse_flow(spec) == flow
    assert parse_flow(str(flow)) == flow


@pytest.mark.parametrize(("spec", "message"), [
    ("", "expected 'tcp"),
    ("tcp 10.0.0.1:1 10.0.0.2:2", "expected 'tcp"),
    ("sctp 10.0.0.1:1 > 10.0.0.2:2", "protocol 'sctp' is not one of tcp, udp, icmp"),
    ("tcp 10.0.0.1 > 10.0.0.2:2", "tcp needs ADDRESS:PORT, not '10.0.0.1'"),
    ("udp 10.0.0.1:0 > 10.0.0.2:2", "port '0' is not a number from 1 to 65535"),
    ("udp 10.0.0.1:x > 10.0.0.2:2", "port 'x' is not a number"),
    ("udp 10.0.0.300:1 > 10.0.0.2:2", "'10.0.0.300' is not an IPv4 address"),
    ("icmp 10.0.0.1:5 > 10.0.0.2", "icmp has no ports"),
    ("tcp " + "1" * 300, "too long"),
])
def test_bad_flow_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_flow(spec)


def test_scapy_reads_the_packets_as_the_flows_say():
    tcp = IP(build_packet(Flow(6, A, B, 40000, 80)))
    assert (tcp.src, tcp.dst, tcp.ttl, tcp[TCP].sport, tcp[TCP].dport, str(tcp[TCP].flags)) == (
        "10.244.1.2", "10.244.2.3", 64, 40000, 80, "S")
    udp = IP(build_packet(Flow(17, A, B, 5000, 53)))
    assert (udp[UDP].sport, udp[UDP].dport, udp[UDP].len) == (5000, 53, 8)
    echo = IP(build_packet(Flow(1, A, B)))
    assert (echo[ICMP].type, echo[ICMP].code) == (8, 0)
    for packet in (tcp, udp, echo):   # scapy, computing every checksum itself, makes the same bytes
        ours = bytes(packet)
        del packet.chksum, packet.payload.chksum
        assert bytes(packet) == ours
    frame = Ether(build_frame(Flow(6, A, B, 1, 2), MAC_A, MAC_B))
    assert (frame.src, frame.dst, frame.type) == ("02:00:00:00:00:0a", "02:00:00:00:00:0b", 0x0800)


def test_summaries_of_what_scapy_builds():
    frame = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / IP(src="10.0.0.1", dst="10.0.0.2", ttl=9)
                  / UDP(sport=7, dport=8))
    summary = frame_summary(frame)
    assert describe(summary) == "02:00:00:00:00:0a > 02:00:00:00:00:0b ipv4 udp 10.0.0.1:7 > 10.0.0.2:8 ttl 9"
    arp = bytes(Ether(src="02:00:00:00:00:0a", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    assert describe(frame_summary(arp)).endswith("arp request who-has 10.0.0.2 tell 10.0.0.1")
    assert "malformed" in frame_summary(frame[:20]) and "malformed" in frame_summary(b"\x00" * 5)


def datapath() -> Datapath:
    router = Router()
    router.add_interface("gw1", ip_from_str("10.244.1.1"), 24, mac=bytes.fromhex("020000000101"))
    router.add_interface("gw2", ip_from_str("10.244.2.1"), 24, mac=bytes.fromhex("020000000201"))
    dp = Datapath(Bridge(), router)
    dp.attach("gw1", OnBridge())
    dp.attach("gw2", OnBridge())
    for port in ("c1", "c2"):
        dp.add_port(port)
    return dp


def test_a_trace_runs_a_copy_and_explains_it():
    dp = datapath()
    dp.router.add_neighbour("gw2", B, MAC_B)
    dp.bridge.fdb.learn(MAC_B, "c2", 0.0)
    before = copy.deepcopy((sorted((e.mac, e.port, e.updated) for e in dp.fdb), dp.statistics(), dp.router.statistics()))
    result = trace(dp, "c1", parse_flow("tcp 10.244.1.2:40000 > 10.244.2.3:80"), 1.0)
    after = (sorted((e.mac, e.port, e.updated) for e in dp.fdb), dp.statistics(), dp.router.statistics())
    assert after == before
    sent = Ether(result.frame)
    assert (sent.src, sent.dst) == (UNKNOWN_HOST_MAC.hex(":"), "02:00:00:00:01:01")   # no table knows 10.244.1.2
    parts = [step.part for step in result.steps]
    assert parts == ["ingress", "bridge", "bridge", "router", "neighbour", "bridge"]
    [out] = result.actions
    assert out.port == "c2"
    [frame] = out.frames
    assert (Ether(frame).dst, Ether(frame)[IP].ttl) == ("02:00:00:00:00:0b", 63)
    assert result.as_dict()["actions"][0]["frames"][0]["text"].endswith("tcp 10.244.1.2:40000 > 10.244.2.3:80 ttl 63")


def test_a_trace_of_an_unknown_port_is_refused():
    with pytest.raises(ValueError, match="no port named 'gw1'"):   # a router interface on the bridge is no port
        trace(datapath(), "gw1", parse_flow("icmp 10.244.1.2 > 10.244.2.3"), 0.0)
    with pytest.raises(ValueError, match="no port named 'x'"):
        trace(Bridge(), "x", parse_flow("icmp 10.244.1.2 > 10.244.2.3"), 0.0)
