"""ARP for IPv4 over Ethernet (RFC 826)."""

import struct

import attrs

from .errors import Malformed, Truncated

LEN = 28
OP_REQUEST = 1
OP_REPLY = 2
_HTYPE_ETHERNET = 1
_PTYPE_IPV4 = 0x0800

_ARP = struct.Struct("!HHBBH6s4s6s4s")


@attrs.frozen
class Arp:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> "Arp":
        if len(buf) - offset < LEN:
            raise Truncated(f"arp: {len(buf) - offset} bytes, need {LEN}")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, offset)
        if (htype, ptype, hlen, plen) != (_HTYPE_ETHERNET, _PTYPE_IPV4, 6, 4):
            raise Malformed(f"arp: not Ethernet/IPv4 (htype={htype} ptype={ptype:#x} hlen={hlen} plen={plen})")
        if op not in (OP_REQUEST, OP_REPLY):
            raise Malformed(f"arp: unknown operation {op}")
        return cls(op, sha, spa, tha, tpa)

    def build(self) -> bytes:
        return _ARP.pack(
            _HTYPE_ETHERNET, _PTYPE_IPV4, 6, 4, self.op,
            self.sender_mac, self.sender_ip, self.target_mac, self.target_ip,
        )
