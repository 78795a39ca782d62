"""Offloads done in software: the virtio-net header that TAP (IFF_VNET_HDR)
and AF_PACKET (PACKET_VNET_HDR) prepend to each frame, checksum completion for
frames whose checksum the sender left to "hardware", TCP segmentation of
TSO super-frames (up to 64 KB) into MSS-sized frames, and its reverse,
joining a run of one flow's segments into one super-frame (GRO).

A super-frame travels through the core whole, as a :class:`SuperFrame`:
``bytes`` that also say how to cut them. The bridge switches it unchanged,
the router and NAT rewrite it once for all its segments, and it is cut
only where it must be: for a port that takes no super-frames, or inside
the overlay, whose peers take only whole packets."""

import functools
import struct
from collections.abc import Callable, Sequence

from . import ethernet, ipv4, tcp
from .checksum import internet_checksum, ones_complement_sum
from .errors import Malformed, Truncated, WireError
from .ethernet import ETH_P_IP, ETH_P_IPV6, Ethernet
from .field import at
from .ipv4 import PROTO_TCP, Ipv4, decrement_ttl, pseudo_header_sum
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
IPV6_HEADER_LEN = 40


class SuperFrame(bytes):
    """An Ethernet frame holding one TCP packet of up to 64 KB, to be cut into segments of ``gso_size``
    payload bytes: what a TSO-capable device hands over, or GRO joined. On an L3 interface (the overlay's)
    it is a bare IPv4 packet: :func:`coalesce_ipv4` makes one, :func:`segment_ipv4` cuts one (:func:`segment`
    and :func:`vnet_header` read an Ethernet header).

    ``gso_type`` is :data:`GSO_TCPV4` or :data:`GSO_TCPV6`, with
    :data:`GSO_ECN` when the sender set CWR. As the kernel's
    CHECKSUM_PARTIAL, the TCP checksum field holds only the folded
    pseudo-header sum (for the whole packet's length) and the rest is left
    to whoever cuts it; an IPv4 header checksum is valid for the whole
    packet. Every rewrite of one keeps both true and returns a SuperFrame
    again (:meth:`like`).
    """

    gso_type: int
    gso_size: int

    def like(self, frame: bytes) -> "SuperFrame":
        """``frame`` (this super-frame rewritten) as a super-frame cut as this one is."""
        return super_frame(frame, self.gso_type, self.gso_size)


def super_frame(frame: bytes, gso_type: int, gso_size: int) -> SuperFrame:
    joined = SuperFrame(frame)
    joined.gso_type = gso_type
    joined.gso_size = gso_size
    return joined


class UnsupportedOffload(Malformed):
    """A GSO type this switch does not segment (UFO, UDP segmentation), or TCPv6 behind extension headers."""


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
    return segment_ipv4(frame, mss, eth.payload_offset)


def segment_ipv4(packet: bytes, mss: int, ip_at: int = 0, prefix: bytes | None = None) -> list[bytes]:
    """Cut the IPv4/TCP super-packet at ``packet[ip_at:]`` into packets carrying at most ``mss`` bytes each,
    each behind ``prefix`` (by default what precedes the IP header: an Ethernet header, or nothing): see
    :func:`ipv4_segment_parts`."""
    parts = ipv4_segment_parts(packet, mss, ip_at, prefix)
    return [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]


def first_segment(packet: bytes, mss: int) -> bytes:
    """The first packet the IPv4/TCP super-packet ``packet`` (bare IP) is cut into at ``mss``, alone: what an
    ICMP error or a reset about a super-frame answers (its sender learns about the first segment it sent,
    once), for the cost of one segment, not of cutting them all. WireError if it cannot be cut."""
    header, payload = ipv4_segment_parts(packet, mss, limit=1)
    return header + payload


def ipv4_segment_parts(packet: bytes, mss: int, ip_at: int = 0, prefix: bytes | None = None,
                       hop: bool = False, limit: int | None = None) -> list[bytes]:
    """The segments of the IPv4/TCP super-packet at ``packet[ip_at:]``, each carrying at most ``mss`` bytes
    behind ``prefix``, as their parts: each segment's headers, then its payload (a view of ``packet``), so a
    caller that sends them back to back (the overlay, with UDP GSO) joins them all in one copy. With ``hop``
    their TTL is one less than the super-packet's (which the caller has checked is above 1): a router's hop
    taken in the segments' own headers, not in a copy of the whole. With ``limit``, only the first ``limit``
    segments.

    As :func:`segment_tcp4` for any link header, or none (an L3 interface, a
    TUN); ``prefix`` lets a caller that wraps each segment (the overlay: the
    datagram's address and VXLAN headers) have it built in the same copy.
    The checksum field of the super-packet is ignored (partial or full).

    The cost is the payload's checksum, one per segment: the IP header's sum
    and the TCP header's are worked out once and adjusted per segment, and
    each chunk of payload is summed as one big integer folded down to 16
    bits (:func:`_chunk_sum`) before the one slow modulo.
    """
    if mss <= 0:
        raise Malformed(f"gso_size {mss}")
    ip = Ipv4.parse(packet, ip_at, verify_checksum=False)
    if ip.proto != PROTO_TCP:
        raise Malformed(f"TCPv4 segmentation of IP protocol {ip.proto}")
    ihl, tcp_at, end = ip.ihl, ip.payload_offset, ip.offset + ip.total_length
    segment_tcp = Tcp.parse(packet, tcp_at)
    tcp_len = segment_tcp.header_len
    headers_end = tcp_at + tcp_len
    if headers_end > end:
        raise Truncated(f"tcp: a {tcp_len}-byte header runs past the IP packet's end")
    if prefix is None:
        prefix = bytes(packet[:ip_at])
    ip_header, tcp_header = bytes(packet[ip_at:tcp_at]), bytes(packet[tcp_at:headers_end])
    if hop:
        ip_header = decrement_ttl(ip_header)   # its checksum is made again below
    # The sums of what every segment shares: the IP header but its length, identification and checksum; the
    # pseudo-header but its length, and the TCP header but its sequence number, flags and checksum.
    ip_sum = int.from_bytes(ip_header[0:2] + ip_header[6:10] + ip_header[12:], "big") % 0xFFFF
    tcp_sum = (int.from_bytes(ip_header[12:20] + tcp_header[0:4] + tcp_header[8:12] + tcp_header[14:16]
                              + tcp_header[18:], "big") + PROTO_TCP + (tcp_header[12] << 8)) % 0xFFFF
    # The headers of a segment: what all share (the prefix and the IP header's first bytes; the fragment fields,
    # TTL and protocol; the addresses, options and ports; the acknowledgement and data offset; the window, after
    # the flags; the urgent pointer and options), between each segment's own fields.
    pack = struct.Struct(f"!{len(prefix) + 2}sHH4sH{ihl - 8}sI5sB2sH{tcp_len - 18}s").pack
    head, ip_mid, addresses = prefix + ip_header[0:2], ip_header[6:10], ip_header[12:] + tcp_header[0:4]
    tcp_ack, tcp_window, tcp_tail = tcp_header[8:13], tcp_header[14:16], tcp_header[18:]
    flags, seq, ident = segment_tcp.flags, segment_tcp.seq, ip.ident
    view = memoryview(packet)
    from_bytes = int.from_bytes
    out = []
    # Every segment but the last carries mss bytes and, after the first, the same flags: their sums' shared parts
    # are added once here, and the loop adds what is each segment's own (the identification, sequence number and
    # payload). The last segment (perhaps also the first) takes the other branch once.
    segment_flags = flags & ~(FIN | PSH)
    ip_length = ihl + tcp_len + mss
    ip_base, tcp_base = ip_sum + ip_length, tcp_sum + tcp_len + mss
    folds = _folds(mss)
    for start in range(headers_end, max(end, headers_end + 1), mss):   # one segment at least, payload or not
        stop = start + mss
        if stop >= end:
            stop = end
            segment_flags = flags if start == headers_end else flags & ~_CWR
            ip_length = ihl + tcp_len + (stop - start)
            ip_base, tcp_base = ip_sum + ip_length, tcp_sum + ip_length - ihl
            folds = _folds(stop - start)
        chunk = view[start:stop]
        value = from_bytes(chunk, "big")
        if (stop - start) & 1:
            value <<= 8
        for width, mask in folds:
            value = (value >> width) + (value & mask)
        tcp_check = tcp_base + segment_flags + (seq >> 16) + (seq & 0xFFFF) + value % 0xFFFF
        tcp_check = (tcp_check & 0xFFFF) + (tcp_check >> 16)
        tcp_check = (tcp_check & 0xFFFF) + (tcp_check >> 16)
        ip_check = ip_base + ident
        ip_check = (ip_check & 0xFFFF) + (ip_check >> 16)
        ip_check = (ip_check & 0xFFFF) + (ip_check >> 16)
        out.append(pack(head, ip_length, ident, ip_mid, ~ip_check & 0xFFFF, addresses, seq, tcp_ack, segment_flags,
                        tcp_window, ~tcp_check & 0xFFFF, tcp_tail))
        out.append(chunk)
        if limit is not None and len(out) >= 2 * limit:
            break
        ident = (ident + 1) & 0xFFFF
        seq = (seq + mss) & 0xFFFFFFFF
        segment_flags = flags & ~(FIN | PSH | _CWR)
    return out


@functools.lru_cache(maxsize=64)
def _folds(size: int) -> tuple[tuple[int, int], ...]:
    """How to fold the ``size``-byte chunk's value (as one integer) before taking it modulo 0xFFFF, which keeps
    its 16-bit ones' complement sum: each fold adds the high part to the low, at a width that is a multiple of
    16 bits (2**16 = 1 modulo 0xFFFF) and of 30 (CPython's digit, so the shift moves whole digits). Shifts,
    masks and additions cost a few cycles a digit; the modulo costs a division a digit, so it runs last on a
    number an eighth as long: about 40% less time for a 1400-byte chunk."""
    folds = []
    bits = size * 8 + 8
    while bits > 1920:
        width = -(-bits // 2 // 240) * 240
        folds.append((width, (1 << width) - 1))
        bits = width + 1
    return tuple(folds)


def segment_tcp6(frame: bytes, mss: int) -> list[bytes]:
    """Cut an Ethernet/IPv6/TCP super-frame into frames carrying at most ``mss`` bytes each.

    As :func:`segment_tcp4`, with the IPv6 payload length in place of the
    IPv4 fields (IPv6 has no header checksum nor identification). TCP must
    follow the fixed header directly: a super-frame with extension headers
    is an :class:`UnsupportedOffload` (the kernel's stack does not send one
    for a plain TCP socket).
    """
    if mss <= 0:
        raise Malformed(f"gso_size {mss}")
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IPV6:
        raise Malformed(f"TCPv6 segmentation of ethertype {eth.ethertype:#06x}")
    ip_at = eth.payload_offset
    tcp_at = ip_at + IPV6_HEADER_LEN
    if len(frame) < tcp_at:
        raise Truncated(f"ipv6: {len(frame) - ip_at} bytes, need {IPV6_HEADER_LEN}")
    if frame[ip_at] >> 4 != 6:
        raise Malformed(f"ipv6: version {frame[ip_at] >> 4}")
    if frame[ip_at + 6] != PROTO_TCP:
        raise UnsupportedOffload(f"TCPv6 segmentation past next header {frame[ip_at + 6]}")
    end = tcp_at + int.from_bytes(frame[ip_at + 4:ip_at + 6], "big")
    if end > len(frame):
        raise Truncated(f"ipv6: payload length says {end - tcp_at}, {len(frame) - tcp_at} bytes follow")
    addresses = frame[ip_at + 8:tcp_at]   # source, then destination

    def fix_ip(header: bytearray, index: int, tcp_length: int) -> int:
        struct.pack_into("!H", header, ip_at + 4, tcp_length)
        return int.from_bytes(addresses + struct.pack("!IxxxB", tcp_length, PROTO_TCP), "big")

    return _cut(frame, tcp_at, end, mss, fix_ip)


def _cut(frame: bytes, tcp_at: int, end: int, mss: int,
         fix_ip: Callable[[bytearray, int, int], int]) -> list[bytes]:
    """The segments of a super-frame whose TCP header is at ``tcp_at`` and whose IP packet ends at ``end``.

    ``fix_ip(header, index, tcp_length)`` sets the IP fields of segment
    ``index`` in its copy of the headers and returns its pseudo-header sum.
    """
    segment_tcp = Tcp.parse(frame, tcp_at)
    headers_end = tcp_at + segment_tcp.header_len
    if headers_end > end:
        raise Truncated(f"tcp: a {segment_tcp.header_len}-byte header runs past the IP packet's end")
    payload = frame[headers_end:end]
    if len(payload) <= mss:
        segments_payload = [payload]
    else:
        segments_payload = [payload[i:i + mss] for i in range(0, len(payload), mss)]

    template = bytes(frame[:headers_end])
    tcp_header_len = segment_tcp.header_len
    tcp_checksum = at(tcp_at, tcp.CHECKSUM)
    seq_at, flags_at = tcp_at + tcp.SEQ_NUM.start, tcp_at + tcp.FLAGS
    out = []
    last = len(segments_payload) - 1
    offset = 0
    for index, chunk in enumerate(segments_payload):
        header = bytearray(template)
        initial = fix_ip(header, index, tcp_header_len + len(chunk))
        flags = segment_tcp.flags
        if index != last:
            flags &= ~(FIN | PSH)
        if index != 0:
            flags &= ~_CWR
        struct.pack_into("!I", header, seq_at, (segment_tcp.seq + offset) & 0xFFFFFFFF)
        header[flags_at] = flags
        header[tcp_checksum] = b"\0\0"
        segment = bytes(header[tcp_at:]) + chunk
        header[tcp_checksum] = internet_checksum(segment, initial).to_bytes(2, "big")
        out.append(bytes(header) + chunk)
        offset += len(chunk)
    return out


def segment(frame: SuperFrame, mss: int | None = None, ip_at: int = ethernet.HEADER_LEN) -> list[bytes]:
    """The segments of ``frame``, each a whole packet with full checksums, of at most its ``gso_size``
    payload bytes (``mss`` when that is smaller: a next hop with a smaller MTU). ``ip_at`` 0: a bare IP
    super-frame (a TUN's, or on the overlay's L3 interface), IPv4 only."""
    size = frame.gso_size if mss is None else min(mss, frame.gso_size)
    gso = frame.gso_type & ~GSO_ECN
    if gso == GSO_TCPV4:
        return segment_ipv4(frame, size) if ip_at == 0 else segment_tcp4(frame, size)
    if gso == GSO_TCPV6 and ip_at:
        return segment_tcp6(frame, size)
    raise UnsupportedOffload(f"GSO type {frame.gso_type:#x}{'' if ip_at else ' in a bare IP packet'}")


def cut_super_frames(frames: Sequence[bytes], ip_at: int = ethernet.HEADER_LEN) -> tuple[Sequence[bytes], int]:
    """``frames`` with every super-frame among them cut into its segments, for a port that takes none, and
    how many could not be cut (malformed: the caller counts them as dropped). Without a super-frame among
    them, ``frames`` itself. ``ip_at`` 0: bare IP packets (a TUN's)."""
    for frame in frames:
        if type(frame) is SuperFrame:
            break
    else:
        return frames, 0
    out: list[bytes] = []
    malformed = 0
    for frame in frames:
        if type(frame) is SuperFrame:
            try:
                out += segment(frame, None, ip_at)
            except WireError:
                malformed += 1
        else:
            out.append(frame)
    return out, malformed


def vnet_header(frame: SuperFrame, ip_at: int = ethernet.HEADER_LEN) -> bytes:
    """The virtio-net header that hands ``frame`` to a device that segments (a TAP or TUN with TSO,
    AF_PACKET): the checksum left partial from the TCP header on, and the cut. ``ip_at`` 0: a bare IP
    packet (a TUN's)."""
    ipv6 = frame[12:14] == _ETHERTYPE_IPV6 if ip_at else frame[0] >> 4 == 6
    tcp_at = ip_at + (IPV6_HEADER_LEN if ipv6 else (frame[ip_at] & 0x0F) << 2)
    headers = tcp_at + ((frame[tcp_at + tcp.DATA_OFFSET] >> 4) << 2)
    return VNET_HDR.pack(F_NEEDS_CSUM, frame.gso_type, headers, frame.gso_size, tcp_at, tcp.CHECKSUM.start)


def read_vnet(packet: bytes, ip_at: int = ethernet.HEADER_LEN) -> bytes:
    """The frame behind one virtio-net header, from a device that hands over super-frames: a TCP one as a
    :class:`SuperFrame`, whole; a partial checksum completed.

    A super-frame is taken whole only when it is plain Ethernet with IPv4 or IPv6 and TCP right after
    (what a container's stack sends), or with ``ip_at`` 0 (a TUN's bare packets) IPv4 and TCP; anything
    else with a GSO type is a :class:`~vswitch.core.wire.errors.WireError` (the port counts it).
    """
    if len(packet) < VNET_HDR_LEN:
        raise Truncated(f"virtio-net header: {len(packet)} bytes")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(packet)
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        frame = packet[VNET_HDR_LEN:]
        return complete_checksum(frame, csum_start, csum_offset) if flags & F_NEEDS_CSUM else frame
    ip = VNET_HDR_LEN + ip_at
    if ip_at:
        kind = packet[VNET_HDR_LEN + 12:VNET_HDR_LEN + 14]
        is_v4, is_v6 = kind == _ETHERTYPE_IPV4, kind == _ETHERTYPE_IPV6
    else:
        kind = packet[ip:ip + 1]
        is_v4, is_v6 = kind == b"\x45", False   # no options: what a TCP socket sends
    if gso_size and len(packet) > ip + IPV6_HEADER_LEN + tcp.MIN_HEADER_LEN and (
            (gso == GSO_TCPV4 and is_v4 and packet[ip + ipv4.PROTOCOL] == PROTO_TCP)
            or (gso == GSO_TCPV6 and is_v6 and packet[ip + 6] == PROTO_TCP)):
        return super_frame(memoryview(packet)[VNET_HDR_LEN:], gso_type, gso_size)
    raise UnsupportedOffload(f"GSO type {gso_type:#x} on {kind.hex()}")


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
    if gso == GSO_TCPV6:
        return segment_tcp6(frame, gso_size)
    raise UnsupportedOffload(f"GSO type {gso_type:#x}")


MAX_COALESCED = 65535 - 20 - 60   # payload of one IPv4 packet with the longest TCP header
_ACK, _ACK_PSH = 0x10, 0x18
_IP = ethernet.HEADER_LEN
_IP_PROTOCOL = _IP + ipv4.PROTOCOL
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = b"\x08\x00", b"\x86\xdd"
_TCP_IN_FRAME6 = _IP + IPV6_HEADER_LEN
_Coalesce = Callable[[Sequence[bytes], int, int, bool], tuple[bytes, int]]


def _coalescer(ip_at: int) -> _Coalesce:
    """The coalescer of packets whose IPv4 header is at ``ip_at``: behind an Ethernet header (14) or none (0).
    What it reads of a plain IPv4/TCP packet (no IP options) are constants of the closure, worked out once."""
    tcp_at = ip_at + ipv4.MIN_HEADER_LEN
    min_len = tcp_at + tcp.MIN_HEADER_LEN
    ver_ihl, protocol, flags_at = ip_at + ipv4.VER_IHL, ip_at + ipv4.PROTOCOL, ip_at + ipv4.FLAGS
    length_at = ip_at + ipv4.LENGTH.start
    src = at(ip_at, ipv4.SRC)
    data_offset, tcp_flags, tcp_seq = tcp_at + tcp.DATA_OFFSET, tcp_at + tcp.FLAGS, at(tcp_at, tcp.SEQ_NUM)
    ethertype = ethernet.ETHERTYPE if ip_at else slice(0, 0)   # without a link header, nothing to compare
    ipv4_type = _ETHERTYPE_IPV4 if ip_at else b""
    # The runs of bytes that must be equal in every packet of a flow: all but the IP length, identification and
    # checksum, the TCP sequence number, flags and checksum (and the payload).
    same0, same1, same2, same3, same4 = (
        slice(0, length_at),                                         # link header, IP version, length, TOS
        slice(ip_at + ipv4.FRAGMENT.start, ip_at + ipv4.CHECKSUM.start),  # fragment fields, TTL, protocol
        slice(src.start, tcp_seq.start),                             # addresses and ports
        slice(tcp_at + tcp.ACK_NUM.start, tcp_flags),                # acknowledgement number, data offset
        at(tcp_at, tcp.WINDOW),
    )
    urgent = tcp_at + tcp.URGENT.start                               # then the urgent pointer and options

    def coalesce(frames: Sequence[bytes], start: int, limit: int, verify: bool) -> tuple[bytes, int]:
        first = frames[start]
        if (len(first) < min_len or first[ethertype] != ipv4_type or first[ver_ihl] != 0x45
                or first[protocol] != PROTO_TCP or first[flags_at] & 0x3F or first[flags_at + 1]
                or first[data_offset] < 0x50 or first[tcp_flags] != _ACK):
            return first, 1   # a data offset below 5 (20 bytes) is no TCP header: never joined
        headers = tcp_at + ((first[data_offset] >> 4) << 2)
        total = (first[length_at] << 8) | first[length_at + 1]
        size = total - (headers - ip_at)
        if size <= 0 or len(first) < ip_at + total or verify and not tcp_sum_ok(first, src.start, ip_at + total):
            return first, 1
        end = start + 1
        last = min(len(frames), start + limit)
        seq = int.from_bytes(first[tcp_seq], "big") + size
        payloads = [first[headers:ip_at + total]]
        joined = size
        psh = False
        first0, first1, first2, first3, first4 = first[same0], first[same1], first[same2], first[same3], first[same4]
        options = first[urgent:headers]
        while end < last:
            frame = frames[end]
            if (len(frame) < headers or frame[same0] != first0 or frame[same1] != first1 or frame[same2] != first2
                    or frame[same3] != first3 or frame[same4] != first4 or frame[urgent:headers] != options
                    or frame[tcp_flags] not in (_ACK, _ACK_PSH)):
                break
            length = ((frame[length_at] << 8) | frame[length_at + 1]) - (headers - ip_at)
            if (length <= 0 or length > size or joined + length > MAX_COALESCED or len(frame) < headers + length
                    or int.from_bytes(frame[tcp_seq], "big") != seq & 0xFFFFFFFF
                    or verify and not tcp_sum_ok(frame, src.start, headers + length)):
                break
            payloads.append(frame[headers:headers + length])
            joined += length
            seq += length
            end += 1
            if frame[tcp_flags] == _ACK_PSH or length < size:
                psh = frame[tcp_flags] == _ACK_PSH
                break   # PSH or a shorter segment ends the run
        if end - start == 1:
            return first, 1
        headers_of = joined_headers(first[ip_at:tcp_at], first[tcp_at:headers], headers - ip_at + joined,
                                    _ACK_PSH if psh else _ACK)
        return super_frame(b"".join((first[:ip_at], headers_of, *payloads)), GSO_TCPV4, size), end - start

    return coalesce


def partial_tcp_checksum(src: bytes, dst: bytes, tcp_length: int) -> int:
    """What CHECKSUM_PARTIAL leaves in a TCP checksum field: the pseudo-header sum, folded, not complemented
    (the kernel, or whoever cuts the packet, adds the rest)."""
    return ones_complement_sum(b"", pseudo_header_sum(src, dst, PROTO_TCP, tcp_length))


def joined_headers(ip_header: bytes, tcp_header: bytes, ip_length: int, flags: int) -> bytes:
    """The IPv4 and TCP headers of a super-frame joined from segments with these headers (a 20-byte IPv4
    header): the whole length with its header checksum, ``flags`` (PSH from the last segment), and the
    partial TCP checksum."""
    ip = bytearray(ip_header)
    ip[ipv4.LENGTH] = ip_length.to_bytes(2, "big")
    ip[ipv4.CHECKSUM] = b"\0\0"
    ip[ipv4.CHECKSUM] = internet_checksum(ip).to_bytes(2, "big")
    segment_header = bytearray(tcp_header)
    segment_header[tcp.FLAGS] = flags
    segment_header[tcp.CHECKSUM] = partial_tcp_checksum(
        ip_header[ipv4.SRC], ip_header[ipv4.DST], ip_length - ipv4.MIN_HEADER_LEN).to_bytes(2, "big")
    return bytes(ip + segment_header)


def tcp_sum_ok(packet: bytes, addresses_at: int, end: int) -> bool:
    """Whether the TCP checksum of a plain IPv4 packet (20-byte header) is valid: its addresses, at
    ``addresses_at``, run straight into the TCP header, so the pseudo-header is one sum with the segment."""
    size = end - addresses_at
    value = int.from_bytes(packet[addresses_at:end], "big")
    if size & 1:
        value <<= 8
    for width, mask in _folds(size):
        value = (value >> width) + (value & mask)
    return (value + PROTO_TCP + size - 8) % 0xFFFF == 0


_COALESCE_FRAMES, _COALESCE_PACKETS = _coalescer(_IP), _coalescer(0)


def coalesce_tcp4(frames: Sequence[bytes], start: int, limit: int = 64, verify: bool = False) -> tuple[bytes, int]:
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
    ``tcp_gro_receive`` rules. Returns (a :class:`SuperFrame`, frames
    used); a frame that joins nothing comes back as it was, alone.

    With ``verify``, a frame joins only with a valid TCP checksum, as GRO
    checks one no device vouched for: for frames from a peer, whose bad
    segments the receiving stack must still see (and drop), never hidden in
    a super-frame whose checksum it takes on trust.
    """
    return _COALESCE_FRAMES(frames, start, limit, verify)


def coalesce_ipv4(packets: Sequence[bytes], start: int, limit: int = 64, verify: bool = False) -> tuple[bytes, int]:
    """As :func:`coalesce_tcp4` for bare IPv4 packets (an L3 interface, a TUN, the overlay's udp backend): a
    run of one flow's packets joined into one super-packet, a :class:`SuperFrame` with no link header, which
    :func:`segment_ipv4` cuts back."""
    return _COALESCE_PACKETS(packets, start, limit, verify)
