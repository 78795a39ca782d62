"""NAT with connection tracking: MASQUERADE, port forwarding, hairpinning. Pure, time passed in.

Three parts: :mod:`.conntrack` (tuples, states, timeouts, the bounded table),
:mod:`.mapping` (endpoint-independent mappings and their external ports) and
:mod:`.translate` (:class:`Nat` itself: the rules, and the rewriting of
headers and ICMP errors). This package names what the rest of the project
uses; the parts' own workings (``PortPool``, ``PORT_RANGE``) live in them.
"""

from .conntrack import (
    DEFAULT_MAX_CONNECTIONS,
    ICMP,
    MAX_CONNECTIONS,
    PROTOCOL_NAMES,
    TCP,
    UDP,
    Connection,
    State,
    Timeouts,
    describe,
    invert,
    make_key,
)
from .translate import (
    FRAGMENT_MEMORY,
    MAX_FORWARDS,
    Forward,
    Masquerade,
    Nat,
    NatStatistics,
    Routing,
    Verdict,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS", "ICMP", "MAX_CONNECTIONS", "PROTOCOL_NAMES", "TCP", "UDP", "Connection", "State",
    "Timeouts", "describe", "invert", "make_key", "FRAGMENT_MEMORY", "MAX_FORWARDS", "Forward", "Masquerade", "Nat",
    "NatStatistics", "Routing", "Verdict",
]
