"""UDP (RFC 768)."""

import struct

import attrs

from .checksum import internet_checksum
from .errors import Malformed, Truncated
from .ipv4 import PROTO_UDP, pseudo_header_sum

HEADER_LEN = 8

# Field offsets from the start of the header (smoltcp's ``mod field``).
SRC_PORT = slice(0, 2)
DST_PORT = slice(2, 4)
PORTS = slice(0, 4)      # SRC_PORT and DST_PORT together, as NAT tracks and rewrites them
LENGTH = slice(4, 6)
CHECKSUM = slice(6, 8)   # zero: no checksum
_HEADER = struct.Struct("!HHHH")


@attrs.frozen
class Udp:
    src_port: int
    dst_port: int
    length: int
    checksum: int

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> "Udp":
        available = len(buf) - offset
        if available < HEADER_LEN:
            raise Truncated(f"udp: {available} bytes, need {HEADER_LEN}")
        sport, dport, length, csum = _HEADER.unpack_from(buf, offset)
        if length < HEADER_LEN:
            raise Malformed(f"udp: length {length}")
        if length > available:
            raise Truncated(f"udp: {available} bytes, length says {length}")
        return cls(sport, dport, length, csum)


def build_udp(src_ip: bytes, dst_ip: bytes, src_port: int, dst_port: int, payload: bytes) -> bytes:
    length = HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"udp datagram too large: {length} bytes")
    segment = bytearray(_HEADER.pack(src_port, dst_port, length, 0) + payload)
    csum = internet_checksum(segment, pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length))
    segment[CHECKSUM] = (csum or 0xFFFF).to_bytes(2, "big")  # 0 means "no checksum" in UDP
    return bytes(segment)
