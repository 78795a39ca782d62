"""The two overlay wire formats and the datagram address header. Pure.

**flannel UDP** (flannel-io/flannel ``pkg/backend/udp``): the UDP payload
is the raw IPv4 packet, with no header of any kind; port 8285. The TTL is
decremented with an incremental checksum update
(:func:`~vswitch.core.wire.ipv4.decrement_ttl`) on the way in and again on
the way out, as flannel's C proxy does.

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

from vswitch.core.wire import icmp, ipv4, tcp
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
# Field offsets of the address header and of the VXLAN header (as the wire modules name theirs).
ADDRESS_IP = slice(0, 4)       # the peer's IPv4 address
ADDRESS_PEER = slice(0, 6)     # the peer's address and UDP port
VXLAN_FLAGS = 0
VXLAN_VNI = slice(4, 7)

# What the flow hash reads, as module-level ints: it runs for every VXLAN packet.
_VER_IHL, _PROTOCOL, _MIN_IHL, _ICMP = ipv4.VER_IHL, ipv4.PROTOCOL, ipv4.MIN_HEADER_LEN, ipv4.PROTO_ICMP
_ADDRESSES, _ADDRESSES_END = ipv4.ADDRESSES.start, ipv4.ADDRESSES.stop
_FLAGS = ipv4.FLAGS
_MF_OR_OFFSET = (ipv4.FLAG_MF | ipv4.OFFSET_MASK) >> 8   # MF and the offset's high bits; the next byte is its rest
_TYPE_CODE_END = icmp.CODE + 1
_IDENT, _IDENT_END = icmp.IDENT.start, icmp.IDENT.stop
_PORTS_END = tcp.PORTS.stop   # TCP's and UDP's ports: the first four bytes of either header


def address_header(ip: bytes, port: int, local_port: int = 0) -> bytes:
    """The 8 bytes that precede a datagram's payload in the core."""
    return _ADDRESS.pack(ip, port, local_port)


def arrival(datagram: bytes, sender: bytes) -> bytes:
    """A datagram sent with its address header, as the peer's core receives it, the way UDP delivers it: from
    ``sender`` (its 6-byte IPv4 address and port; the source port the datagram chose, if it chose one, as a
    VXLAN flow's), to the port it was sent to. For simulated underlays (memory ports, the test kit)."""
    local_port = datagram[6:ADDRESS_LEN]
    source = sender[ADDRESS_IP] + (local_port if local_port != b"\0\0" else sender[4:6])
    return source + datagram[4:6] + datagram[ADDRESS_LEN:]


def parse_address(datagram: bytes) -> tuple[bytes, int, int]:
    """(peer IPv4 address, peer port, local port) of a datagram."""
    return _ADDRESS.unpack_from(datagram)


def vxlan_header(vni: int) -> bytes:
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"VNI must be between 0 and {MAX_VNI}, got {vni}")
    return bytes((VXLAN_FLAG_I, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\0"


def flow_source_port(packet: bytes, offset: int = 0) -> int:
    """The outer source port for the inner IPv4 packet at ``packet[offset:]``: a hash of its flow.

    The flow is Linux's: the addresses and protocol, plus the ports of TCP
    and UDP (the first four bytes of the transport header) or, for ICMP,
    its type, code and identifier — unless the packet is a fragment, whose
    pieces then all hash alike, or its header length is below 20 bytes (no
    transport header to find). CRC-32 is deterministic across runs and
    costs well under a microsecond.
    """
    ihl = (packet[offset + _VER_IHL] & 0x0F) * 4
    addresses = packet[offset + _PROTOCOL:offset + _PROTOCOL + 1] + packet[offset + _ADDRESSES:offset + _ADDRESSES_END]
    if packet[offset + _FLAGS] & _MF_OR_OFFSET or packet[offset + _FLAGS + 1] or ihl < _MIN_IHL:
        key = addresses   # more fragments, an offset, no header: no ports
    elif packet[offset + _PROTOCOL] == _ICMP:   # type and code, then the identifier (not the checksum)
        start = offset + ihl
        key = addresses + packet[start:start + _TYPE_CODE_END] + packet[start + _IDENT:start + _IDENT_END]
    else:
        start = offset + ihl
        key = addresses + packet[start:start + _PORTS_END]
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
