"""Leases and the peer table. Pure.

A :class:`Lease` is one node's claim: a subnet of the cluster network, the
public (underlay) address its daemon listens on, and for VXLAN its VTEP
MAC — what flannel keeps under ``/coreos.com/network/subnets``. The
:class:`PeerTable` holds the other nodes' leases and answers three
questions on the fast path: which peer owns a destination address
(longest-prefix match; flannel scans linearly and takes the first match),
which peer a datagram came from (its public address), and which peer a
VTEP MAC belongs to (flannel's FDB entry).

:meth:`PeerTable.update` replaces the whole set of leases, as a reload
does; a peer whose lease did not change keeps its counters and its place,
so traffic to it never notices.
"""

from collections.abc import Iterable, Iterator

import attrs

from vswitch.core.l3.routes import RouteTable
from vswitch.core.wire.addr import Network, ip_to_str, mac_to_str

from .codec import address_header

DEFAULT_MAX_PEERS = 4096


@attrs.frozen
class Lease:
    subnet: Network
    public_ip: bytes
    vtep_mac: bytes | None = None    # VXLAN only

    def __str__(self) -> str:
        mac = f" vtep {mac_to_str(self.vtep_mac)}" if self.vtep_mac else ""
        return f"{self.subnet} at {ip_to_str(self.public_ip)}{mac}"


@attrs.define(slots=True)
class PeerCounters:
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0      # from this peer, refused (an inner source outside its subnet, a bad frame)


@attrs.define(slots=True, eq=False)
class Peer:
    lease: Lease
    port: int                                   # the peer's UDP port
    header: bytes = attrs.field(init=False)     # the address header of datagrams to it
    counters: PeerCounters = attrs.Factory(PeerCounters)

    def __attrs_post_init__(self) -> None:
        self.header = address_header(self.lease.public_ip, self.port)

    @property
    def network(self) -> Network:   # what RouteTable indexes
        return self.lease.subnet


@attrs.frozen
class LeaseChanges:
    added: tuple[Lease, ...] = ()
    removed: tuple[Lease, ...] = ()
    changed: tuple[Lease, ...] = ()     # the same subnet with a new address or VTEP MAC (counters start over)
    kept: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        return f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed, {self.kept} unchanged"


class PeerTable:
    def __init__(self, *, port: int, max_peers: int = DEFAULT_MAX_PEERS) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, got {max_peers}")
        self.port = port
        self.max_peers = max_peers
        self._peers: dict[Network, Peer] = {}
        self._routes: RouteTable[Peer] = RouteTable()
        self._by_address: dict[bytes, Peer] = {}
        self._by_mac: dict[bytes, Peer] = {}

    def update(self, leases: Iterable[Lease]) -> LeaseChanges:
        """Make the table hold exactly ``leases``; ValueError (and no change) if they conflict."""
        wanted: dict[Network, Lease] = {}
        addresses: dict[bytes, Lease] = {}
        macs: dict[bytes, Lease] = {}
        for lease in leases:
            other = wanted.get(lease.subnet) or addresses.get(lease.public_ip) or (
                macs.get(lease.vtep_mac) if lease.vtep_mac else None)
            if other is not None:
                raise ValueError(f"leases {other} and {lease} conflict: a subnet, public address"
                                 " or VTEP MAC can belong to one node only")
            wanted[lease.subnet] = addresses[lease.public_ip] = lease
            if lease.vtep_mac:
                macs[lease.vtep_mac] = lease
        if len(wanted) > self.max_peers:
            raise ValueError(f"{len(wanted)} leases exceed the limit of {self.max_peers} peers")
        added, removed, changed = [], [], []
        kept = 0
        for subnet, peer in list(self._peers.items()):
            lease = wanted.get(subnet)
            if lease is None:
                removed.append(peer.lease)
                self._routes.remove(subnet)
                del self._peers[subnet]
            elif lease != peer.lease:
                changed.append(lease)
                self._peers[subnet] = Peer(lease, self.port)
                self._routes.add(self._peers[subnet])
            else:
                kept += 1
        for subnet, lease in wanted.items():
            if subnet not in self._peers:
                added.append(lease)
                self._peers[subnet] = Peer(lease, self.port)
                self._routes.add(self._peers[subnet])
        self._by_address = {p.lease.public_ip: p for p in self._peers.values()}
        self._by_mac = {p.lease.vtep_mac: p for p in self._peers.values() if p.lease.vtep_mac}
        return LeaseChanges(tuple(added), tuple(removed), tuple(changed), kept)

    def lookup(self, dst: bytes) -> Peer | None:
        """The peer whose subnet holds ``dst`` (longest prefix wins)."""
        return self._routes.lookup(dst)

    def by_address(self, public_ip: bytes) -> Peer | None:
        return self._by_address.get(public_ip)

    def by_mac(self, vtep_mac: bytes) -> Peer | None:
        return self._by_mac.get(vtep_mac)

    def __iter__(self) -> Iterator[Peer]:
        return iter(sorted(self._peers.values(), key=lambda p: (p.lease.subnet.address, p.lease.subnet.mask)))

    def __len__(self) -> int:
        return len(self._peers)
