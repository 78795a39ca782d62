"""IPv4 headers (RFC 791)."""

import struct

import attrs

from .checksum import internet_checksum
from .errors import Malformed, Truncated

MIN_HEADER_LEN = 20
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

# Field offsets from the start of the header (smoltcp's ``mod field``): an int
# for a one-byte field, a slice for a wider one.
VER_IHL = 0            # version (high nibble), header length in 32-bit words (low nibble)
TOS = 1
LENGTH = slice(2, 4)   # total length
IDENT = slice(4, 6)
FLAGS = 6              # the byte of DF (0x40), MF (0x20) and the fragment offset's high bits
FRAGMENT = slice(6, 8)  # flags and fragment offset: FLAG_DF, FLAG_MF, OFFSET_MASK
TTL = 8
PROTOCOL = 9
CHECKSUM = slice(10, 12)
SRC = slice(12, 16)
DST = slice(16, 20)
ADDRESSES = slice(12, 20)   # SRC and DST together, as NAT rewrites them
_CHECKSUM_AT = CHECKSUM.start

_HEADER = struct.Struct("!BBHHHBBH4s4s")


@attrs.frozen
class Ipv4:
    """A checked IPv4 header. ``payload`` is bounded by total length, not the buffer."""

    ihl: int
    tos: int
    total_length: int
    ident: int
    flags_offset: int
    ttl: int
    proto: int
    checksum: int
    src: bytes
    dst: bytes
    offset: int  # where this header starts in the buffer

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0, *, verify_checksum: bool = True) -> "Ipv4":
        available = len(buf) - offset
        if available < MIN_HEADER_LEN:
            raise Truncated(f"ipv4: {available} bytes, need {MIN_HEADER_LEN}")
        vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _HEADER.unpack_from(buf, offset)
        version, ihl = vihl >> 4, (vihl & 0x0F) * 4
        if version != 4:
            raise Malformed(f"ipv4: version {version}")
        if ihl < MIN_HEADER_LEN:
            raise Malformed(f"ipv4: header length {ihl}")
        if total < ihl:
            raise Malformed(f"ipv4: total length {total} < header length {ihl}")
        if available < total:
            raise Truncated(f"ipv4: {available} bytes, total length says {total}")
        if verify_checksum and internet_checksum(buf[offset:offset + ihl]) != 0:
            raise Malformed("ipv4: bad header checksum")
        return cls(ihl, tos, total, ident, frag, ttl, proto, csum, src, dst, offset)

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_offset & FLAG_DF)

    @property
    def fragment_offset(self) -> int:
        """In bytes."""
        return (self.flags_offset & OFFSET_MASK) * 8

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags_offset & FLAG_MF)

    @property
    def payload_offset(self) -> int:
        return self.offset + self.ihl

    def payload(self, buf: bytes) -> bytes:
        return buf[self.offset + self.ihl:self.offset + self.total_length]


def build_ipv4(
    src: bytes, dst: bytes, proto: int, payload: bytes, *,
    ttl: int = 64, ident: int = 0, tos: int = 0, flags_offset: int = FLAG_DF, options: bytes = b"",
) -> bytes:
    if len(options) % 4:
        raise ValueError("ipv4 options must be padded to a multiple of 4 bytes")
    ihl = MIN_HEADER_LEN + len(options)
    if ihl > 60 or ihl + len(payload) > 0xFFFF:
        raise ValueError(f"ipv4 packet too large: header {ihl} + payload {len(payload)} bytes")
    header = bytearray(_HEADER.pack(
        (4 << 4) | (ihl // 4), tos, ihl + len(payload), ident, flags_offset, ttl, proto, 0, src, dst,
    ) + options)
    header[CHECKSUM] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def decrement_ttl(packet: bytes, offset: int = 0) -> bytes | None:
    """The IPv4 packet at ``packet[offset:]`` with its TTL one less, or None when it would reach zero.

    The checksum changes incrementally, as Linux's ``ip_decrease_ttl`` and
    flannel's proxy do it: the TTL is the high byte of its 16-bit word, so
    the checksum goes up by 0x0100, with the end-around carry. That is
    :func:`~vswitch.core.wire.checksum.adjust` by the constant change of a
    decrement, inlined because it runs for every forwarded packet; the two
    agree for every checksum (the tests check all 65,536).
    """
    ttl = packet[offset + TTL]
    if ttl <= 1:
        return None
    check_at = offset + _CHECKSUM_AT
    check = ((packet[check_at] << 8) | packet[check_at + 1]) + 0x0100
    if check >= 0xFFFF:
        check = (check + 1) & 0xFFFF
    # TTL, PROTOCOL and CHECKSUM are the four bytes from TTL on
    return b"".join((
        packet[offset:offset + TTL], bytes((ttl - 1, packet[offset + PROTOCOL], check >> 8, check & 0xFF)),
        packet[check_at + 2:],
    ))


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The UDP/TCP pseudo-header as an integer, to pass as ``initial`` to the checksum."""
    return int.from_bytes(src + dst + struct.pack("!BBH", 0, proto, length), "big")
