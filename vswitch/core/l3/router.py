"""The IPv4 router: interfaces, forwarding, local delivery, ARP. Pure, time passed in.

``handle_frames(interface, frames, now)`` takes what arrived on one router
interface — Ethernet frames, or IP packets on an L3 interface such as a TUN —
and returns :mod:`vswitch.core.actions` whose ``port`` is a router interface name;
the datapath maps interfaces to bridge ports or devices.

Per packet, in Linux's order: header checks (each failure a counted drop),
NAT before routing (answers, port forwards, hairpins; masquerade is decided
there too, with the route in hand), local delivery (echo replies, port and
protocol unreachable, TCP RST), the route lookup, TTL, the next hop's MTU
(fragmentation needed when DF is set, fragments when not), then the
neighbour cache. The TTL is decremented with an incremental checksum update,
as Linux's ``ip_decrease_ttl`` (:func:`~vswitch.core.wire.ipv4.decrement_ttl`).

A TCP super-frame (:class:`~vswitch.core.wire.offload.SuperFrame`) is forwarded
once, whole: one TTL decrement, one NAT rewrite, and it leaves a super-frame
cut as it came. The next hop's MTU is held against the segments it will be
cut into; what the router answers or reports about one (ICMP errors, a
reset) is about its first segment, once, as the sender's stack sent it at
once.

The slow path above remembers what it decided for a flow (:class:`_Hop`:
the rewrite, the way out, the neighbour's MAC as a ready frame header), by
destination without NAT and in the connection table with NAT, and the
flow's later packets take one lookup and one copy (:meth:`Router._fast`).
A decision holds while the route and neighbour tables it came from are
unchanged (their generations), the neighbour's entry is fresh and, with
NAT, the connection lives (it goes with it); port forwards concern only new
connections, which always take the slow path.

The parts live beside this module: the route table in :mod:`.routes`, the
ICMP error policy (RFC 1812, rate limits) in :mod:`.icmp`, fragmentation in
:mod:`.fragment`, the neighbour cache in :mod:`.neighbour`. ICMP errors are
sourced from the address of the interface they leave by, rate-limited
globally and per destination, and translated by NAT like any packet, so an
error about a translated flow reaches its sender with the header it sent.
"""

from collections import Counter

import attrs

from vswitch.core.actions import Action, Drop, DropReason, Transmit
from vswitch.core.nat import Connection, Nat
from vswitch.core.wire import arp as arp_wire
from vswitch.core.wire import ethernet, icmp, ipv4, tcp, udp
from vswitch.core.wire.addr import BROADCAST_MAC, Network, ip_to_str
from vswitch.core.wire.checksum import fold, internet_checksum
from vswitch.core.wire.errors import WireError
from vswitch.core.wire.field import at
from vswitch.core.wire.ipv4 import decrement_ttl
from vswitch.core.wire.offload import SuperFrame, first_segment, segment

from .fragment import fragment
from .icmp import ERROR_TTL, ErrorPolicy, error_name, error_packet
from .neighbour import NeighbourTable
from .routes import ROUTE_CACHE, Route, RouteTable

ETHERTYPE_IPV4 = b"\x08\x00"
ETHERTYPE_ARP = b"\x08\x06"
_ZERO_IP = b"\0\0\0\0"
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"
# What the packet path reads for every packet, as module-level constants: a module's attribute costs a
# lookup each time it is read.
_ETH_DST, _ETH_SRC, _ETHERTYPE, _PAYLOAD = ethernet.DST, ethernet.SRC, ethernet.ETHERTYPE, ethernet.HEADER_LEN
_MIN_IHL, _VER_IHL, _LENGTH, _SRC, _DST = ipv4.MIN_HEADER_LEN, ipv4.VER_IHL, ipv4.LENGTH.start, ipv4.SRC, ipv4.DST
_TCP, _UDP, _UDP_HEADER_LEN = ipv4.PROTO_TCP, ipv4.PROTO_UDP, udp.HEADER_LEN
_FLOW_END = _MIN_IHL + tcp.PORTS.stop   # addresses, then the ports of TCP or UDP right after a plain header
# The same in an Ethernet frame, for the fast path (a plain IPv4 header of 20 bytes).
_VER_IHL_AT, _LENGTH_AT, _TTL_AT = _PAYLOAD + _VER_IHL, _PAYLOAD + _LENGTH, _PAYLOAD + ipv4.TTL
_PROTOCOL_AT, _CHECKSUM_AT = _PAYLOAD + ipv4.PROTOCOL, _PAYLOAD + ipv4.CHECKSUM.start
_FRAGMENT_AT, _IP_HEADER = at(_PAYLOAD, ipv4.FRAGMENT), slice(_PAYLOAD, _PAYLOAD + _MIN_IHL)
_SRC_AT, _DST_AT = at(_PAYLOAD, _SRC), at(_PAYLOAD, _DST)
_FLOW_AT = _REWRITTEN_AT = slice(_SRC_AT.start, _PAYLOAD + _FLOW_END)   # addresses and ports
_TCP_FLAGS_AT = _PAYLOAD + _MIN_IHL + tcp.FLAGS
_TCP_CHECKSUM_AT, _UDP_CHECKSUM_AT = _PAYLOAD + _MIN_IHL + tcp.CHECKSUM.start, _PAYLOAD + _MIN_IHL + udp.CHECKSUM.start
_DF_ONLY, _NOT_FRAGMENT = b"\x40\x00", b"\x00\x00"
_TTL_DELTA = 0xFEFF   # RFC 1624's ~m + m' for the TTL's word (TTL, protocol) losing 0x0100


@attrs.define(slots=True)
class InterfaceStatistics:
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    arp_requests: int = 0       # requests sent
    arp_replies: int = 0        # replies sent (own addresses and proxy)
    address_conflicts: int = 0  # ARP from another MAC claiming our address


@attrs.define(slots=True, eq=False)
class Interface:
    name: str
    address: bytes
    network: Network
    mac: bytes | None          # None: an L3 interface (TUN), no Ethernet header and no ARP
    mtu: int
    proxy_arp: bool
    neighbours: NeighbourTable | None
    up: bool = True
    stats: InterfaceStatistics = attrs.Factory(InterfaceStatistics)
    broadcast: bytes = attrs.field(init=False, repr=False)   # the network's broadcast address, computed once

    def __attrs_post_init__(self) -> None:
        self.broadcast = (self.network.address | (~self.network.mask & 0xFFFFFFFF)).to_bytes(4, "big")


@attrs.define(slots=True)
class RouterStatistics:
    forwarded: int = 0
    delivered: int = 0           # packets for the router's own addresses
    fragments_created: int = 0
    icmp_sent: Counter[str] = attrs.Factory(Counter)   # by kind: echo-reply, time-exceeded, ...
    icmp_rate_limited: int = 0


class _Hop:
    """What the router decided for the packets of one flow, flattened so that a packet reads one object: the
    neighbour's MAC (the frame header, made once), the way out and until when that holds, and with NAT the
    connection and its rewrite. Good while the route table and the neighbour table it came from have not
    changed (their generations), the neighbour's entry is fresh (``until``) and, with NAT, the connection lives.
    """

    __slots__ = ("header", "name", "out", "until", "neighbours", "neighbours_generation", "routes_generation",
                 "conn", "direction", "rewritten", "ip_delta", "l4_delta")

    def __init__(self, out: Interface, header: bytes, until: float, neighbours: NeighbourTable, routes: int) -> None:
        self.out = out
        self.name = out.name
        self.header = header
        self.until = until
        self.neighbours = neighbours
        self.neighbours_generation = neighbours.generation
        self.routes_generation = routes
        self.conn: Connection | None = None
        self.direction = 0
        self.rewritten: bytes | None = None   # new addresses and ports; None: only the TTL changes
        self.ip_delta = _TTL_DELTA            # the header checksum's change, the TTL's included
        self.l4_delta = 0


class _Out:
    """What one call produces: frames per interface, in order, and drops."""

    __slots__ = ("drops", "frames")

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {}
        self.drops: list[Action] = []

    def send(self, interface: str, frame: bytes) -> None:
        queue = self.frames.get(interface)
        if queue is None:
            queue = self.frames[interface] = []
        queue.append(frame)

    def drop(self, interface: str, reason: DropReason, frame: bytes) -> None:
        self.drops.append(Drop(interface, reason, frame))


class Router:
    def __init__(self, *, neighbour_options: dict[str, float] | None = None) -> None:
        self._interfaces: dict[str, Interface] = {}
        self._local: dict[bytes, Interface] = {}     # own address → interface
        self._macs: set[bytes] = set()
        self.routes: RouteTable[Route] = RouteTable()
        self.nat: Nat | None = None
        self._neighbour_options = neighbour_options or {}
        self._announce: set[str] = set()               # interfaces owed a gratuitous ARP
        self._icmp = ErrorPolicy(per_destination=True)
        self._drops: Counter[DropReason] = Counter()
        self._stats = RouterStatistics()
        self._ident = 0
        # The per-flow fast path's decisions without NAT, by destination (bounded as the route cache); with
        # NAT they are the connection table's (ConnectionTable.decided), by tuple.
        self._hops: dict[bytes, _Hop] = {}
        self._headers: dict[bytes, bytes] = {}   # one object per frame header the hops use: read by every packet, kept hot

    # -- configuration ------------------------------------------------------------

    def add_interface(
        self, name: str, address: bytes, prefix_len: int, *, mac: bytes | None, mtu: int = 1500, proxy_arp: bool = False,
    ) -> Interface:
        """Add an interface with its address; its connected route comes with it."""
        if name in self._interfaces:
            raise ValueError(f"router interface {name!r} already exists")
        if address in self._local:
            raise ValueError(f"address {ip_to_str(address)} is already on interface {self._local[address].name!r}")
        if mtu < 68:
            raise ValueError(f"mtu must be at least 68, got {mtu}")
        neighbours = NeighbourTable(**self._neighbour_options) if mac is not None else None  # type: ignore[arg-type]
        iface = Interface(name, address, Network.of(address, prefix_len), mac, mtu, proxy_arp, neighbours)
        self._interfaces[name] = iface
        self._local[address] = iface
        if mac is not None:
            self._macs.add(mac)
            self._announce.add(name)
        self.routes.add(Route(iface.network, name, connected=True))
        return iface

    def add_route(self, network: Network, *, via: bytes | None = None, interface: str | None = None) -> Route:
        """A static route. ``via`` must be on a connected network unless ``interface`` says where it is."""
        if via is None and interface is None:
            raise ValueError(f"route {network}: needs a gateway (via) or an interface")
        if interface is None:
            assert via is not None
            connected = next((i for i in self._interfaces.values() if via in i.network), None)
            if connected is None:
                raise ValueError(f"route {network}: gateway {ip_to_str(via)} is not on any interface's network")
            interface = connected.name
        elif interface not in self._interfaces:
            raise ValueError(f"route {network}: no interface named {interface!r}")
        route = Route(network, interface, via)
        self.routes.add(route)
        return route

    def add_neighbour(self, interface: str, ip: bytes, mac: bytes) -> None:
        """A static ARP entry."""
        table = self._interfaces[interface].neighbours
        if table is None:
            raise ValueError(f"interface {interface!r} has no ARP (it is an L3 interface)")
        table.add_static(ip, mac)

    def set_interface_up(self, name: str, up: bool) -> list[Action]:
        """An interface going down forgets its neighbours (dropping what they held); coming up, it announces itself."""
        iface = self._interfaces[name]
        if iface.up == up:
            return []
        iface.up = up
        self.routes.forget_lookups()
        if up:
            if iface.mac is not None:
                self._announce.add(name)
            return []
        self._announce.discard(name)
        held = iface.neighbours.flush() if iface.neighbours else []
        return self._count([Drop(name, DropReason.PORT_DOWN, p) for p in held])

    @property
    def interfaces(self) -> dict[str, Interface]:
        return dict(self._interfaces)

    # -- what NAT asks (nat.Routing) --------------------------------------------------

    def route_interface(self, dst: bytes) -> str | None:
        route = self.routes.lookup(dst)
        return None if route is None else route.interface

    def local_interface(self, ip: bytes) -> str | None:
        iface = self._local.get(ip)
        return None if iface is None else iface.name

    def interface_address(self, name: str) -> bytes | None:
        iface = self._interfaces.get(name)
        return None if iface is None else iface.address

    # -- frames -------------------------------------------------------------------

    def handle_frames(self, interface: str, frames: list[bytes], now: float) -> list[Action]:
        iface = self._interfaces[interface]  # an unknown interface is misuse: KeyError
        emit = _Out()
        drops = emit.drops
        stats = iface.stats
        stats.rx_packets += len(frames)
        stats.rx_bytes += sum(map(len, frames))
        if not iface.up:
            drops += [Drop(interface, DropReason.PORT_DOWN, f) for f in frames]
        elif iface.mac is None:
            for packet in frames:
                if type(packet) is SuperFrame:   # bare IP (the overlay's joined segments, a TUN's)
                    reason = self._ip_input(iface, packet, now, emit, packet)
                else:
                    reason = self._ip_input(iface, packet, now, emit)
                if reason is not None:
                    drops.append(Drop(interface, reason, packet))
        else:
            mac, own = iface.mac, self._macs
            fast = self._fast
            translated = 0   # by the fast path, counted once
            for frame in frames:
                if len(frame) < _PAYLOAD:
                    drops.append(Drop(interface, DropReason.TRUNCATED, frame))
                    continue
                if frame[_ETH_SRC] in own:
                    continue  # our own broadcast, flooded back by the bridge
                ethertype = frame[_ETHERTYPE]
                if ethertype == ETHERTYPE_IPV4:
                    if frame[_ETH_DST] != mac:
                        reason = DropReason.NOT_ROUTED if frame[0] & 1 else DropReason.NOT_FOR_ROUTER  # group address
                    elif type(frame) is bytes and (handled := fast(frame, now, emit)):
                        translated += handled - 1
                        continue
                    elif type(frame) is SuperFrame:
                        reason = self._ip_input(iface, frame[_PAYLOAD:], now, emit, frame)
                    else:
                        reason = self._ip_input(iface, frame[_PAYLOAD:], now, emit)
                elif ethertype == ETHERTYPE_ARP:
                    reason = self._arp_input(iface, frame, now, emit)
                else:
                    reason = DropReason.UNSUPPORTED_ETHERTYPE
                if reason is not None:
                    drops.append(Drop(interface, reason, frame))
            if translated and self.nat is not None:
                self.nat.count_translated(translated)
        return self._actions(emit)

    def _fast(self, frame: bytes, now: float, emit: _Out) -> int:
        """Forward ``frame`` on what the slow path decided for its flow, if it may: 0 if it did not, 2 if it
        translated it (NAT), 1 otherwise.

        Only the commonest packet may: IPv4 without options, not a fragment, a TTL above one, a sound header
        checksum, not too big for the way out; with NAT, TCP or UDP of a live tracked connection. Everything
        the slow path checks per packet is checked here too (the source with the header without NAT: the
        destination keys the decision); what it checks per flow is what the decision was made on. One copy of
        the frame, with the Ethernet header, TTL, addresses, ports and both checksums rewritten in it.
        """
        if len(frame) < _PAYLOAD + _MIN_IHL or frame[_VER_IHL_AT] != 0x45:
            return 0   # too short for an IPv4 header: the slow path says why
        fragment_field = frame[_FRAGMENT_AT]
        if fragment_field != _DF_ONLY and fragment_field != _NOT_FRAGMENT:
            return 0
        ttl = frame[_TTL_AT]
        total = frame[_LENGTH_AT] << 8 | frame[_LENGTH_AT + 1]
        end = _PAYLOAD + total
        if ttl <= 1 or total < _MIN_IHL or end > len(frame) or int.from_bytes(frame[_IP_HEADER], "big") % 0xFFFF:
            return 0   # a header checksum is sound when the header sums to 0xFFFF: 0 modulo 0xFFFF
        nat = self.nat
        routes = self.routes
        if nat is None:
            src = frame[_SRC_AT]
            if src[0] >= 224 or src[0] == 127 or src == _ZERO_IP or src in self._local:
                return 0
            hop = self._hops.get(frame[_DST_AT])
            rewrite = None
            if (hop is None or now >= hop.until or hop.routes_generation != routes.generation
                    or hop.neighbours_generation != hop.neighbours.generation or total > hop.out.mtu):
                return 0
        else:
            proto = frame[_PROTOCOL_AT]
            if proto == _TCP:
                if total < _MIN_IHL + tcp.MIN_HEADER_LEN:
                    return 0
                flags = frame[_TCP_FLAGS_AT]
            elif proto == _UDP:
                if total < _MIN_IHL + _UDP_HEADER_LEN:
                    return 0
                flags = 0
            else:
                return 0
            conntrack = nat.conntrack
            hop = conntrack.decided.get(frame[_PROTOCOL_AT:_PROTOCOL_AT + 1] + frame[_FLOW_AT])
            if hop is None:
                return 0
            conn = hop.conn
            if (now >= hop.until or now >= conn.last + conn.timeout or hop.routes_generation != routes.generation
                    or hop.neighbours_generation != hop.neighbours.generation or total > hop.out.mtu):
                return 0
            conntrack.count(conn, hop.direction, proto, flags, total, now)
            rewrite = hop.rewritten
        check = ((frame[_CHECKSUM_AT] << 8 | frame[_CHECKSUM_AT + 1]) ^ 0xFFFF) + hop.ip_delta
        check = ((check & 0xFFFF) + (check >> 16)) ^ 0xFFFF   # one fold: both terms are 16 bits
        if rewrite is None:
            out = b"".join((hop.header, frame[_PAYLOAD:_TTL_AT], bytes((ttl - 1, frame[_PROTOCOL_AT])),
                            check.to_bytes(2, "big"), frame[_SRC_AT.start:end]))
        else:
            packet = bytearray(frame[:end])
            packet[:_PAYLOAD] = hop.header
            packet[_TTL_AT] = ttl - 1
            packet[_CHECKSUM_AT] = check >> 8
            packet[_CHECKSUM_AT + 1] = check & 0xFF
            packet[_REWRITTEN_AT] = rewrite
            csum_at = _TCP_CHECKSUM_AT if proto == _TCP else _UDP_CHECKSUM_AT
            old = packet[csum_at] << 8 | packet[csum_at + 1]
            if proto == _TCP or old:   # a zero UDP checksum means none
                check = (old ^ 0xFFFF) + hop.l4_delta
                check = ((check & 0xFFFF) + (check >> 16)) ^ 0xFFFF
                if check == 0 and proto == _UDP:
                    check = 0xFFFF
                packet[csum_at] = check >> 8
                packet[csum_at + 1] = check & 0xFF
            out = bytes(packet)
        self._stats.forwarded += 1
        queue = emit.frames.get(hop.name)
        if queue is None:
            queue = emit.frames[hop.name] = []
        queue.append(out)
        return 1 if rewrite is None else 2

    def _remember(self, arrived: bytes, dst: bytes, out: Interface, nexthop: bytes, now: float) -> None:
        """Keep the decision the slow path just made for ``arrived`` (forwarded whole to ``nexthop`` on ``out``),
        for :meth:`_fast`: when the neighbour's MAC was fresh, and with NAT only for a tracked connection."""
        neighbours = out.neighbours
        if neighbours is None or out.mac is None:
            return
        fresh = neighbours.fresh(nexthop, now)
        if fresh is None:
            return
        header = fresh[0] + out.mac + ETHERTYPE_IPV4
        headers = self._headers
        if len(headers) >= ROUTE_CACHE:
            headers.clear()
        header = headers.setdefault(header, header)
        nat = self.nat
        if nat is None:
            hops = self._hops
            if len(hops) >= ROUTE_CACHE:
                hops.clear()
            hops[dst] = _Hop(out, header, fresh[1], neighbours, self.routes.generation)
            return
        if arrived[_VER_IHL] != 0x45 or arrived[ipv4.PROTOCOL] not in (_TCP, _UDP):
            return
        key = arrived[ipv4.PROTOCOL:ipv4.PROTOCOL + 1] + arrived[_SRC.start:_FLOW_END]
        found = nat.conntrack.by_tuple.get(key)
        if found is None:
            return
        hop = _Hop(out, header, fresh[1], neighbours, self.routes.generation)
        hop.conn, hop.direction = found
        rewrite = hop.conn.rewrites[hop.direction]
        if not rewrite.identity:
            hop.rewritten = rewrite.addresses + rewrite.ports
            hop.ip_delta = fold(rewrite.ip_delta + _TTL_DELTA)
            hop.l4_delta = rewrite.l4_delta
        nat.conntrack.decided[key] = hop

    def _actions(self, emit: _Out) -> list[Action]:
        actions: list[Action] = []
        interfaces = self._interfaces
        drops = emit.drops
        for name, frames in emit.frames.items():
            stats = interfaces[name].stats
            stats.tx_packets += len(frames)
            stats.tx_bytes += sum(map(len, frames))
            actions.append(Transmit(name, frames))
        if drops:
            actions.extend(self._count(drops))
        return actions

    def _count(self, drops: list[Action]) -> list[Action]:
        for drop in drops:
            self._drops[drop.reason] += 1  # type: ignore[union-attr]
        return drops

    # -- IPv4 ---------------------------------------------------------------------

    def _ip_input(
        self, iface: Interface, packet: bytes, now: float, emit: _Out, gso: SuperFrame | None = None,
    ) -> DropReason | None:
        """Check, translate, deliver or forward one packet; a reason if it was dropped.

        ``gso`` is the super-frame ``packet`` came in, if it did (in its frame, or ``packet`` itself from an L3
        interface: only its GSO type and size are read): the packet is then forwarded whole, once, and leaves
        as a super-frame cut as ``gso`` is (see :meth:`_forward_super`).
        """
        size = len(packet)
        if size < _MIN_IHL:
            return DropReason.IP_TRUNCATED
        first = packet[_VER_IHL]
        if first != 0x45:   # anything but version 4 with a 20-byte header
            if first >> 4 != 4:
                return DropReason.IP_VERSION
            ihl = (first & 0x0F) * 4
            if ihl < _MIN_IHL or ihl > size:
                return DropReason.IP_HEADER_LENGTH
        else:
            ihl = _MIN_IHL
        total = (packet[_LENGTH] << 8) | packet[_LENGTH + 1]
        if total < ihl or total > size:
            return DropReason.IP_LENGTH
        if total < size:
            packet = packet[:total]  # Ethernet padding
        if internet_checksum(packet[:ihl]) != 0:
            return DropReason.IP_CHECKSUM
        src = packet[_SRC]
        if src[0] >= 224 or src[0] == 127 or src == _ZERO_IP or src in self._local:
            return DropReason.MARTIAN_SOURCE
        if gso is not None and (packet[ipv4.PROTOCOL] != ipv4.PROTO_TCP or total < ihl + tcp.MIN_HEADER_LEN):
            return DropReason.IP_LENGTH   # a super-frame not holding a TCP packet: nothing can cut it
        arrived = packet
        nat = self.nat
        if nat is not None:
            verdict = nat.process(packet, iface.name, now, partial=gso is not None)
            if verdict.packet is None:
                return verdict.drop
            packet = verdict.packet
        dst = packet[_DST]
        local = self._local.get(dst)
        if local is not None:
            self._stats.delivered += 1
            if gso is not None:
                packet = _first_segment(gso, packet)   # one answer for what the sender sent at once
            return self._local_input(packet, ihl, now, emit)
        if dst == _LIMITED_BROADCAST or dst[0] >= 224:
            return DropReason.NOT_ROUTED
        route = self.routes.lookup(dst)
        if route is None:
            self._icmp_error(_first_segment(gso, packet), icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE, now, emit)
            return DropReason.NO_ROUTE
        out = self._interfaces[route.interface]
        if route.connected and dst == out.broadcast and out.network.prefix_len < 31:
            return DropReason.NOT_ROUTED  # a directed broadcast, of any interface (Linux: bc_forwarding off)
        if not out.up:
            self._icmp_error(_first_segment(gso, packet), icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE, now, emit)
            return DropReason.NO_ROUTE
        if gso is not None:
            return self._forward_super(gso, packet, ihl, out, route.via or dst, now, emit)
        forwarded = decrement_ttl(packet)
        if forwarded is None:
            self._icmp_error(packet, icmp.TIME_EXCEEDED, 0, now, emit)
            return DropReason.TTL_EXCEEDED
        if total > out.mtu and int.from_bytes(packet[ipv4.FRAGMENT], "big") & ipv4.FLAG_DF:
            self._icmp_error(packet, icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED, now, emit, mtu=out.mtu)
            return DropReason.FRAGMENTATION_NEEDED
        packet = forwarded
        self._stats.forwarded += 1
        nexthop = route.via or dst
        if total > out.mtu:
            fragments = fragment(packet, out.mtu)
            self._stats.fragments_created += len(fragments)
            for piece in fragments:
                self._output(out, nexthop, piece, now, emit)
        else:
            self._output(out, nexthop, packet, now, emit)
            if ihl == _MIN_IHL:
                self._remember(arrived, dst, out, nexthop, now)
        return None

    def _forward_super(self, gso: SuperFrame, packet: bytes, ihl: int, out: Interface, nexthop: bytes, now: float,
                       emit: _Out) -> DropReason | None:
        """Forward ``packet``, the IP packet of the super-frame ``gso`` (its TTL not yet down), whole.

        The next hop's MTU is held against each segment it will be cut into (headers and ``gso_size``), not
        against the whole packet: segments that fit leave as one super-frame; too big with DF set, the
        sender learns the MTU; too big without, it is cut here to the MSS that fits (what still does not fit,
        options leaving no room, fragmented), as the kernel's GSO path does.

        Only the IP header is rewritten (the TTL): it is joined to the rest, behind the Ethernet header when
        the next hop's MAC is known, in the one copy that makes the super-frame that leaves.
        """
        ip_header = decrement_ttl(packet[:ihl])
        if ip_header is None:
            self._icmp_error(_first_segment(gso, packet), icmp.TIME_EXCEEDED, 0, now, emit)
            return DropReason.TTL_EXCEEDED
        rest = memoryview(packet)[ihl:]
        headers = ihl + ((packet[ihl + tcp.DATA_OFFSET] >> 4) << 2)
        if headers + gso.gso_size <= out.mtu:
            self._stats.forwarded += 1
            mac = out.mac
            if mac is None:   # an L3 interface (the overlay, a TUN) takes the bare IP super-frame
                emit.send(out.name, gso.like(b"".join((ip_header, rest))))
                return None
            dst_mac = out.neighbours.lookup(nexthop, now) if out.neighbours is not None else None
            if dst_mac is not None:   # the common case
                emit.send(out.name, gso.like(b"".join((dst_mac, mac, ETHERTYPE_IPV4, ip_header, rest))))
            else:
                self._output(out, nexthop, gso.like(b"".join((_FRAME_HEADER_ROOM, ip_header, rest))), now, emit)
            return None
        if int.from_bytes(packet[ipv4.FRAGMENT], "big") & ipv4.FLAG_DF:
            first = _first_segment(gso, packet)
            self._icmp_error(first, icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED, now, emit, mtu=out.mtu)
            return DropReason.FRAGMENTATION_NEEDED
        room = out.mtu - headers
        try:
            segments = segment(gso.like(b"".join((_FRAME_HEADER_ROOM, ip_header, rest))), room if room > 0 else None)
        except WireError:
            return DropReason.IP_LENGTH
        self._stats.forwarded += 1
        mtu = out.mtu
        for piece in segments:
            piece = piece[_PAYLOAD:]
            if len(piece) > mtu:
                fragments = fragment(piece, mtu)
                self._stats.fragments_created += len(fragments)
                for part in fragments:
                    self._output(out, nexthop, part, now, emit)
            else:
                self._output(out, nexthop, piece, now, emit)
        return None

    def _output(self, out: Interface, nexthop: bytes, packet: bytes, now: float, emit: _Out) -> None:
        """Send ``packet`` to ``nexthop`` on ``out``: resolve its MAC, or hold the packet while ARP asks.

        A super-frame comes as a :class:`SuperFrame` whose Ethernet header is room for the real one (no
        addresses yet); it is held so while ARP asks, and an L3 interface gets it as a bare IP super-frame
        (the overlay cuts it for its peers; the switch cuts it for a TUN without offloads).
        """
        mac = out.mac
        if mac is None:
            emit.send(out.name, packet.like(packet[_PAYLOAD:]) if type(packet) is SuperFrame else packet)
            return
        neighbours = out.neighbours
        assert neighbours is not None
        dst_mac = neighbours.lookup(nexthop, now)
        if dst_mac is None:
            resolution = neighbours.resolve(nexthop, packet, now)
            if resolution.request:
                self._arp_request(out, nexthop, emit)
            for dropped in resolution.dropped:
                emit.drop(out.name, DropReason.NEIGHBOUR_QUEUE_FULL, dropped)
            dst_mac = resolution.mac
            if dst_mac is None:
                return
        if type(packet) is SuperFrame:
            emit.send(out.name, _framed(dst_mac + mac + ETHERTYPE_IPV4, packet))
        else:
            emit.send(out.name, dst_mac + mac + ETHERTYPE_IPV4 + packet)

    def _send(self, packet: bytes, now: float, emit: _Out) -> None:
        """Route a packet the router made itself (no TTL decrement, no MTU check: they are small)."""
        dst = packet[ipv4.DST]
        route = self.routes.lookup(dst)
        if route is None:
            return
        out = self._interfaces[route.interface]
        if out.up:
            self._output(out, route.via or dst, packet, now, emit)

    def _local_input(self, packet: bytes, ihl: int, now: float, emit: _Out) -> DropReason | None:
        """A packet for one of the router's addresses."""
        if int.from_bytes(packet[ipv4.FRAGMENT], "big") & (ipv4.FLAG_MF | ipv4.OFFSET_MASK):
            return DropReason.LOCAL_FRAGMENT   # the router does not reassemble
        proto = packet[ipv4.PROTOCOL]
        src, dst = packet[ipv4.SRC], packet[ipv4.DST]
        payload = packet[ihl:]
        if proto == ipv4.PROTO_ICMP:
            if len(payload) < icmp.HEADER_LEN or internet_checksum(payload) != 0:
                return DropReason.ICMP_MALFORMED
            if payload[icmp.TYPE] == icmp.ECHO_REQUEST:
                ident, seq = int.from_bytes(payload[icmp.IDENT], "big"), int.from_bytes(payload[icmp.SEQ], "big")
                reply = icmp.build_echo(ident, seq, payload[icmp.HEADER_LEN:], reply=True)
                self._stats.icmp_sent["echo-reply"] += 1
                self._send(self._ip(dst, src, ipv4.PROTO_ICMP, reply, tos=packet[ipv4.TOS]), now, emit)
            return None  # echo replies and errors for the router end here
        if proto == ipv4.PROTO_TCP:
            try:
                segment = tcp.Tcp.parse(payload)
            except WireError:
                return DropReason.PORT_UNREACHABLE
            if not segment.flags & tcp.RST:
                self._send(self._ip(dst, src, ipv4.PROTO_TCP, _tcp_reset(src, dst, segment, len(payload))), now, emit)
                self._stats.icmp_sent["tcp-reset"] += 1
            return DropReason.PORT_UNREACHABLE
        code = icmp.PORT_UNREACHABLE if proto == ipv4.PROTO_UDP else 2  # protocol unreachable
        self._icmp_error(packet, icmp.DEST_UNREACHABLE, code, now, emit)
        return DropReason.PORT_UNREACHABLE

    def _ip(self, src: bytes, dst: bytes, proto: int, payload: bytes, *, tos: int = 0) -> bytes:
        return ipv4.build_ipv4(src, dst, proto, payload, ttl=64, ident=self._next_ident(), tos=tos, flags_offset=0)

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    # -- ICMP errors ----------------------------------------------------------------

    def icmp_error(self, packet: bytes, type_: int, code: int, now: float) -> list[Action]:
        """An ICMP error about ``packet`` that a hop beyond an interface (the overlay) owes its sender.

        The same rules as the router's own errors: RFC 1812, the rate
        limits, NAT, and the address of the interface it leaves by.
        """
        emit = _Out()
        self._icmp_error(packet, type_, code, now, emit)
        return self._actions(emit)

    def _icmp_error(self, packet: bytes, type_: int, code: int, now: float, emit: _Out, *, mtu: int = 0) -> None:
        """Tell ``packet``'s sender why it went no further, when the ICMP error policy agrees."""
        if not self._icmp.permits(packet, type_, code, now):
            return
        error = error_packet(_ZERO_IP, packet, type_, code, mtu=mtu, ident=self._next_ident())
        if self.nat is not None:
            # An error about a translated packet goes to its sender, quoting what the sender sent.
            error = self.nat.process(error, "", now).packet or error
        dst = error[ipv4.DST]
        if dst in self._local:
            return  # about a packet the router made itself (an echo reply that found no neighbour)
        route = self.routes.lookup(dst)
        if route is None:
            return
        source = self._interfaces[route.interface].address  # the address of the interface it leaves by
        self._stats.icmp_sent[error_name(type_, code)] += 1
        self._send(ipv4.build_ipv4(
            source, dst, ipv4.PROTO_ICMP, error[ipv4.MIN_HEADER_LEN:], ttl=ERROR_TTL, ident=self._ident, tos=0xC0,
            flags_offset=0,
        ), now, emit)

    # -- ARP ------------------------------------------------------------------------

    def _arp_input(self, iface: Interface, frame: bytes, now: float, emit: _Out) -> DropReason | None:
        try:
            message = arp_wire.Arp.parse(frame, _PAYLOAD)
        except WireError:
            return DropReason.ARP_MALFORMED
        assert iface.mac is not None and iface.neighbours is not None
        sender = message.sender_ip
        for_us = message.target_ip == iface.address
        if sender == iface.address and sender != _ZERO_IP:
            iface.stats.address_conflicts += 1
            return None
        if sender != _ZERO_IP and sender in iface.network and not message.sender_mac[0] & 1:
            confirmed = message.op == arp_wire.OP_REPLY and frame[_ETH_DST] == iface.mac
            held = iface.neighbours.learn(sender, message.sender_mac, now, confirmed=confirmed, create=for_us)
            for packet in held:
                emit.send(iface.name, _framed(message.sender_mac + iface.mac + ETHERTYPE_IPV4, packet))
        if message.op != arp_wire.OP_REQUEST:
            return None
        if not for_us:
            if not iface.proxy_arp or message.target_ip in self._local or sender == _ZERO_IP:
                return None  # duplicate-address probes get answers only for our own addresses
            route = self.routes.lookup(message.target_ip)
            if route is None or route.interface == iface.name:
                return None
        reply = arp_wire.Arp(arp_wire.OP_REPLY, iface.mac, message.target_ip, message.sender_mac, sender)
        emit.send(iface.name, message.sender_mac + iface.mac + ETHERTYPE_ARP + reply.build())
        iface.stats.arp_replies += 1
        return None

    def _arp_request(self, iface: Interface, target: bytes, emit: _Out, *, to: bytes = BROADCAST_MAC) -> None:
        """Ask who has ``target``: broadcast, or unicast ``to`` a known MAC to refresh a stale entry (Linux's PROBE)."""
        assert iface.mac is not None
        request = arp_wire.Arp(arp_wire.OP_REQUEST, iface.mac, iface.address, b"\0" * 6, target)
        emit.send(iface.name, to + iface.mac + ETHERTYPE_ARP + request.build())
        iface.stats.arp_requests += 1

    # -- time -----------------------------------------------------------------------

    def poll_at(self) -> float | None:
        if self._announce:
            return float("-inf")
        deadline = None
        for iface in self._interfaces.values():
            if iface.neighbours is not None and len(iface.neighbours):
                when = iface.neighbours.poll_at()
                if when is not None and (deadline is None or when < deadline):
                    deadline = when
        if self.nat is not None:
            when = self.nat.poll_at()
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        return deadline

    def handle_timer(self, now: float) -> list[Action]:
        emit = _Out()
        for name in sorted(self._announce):
            iface = self._interfaces[name]
            if iface.up:  # a gratuitous ARP: a request for our own address, so neighbours update their caches
                self._arp_request(iface, iface.address, emit)
        self._announce.clear()
        for iface in self._interfaces.values():
            if iface.neighbours is None:
                continue
            expiry = iface.neighbours.handle_timer(now)
            if not iface.up:
                continue
            for target in expiry.requests:
                known = iface.neighbours.get(target)
                self._arp_request(iface, target, emit, to=known.mac if known and known.mac else BROADCAST_MAC)
            for _, held in expiry.failed:
                for packet in held:
                    if type(packet) is SuperFrame:
                        packet = _first_segment(packet, packet[_PAYLOAD:])
                    self._icmp_error(packet, icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE, now, emit)
                    emit.drop(iface.name, DropReason.NEIGHBOUR_UNREACHABLE, packet)
        if self.nat is not None:
            self.nat.handle_timer(now)
        return self._actions(emit)

    # -- introspection ----------------------------------------------------------------

    def statistics(self) -> RouterStatistics:
        return attrs.evolve(
            self._stats, icmp_sent=Counter(self._stats.icmp_sent), icmp_rate_limited=self._icmp.rate_limited,
        )

    def drop_counts(self) -> dict[DropReason, int]:
        return dict(self._drops)


_FRAME_HEADER_ROOM = bytes(12) + ETHERTYPE_IPV4   # where a super-frame's Ethernet header goes once its next hop is known


def _framed(header: bytes, packet: bytes) -> bytes:
    """``packet`` behind an Ethernet ``header``; a super-frame (its header room replaced) stays one."""
    if type(packet) is SuperFrame:   # up to 64 KB: copied once into the join, not sliced first
        return packet.like(b"".join((header, memoryview(packet)[_PAYLOAD:])))
    return header + packet


def _first_segment(gso: SuperFrame | None, packet: bytes) -> bytes:
    """The IP packet of the first segment ``packet`` would be cut into as ``gso`` is; ``packet`` itself when it
    came in no super-frame (or cannot be cut). What an ICMP error quotes and what the router answers: the
    sender learns about the first segment it sent, once, not once per segment."""
    if gso is None:
        return packet
    try:
        return first_segment(packet, gso.gso_size)
    except WireError:
        return packet


def _tcp_reset(src: bytes, dst: bytes, segment: tcp.Tcp, length: int) -> bytes:
    """RFC 793's answer to a segment for a closed port, from ``dst`` back to ``src``."""
    if segment.flags & tcp.ACK:
        return tcp.build_tcp(dst, src, segment.dst_port, segment.src_port, seq=segment.ack, flags=tcp.RST, window=0)
    data = length - segment.header_len + (1 if segment.flags & tcp.SYN else 0) + (1 if segment.flags & tcp.FIN else 0)
    return tcp.build_tcp(
        dst, src, segment.dst_port, segment.src_port, seq=0, ack=(segment.seq + data) & 0xFFFFFFFF,
        flags=tcp.RST | tcp.ACK, window=0,
    )
