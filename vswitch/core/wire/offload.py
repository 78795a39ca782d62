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
    if headers_end > ip.offset + ip.total_length:
        raise Truncated(f"tcp: a {tcp.header_len}-byte header runs past the IP total length {ip.total_length}")
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


MAX_COALESCED = 65535 - 20 - 60   # payload of one IPv4 packet with the longest TCP header
_ACK, _ACK_PSH = 0x10, 0x18


def coalesce_tcp4(frames: list[bytes], start: int, limit: int = 64) -> tuple[bytes, int]:
    """Join ``frames[start]`` and the segments after it of the same TCP flow into one TSO super-frame.

    The reverse of :func:`segment_tcp4`, for writing to a TAP with
    ``IFF_VNET_HDR``: the receiving stack takes one packet where there were
    many (what GRO does on a NIC). Frames join while they are plain
    Ethernet/IPv4/TCP (no IP options, not fragments, a TCP data offset of 5
    or more, headers and payload inside both the frame and the IP total
    length: anything else goes alone, never an exception) of one flow with equal
    headers but for the IP length, identification and checksum and the TCP
    sequence number, flags ACK (PSH on the last), each sequence number
    following the one before, all of one size but the last: Linux's
    ``tcp_gro_receive`` rules. Returns (virtio-net header + frame, frames
    used); a frame that joins nothing comes back with an empty header.
    """
    first = frames[start]
    if (len(first) < 54 or first[12:14] != b"\x08\x00" or first[14] != 0x45 or first[23] != PROTO_TCP
            or first[20] & 0x3F or first[21] or first[46] < 0x50 or first[47] != _ACK):
        return VNET_HDR_NONE + first, 1   # a data offset below 5 (20 bytes) is no TCP header: never joined
    headers = 34 + ((first[46] >> 4) << 2)
    total = (first[16] << 8) | first[17]
    size = total - (headers - 14)
    if size <= 0 or len(first) < 14 + total:
        return VNET_HDR_NONE + first, 1
    end = start + 1
    last = min(len(frames), start + limit)
    seq = int.from_bytes(first[38:42], "big") + size
    payloads = [first[headers:14 + total]]
    joined = size
    psh = False
    while end < last:
        frame = frames[end]
        if (len(frame) < headers or frame[0:16] != first[0:16] or frame[20:24] != first[20:24]
                or frame[26:38] != first[26:38] or frame[42:47] != first[42:47] or frame[48:50] != first[48:50]
                or frame[52:headers] != first[52:headers] or frame[47] not in (_ACK, _ACK_PSH)):
            break
        length = ((frame[16] << 8) | frame[17]) - (headers - 14)
        if (length <= 0 or length > size or joined + length > MAX_COALESCED or len(frame) < headers + length
                or int.from_bytes(frame[38:42], "big") != seq & 0xFFFFFFFF):
            break
        payloads.append(frame[headers:headers + length])
        joined += length
        seq += length
        end += 1
        if frame[47] == _ACK_PSH or length < size:
            psh = frame[47] == _ACK_PSH
            break   # PSH or a shorter segment ends the run
    if end - start == 1:
        return VNET_HDR_NONE + first, 1
    ip_length = headers - 14 + joined
    ip = bytearray(first[14:34])
    ip[2:4] = ip_length.to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    ip[10:12] = internet_checksum(ip).to_bytes(2, "big")
    tcp = bytearray(first[34:headers])
    if psh:
        tcp[13] = _ACK_PSH
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, the kernel takes the rest as valid.
    partial = pseudo_header_sum(first[26:30], first[30:34], PROTO_TCP, ip_length - 20)
    while partial >> 16:
        partial = (partial & 0xFFFF) + (partial >> 16)
    tcp[16:18] = partial.to_bytes(2, "big")
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, headers, size, 34, 16)
    return b"".join((vnet, first[:14], ip, tcp, *payloads)), end - start
