"""ICMP for IPv4 (RFC 792): echo and error messages."""

import struct

import attrs

from .checksum import internet_checksum
from .errors import Malformed, Truncated
from .ipv4 import VER_IHL

HEADER_LEN = 8

# Field offsets from the start of the message (smoltcp's ``mod field``): an
# int for a one-byte field, a slice for a wider one.
TYPE = 0
CODE = 1
CHECKSUM = slice(2, 4)
IDENT = slice(4, 6)      # echo: the identifier, which NAT tracks as both ports
SEQ = slice(6, 8)        # echo: the sequence number; fragmentation needed: the next-hop MTU
ECHO_REPLY = 0
DEST_UNREACHABLE = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12
ERROR_TYPES = frozenset({DEST_UNREACHABLE, 4, 5, TIME_EXCEEDED, PARAMETER_PROBLEM})

# Destination unreachable codes
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PORT_UNREACHABLE = 3
FRAGMENTATION_NEEDED = 4

_HEADER = struct.Struct("!BBHHH")


@attrs.frozen
class Icmp:
    """An ICMP message. For echo, ``ident``/``seq`` are meaningful; for errors,
    ``seq`` holds the next-hop MTU of fragmentation-needed."""

    type: int
    code: int
    checksum: int
    ident: int
    seq: int
    body: bytes

    @classmethod
    def parse(cls, buf: bytes, *, verify_checksum: bool = True) -> "Icmp":
        if len(buf) < HEADER_LEN:
            raise Truncated(f"icmp: {len(buf)} bytes, need {HEADER_LEN}")
        if verify_checksum and internet_checksum(buf) != 0:
            raise Malformed("icmp: bad checksum")
        type_, code, csum, ident, seq = _HEADER.unpack_from(buf)
        return cls(type_, code, csum, ident, seq, bytes(buf[HEADER_LEN:]))

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES


def build_icmp(type_: int, code: int, body: bytes, *, ident: int = 0, seq: int = 0) -> bytes:
    message = bytearray(_HEADER.pack(type_, code, 0, ident, seq) + body)
    message[CHECKSUM] = internet_checksum(message).to_bytes(2, "big")
    return bytes(message)


def build_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    return build_icmp(ECHO_REPLY if reply else ECHO_REQUEST, 0, payload, ident=ident, seq=seq)


def build_error(type_: int, code: int, offending_packet: bytes, *, mtu: int = 0) -> bytes:
    """An ICMP error quoting the offending IP header and the first 8 bytes of its payload.

    ``mtu`` fills the next-hop MTU field of fragmentation-needed (RFC 1191).
    """
    ihl = (offending_packet[VER_IHL] & 0x0F) * 4 if offending_packet else 0
    quoted = offending_packet[: ihl + 8]
    return build_icmp(type_, code, quoted, ident=0, seq=mtu)
