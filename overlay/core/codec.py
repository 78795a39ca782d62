"""The two overlay wire formats and the datagram address header. Pure.

**flannel UDP** (flannel-io/flannel ``pkg/backend/udp``): the UDP payload
is the raw IPv4 packet, with no header of any kind; port 8285. The TTL is
decremented with an incremental checksum update (RFC 1624) on the way in
and again on the way out, as flannel's C proxy does.

**VXLAN** (RFC 7348): an 8-byte header (flags 0x08 — the I bit —, three
reserved bytes, the 24-bit VNI, one reserved byte) before an inner
Ethernet frame; port 8472 (Linux's and flannel's default; IANA's is 4789).
The outer UDP source port is a hash of the inner flow (RFC 7348 §5), in
Linux's range, so ECMP spreads flows and a flow keeps its path.

**Datagrams** travel between the core and an underlay port as ``bytes``
that begin with an 8-byte address header: the peer's IPv4 address (4), the
peer's UDP port (2) and our UDP port (2; 0 means the port the underlay is
bound to). On receive it holds the sender's address and port and the port
the datagram arrived on. One flat ``bytes`` per datagram keeps the shell's
queues, counters and batches as they are for frames.
"""

import struct
import zlib

from vswitch.core.wire.ipv4 import PROTO_UDP, build_ipv4

FLANNEL_UDP_PORT = 8285
VXLAN_PORT = 8472           # Linux's and flannel's default
VXLAN_IANA_PORT = 4789
UDP_OVERHEAD = 28           # outer IPv4 + UDP: overlay MTU = underlay MTU - 28
VXLAN_OVERHEAD = 50         # outer IPv4 + UDP + VXLAN + inner Ethernet
VXLAN_HEADER_LEN = 8
VXLAN_FLAG_I = 0x08
MAX_VNI = (1 << 24) - 1
SOURCE_PORT_MIN = 32768     # Linux's vxlan takes the source port from ip_local_port_range ...
SOURCE_PORT_MAX = 60999     # ... 32768-60999 by default

ADDRESS_LEN = 8
_ADDRESS = struct.Struct("!4sHH")


def address_header(ip: bytes, port: int, local_port: int = 0) -> bytes:
    """The 8 bytes that precede a datagram's payload in the core."""
    return _ADDRESS.pack(ip, port, local_port)


def parse_address(datagram: bytes) -> tuple[bytes, int, int]:
    """(peer IPv4 address, peer port, local port) of a datagram."""
    return _ADDRESS.unpack_from(datagram)


def vxlan_header(vni: int) -> bytes:
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"VNI must be between 0 and {MAX_VNI}, got {vni}")
    return bytes((VXLAN_FLAG_I, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\0"


def decrement_ttl(packet: bytes, offset: int = 0) -> bytes | None:
    """The IPv4 packet at ``packet[offset:]`` with its TTL one less, or None when it would reach zero.

    flannel's ``decrement_ttl``: the TTL is the high byte of its 16-bit
    word, so the checksum goes up by 0x0100, with the end-around carry.
    """
    ttl = packet[offset + 8]
    if ttl <= 1:
        return None
    check = ((packet[offset + 10] << 8) | packet[offset + 11]) + 0x0100
    if check >= 0xFFFF:
        check = (check + 1) & 0xFFFF
    return b"".join((
        packet[offset:offset + 8], bytes((ttl - 1, packet[offset + 9], check >> 8, check & 0xFF)), packet[offset + 12:],
    ))


def flow_source_port(packet: bytes, offset: int = 0) -> int:
    """The outer source port for the inner IPv4 packet at ``packet[offset:]``: a hash of its flow.

    The flow is Linux's: the addresses and protocol, plus the ports of TCP
    and UDP (the first four bytes of the transport header) or, for ICMP,
    its type, code and identifier — unless the packet is a fragment, whose
    pieces then all hash alike, or its header length is below 20 bytes (no
    transport header to find). CRC-32 is deterministic across runs and
    costs well under a microsecond.
    """
    ihl = (packet[offset] & 0x0F) * 4
    addresses = packet[offset + 9:offset + 10] + packet[offset + 12:offset + 20]
    if packet[offset + 6] & 0x3F or packet[offset + 7] or ihl < 20:   # more fragments, an offset, no header: no ports
        key = addresses
    elif packet[offset + 9] == 1:   # ICMP: type and code, then the identifier (not the checksum)
        start = offset + ihl
        key = addresses + packet[start:start + 2] + packet[start + 4:start + 6]
    else:
        key = addresses + packet[offset + ihl:offset + ihl + 4]
    return SOURCE_PORT_MIN + zlib.crc32(key) % (SOURCE_PORT_MAX - SOURCE_PORT_MIN + 1)


_CAPTURE_MACS = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
MAX_PAYLOAD = 0xFFFF - UDP_OVERHEAD   # the most one UDP datagram over IPv4 carries


def capture_frame(datagram: bytes, local_ip: bytes, local_port: int) -> bytes:
    """A datagram as the Ethernet/IPv4/UDP frame a capture of the underlay shows (Wireshark decodes the rest).

    A datagram whose local port is the bound port arrived; any other left.
    The UDP checksum is zero (none), the MACs are placeholders. A payload
    longer than one datagram carries (the socket refuses it: EMSGSIZE) is
    cut to fit, as a capture's snap length would.
    """
    peer_ip, peer_port, port = _ADDRESS.unpack_from(datagram)
    payload = datagram[ADDRESS_LEN:ADDRESS_LEN + MAX_PAYLOAD]
    if port == local_port:
        src, dst, sport, dport = peer_ip, local_ip, peer_port, local_port
    else:
        src, dst, sport, dport = local_ip, peer_ip, port or local_port, peer_port
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _CAPTURE_MACS + build_ipv4(src, dst, PROTO_UDP, udp, ttl=64, flags_offset=0)
