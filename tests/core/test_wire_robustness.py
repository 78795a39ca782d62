"""Bad input from the wire only ever raises Truncated or Malformed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPOption_Router_Alert, raw

from vswitch.core.wire import (
    Arp,
    Ethernet,
    Icmp,
    Ipv4,
    Malformed,
    Tcp,
    Truncated,
    Udp,
    WireError,
    ethernet,
    ipv4,
)


def parse_stack(frame: bytes) -> tuple:
    """Parse every layer the wire package knows, the way a slow path would."""
    eth = Ethernet.parse(frame)
    if eth.ethertype == ethernet.ETH_P_ARP:
        return eth, Arp.parse(frame, eth.payload_offset)
    if eth.ethertype != ethernet.ETH_P_IP:
        return (eth,)
    ip = Ipv4.parse(frame, eth.payload_offset)
    payload = ip.payload(frame)
    if ip.proto == ipv4.PROTO_ICMP:
        return eth, ip, Icmp.parse(payload)
    if ip.proto == ipv4.PROTO_UDP:
        return eth, ip, Udp.parse(payload)
    if ip.proto == ipv4.PROTO_TCP:
        return eth, ip, Tcp.parse(payload)
    return eth, ip


macs = st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb"])
ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "192.0.2.9", "198.51.100.77"])
payloads = st.binary(max_size=40)


@st.composite
def valid_frames(draw):
    options = [IPOption_Router_Alert()] if draw(st.booleans()) else []
    ip = IP(src=draw(ips), dst=draw(ips), ttl=draw(st.integers(1, 255)), options=options)
    kind = draw(st.sampled_from(["arp", "icmp", "udp", "tcp", "raw-ip"]))
    if kind == "arp":
        inner = ARP(op=draw(st.sampled_from([1, 2])), hwsrc="02:00:00:00:00:01", psrc=draw(ips), pdst=draw(ips))
    elif kind == "icmp":
        inner = ip / ICMP(type=draw(st.sampled_from([0, 8, 3, 11])), id=draw(st.integers(0, 0xFFFF))) / draw(payloads)
    elif kind == "udp":
        inner = ip / UDP(sport=draw(st.integers(0, 0xFFFF)), dport=53) / draw(payloads)
    elif kind == "tcp":
        inner = ip / TCP(sport=1234, dport=80, flags="S", options=[("MSS", 1460)] if draw(st.booleans()) else []) / draw(payloads)
    else:
        ip.proto = 253
        inner = ip / draw(payloads)
    eth = Ether(dst=draw(macs), src="02:00:00:00:00:01")
    if draw(st.booleans()):
        return raw(eth / Dot1Q(vlan=draw(st.integers(0, 4095))) / inner)
    return raw(eth / inner)


@given(valid_frames())
def test_valid_frames_parse_and_every_truncation_is_a_wire_error(frame):
    layers = parse_stack(frame)
    assert len(layers) >= 2
    for length in range(len(frame)):
        with pytest.raises((Truncated, Malformed)):
            parse_stack(frame[:length])


@given(valid_frames(), st.data())
def test_each_parser_on_each_prefix_raises_only_wire_errors(frame, data):
    offset = data.draw(st.integers(0, len(frame)))
    for length in range(len(frame) + 1):
        buf = frame[:length]
        for parse in (
            lambda: Ethernet.parse(buf[offset:]),
            lambda: Arp.parse(buf, offset),
            lambda: Ipv4.parse(buf, offset),
            lambda: Icmp.parse(buf[offset:]),
            lambda: Udp.parse(buf, offset),
            lambda: Tcp.parse(buf, offset),
        ):
            try:
                parse()
            except WireError:
                pass


@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_wire_errors(buf):
    try:
        parse_stack(buf)
    except WireError as exc:
        assert isinstance(exc, (Truncated, Malformed))
        assert isinstance(exc, ValueError)


@given(st.binary(min_size=14, max_size=120).map(lambda b: b[:12] + b"\x08\x00" + b[14:]))
def test_arbitrary_ipv4_bytes_raise_only_wire_errors(frame):
    try:
        parse_stack(frame)
    except (Truncated, Malformed):
        pass
