"""The overlay: what goes between this node's inside and the peers' daemons. Pure, time passed in.

:class:`Overlay` turns inside packets into datagrams for peers
(:meth:`~Overlay.encapsulate`) and datagrams from peers into inside packets
(:meth:`~Overlay.decapsulate`), in either wire format (:mod:`vswitch.overlay.core.codec`).
The inside is one of two things, the same core for both:

* ``"ip"``: IPv4 packets — an L3 interface of the daemon's own router
  (the overlay fully in userspace), or flannel's ``flannel0`` TUN;
* ``"ethernet"``: Ethernet frames from a TAP that stands in for flannel's
  ``flannel.1`` (VXLAN only), where the host kernel has already resolved
  the remote subnet's address to the peer's VTEP MAC.

flannel's model, with no flooding and no learning: a destination belongs to
the lease whose subnet holds it (longest prefix), a lease names the peer's
public address and, for VXLAN, its VTEP MAC. Inside the ``"ip"`` inside,
VXLAN frames are addressed from our VTEP MAC to the peer's, exactly what
flannel's static ARP and FDB entries make the kernel send.

Who may send (flannel checks none of this): a datagram must come from a
peer's public address, its inner source must lie in that peer's subnet,
and a VXLAN header must carry our VNI. Every refusal is a counted drop.

The results are :mod:`vswitch.core.actions` — ``Transmit`` to :data:`INSIDE` or
:data:`UNDERLAY`, ``Drop`` — and :class:`Unreachable`, an ICMP error owed to
a packet's sender. Who sends that error depends on the wiring: the
daemon's router (with its rate limits and NAT), or :meth:`Overlay.icmp_error`
in front of a flannel device.
"""

from collections import Counter
from collections.abc import Iterable, Sequence

import attrs

from vswitch.core.actions import (
    INSIDE,
    UNDERLAY,
    Drop,
    DropReason,
    Transmit,
    TunnelAction,
    Unreachable,
)
from vswitch.core.l3.router import ICMP_BURST, ICMP_RATE, TokenBucket
from vswitch.core.wire import icmp, ipv4
from vswitch.core.wire.addr import Network, ip_to_str
from vswitch.core.wire.checksum import internet_checksum

from .backends import BACKENDS
from .codec import (
    ADDRESS_LEN,
    VXLAN_FLAG_I,
    VXLAN_HEADER_LEN,
    decrement_ttl,
    flow_source_port,
    vxlan_header,
)
from .peers import DEFAULT_MAX_PEERS, Lease, LeaseChanges, Peer, PeerTable

ICMP_ERROR_TTL = 64
_IPV4 = b"\x08\x00"
_ZERO_IP = b"\0\0\0\0"


def _header_problem(packet: bytes, offset: int = 0) -> DropReason | None:
    """Why the IPv4 header at ``packet[offset:]`` (20 bytes or more, version 4) is no sound one, or None:
    a header length below 20 bytes or past the packet, a total length below the header or past the packet."""
    ihl = (packet[offset] & 0x0F) * 4
    size = len(packet) - offset
    if ihl < 20 or ihl > size:
        return DropReason.IP_HEADER_LENGTH
    total = (packet[offset + 2] << 8) | packet[offset + 3]
    if total < ihl or total > size:
        return DropReason.IP_LENGTH
    return None


@attrs.define(slots=True)
class OverlayStatistics:
    encapsulated: int = 0
    decapsulated: int = 0
    icmp_sent: Counter[str] = attrs.Factory(Counter)
    icmp_rate_limited: int = 0


class Overlay:
    def __init__(
        self, *, backend: str, network: Network, subnet: Network, port: int | None = None, vni: int = 1,
        vtep_mac: bytes | None = None, inside: str = "ip", max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if inside not in ("ip", "ethernet"):
            raise ValueError(f"inside must be 'ip' or 'ethernet', not {inside!r}")
        if inside == "ethernet" and backend != "vxlan":
            raise ValueError("only the vxlan backend carries Ethernet frames")
        if backend == "vxlan" and (vtep_mac is None or len(vtep_mac) != 6 or vtep_mac[0] & 1):
            raise ValueError("the vxlan backend needs a unicast VTEP MAC")
        if subnet.network not in network or subnet.prefix_len < network.prefix_len:
            raise ValueError(f"subnet {subnet} is not inside network {network}")
        self.backend = backend
        self.network = network
        self.subnet = subnet
        self.address = subnet.network           # flannel0's and flannel.1's address: the subnet's network address
        self.port = BACKENDS[backend].default_port if port is None else port
        self.vni = vni
        self.vtep_mac = vtep_mac
        self.inside = inside
        self.overhead = BACKENDS[backend].overhead
        self.peers = PeerTable(port=self.port, max_peers=max_peers)
        self._vxlan = vxlan_header(vni) if backend == "vxlan" else b""
        self._frame_headers: dict[Network, bytes] = {}   # VXLAN: header + inner Ethernet header, per peer subnet
        self._icmp_bucket = TokenBucket(ICMP_BURST, float("-inf"))
        self._drops: Counter[DropReason] = Counter()
        self._stats = OverlayStatistics()

    # -- leases -----------------------------------------------------------------------

    def set_leases(self, leases: Iterable[Lease]) -> LeaseChanges:
        """The peers' leases, all of them (a reload passes the new set; unchanged peers keep going)."""
        leases = list(leases)
        for lease in leases:
            subnet = lease.subnet
            if subnet.network not in self.network or subnet.prefix_len < self.network.prefix_len:
                raise ValueError(f"lease {lease}: not inside the cluster network {self.network}")
            if subnet.network in self.subnet or self.subnet.network in subnet:
                raise ValueError(f"lease {lease}: overlaps this node's subnet {self.subnet}")
            if self.backend == "vxlan" and lease.vtep_mac is None:
                raise ValueError(f"lease {lease}: the vxlan backend needs the peer's VTEP MAC")
            if lease.vtep_mac is not None and lease.vtep_mac == self.vtep_mac:
                raise ValueError(f"lease {lease}: has this node's own VTEP MAC")
        changes = self.peers.update(leases)
        if self.backend == "vxlan":
            own = self.vtep_mac or b""
            self._frame_headers = {p.lease.subnet: self._vxlan + (p.lease.vtep_mac or b"") + own + _IPV4 for p in self.peers}
        return changes

    # -- inside → peers -------------------------------------------------------------------

    def encapsulate(self, packets: Sequence[bytes], now: float) -> list[TunnelAction]:
        """Inside packets (or frames) to datagrams for their peers."""
        if self.inside == "ethernet":
            return self._encapsulate_frames(packets)
        out: list[bytes] = []
        result: list[TunnelAction] = []
        lookup = self.peers.lookup
        udp = self.backend == "udp"
        headers = self._frame_headers
        for packet in packets:
            if len(packet) < 20 or packet[0] >> 4 != 4:
                result.append(self._drop(INSIDE, DropReason.IP_TRUNCATED if len(packet) < 20 else DropReason.IP_VERSION, packet))
                continue
            if packet[0] != 0x45 or not 20 <= (packet[2] << 8 | packet[3]) <= len(packet):   # the fast path's check
                unsound = _header_problem(packet)
                if unsound is not None:
                    result.append(self._drop(INSIDE, unsound, packet))
                    continue
            peer = lookup(packet[16:20])
            if peer is None:
                result += self._undeliverable(INSIDE, packet, packet, icmp.DEST_UNREACHABLE, DropReason.NO_LEASE)
                continue
            if udp:
                sent = decrement_ttl(packet)
                if sent is None:
                    result += self._undeliverable(INSIDE, packet, packet, icmp.TIME_EXCEEDED, DropReason.TTL_EXCEEDED)
                    continue
                datagram = peer.header + sent
            else:
                sport = flow_source_port(packet)
                datagram = b"".join((peer.header[:6], sport.to_bytes(2, "big"), headers[peer.lease.subnet], packet))
            out.append(datagram)
            counters = peer.counters
            counters.tx_packets += 1
            counters.tx_bytes += len(datagram) - ADDRESS_LEN
        if out:
            self._stats.encapsulated += len(out)
            result.append(Transmit(UNDERLAY, out))
        return result

    def _encapsulate_frames(self, frames: Sequence[bytes]) -> list[TunnelAction]:
        """Frames from a flannel.1 TAP: the kernel chose the peer's VTEP MAC; its FDB entry is the peer."""
        out: list[bytes] = []
        result: list[TunnelAction] = []
        by_mac, vxlan = self.peers.by_mac, self._vxlan
        for frame in frames:
            if len(frame) < 14:
                result.append(self._drop(INSIDE, DropReason.TRUNCATED, frame))
                continue
            if frame[0] & 1:
                result.append(self._drop(INSIDE, DropReason.NO_FLOODING, frame))   # ARP, IPv6 ND: no flooding
                continue
            peer = by_mac(frame[0:6])
            if peer is None:
                result.append(self._drop(INSIDE, DropReason.UNKNOWN_VTEP, frame))
                continue
            if frame[12:14] == _IPV4 and len(frame) >= 34:
                sport = flow_source_port(frame, 14)
            else:
                sport = flow_source_port(frame[0:12] + b"\x40" + bytes(19))  # a fixed hash of the MACs
            datagram = b"".join((peer.header[:6], sport.to_bytes(2, "big"), vxlan, frame))
            out.append(datagram)
            peer.counters.tx_packets += 1
            peer.counters.tx_bytes += len(datagram) - ADDRESS_LEN
        if out:
            self._stats.encapsulated += len(out)
            result.append(Transmit(UNDERLAY, out))
        return result

    # -- peers → inside -------------------------------------------------------------------

    def decapsulate(self, datagrams: Sequence[bytes], now: float) -> list[TunnelAction]:
        """Datagrams from the underlay to inside packets (or frames), refusing strangers and forgeries."""
        inside: list[bytes] = []
        result: list[TunnelAction] = []
        by_address = self.peers.by_address
        udp = self.backend == "udp"
        ethernet = self.inside == "ethernet"
        vni_bytes = self._vxlan[4:7]
        own_mac = self.vtep_mac
        for datagram in datagrams:
            peer = by_address(datagram[0:4])
            if peer is None:
                result.append(self._drop(UNDERLAY, DropReason.UNKNOWN_PEER, datagram))
                continue
            if udp:
                offset = ADDRESS_LEN
            else:
                offset = ADDRESS_LEN + VXLAN_HEADER_LEN + 14
                if len(datagram) < offset or not datagram[ADDRESS_LEN] & VXLAN_FLAG_I:
                    result.append(self._refuse(peer, DropReason.OVERLAY_MALFORMED, datagram))
                    continue
                if datagram[ADDRESS_LEN + 4:ADDRESS_LEN + 7] != vni_bytes:
                    result.append(self._refuse(peer, DropReason.FOREIGN_VNI, datagram))
                    continue
                if datagram[ADDRESS_LEN + 8:ADDRESS_LEN + 14] != own_mac:
                    result.append(self._refuse(peer, DropReason.NOT_FOR_VTEP, datagram))
                    continue
                if datagram[offset - 2:offset] != _IPV4:
                    result.append(self._refuse(peer, DropReason.UNSUPPORTED_ETHERTYPE, datagram))
                    continue
            if len(datagram) < offset + 20 or datagram[offset] >> 4 != 4 or (
                    (datagram[offset] != 0x45 or not 20 <= (datagram[offset + 2] << 8 | datagram[offset + 3]) <= len(datagram) - offset)
                    and _header_problem(datagram, offset) is not None):
                result.append(self._refuse(peer, DropReason.OVERLAY_MALFORMED, datagram))
                continue
            if datagram[offset + 12:offset + 16] not in peer.lease.subnet:
                result.append(self._refuse(peer, DropReason.FORGED_SOURCE, datagram))
                continue
            if udp:
                packet = decrement_ttl(datagram, offset)
                if packet is None:
                    result += self._undeliverable(UNDERLAY, datagram, datagram[offset:], icmp.TIME_EXCEEDED,
                                                  DropReason.TTL_EXCEEDED)
                    continue
            elif ethernet:
                packet = datagram[ADDRESS_LEN + VXLAN_HEADER_LEN:]
            else:
                packet = datagram[offset:]
            inside.append(packet)
            counters = peer.counters
            counters.rx_packets += 1
            counters.rx_bytes += len(datagram) - ADDRESS_LEN
        if inside:
            self._stats.decapsulated += len(inside)
            result.append(Transmit(INSIDE, inside))
        return result

    def _undeliverable(self, side: str, frame: bytes, packet: bytes, type_: int, reason: DropReason) -> list[TunnelAction]:
        """``packet`` goes no further: its sender is owed an ICMP error (net unreachable, time exceeded: code 0)
        — unless its header checksum is wrong, for a bad header is discarded silently (RFC 1812 5.2.2)."""
        if internet_checksum(packet[:(packet[0] & 0x0F) * 4]) != 0:
            return [self._drop(side, DropReason.IP_CHECKSUM, frame)]
        return [Unreachable(packet, type_, 0), self._drop(side, reason, frame)]

    # -- ICMP in front of a flannel device -------------------------------------------------

    def icmp_error(self, error: Unreachable, now: float, source: bytes | None = None) -> bytes | None:
        """The ICMP error for ``error``, from ``source`` (default: this node's overlay address, as flannel's proxy).

        None when RFC 1812 forbids one (about an ICMP error, a fragment after
        the first, a multicast or unspecified source) or the rate limit
        (Linux's 1000/s, burst 50) says wait.
        """
        packet = error.packet
        ihl = (packet[0] & 0x0F) * 4
        src = packet[12:16]
        if int.from_bytes(packet[6:8], "big") & ipv4.OFFSET_MASK or src[0] >= 224 or src == _ZERO_IP:
            return None
        if packet[16] >= 224:
            return None  # nor about a packet to a multicast or broadcast address (RFC 1812 4.3.2.7)
        if packet[9] == ipv4.PROTO_ICMP and len(packet) > ihl and packet[ihl] in icmp.ERROR_TYPES:
            return None
        if not self._icmp_bucket.take(now, ICMP_RATE, ICMP_BURST):
            self._stats.icmp_rate_limited += 1
            return None
        kind = "time-exceeded" if error.type == icmp.TIME_EXCEEDED else "net-unreachable"
        self._stats.icmp_sent[kind] += 1
        body = icmp.build_error(error.type, error.code, packet)
        return ipv4.build_ipv4(source or self.address, src, ipv4.PROTO_ICMP, body, ttl=ICMP_ERROR_TTL, flags_offset=0)

    # -- counters -----------------------------------------------------------------------------

    def _drop(self, side: str, reason: DropReason, frame: bytes) -> Drop:
        self._drops[reason] += 1
        return Drop(side, reason, frame)

    def _refuse(self, peer: Peer, reason: DropReason, datagram: bytes) -> Drop:
        peer.counters.rx_dropped += 1
        return self._drop(UNDERLAY, reason, datagram)

    def statistics(self) -> OverlayStatistics:
        return attrs.evolve(self._stats, icmp_sent=Counter(self._stats.icmp_sent))

    def drop_counts(self) -> dict[DropReason, int]:
        return dict(self._drops)

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend, "network": str(self.network), "subnet": str(self.subnet),
            "address": ip_to_str(self.address), "port": self.port,
            **({"vni": self.vni, "vtep_mac": self.vtep_mac.hex(":")} if self.vtep_mac else {}),
        }
