"""Ethernet II frames, with an optional 802.1Q tag recognised."""

import struct

import attrs

from .errors import Truncated

HEADER_LEN = 14
VLAN_TAG_LEN = 4
# Field offsets (smoltcp's ``mod field``); the fast path slices the frame with these.
DST = slice(0, 6)
SRC = slice(6, 12)
ETHERTYPE = slice(12, 14)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

_HEADER = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")


@attrs.frozen
class Ethernet:
    """A parsed Ethernet header. ``payload_offset`` is where the payload starts."""

    dst: bytes
    src: bytes
    ethertype: int
    vlan: int | None = None  # VLAN id when 802.1Q tagged
    pcp: int = 0
    payload_offset: int = HEADER_LEN

    @classmethod
    def parse(cls, frame: bytes) -> "Ethernet":
        if len(frame) < HEADER_LEN:
            raise Truncated(f"ethernet: {len(frame)} bytes, need {HEADER_LEN}")
        dst, src, ethertype = _HEADER.unpack_from(frame)
        if ethertype in (ETH_P_8021Q, ETH_P_8021AD):
            if len(frame) < HEADER_LEN + VLAN_TAG_LEN:
                raise Truncated(f"802.1Q: {len(frame)} bytes, need {HEADER_LEN + VLAN_TAG_LEN}")
            tci, inner = _TAG.unpack_from(frame, HEADER_LEN)
            return cls(dst, src, inner, tci & 0x0FFF, tci >> 13, HEADER_LEN + VLAN_TAG_LEN)
        return cls(dst, src, ethertype)


def build_ethernet(
    dst: bytes, src: bytes, ethertype: int, payload: bytes = b"", *, vlan: int | None = None, pcp: int = 0
) -> bytes:
    if vlan is None:
        return _HEADER.pack(dst, src, ethertype) + payload
    tag = _TAG.pack((pcp << 13) | (vlan & 0x0FFF), ethertype)
    return _HEADER.pack(dst, src, ETH_P_8021Q) + tag + payload
