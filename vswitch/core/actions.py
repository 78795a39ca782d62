"""What the core asks the shell to do: small frozen values.

The core turns a batch of received frames into a list of actions: a
:class:`Transmit` per egress port (carrying the frames of the batch bound for
that port, in order; when bridge and router both send to one port there may be
one from each) and one :class:`Drop` per discarded frame. Flooding is
expanded in the core, which knows which ports are up, so the shell only moves
bytes.
"""

import enum
from collections.abc import Sequence

import attrs


class DropReason(enum.Enum):
    """Every cause of a discarded frame; each is a counter in ``show stats``."""

    TRUNCATED = "truncated"            # shorter than an Ethernet header
    INVALID_SOURCE = "invalid-source"  # multicast, broadcast or all-zero source MAC
    LINK_LOCAL = "link-local"          # 01:80:C2:00:00:0X is never forwarded
    SAME_PORT = "same-port"            # destination lives on the ingress port
    PORT_DOWN = "port-down"            # ingress or egress port is administratively down
    NO_EGRESS = "no-egress"            # flooded, but no other port is up
    TX_QUEUE_FULL = "tx-queue-full"    # the shell's bounded egress queue was full (tail drop)
    INTERNAL_ERROR = "internal-error"  # lost with a batch to an unexpected exception (a bug), contained by the shell
    SUPER_FRAME_MALFORMED = "super-frame-malformed"  # a super-frame that could not be cut for a port without TSO
    # the router
    NOT_FOR_ROUTER = "not-for-router"  # unicast to another MAC on a router-owned port
    NOT_ROUTED = "not-routed"          # broadcast or multicast IP: delivered nowhere, never forwarded
    UNSUPPORTED_ETHERTYPE = "unsupported-ethertype"  # neither IPv4 nor ARP (IPv6, VLAN-tagged, ...)
    ARP_MALFORMED = "arp-malformed"
    IP_TRUNCATED = "ip-truncated"      # shorter than an IPv4 header
    IP_VERSION = "ip-version"          # version is not 4
    IP_HEADER_LENGTH = "ip-header-length"
    IP_LENGTH = "ip-length"            # total length below the header or beyond the frame
    IP_CHECKSUM = "ip-checksum"
    MARTIAN_SOURCE = "martian-source"  # from 0.0.0.0, loopback, multicast or broadcast
    NO_ROUTE = "no-route"              # ICMP net unreachable sent
    TTL_EXCEEDED = "ttl-exceeded"      # ICMP time exceeded sent
    FRAGMENTATION_NEEDED = "fragmentation-needed"  # DF set and the next hop's MTU is smaller; ICMP sent
    NEIGHBOUR_QUEUE_FULL = "neighbour-queue-full"  # too many packets held for an address being resolved
    NEIGHBOUR_UNREACHABLE = "neighbour-unreachable"  # ARP got no answer; ICMP host unreachable sent
    LOCAL_FRAGMENT = "local-fragment"  # a fragment for the router itself (it does not reassemble)
    ICMP_MALFORMED = "icmp-malformed"  # for the router, too short or a bad checksum
    PORT_UNREACHABLE = "port-unreachable"  # for the router, which listens on nothing: ICMP or TCP RST sent
    ROUTING_LOOP = "routing-loop"      # bounced between bridge and router more often than any path needs
    # NAT
    NAT_INVALID = "nat-invalid"        # would need translating but cannot start a connection (TCP RST, ICMP reply)
    NAT_TABLE_FULL = "nat-table-full"  # connection table at its limit with nothing to drop early
    NAT_NO_PORT = "nat-no-port"        # every external port of the address is taken
    NAT_SOURCE_LIMIT = "nat-source-limit"  # the source holds max_per_source connections already
    NAT_UNSUPPORTED = "nat-unsupported"  # untrackable (no ports, a fragment before its first) where masquerade applies
    # the overlay
    NO_LEASE = "overlay-no-lease"      # a cluster address no peer's subnet holds: ICMP net unreachable sent
    UNKNOWN_PEER = "overlay-unknown-peer"  # a datagram from an address that is no peer's public address
    FORGED_SOURCE = "overlay-forged-source"  # an inner source outside the sending peer's subnet
    FOREIGN_VNI = "overlay-foreign-vni"  # VXLAN with another network's VNI
    NOT_FOR_VTEP = "overlay-not-for-vtep"  # VXLAN whose inner frame is not addressed to our VTEP MAC
    OVERLAY_MALFORMED = "overlay-malformed"  # too short, no VXLAN I flag, or no sound IPv4 header inside
    NO_FLOODING = "overlay-no-flooding"  # a broadcast or multicast frame for the VXLAN device: never flooded
    UNKNOWN_VTEP = "overlay-unknown-vtep"  # a frame for a VTEP MAC no lease names

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Transmit:
    """Send ``frames`` (unchanged ``bytes``) out of ``port``, in order."""

    port: str
    frames: list[bytes]


@attrs.frozen
class Drop:
    """A frame that arrived on ``port`` was discarded for ``reason``."""

    port: str
    reason: DropReason
    frame: bytes = attrs.field(repr=lambda f: f"<{len(f)} bytes>")


Action = Transmit | Drop


# -- what a tunnel (the overlay) returns to the datapath --------------------------

INSIDE = "inside"       # a tunnel's Transmit towards this node (the router, or a flannel device)
UNDERLAY = "underlay"   # a tunnel's Transmit towards the peers (datagrams for the underlay)


@attrs.frozen
class Unreachable:
    """An ICMP error owed to the sender of ``packet`` (an IPv4 packet, no Ethernet header)."""

    packet: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    type: int
    code: int


TunnelAction = Transmit | Drop | Unreachable


def split_tunnel_actions(
    actions: Sequence[TunnelAction], inside: str, underlay: str, out: list[Action],
) -> tuple[list[bytes], list[Unreachable]]:
    """A tunnel's actions at the two ends it joins: the one place :data:`INSIDE` and :data:`UNDERLAY` become names.

    Datagrams for the underlay and every drop join ``out``, at port ``underlay``
    or ``inside``. Returned are the packets for the inside and the ICMP errors
    owed, which depend on what the inside is: the datapath hands both to the
    router, drop-in mode writes the packets into its flannel device and makes
    the errors itself.
    """
    packets: list[bytes] = []
    owed: list[Unreachable] = []
    for action in actions:
        if type(action) is Transmit:
            if action.port == UNDERLAY:
                out.append(Transmit(underlay, action.frames))
            else:
                packets += action.frames
        elif type(action) is Unreachable:
            owed.append(action)
        else:
            out.append(Drop(inside if action.port == INSIDE else underlay, action.reason, action.frame))
    return packets, owed
