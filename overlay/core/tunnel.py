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
from collections.abc import Callable, Iterable, Iterator, Sequence

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
from vswitch.core.l3.icmp import ErrorPolicy, error_name, error_packet
from vswitch.core.wire import ethernet, icmp, ipv4, tcp
from vswitch.core.wire.addr import Network, ip_to_str
from vswitch.core.wire.checksum import internet_checksum
from vswitch.core.wire.errors import WireError
from vswitch.core.wire.field import at
from vswitch.core.wire.ipv4 import decrement_ttl
from vswitch.core.wire.offload import (
    GSO_ECN,
    GSO_TCPV4,
    SuperFrame,
    coalesce_ipv4,
    coalesce_tcp4,
    first_segment,
    ipv4_segment_parts,
    segment,
)

from .backends import BACKENDS
from .codec import (
    ADDRESS_IP,
    ADDRESS_LEN,
    ADDRESS_PEER,
    VXLAN_FLAG_I,
    VXLAN_FLAGS,
    VXLAN_HEADER_LEN,
    VXLAN_VNI,
    flow_source_port,
    vxlan_header,
)
from .gro import DatagramRun, datagram_run, join_run, split_run
from .peers import DEFAULT_MAX_PEERS, Lease, LeaseChanges, Peer, PeerTable

_IPV4 = b"\x08\x00"
# A VXLAN datagram: the address header, the VXLAN header, the inner frame (Ethernet, then IPv4).
_VXLAN_VNI = at(ADDRESS_LEN, VXLAN_VNI)
_INNER = ADDRESS_LEN + VXLAN_HEADER_LEN
_INNER_DST, _INNER_ETHERTYPE = at(_INNER, ethernet.DST), at(_INNER, ethernet.ETHERTYPE)
_INNER_IP = _INNER + ethernet.HEADER_LEN
_IP_IN_FRAME = ethernet.HEADER_LEN + ipv4.MIN_HEADER_LEN   # a frame that can hold an IPv4 header
DEFAULT_UNDERLAY_MTU = 1500


def _join(packets: list[bytes], joined_at: list[int], coalesce: Callable[..., tuple[bytes, int]],
          verify: bool) -> list[bytes]:
    """``packets`` with each run of one TCP flow's segments joined into one super-frame, the rest as they were:
    GRO's rules (:func:`~vswitch.core.wire.offload.coalesce_tcp4`); with ``verify``, only segments whose TCP
    checksum is right join, for the container's stack takes a super-frame's on trust. The packets at
    ``joined_at`` are super-frames joined already: they stay as they are, and nothing joins across them."""
    out: list[bytes] = []
    start, count = 0, len(packets)
    for stop in (*joined_at, count):
        while start < stop:
            joined, used = coalesce(packets, start, min(64, stop - start), verify)
            out.append(joined)
            start += used
        if stop < count:
            out.append(packets[stop])
            start = stop + 1
    return out


def _quoted(packet: bytes) -> bytes:
    """What an ICMP error about ``packet`` quotes: a super-frame's first segment (what its sender sent at once,
    as the router answers), or the packet."""
    if type(packet) is SuperFrame:
        try:
            return first_segment(packet, packet.gso_size)
        except WireError:
            pass
    return packet


def _header_problem(packet: bytes, offset: int = 0) -> DropReason | None:
    """Why the IPv4 header at ``packet[offset:]`` (20 bytes or more, version 4) is no sound one, or None:
    a header length below 20 bytes or past the packet, a total length below the header or past the packet."""
    ihl = (packet[offset + ipv4.VER_IHL] & 0x0F) * 4
    size = len(packet) - offset
    if ihl < ipv4.MIN_HEADER_LEN or ihl > size:
        return DropReason.IP_HEADER_LENGTH
    total = int.from_bytes(packet[at(offset, ipv4.LENGTH)], "big")
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
        vtep_mac: bytes | None = None, inside: str = "ip", max_peers: int = DEFAULT_MAX_PEERS, mtu: int | None = None,
        coalesce: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if inside not in ("ip", "ethernet"):
            raise ValueError(f"inside must be 'ip' or 'ethernet', not {inside!r}")
        if inside == "ethernet" and not BACKENDS[backend].carries_ethernet:
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
        self.mtu = DEFAULT_UNDERLAY_MTU - self.overhead if mtu is None else mtu   # of the inner IP packets
        self.coalesce = coalesce
        self.peers = PeerTable(port=self.port, max_peers=max_peers)
        self._vxlan = vxlan_header(vni) if backend == "vxlan" else b""
        self._frame_headers: dict[Network, bytes] = {}   # VXLAN: header + inner Ethernet header, per peer subnet
        self._icmp = ErrorPolicy(per_destination=False)   # flannel's proxy: one global limit
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
        ver_ihl, length_at, dst, min_len = ipv4.VER_IHL, ipv4.LENGTH.start, ipv4.DST, ipv4.MIN_HEADER_LEN
        for packet in packets:
            if len(packet) < min_len or packet[ver_ihl] >> 4 != 4:
                result.append(self._drop(INSIDE, DropReason.IP_TRUNCATED if len(packet) < min_len else DropReason.IP_VERSION, packet))
                continue
            # the fast path's check: version 4, a 20-byte header, a total length that fits
            if packet[ver_ihl] != 0x45 or not min_len <= (packet[length_at] << 8 | packet[length_at + 1]) <= len(packet):
                unsound = _header_problem(packet)
                if unsound is not None:
                    result.append(self._drop(INSIDE, unsound, packet))
                    continue
            peer = lookup(packet[dst])
            if peer is None:
                result += self._undeliverable(INSIDE, packet, _quoted(packet), icmp.DEST_UNREACHABLE, DropReason.NO_LEASE)
                continue
            if udp:   # flannel's proxy takes a hop off the TTL; a super-frame's is taken in its segments' headers
                if packet[ipv4.TTL] <= 1:
                    result += self._undeliverable(INSIDE, packet, _quoted(packet), icmp.TIME_EXCEEDED, DropReason.TTL_EXCEEDED)
                    continue
                sent = packet if type(packet) is SuperFrame else decrement_ttl(packet)
                prefix = peer.header
            else:
                sent = packet
                sport = flow_source_port(packet)
                prefix = b"".join((peer.header[ADDRESS_PEER], sport.to_bytes(2, "big"), headers[peer.lease.subnet]))
            if type(packet) is SuperFrame:
                if not self._cut(packet, 0, prefix, peer, out, result, hop=udp):
                    continue
            else:
                datagram = prefix + sent
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
        dst, header_len = ethernet.DST, ethernet.HEADER_LEN
        for frame in frames:
            if len(frame) < header_len:
                result.append(self._drop(INSIDE, DropReason.TRUNCATED, frame))
                continue
            if frame[0] & 1:   # a group address: ARP, IPv6 ND; no flooding
                result.append(self._drop(INSIDE, DropReason.NO_FLOODING, frame))
                continue
            peer = by_mac(frame[dst])
            if peer is None:
                result.append(self._drop(INSIDE, DropReason.UNKNOWN_VTEP, frame))
                continue
            if frame[ethernet.ETHERTYPE] == _IPV4 and len(frame) >= _IP_IN_FRAME:
                sport = flow_source_port(frame, header_len)
            else:   # a fixed hash of the MACs
                sport = flow_source_port(frame[dst] + frame[ethernet.SRC] + b"\x40" + bytes(19))
            prefix = b"".join((peer.header[ADDRESS_PEER], sport.to_bytes(2, "big"), vxlan))
            if type(frame) is SuperFrame:
                self._cut(frame, header_len, prefix, peer, out, result)
                continue
            datagram = prefix + frame
            out.append(datagram)
            peer.counters.tx_packets += 1
            peer.counters.tx_bytes += len(datagram) - ADDRESS_LEN
        if out:
            self._stats.encapsulated += len(out)
            result.append(Transmit(UNDERLAY, out))
        return result

    def _cut(self, frame: SuperFrame, ip_at: int, prefix: bytes, peer: Peer, out: list[bytes],
             result: list[TunnelAction], hop: bool = False) -> bool:
        """Cut super-frame ``frame`` (with ``hop``, a TTL taken in each segment) into datagrams for ``peer``, each ``prefix``
        and a whole packet of at most the overlay's MTU with full checksums, for peers (flanneld, the
        kernel's vxlan) take no super-frames. They go into ``out`` as one :class:`~.gro.DatagramRun`, built
        in one copy, of one size but the last: the underlay port sends it with UDP GSO, one ``sendmsg`` for
        up to 64 KB. False if it cannot be cut (dropped)."""
        address, outer = prefix[:ADDRESS_LEN], prefix[ADDRESS_LEN:]
        try:
            if frame.gso_type & ~GSO_ECN == GSO_TCPV4 and frame[ip_at - 2:ip_at] in (b"", _IPV4):
                ihl = (frame[ip_at] & 0x0F) << 2
                headers = ihl + ((frame[ip_at + ihl + tcp.DATA_OFFSET] >> 4) << 2)
                mss = min(frame.gso_size, self.mtu - headers)
                data = b"".join(ipv4_segment_parts(frame, mss, ip_at, outer + frame[:ip_at], hop))
                size = len(outer) + ip_at + headers + mss   # each datagram's, but the last's
            else:   # TCPv6 in a frame (the ethernet inside): cut at the sender's MSS, which its device's MTU bounds
                pieces = segment(frame)
                data, size = b"".join(outer + piece for piece in pieces), len(outer) + len(pieces[0])
        except (WireError, IndexError):
            result.append(self._drop(INSIDE, DropReason.SUPER_FRAME_MALFORMED, frame))
            return False
        count = -(-len(data) // size)
        out.append(datagram_run(address, data, size) if count > 1 else address + data)
        self._stats.encapsulated += count - 1   # one more is counted with the rest of ``out``
        counters = peer.counters
        counters.tx_packets += count
        counters.tx_bytes += len(data)
        return True

    # -- peers → inside -------------------------------------------------------------------

    def decapsulate(self, datagrams: Sequence[bytes], now: float) -> list[TunnelAction]:
        """Datagrams from the underlay to inside packets (or frames), refusing strangers and forgeries.

        A :class:`~.gro.DatagramRun` (the datagrams UDP GRO joined) that holds one TCP flow's segments, as
        any bulk transfer's do, becomes one super-frame in one pass (:func:`~.gro.join_run`); any other is
        taken datagram by datagram.
        """
        inside: list[bytes] = []
        joined_at: list[int] = []   # where in ``inside`` a run joined whole sits (joined no further)
        result: list[TunnelAction] = []
        by_address = self.peers.by_address
        udp = self.backend == "udp"
        frames_inside = self.inside == "ethernet"
        offset = ADDRESS_LEN if udp else _INNER_IP   # where the inner IPv4 packet starts
        refusal = self._refusal
        for datagram in self._datagrams(datagrams, inside, joined_at, offset):
            peer = by_address(datagram[ADDRESS_IP])
            if peer is None:
                result.append(self._drop(UNDERLAY, DropReason.UNKNOWN_PEER, datagram))
                continue
            reason = refusal(datagram, peer, offset)
            if reason is not None:
                result.append(self._refuse(peer, reason, datagram))
                continue
            if udp:
                if datagram[offset + ipv4.TTL] <= 1:
                    result += self._undeliverable(UNDERLAY, datagram, datagram[offset:], icmp.TIME_EXCEEDED,
                                                  DropReason.TTL_EXCEEDED)
                    continue
                packet = decrement_ttl(datagram, offset)   # flannel's proxy takes a hop, in the copy that unwraps
            elif frames_inside:
                packet = datagram[_INNER:]
            else:
                packet = datagram[offset:]
            inside.append(packet)
            counters = peer.counters
            counters.rx_packets += 1
            counters.rx_bytes += len(datagram) - ADDRESS_LEN
        if inside:
            self._stats.decapsulated += len(inside)
            if self.coalesce and len(inside) > 1:
                # flannel's udp backend always sends a UDP checksum, which covers the inner packet and which our
                # kernel has checked; VXLAN may send none (Linux's default), and then only the inner one protects
                inside = _join(inside, joined_at, coalesce_tcp4 if frames_inside else coalesce_ipv4, verify=not udp)
            result.append(Transmit(INSIDE, inside))
        return result

    def _datagrams(self, datagrams: Sequence[bytes], inside: list[bytes], joined_at: list[int],
                   offset: int) -> Iterator[bytes]:
        """The datagrams to take one by one; the runs of one flow's segments in a GRO run, joined whole, go
        straight into ``inside`` (their places in ``joined_at``)."""
        joining = self.coalesce and self.inside == "ip"
        for datagram in datagrams:
            if type(datagram) is not DatagramRun:
                yield datagram
                continue
            if not joining:
                yield from split_run(datagram)
                continue
            header, size = datagram.header, datagram.size
            count = -(-len(datagram) // size)
            at = 0
            while at < count:
                joined, used = self._join_run(datagram, at, offset)
                if joined is not None:
                    joined_at.append(len(inside))
                    inside.append(joined)
                    at += used
                elif used:
                    yield header + datagram[at * size:(at + 1) * size]
                    at += 1
                else:
                    yield from (header + datagram[i:i + size] for i in range(at * size, len(datagram), size))
                    break

    def _join_run(self, run: DatagramRun, start: int, offset: int) -> tuple[bytes | None, int]:
        """:func:`~.gro.join_run` from datagram ``start`` on, if that one is a sound datagram from a peer (the rest
        join only with its headers); the peer's counters count what it took."""
        peer = self.peers.by_address(run.header[ADDRESS_IP])
        if peer is None:
            return None, 0
        size = run.size
        first = run.header + run[start * size:(start + 1) * size]
        udp = self.backend == "udp"
        if self._refusal(first, peer, offset) is not None or (udp and first[offset + ipv4.TTL] <= 1):
            return None, 1
        joined, used = join_run(run, offset - ADDRESS_LEN, not udp, start, hop=udp)
        if joined is not None:
            counters = peer.counters
            counters.rx_packets += used
            counters.rx_bytes += min(len(run), (start + used) * size) - start * size
            self._stats.decapsulated += used - 1   # one more is counted with the rest of ``inside``
        return joined, used

    def _refusal(self, datagram: bytes, peer: Peer, offset: int) -> DropReason | None:
        """Why a datagram from ``peer`` is refused (its inner IPv4 packet at ``offset``), or None."""
        if self.backend != "udp":
            if len(datagram) < offset or not datagram[ADDRESS_LEN + VXLAN_FLAGS] & VXLAN_FLAG_I:
                return DropReason.OVERLAY_MALFORMED
            if datagram[_VXLAN_VNI] != self._vxlan[VXLAN_VNI]:
                return DropReason.FOREIGN_VNI
            if datagram[_INNER_DST] != self.vtep_mac:
                return DropReason.NOT_FOR_VTEP
            if datagram[_INNER_ETHERTYPE] != _IPV4:
                return DropReason.UNSUPPORTED_ETHERTYPE
        ver_ihl, length_at = offset + ipv4.VER_IHL, offset + ipv4.LENGTH.start
        min_len = ipv4.MIN_HEADER_LEN
        if len(datagram) < offset + min_len or datagram[ver_ihl] >> 4 != 4 or (   # as encapsulate checks
                (datagram[ver_ihl] != 0x45
                 or not min_len <= (datagram[length_at] << 8 | datagram[length_at + 1]) <= len(datagram) - offset)
                and _header_problem(datagram, offset) is not None):
            return DropReason.OVERLAY_MALFORMED
        if datagram[offset + ipv4.SRC.start:offset + ipv4.SRC.stop] not in peer.lease.subnet:
            return DropReason.FORGED_SOURCE
        return None

    def _undeliverable(self, side: str, frame: bytes, packet: bytes, type_: int, reason: DropReason) -> list[TunnelAction]:
        """``packet`` goes no further: its sender is owed an ICMP error (net unreachable, time exceeded: code 0)
        — unless its header checksum is wrong, for a bad header is discarded silently (RFC 1812 5.2.2)."""
        if internet_checksum(packet[:(packet[ipv4.VER_IHL] & 0x0F) * 4]) != 0:
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
        if not self._icmp.permits(packet, error.type, error.code, now):
            return None
        self._stats.icmp_sent[error_name(error.type, error.code)] += 1
        return error_packet(source or self.address, packet, error.type, error.code)

    # -- counters -----------------------------------------------------------------------------

    def _drop(self, side: str, reason: DropReason, frame: bytes) -> Drop:
        self._drops[reason] += 1
        return Drop(side, reason, frame)

    def _refuse(self, peer: Peer, reason: DropReason, datagram: bytes) -> Drop:
        peer.counters.rx_dropped += 1
        return self._drop(UNDERLAY, reason, datagram)

    def statistics(self) -> OverlayStatistics:
        return attrs.evolve(
            self._stats, icmp_sent=Counter(self._stats.icmp_sent), icmp_rate_limited=self._icmp.rate_limited,
        )

    def drop_counts(self) -> dict[DropReason, int]:
        return dict(self._drops)

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend, "network": str(self.network), "subnet": str(self.subnet),
            "address": ip_to_str(self.address), "port": self.port,
            **({"vni": self.vni, "vtep_mac": self.vtep_mac.hex(":")} if self.vtep_mac else {}),
        }
