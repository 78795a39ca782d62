"""The packet `vswitch trace` sends through a copy of the core: a flow spec, the packet it makes, and the one-line
summary of a frame either side of the core. Pure.

A flow spec is what a person types, as ``ovs-appctl ofproto/trace`` takes a
flow: ``tcp 10.244.1.2:40000 > 10.244.2.3:80``, ``udp A:p > B:q`` or
``icmp A > B``. It arrives over the control socket, so it is untrusted: a
bounded length, and every mistake a :class:`ValueError` that says which part
is wrong. The packet is what a host would send to open that flow: a TCP SYN,
an empty UDP datagram, an ICMP echo request, TTL 64, DF set.
"""

import re

import attrs

from .wire import arp, ethernet, icmp, ipv4, tcp, udp
from .wire.addr import ip_from_str, ip_to_str, mac_to_str

MAX_SPEC = 200               # characters of a flow spec
ECHO_IDENT = 0x7472          # "tr": the identifier of a traced ICMP echo request
PROTOCOLS = {"tcp": ipv4.PROTO_TCP, "udp": ipv4.PROTO_UDP, "icmp": ipv4.PROTO_ICMP}
_NAMES = {number: name for name, number in PROTOCOLS.items()}
_SPEC = re.compile(r"\s*(\S+)\s+([^\s>]+)\s*>\s*([^\s>]+)\s*")
EXAMPLES = "'tcp 10.244.1.2:40000 > 10.244.2.3:80', 'udp A:p > B:q' or 'icmp A > B'"


@attrs.frozen
class Flow:
    """One packet's addresses: TCP and UDP with ports, ICMP (an echo request) without."""

    protocol: int
    src: bytes = attrs.field(repr=ip_to_str)
    dst: bytes = attrs.field(repr=ip_to_str)
    sport: int = 0
    dport: int = 0

    def __str__(self) -> str:
        name = _NAMES[self.protocol]
        if self.protocol == ipv4.PROTO_ICMP:
            return f"{name} {ip_to_str(self.src)} > {ip_to_str(self.dst)}"
        return f"{name} {ip_to_str(self.src)}:{self.sport} > {ip_to_str(self.dst)}:{self.dport}"


def parse_flow(spec: str) -> Flow:
    """``spec`` as a :class:`Flow`; ValueError says what is wrong with it."""
    if len(spec) > MAX_SPEC:
        raise ValueError(f"flow spec too long ({len(spec)} characters, at most {MAX_SPEC})")
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"flow spec {spec!r}: expected {EXAMPLES}")
    name, src, dst = match.groups()
    protocol = PROTOCOLS.get(name.lower())
    if protocol is None:
        raise ValueError(f"flow spec {spec!r}: protocol {name!r} is not one of {', '.join(PROTOCOLS)}")
    if protocol == ipv4.PROTO_ICMP:
        return Flow(protocol, _address(src, spec), _address(dst, spec))
    (src_ip, sport), (dst_ip, dport) = _endpoint(src, name, spec), _endpoint(dst, name, spec)
    return Flow(protocol, src_ip, dst_ip, sport, dport)


def _endpoint(text: str, name: str, spec: str) -> tuple[bytes, int]:
    address, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError(f"flow spec {spec!r}: {name} needs ADDRESS:PORT, not {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 0xFFFF:
        raise ValueError(f"flow spec {spec!r}: port {port!r} is not a number from 1 to 65535")
    return _address(address, spec), int(port)


def _address(text: str, spec: str) -> bytes:
    if ":" in text:
        raise ValueError(f"flow spec {spec!r}: icmp has no ports ({text!r}); write 'icmp A > B'")
    try:
        return ip_from_str(text)
    except ValueError:
        raise ValueError(f"flow spec {spec!r}: {text!r} is not an IPv4 address") from None


def build_packet(flow: Flow) -> bytes:
    """The IPv4 packet that opens ``flow``."""
    if flow.protocol == ipv4.PROTO_TCP:
        payload = tcp.build_tcp(flow.src, flow.dst, flow.sport, flow.dport, flags=tcp.SYN)
    elif flow.protocol == ipv4.PROTO_UDP:
        payload = udp.build_udp(flow.src, flow.dst, flow.sport, flow.dport, b"")
    else:
        payload = icmp.build_echo(ECHO_IDENT, 1)
    return ipv4.build_ipv4(flow.src, flow.dst, flow.protocol, payload)


def build_frame(flow: Flow, src_mac: bytes, dst_mac: bytes) -> bytes:
    """The Ethernet frame that carries :func:`build_packet`."""
    return ethernet.build_ethernet(dst_mac, src_mac, ethernet.ETH_P_IP, build_packet(flow))


def packet_summary(packet: bytes) -> dict[str, object]:
    """What an IPv4 packet is, for a person: addresses, protocol, ports or ICMP type, TTL. Never raises."""
    try:
        header = ipv4.Ipv4.parse(packet, verify_checksum=False)
    except ValueError as exc:
        return {"malformed": str(exc)}
    summary: dict[str, object] = {
        "src": ip_to_str(header.src), "dst": ip_to_str(header.dst),
        "protocol": _NAMES.get(header.proto, str(header.proto)), "ttl": header.ttl, "length": header.total_length,
    }
    start = header.payload_offset
    if header.proto in (ipv4.PROTO_TCP, ipv4.PROTO_UDP) and len(packet) >= start + 4:
        summary["sport"] = int.from_bytes(packet[start:start + 2], "big")
        summary["dport"] = int.from_bytes(packet[start + 2:start + 4], "big")
    elif header.proto == ipv4.PROTO_ICMP and len(packet) >= start + 2:
        summary["icmp_type"], summary["icmp_code"] = packet[start + icmp.TYPE], packet[start + icmp.CODE]
    return summary


def frame_summary(frame: bytes) -> dict[str, object]:
    """What an Ethernet frame is: its MACs and ethertype, and its IPv4 packet's summary if it carries one."""
    if len(frame) < ethernet.HEADER_LEN:
        return {"malformed": f"{len(frame)} bytes, shorter than an Ethernet header"}
    ethertype = int.from_bytes(frame[ethernet.ETHERTYPE], "big")
    summary: dict[str, object] = {
        "eth_src": mac_to_str(frame[ethernet.SRC]), "eth_dst": mac_to_str(frame[ethernet.DST]),
        "ethertype": {ethernet.ETH_P_IP: "ipv4", ethernet.ETH_P_ARP: "arp"}.get(ethertype, f"0x{ethertype:04x}"),
    }
    if ethertype == ethernet.ETH_P_IP:
        summary.update(packet_summary(frame[ethernet.HEADER_LEN:]))
    elif ethertype == ethernet.ETH_P_ARP:
        try:
            message = arp.Arp.parse(frame, ethernet.HEADER_LEN)
        except ValueError as exc:
            summary["malformed"] = str(exc)
        else:
            summary["arp"] = "request" if message.op == arp.OP_REQUEST else "reply"
            summary["arp_sender"], summary["arp_target"] = ip_to_str(message.sender_ip), ip_to_str(message.target_ip)
    return summary


def describe(summary: dict[str, object]) -> str:
    """A summary as one line: ``02:..:01 > 02:..:02 ipv4 tcp 10.0.0.1:40000 > 10.0.0.2:80 ttl 64``."""
    parts = []
    if "eth_src" in summary:
        parts += [f"{summary['eth_src']} > {summary['eth_dst']}", str(summary["ethertype"])]
    if "outer_dst" in summary:
        parts.append(f"{summary['encapsulation']} to {summary['outer_dst']}:{summary['outer_dport']}"
                     f" from port {summary['outer_sport']}" + (f" vni {summary['vni']}" if "vni" in summary else "")
                     + " carrying")
        parts += [f"{summary['inner_eth_src']} > {summary['inner_eth_dst']}"] if "inner_eth_src" in summary else []
    if "arp" in summary:
        parts.append(f"{summary['arp']} who-has {summary['arp_target']} tell {summary['arp_sender']}"
                     if summary["arp"] == "request" else f"reply {summary['arp_sender']} is-at {summary['eth_src']}")
    if "malformed" in summary:
        parts.append(f"malformed: {summary['malformed']}")
    elif "src" in summary:
        if "sport" in summary:
            parts.append(f"{summary['protocol']} {summary['src']}:{summary['sport']} > {summary['dst']}:{summary['dport']}")
        else:
            icmp_type = f" type {summary['icmp_type']} code {summary['icmp_code']}" if "icmp_type" in summary else ""
            parts.append(f"{summary['protocol']} {summary['src']} > {summary['dst']}{icmp_type}")
        parts.append(f"ttl {summary['ttl']}")
    return " ".join(parts)
