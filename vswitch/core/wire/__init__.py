"""Headers on the wire: named field offsets, parsers, builders and checksums.

Each header module names its fields' offsets from the start of the header,
as smoltcp's ``mod field`` does (``ethernet.DST``, ``ipv4.TTL``,
``ipv4.SRC``, ``tcp.CHECKSUM``; :mod:`.field` gives the convention). The
fast path never parses: it indexes the original ``bytes`` with these names
and forwards them unchanged when it only reads.

For everything else each header has a frozen ``parse`` result that checks
the buffer once and raises :class:`Truncated` or :class:`Malformed` on bad
input, and a ``build_*`` function for replies. :mod:`.checksum` holds the
Internet checksum, full and incremental (RFC 1624), and
:func:`.ipv4.decrement_ttl` the one TTL decrement of routers and the overlay.
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
