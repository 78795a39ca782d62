"""Header views and builders: check a buffer's length once, then read fields.

Each header has a frozen ``parse`` result that raises :class:`Truncated` or
:class:`Malformed` on bad input, and a ``build_*`` function for replies. The
fast path does not parse at all: it slices the original ``bytes`` at the
named offsets (``ethernet.DST``, ``ipv4.TTL_OFFSET`` …).
"""

from .addr import (
    BROADCAST_MAC,
    ZERO_MAC,
    ip_from_str,
    ip_to_str,
    is_link_local_mac,
    is_multicast_mac,
    mac_from_str,
    mac_to_str,
)
from .arp import Arp
from .checksum import internet_checksum, update16, update32
from .errors import Malformed, Truncated, WireError
from .ethernet import Ethernet, build_ethernet
from .icmp import Icmp, build_echo, build_error, build_icmp
from .ipv4 import Ipv4, build_ipv4
from .tcp import Tcp, build_tcp
from .udp import Udp, build_udp

__all__ = [
    "BROADCAST_MAC", "ZERO_MAC", "ip_from_str", "ip_to_str", "is_link_local_mac", "is_multicast_mac",
    "mac_from_str", "mac_to_str", "Arp", "internet_checksum", "update16", "update32", "Malformed", "Truncated",
    "WireError", "Ethernet", "build_ethernet", "Icmp", "build_echo", "build_error", "build_icmp", "Ipv4",
    "build_ipv4", "Tcp", "build_tcp", "Udp", "build_udp",
]
