"""MAC and IPv4 address helpers.

Addresses travel through the core as ``bytes`` (6 for a MAC, 4 for IPv4): they
slice straight out of frames, hash fast as dict keys and need no conversion on
the fast path. These helpers convert to and from text at the edges.
"""

import ipaddress

import attrs

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def mac_from_str(text: str) -> bytes:
    """Parse ``02:00:00:00:00:01`` (or with ``-``) into 6 bytes."""
    parts = text.replace("-", ":").split(":")
    # int(p, 16) alone would accept "+1", " 1" and non-ASCII digits: check the text.
    if len(parts) != 6 or any(len(p) not in (1, 2) or not set(p) <= _HEX_DIGITS for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_to_str(mac: bytes) -> str:
    return mac.hex(":")


def is_multicast_mac(mac: bytes) -> bool:
    """True for group addresses (multicast and broadcast): I/G bit set."""
    return bool(mac[0] & 1)


def is_link_local_mac(mac: bytes) -> bool:
    """01:80:C2:00:00:0X, the IEEE 802.1D reserved addresses a bridge never forwards."""
    return mac[:5] == b"\x01\x80\xc2\x00\x00" and mac[5] <= 0x0F


def ip_from_str(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip_to_str(ip: bytes) -> str:
    return str(ipaddress.IPv4Address(ip))


@attrs.frozen
class Network:
    """An IPv4 prefix as two integers, for a containment test without objects."""

    address: int
    mask: int

    @classmethod
    def of(cls, ip: bytes, prefix_len: int) -> "Network":
        mask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF
        return cls(int.from_bytes(ip, "big") & mask, mask)

    @classmethod
    def parse(cls, text: str) -> "Network":
        """``10.0.0.0/8``; host bits must be zero (ValueError otherwise)."""
        net = ipaddress.IPv4Network(text)
        return cls.of(net.network_address.packed, net.prefixlen)

    @property
    def prefix_len(self) -> int:
        return self.mask.bit_count()

    @property
    def network(self) -> bytes:
        return self.address.to_bytes(4, "big")

    def __contains__(self, ip: bytes) -> bool:
        return int.from_bytes(ip, "big") & self.mask == self.address

    def __str__(self) -> str:
        return f"{ip_to_str(self.network)}/{self.prefix_len}"
