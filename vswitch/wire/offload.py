"""Offloads done in software: the virtio-net header that TAP (IFF_VNET_HDR)
and AF_PACKET (PACKET_VNET_HDR) prepend to each frame, checksum completion for
frames whose checksum the sender left to "hardware", and TCP segmentation of
TSO super-frames (up to 64 KB) into MSS-sized frames."""

import struct

from .checksum import internet_checksum
from .errors import Malformed, Truncated
from .ethernet import ETH_P_IP, Ethernet
from .ipv4 import PROTO_TCP, Ipv4, pseudo_header_sum
from .tcp import FIN, PSH, Tcp

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
VNET_HDR_NONE = bytes(VNET_HDR_LEN)
F_NEEDS_CSUM = 0x01
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80
_CWR = 0x80


class UnsupportedOffload(Malformed):
    """A GSO type this switch does not segment (UFO, TCPv6 for now)."""


def complete_checksum(frame: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Fill in a checksum the sender left partial (CHECKSUM_PARTIAL).

    The field already holds the pseudo-header sum; the checksum is the
    complement of the sum from ``csum_start`` to the end, field included.
    """
    field = csum_start + csum_offset
    if field + 2 > len(frame):
        raise Truncated(f"checksum field at {field} beyond a {len(frame)}-byte frame")
    checksum = internet_checksum(frame[csum_start:])
    return b"".join((frame[:field], struct.pack("!H", checksum or 0xFFFF), frame[field + 2:]))


def segment_tcp4(frame: bytes, mss: int) -> list[bytes]:
    """Cut an Ethernet/IPv4/TCP super-frame into frames carrying at most ``mss`` bytes each.

    Each segment gets its own IP length, identification and header checksum,
    its own sequence number and a full TCP checksum; FIN and PSH stay on the
    last segment only, CWR on the first only.
    """
    if mss <= 0:
        raise Malformed(f"gso_size {mss}")
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IP:
        raise Malformed(f"TCPv4 segmentation of ethertype {eth.ethertype:#06x}")
    ip = Ipv4.parse(frame, eth.payload_offset, verify_checksum=False)
    if ip.proto != PROTO_TCP:
        raise Malformed(f"TCPv4 segmentation of IP protocol {ip.proto}")
    tcp_at = ip.payload_offset
    tcp = Tcp.parse(frame, tcp_at)
    headers_end = tcp_at + tcp.header_len
    payload = frame[headers_end:ip.offset + ip.total_length]
    if len(payload) <= mss:
        segments_payload = [payload]
    else:
        segments_payload = [payload[i:i + mss] for i in range(0, len(payload), mss)]

    template = bytearray(frame[:headers_end])
    tcp_header_len = tcp.header_len
    out = []
    last = len(segments_payload) - 1
    offset = 0
    for index, chunk in enumerate(segments_payload):
        header = bytearray(template)
        struct.pack_into("!HH", header, ip.offset + 2, ip.ihl + tcp_header_len + len(chunk), (ip.ident + index) & 0xFFFF)
        struct.pack_into("!H", header, ip.offset + 10, 0)
        struct.pack_into("!H", header, ip.offset + 10, internet_checksum(header[ip.offset:tcp_at]))
        flags = tcp.flags
        if index != last:
            flags &= ~(FIN | PSH)
        if index != 0:
            flags &= ~_CWR
        struct.pack_into("!I", header, tcp_at + 4, (tcp.seq + offset) & 0xFFFFFFFF)
        header[tcp_at + 13] = flags
        struct.pack_into("!H", header, tcp_at + 16, 0)
        segment = bytes(header[tcp_at:]) + chunk
        initial = pseudo_header_sum(ip.src, ip.dst, PROTO_TCP, len(segment))
        struct.pack_into("!H", header, tcp_at + 16, internet_checksum(segment, initial))
        out.append(bytes(header) + chunk)
        offset += len(chunk)
    return out


def from_vnet(packet: bytes) -> list[bytes]:
    """Plain Ethernet frames from one virtio-net-header-prefixed packet."""
    if len(packet) < VNET_HDR_LEN:
        raise Truncated(f"virtio-net header: {len(packet)} bytes")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(packet)
    frame = packet[VNET_HDR_LEN:]
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            frame = complete_checksum(frame, csum_start, csum_offset)
        return [frame]
    if gso == GSO_TCPV4:
        return segment_tcp4(frame, gso_size)  # every segment gets a full checksum
    raise UnsupportedOffload(f"GSO type {gso_type:#x}")
