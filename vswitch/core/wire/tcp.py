"""TCP headers (RFC 9293): enough to track and rewrite connections."""

import struct

import attrs

from .checksum import internet_checksum
from .errors import Malformed, Truncated
from .ipv4 import PROTO_TCP, pseudo_header_sum

MIN_HEADER_LEN = 20
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

# Field offsets from the start of the header (smoltcp's ``mod field``): an int
# for a one-byte field, a slice for a wider one.
SRC_PORT = slice(0, 2)
DST_PORT = slice(2, 4)
PORTS = slice(0, 4)      # SRC_PORT and DST_PORT together, as NAT tracks and rewrites them
SEQ_NUM = slice(4, 8)
ACK_NUM = slice(8, 12)
DATA_OFFSET = 12         # header length in 32-bit words (high nibble)
FLAGS = 13
WINDOW = slice(14, 16)
CHECKSUM = slice(16, 18)
URGENT = slice(18, 20)

_HEADER = struct.Struct("!HHIIBBHHH")


@attrs.frozen
class Tcp:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    header_len: int
    flags: int
    window: int
    checksum: int
    urgent: int

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> "Tcp":
        available = len(buf) - offset
        if available < MIN_HEADER_LEN:
            raise Truncated(f"tcp: {available} bytes, need {MIN_HEADER_LEN}")
        sport, dport, seq, ack, off, flags, window, csum, urg = _HEADER.unpack_from(buf, offset)
        header_len = (off >> 4) * 4
        if header_len < MIN_HEADER_LEN:
            raise Malformed(f"tcp: data offset {header_len}")
        if header_len > available:
            raise Truncated(f"tcp: {available} bytes, data offset says {header_len}")
        return cls(sport, dport, seq, ack, header_len, flags, window, csum, urg)


def build_tcp(
    src_ip: bytes, dst_ip: bytes, src_port: int, dst_port: int, *,
    seq: int = 0, ack: int = 0, flags: int = SYN, window: int = 65535, payload: bytes = b"", options: bytes = b"",
) -> bytes:
    if len(options) % 4:
        raise ValueError("tcp options must be padded to a multiple of 4 bytes")
    header_len = MIN_HEADER_LEN + len(options)
    segment = bytearray(
        _HEADER.pack(src_port, dst_port, seq, ack, (header_len // 4) << 4, flags, window, 0, 0) + options + payload
    )
    csum = internet_checksum(segment, pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, len(segment)))
    segment[CHECKSUM] = csum.to_bytes(2, "big")
    return bytes(segment)
