"""NAT: MASQUERADE, port forwarding, hairpinning, and the rewriting of headers and ICMP errors. Pure, time passed in.

:class:`Nat` decides, for the first packet of a connection, which rule
translates it (a port forward or a hairpinned mapping for a packet to a
router address, a masquerade rule for one routed out), takes its mapping
(:mod:`.mapping`) and tracks it (:mod:`.conntrack`); every later packet is
rewritten with the connection's :class:`~.conntrack.Rewrite`.

Filtering is address- and port-dependent, as Linux's: only answers to a
connection come back in — except from inside, where a packet to a mapping's
external address and port is hairpinned to its owner (RFC 4787 REQ-9).

Only translated connections are tracked, plus connections that come in
through a masquerading interface untranslated (routed straight to an inside
address), so that their answers are not masqueraded. Fragments after the
first are translated as their first was; an ICMP error about a tracked
connection is translated inside and out, to reach the sender of the packet
it quotes.
"""

import random
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

import attrs

from vswitch.core.actions import DropReason
from vswitch.core.wire import icmp, ipv4, tcp, udp
from vswitch.core.wire.addr import Network, ip_to_str
from vswitch.core.wire.checksum import (
    adjust,
    delta,
    internet_checksum,
)
from vswitch.core.wire.field import at
from vswitch.core.wire.offload import partial_tcp_checksum

from .conntrack import (
    DEFAULT_MAX_CONNECTIONS,
    ICMP,
    KEY_ADDRESSES,
    KEY_DPORT,
    KEY_DST,
    KEY_PORTS,
    KEY_PROTOCOL,
    KEY_PROTOCOL_BYTE,
    KEY_SPORT,
    KEY_SRC,
    MAX_CONNECTIONS,
    ORIG,
    PROTOCOL_NAMES,
    TCP,
    UDP,
    Connection,
    ConnectionTable,
    Rewrite,
    Timeouts,
    default_max_per_source,
    first_state,
    invert,
)
from .mapping import ENDPOINT_ADDRESS, ENDPOINT_PORT, Mapping, Mappings

FRAGMENT_MEMORY = 1024        # first fragments remembered, to translate the rest of their datagram
MAX_FORWARDS = 4096           # port forwards in all, beyond which none is added at run time (the config's are the operator's)

# What the packet path reads for every packet, as module-level constants: a module's attribute costs a
# lookup each time it is read.
_VER_IHL, _PROTOCOL, _FLAGS, _LENGTH = ipv4.VER_IHL, ipv4.PROTOCOL, ipv4.FLAGS, ipv4.LENGTH.start
_FRAGMENT, _ADDRESSES = ipv4.FRAGMENT, ipv4.ADDRESSES
_PROTOCOL_BYTE = slice(ipv4.PROTOCOL, ipv4.PROTOCOL + 1)   # the protocol as one byte, the first of a tuple
_IP_CHECKSUM = ipv4.CHECKSUM.start
_OFFSET_MASK, _MF = ipv4.OFFSET_MASK, ipv4.FLAG_MF >> 8   # MF in the FLAGS byte
_TCP_MIN, _UDP_MIN = tcp.MIN_HEADER_LEN, udp.HEADER_LEN
_PORTS_END = tcp.PORTS.stop                           # TCP's and UDP's ports: the first bytes of either header
_TCP_CHECKSUM, _UDP_CHECKSUM, _ICMP_CHECKSUM = tcp.CHECKSUM.start, udp.CHECKSUM.start, icmp.CHECKSUM.start
_IDENT, _IDENT_END = icmp.IDENT.start, icmp.IDENT.stop


@attrs.frozen
class Masquerade:
    """Translate sources in ``source`` leaving through interface ``out`` to its address.

    ``exclude`` lists destinations left alone, ``exclude_sources`` sources
    (iptables' ``! -d`` and ``! -s``).
    """

    source: Network
    out: str
    exclude: tuple[Network, ...] = ()
    exclude_sources: tuple[Network, ...] = ()

    def matches(self, src: bytes, dst: bytes, out: str) -> bool:
        return (out == self.out and src in self.source and not any(dst in net for net in self.exclude)
                and not any(src in net for net in self.exclude_sources))


@attrs.frozen
class Forward:
    """Port forwarding (DNAT): ``protocol`` traffic to ``port`` on a router address goes to ``to:to_port``.

    ``interface`` limits the rule to that interface's address; by default every router address forwards.
    ``owner`` names who added it at run time (a CNI attachment's port), so that all its forwards go together.
    """

    protocol: int
    port: int
    to: bytes
    to_port: int
    interface: str | None = None
    owner: str = ""

    def __str__(self) -> str:
        on = f" on {self.interface}" if self.interface else ""
        by = f" (by {self.owner})" if self.owner else ""
        return f"{PROTOCOL_NAMES.get(self.protocol, str(self.protocol))} port {self.port}{on} to {ip_to_str(self.to)}:{self.to_port}{by}"

    def overlaps(self, other: "Forward") -> bool:
        """Whether both would take some packet: one protocol and port, and one interface or either on all."""
        return (self.protocol == other.protocol and self.port == other.port
                and (self.interface is None or other.interface is None or self.interface == other.interface))


class Routing(Protocol):
    """What NAT asks of the router."""

    def route_interface(self, dst: bytes) -> str | None: ...
    def local_interface(self, ip: bytes) -> str | None: ...
    def interface_address(self, name: str) -> bytes | None: ...


@attrs.define(slots=True)
class NatStatistics:
    connections: int = 0
    mappings: int = 0
    sources: int = 0            # source addresses holding connections
    created: int = 0
    expired: int = 0
    early_dropped: int = 0      # unanswered connections dropped to make room
    source_limited: int = 0     # new connections refused: their source held max_per_source already
    translated: int = 0         # packets rewritten
    icmp_translated: int = 0    # ICMP errors about tracked connections rewritten inside and out
    hairpinned: int = 0


@attrs.frozen
class Verdict:
    """NAT's answer for one packet: the packet to route on, or why it was dropped."""

    packet: bytes | None
    drop: DropReason | None = None


class Nat:
    def __init__(
        self,
        routing: Routing,
        *,
        masquerade: tuple[Masquerade, ...] = (),
        forwards: tuple[Forward, ...] = (),
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_source: int | None = None,
        timeouts: Timeouts = Timeouts(),
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"max_connections must be between 1 and {MAX_CONNECTIONS}, got {max_connections}")
        if max_per_source is None:
            max_per_source = default_max_per_source(max_connections)
        if not 1 <= max_per_source <= max_connections:
            raise ValueError(
                f"max_per_source must be between 1 and max_connections ({max_connections}), got {max_per_source}")
        self.routing = routing
        self.masquerade = tuple(masquerade)
        self.forwards = tuple(forwards)
        self.mappings = Mappings(reserved=frozenset((f.protocol, f.port) for f in self.forwards), rng=rng)
        self.conntrack = ConnectionTable(
            self.mappings, max_connections=max_connections, max_per_source=max_per_source, timeouts=timeouts,
        )
        self._fragments: OrderedDict[bytes, Rewrite] = OrderedDict()
        self._masquerade_out = frozenset(m.out for m in self.masquerade)
        self._stats = NatStatistics()

    # -- queries ----------------------------------------------------------------

    @property
    def max_connections(self) -> int:
        return self.conntrack.max_connections

    @property
    def max_per_source(self) -> int:
        return self.conntrack.max_per_source

    @property
    def timeouts(self) -> Timeouts:
        return self.conntrack.timeouts

    def __len__(self) -> int:
        return len(self.conntrack)

    def connections(self) -> Iterator[Connection]:
        """Every tracked connection, least recently seen first per protocol and state."""
        return iter(self.conntrack)

    def statistics(self) -> NatStatistics:
        conntrack = self.conntrack
        return attrs.evolve(
            self._stats, connections=len(conntrack), mappings=len(self.mappings), sources=conntrack.sources,
            created=conntrack.created, expired=conntrack.expired, early_dropped=conntrack.early_dropped,
            source_limited=conntrack.source_limited,
        )

    # -- port forwards at run time ---------------------------------------------------

    def add_forward(self, forward: Forward) -> None:
        """Forward new connections to ``forward.port`` from now on.

        Refused (ValueError) when a forward takes that protocol and port on the same interface (or either
        on all), when the port is outside 1..65535, or when :data:`MAX_FORWARDS` are in place. A masquerade
        mapping that holds the port now keeps it while its connections live, and their answers still reach
        them; the port is given to no new mapping, and new connections to it are forwarded.
        """
        if forward.protocol not in (TCP, UDP):
            raise ValueError(f"only TCP and UDP ports are forwarded, not protocol {forward.protocol}")
        if not (1 <= forward.port <= 0xFFFF and 1 <= forward.to_port <= 0xFFFF):
            raise ValueError(f"ports must be between 1 and 65535, got {forward.port} -> {forward.to_port}")
        if len(forward.to) != 4:
            raise ValueError(f"a forward's address is 4 bytes, got {len(forward.to)}")
        if len(self.forwards) >= MAX_FORWARDS:
            raise ValueError(f"there are {MAX_FORWARDS} port forwards already, the most there can be")
        taken = next((f for f in self.forwards if f.overlaps(forward)), None)
        if taken is not None:
            raise ValueError(f"{PROTOCOL_NAMES[forward.protocol]} port {forward.port} is forwarded already: {taken}")
        if not any(f.protocol == forward.protocol and f.port == forward.port for f in self.forwards):
            self.mappings.reserve(forward.protocol, forward.port)
        self.forwards += (forward,)

    def remove_forwards(self, *, owner: str | None = None, protocol: int | None = None,
                        port: int | None = None) -> tuple[Forward, ...]:
        """Remove the forwards of ``owner``, or those of ``protocol`` and ``port``; the ones removed.

        Like iptables' rules and conntrack: connections already forwarded live on until they end or time out;
        only new ones are no longer forwarded.
        """
        if (owner is None) == (protocol is None or port is None):
            raise ValueError("remove forwards by owner, or by protocol and port")
        if owner is not None:
            removed = tuple(f for f in self.forwards if f.owner == owner)
        else:
            removed = tuple(f for f in self.forwards if f.protocol == protocol and f.port == port)
        self.forwards = tuple(f for f in self.forwards if f not in removed)
        for key in {(f.protocol, f.port) for f in removed}:
            if not any((f.protocol, f.port) == key for f in self.forwards):
                self.mappings.unreserve(*key)
        return removed

    def count_translated(self, packets: int) -> None:
        """Count packets of tracked connections the router translated itself (its per-flow fast path)."""
        self._stats.translated += packets

    # -- time -------------------------------------------------------------------

    def poll_at(self) -> float | None:
        return self.conntrack.poll_at()

    def handle_timer(self, now: float) -> None:
        self.conntrack.handle_timer(now)

    # -- packets ----------------------------------------------------------------

    def process(self, packet: bytes, in_iface: str, now: float, *, partial: bool = False) -> Verdict:
        """Translate one checked IPv4 packet that arrived on ``in_iface`` (before routing).

        ``partial``: a TCP packet of a super-frame, whose checksum field holds only the pseudo-header sum
        (CHECKSUM_PARTIAL); it is translated once, as one packet, and the field keeps that meaning for its
        new addresses.
        """
        ihl = (packet[_VER_IHL] & 0x0F) * 4
        proto = packet[_PROTOCOL]
        frag = packet[_FRAGMENT]
        if frag != b"\x40\x00" and frag != b"\x00\x00":   # anything but DF alone or nothing: maybe a fragment
            if int.from_bytes(frag, "big") & _OFFSET_MASK:
                return self._later_fragment(packet, in_iface)
        if proto == TCP or proto == UDP:
            if len(packet) < ihl + (_TCP_MIN if proto == TCP else _UDP_MIN):
                return self._untracked(packet, in_iface)  # too short to carry ports
            key = packet[_PROTOCOL_BYTE] + packet[_ADDRESSES] + packet[ihl:ihl + _PORTS_END]
        elif proto == ICMP:
            if len(packet) < ihl + icmp.HEADER_LEN:
                return self._untracked(packet, in_iface)
            type_ = packet[ihl + icmp.TYPE]
            if type_ == icmp.ECHO_REQUEST or type_ == icmp.ECHO_REPLY:
                ident = packet[ihl + _IDENT:ihl + _IDENT_END]
                key = packet[_PROTOCOL_BYTE] + packet[_ADDRESSES] + ident + ident
            elif type_ in icmp.ERROR_TYPES:
                return self._related(packet, ihl, now)
            else:
                return self._untracked(packet, in_iface)  # timestamp and other queries: not tracked
        else:
            return self._untracked(packet, in_iface)

        conntrack = self.conntrack
        found = conntrack.by_tuple.get(key)
        if found is not None:
            conn, direction = found
            if now >= conn.last + conn.timeout:
                conntrack.expire(conn)
            else:
                conntrack.track(conn, direction, packet, ihl, now)
                rewrite = conn.rewrites[direction]
                if rewrite.identity:
                    return Verdict(packet)
                self._stats.translated += 1
                return Verdict(self._apply(packet, ihl, rewrite, partial))
        return self._new(packet, ihl, key, in_iface, now, partial)

    def _new(self, packet: bytes, ihl: int, key: bytes, in_iface: str, now: float, partial: bool) -> Verdict:
        proto = key[KEY_PROTOCOL]
        src, dst = key[KEY_SRC], key[KEY_DST]
        routing = self.routing
        conntrack = self.conntrack
        target = key
        kind = []
        snat_rule: Masquerade | None = None
        local = routing.local_interface(dst)
        if local is not None:
            target, hairpin = self._dnat(key, local, in_iface)
            if target is key:
                return Verdict(packet)   # for the router itself
            kind.append("dnat")
            if hairpin is not None:
                # Hairpinning (RFC 4787 REQ-9): the inside source leaves through the mapping's interface too.
                snat_rule = next((m for m in self.masquerade if m.out == hairpin.out and src in m.source), None)
        out = routing.route_interface(target[KEY_DST])
        if out is None:
            return Verdict(packet)  # the router answers with net unreachable
        if snat_rule is None:
            if kind:
                if routing.route_interface(src) == out:
                    # The answer would not come back through us: masquerade to the interface's own address.
                    snat_rule = Masquerade(Network(0, 0), out)
            else:
                for rule in self.masquerade:
                    if rule.matches(src, dst, out):
                        snat_rule = rule
                        break
        creatable = _creatable(packet, ihl, proto)
        if snat_rule is None and not kind:
            # Routed in from outside untranslated: remember it, so the answer is not masqueraded
            # (unless its answer is already a tracked connection's packet: never take that over).
            if in_iface in self._masquerade_out and creatable and in_iface != out and invert(key) not in conntrack.by_tuple:
                refused = conntrack.admit(src, now)
                if refused is DropReason.NAT_SOURCE_LIMIT:
                    return Verdict(None, refused)
                if refused is None:   # a full table with nothing to drop early leaves it untracked
                    conn = conntrack.insert(key, invert(key), key, now, "none", None, first_state(packet, ihl))
                    conntrack.track(conn, ORIG, packet, ihl, now)
            return Verdict(packet)
        if not creatable:
            return Verdict(None, DropReason.NAT_INVALID)
        refused = conntrack.admit(src, now)
        if refused is not None:
            return Verdict(None, refused)
        mapping = None
        if snat_rule is not None:
            address = routing.interface_address(snat_rule.out)
            if address is None:
                return Verdict(packet)
            mapping = self.mappings.map(proto, src + key[KEY_SPORT], address, snat_rule.out)
            if mapping is None:
                return Verdict(None, DropReason.NAT_NO_PORT)
            kind.append("snat")
            ext_port = mapping.external[ENDPOINT_PORT]
            sport_dport = ext_port + (ext_port if proto == ICMP else target[KEY_DPORT])
            target = target[KEY_PROTOCOL_BYTE] + mapping.external[ENDPOINT_ADDRESS] + target[KEY_DST] + sport_dport
        if invert(target) in conntrack.by_tuple:
            # Its answers would look like another connection's (a forward onto a tracked flow): refuse, never take over.
            if mapping is not None and mapping.refs == 0:
                self.mappings.unmap(mapping)
            return Verdict(None, DropReason.NAT_INVALID)
        conn = conntrack.insert(
            key, invert(target), target, now, "+".join(sorted(kind)), mapping, first_state(packet, ihl),
        )
        conntrack.track(conn, ORIG, packet, ihl, now)
        self._stats.translated += 1
        return Verdict(self._apply(packet, ihl, conn.rewrites[ORIG], partial))

    def _dnat(self, key: bytes, local: str, in_iface: str) -> tuple[bytes, Mapping | None]:
        """Where a new connection to a router address goes: a forward rule, a hairpinned mapping, or nowhere."""
        proto, dport = key[KEY_PROTOCOL], int.from_bytes(key[KEY_DPORT], "big")
        for rule in self.forwards:
            if rule.protocol == proto and rule.port == dport and (rule.interface in (None, local)):
                to_port = rule.to_port.to_bytes(2, "big")
                return key[KEY_PROTOCOL_BYTE] + key[KEY_SRC] + rule.to + key[KEY_SPORT] + to_port, None
        if proto != ICMP:
            mapping = self.mappings.external(proto, key[KEY_DST] + key[KEY_DPORT])
            if mapping is not None and in_iface != mapping.out:
                self._stats.hairpinned += 1
                internal = mapping.internal
                return (key[KEY_PROTOCOL_BYTE] + key[KEY_SRC] + internal[ENDPOINT_ADDRESS] + key[KEY_SPORT]
                        + internal[ENDPOINT_PORT]), mapping
        return key, None

    def _untracked(self, packet: bytes, in_iface: str) -> Verdict:
        """A packet NAT cannot track (no ports, or a later fragment whose first never came).

        It is never masqueraded, which would collide, nor sent out with its
        inside address: refused when a masquerade rule would apply.
        """
        src, dst = packet[ipv4.SRC], packet[ipv4.DST]
        out = self.routing.route_interface(dst)
        if out is not None and any(m.matches(src, dst, out) for m in self.masquerade):
            return Verdict(None, DropReason.NAT_UNSUPPORTED)
        return Verdict(packet)

    # -- rewriting ------------------------------------------------------------------

    def _apply(self, packet: bytes, ihl: int, rewrite: Rewrite, partial: bool = False) -> bytes:
        """``packet`` rewritten; ``partial``: its TCP checksum field is the pseudo-header sum alone (a super-frame's),
        so it is made again for the new addresses (a port change does not touch it).

        Only the headers are rewritten, up to the last byte a translation changes (the TCP checksum; UDP's and
        ICMP's headers are 8 bytes): they are joined to the rest of the packet in one copy, which for a
        super-frame is up to 64 KB."""
        # checksum.adjust inlined: ~checksum (16 bits) + a folded delta needs one fold, and ~x & 0xFFFF is x ^ 0xFFFF
        proto = packet[_PROTOCOL]
        end = ihl + (_TCP_CHECKSUM + 2 if proto == TCP else _UDP_MIN)   # process() checked the packet has them
        out = bytearray(packet[:end])
        out[_ADDRESSES] = rewrite.addresses
        total = ((packet[_IP_CHECKSUM] << 8 | packet[_IP_CHECKSUM + 1]) ^ 0xFFFF) + rewrite.ip_delta
        total = ((total & 0xFFFF) + (total >> 16)) ^ 0xFFFF
        out[_IP_CHECKSUM] = total >> 8
        out[_IP_CHECKSUM + 1] = total & 0xFF
        if proto == ICMP:
            out[ihl + _IDENT:ihl + _IDENT_END] = rewrite.ports[:2]   # the identifier, the source port of an echo's tuple
            csum_at = ihl + _ICMP_CHECKSUM
        else:
            out[ihl:ihl + _PORTS_END] = rewrite.ports
            csum_at = ihl + (_TCP_CHECKSUM if proto == TCP else _UDP_CHECKSUM)
        old = packet[csum_at] << 8 | packet[csum_at + 1]
        if partial:
            length = (packet[_LENGTH] << 8 | packet[_LENGTH + 1]) - ihl
            out[csum_at:csum_at + 2] = partial_tcp_checksum(
                rewrite.addresses[:4], rewrite.addresses[4:], length).to_bytes(2, "big")
        elif proto != UDP or old:  # a zero UDP checksum means none
            total = (old ^ 0xFFFF) + rewrite.l4_delta
            new = ((total & 0xFFFF) + (total >> 16)) ^ 0xFFFF
            if proto == UDP and new == 0:
                new = 0xFFFF
            out[csum_at] = new >> 8
            out[csum_at + 1] = new & 0xFF
        if packet[_FLAGS] & _MF:  # first fragment: remember how to translate the rest of the datagram
            self._remember_fragment(packet, rewrite)
        return b"".join((out, memoryview(packet)[end:]))

    def _remember_fragment(self, packet: bytes, rewrite: Rewrite) -> None:
        fragments = self._fragments
        fragments[_datagram(packet)] = rewrite
        while len(fragments) > FRAGMENT_MEMORY:
            fragments.popitem(last=False)

    def _later_fragment(self, packet: bytes, in_iface: str) -> Verdict:
        """Fragments after the first carry no ports: translate their addresses as the first one's were."""
        rewrite = self._fragments.get(_datagram(packet))
        if rewrite is None:
            return self._untracked(packet, in_iface)  # the first fragment has not been seen
        if rewrite.identity:
            return Verdict(packet)
        out = bytearray(packet)
        out[ipv4.ADDRESSES] = rewrite.addresses
        out[ipv4.CHECKSUM] = adjust(int.from_bytes(packet[ipv4.CHECKSUM], "big"), rewrite.ip_delta).to_bytes(2, "big")
        self._stats.translated += 1
        return Verdict(bytes(out))

    def _related(self, packet: bytes, ihl: int, now: float) -> Verdict:
        """An ICMP error about a tracked connection: translate the outer header and the quoted packet.

        The quoted packet travelled the other way; it is restored to what its
        sender wrote, and the error goes to that sender.
        """
        inner_at = ihl + icmp.HEADER_LEN
        if len(packet) < inner_at + ipv4.MIN_HEADER_LEN:
            return Verdict(packet)
        inner_ihl = (packet[inner_at + ipv4.VER_IHL] & 0x0F) * 4
        l4 = inner_at + inner_ihl
        inner_proto = packet[inner_at + ipv4.PROTOCOL]
        if len(packet) < l4 + 8 or inner_ihl < ipv4.MIN_HEADER_LEN:   # an error quotes 8 bytes of the payload
            return Verdict(packet)
        src, dst = packet[at(inner_at, ipv4.SRC)], packet[at(inner_at, ipv4.DST)]
        if inner_proto == ICMP:
            ident = packet[at(l4, icmp.IDENT)]
            quoted = bytes((ICMP,)) + src + dst + ident + ident
        elif inner_proto in (TCP, UDP):
            quoted = bytes((inner_proto,)) + src + dst + packet[at(l4, tcp.PORTS)]
        else:
            return Verdict(packet)
        found = self.conntrack.by_tuple.get(invert(quoted))
        if found is None:
            return Verdict(packet)
        conn, direction = found
        if conn.rewrites[direction].identity or now >= conn.last + conn.timeout:
            return Verdict(packet)
        restored = conn.reply if direction == ORIG else conn.orig   # the quoted packet as its sender wrote it
        here = conn.orig if direction == ORIG else conn.reply       # the error's direction, as it arrives
        out = bytearray(packet)
        # quoted packet: addresses, ports, its IP checksum, and its L4 checksum when quoted
        out[at(inner_at, ipv4.ADDRESSES)] = restored[KEY_ADDRESSES]
        inner_checksum = at(inner_at, ipv4.CHECKSUM)
        out[inner_checksum] = b"\0\0"
        out[inner_checksum] = internet_checksum(out[inner_at:l4]).to_bytes(2, "big")
        if inner_proto == ICMP:
            old_l4 = bytes(out[at(l4, icmp.IDENT)])
            out[at(l4, icmp.IDENT)] = restored[KEY_SPORT]
            csum_at, change = l4 + icmp.CHECKSUM.start, delta(old_l4, restored[KEY_SPORT])
        else:
            old_l4 = src + dst + bytes(out[at(l4, tcp.PORTS)])
            out[at(l4, tcp.PORTS)] = restored[KEY_PORTS]
            csum_at = l4 + (tcp.CHECKSUM.start if inner_proto == TCP else udp.CHECKSUM.start)
            change = delta(old_l4, restored[KEY_ADDRESSES] + restored[KEY_PORTS])
        if len(packet) >= csum_at + 2:
            old = int.from_bytes(out[csum_at:csum_at + 2], "big")
            if inner_proto != UDP or old:
                new = adjust(old, change)
                if inner_proto == UDP and new == 0:   # only UDP spells a computed zero 0xFFFF
                    new = 0xFFFF
                out[csum_at:csum_at + 2] = new.to_bytes(2, "big")
        # outer header: to the quoted packet's sender; from the translated peer if the peer itself complains
        if packet[ipv4.SRC] == here[KEY_SRC]:
            out[ipv4.SRC] = restored[KEY_DST]
        out[ipv4.DST] = restored[KEY_SRC]
        out[ipv4.CHECKSUM] = b"\0\0"
        out[ipv4.CHECKSUM] = internet_checksum(out[:ihl]).to_bytes(2, "big")
        error_checksum = at(ihl, icmp.CHECKSUM)
        out[error_checksum] = b"\0\0"
        total = int.from_bytes(packet[ipv4.LENGTH], "big")
        out[error_checksum] = internet_checksum(out[ihl:total]).to_bytes(2, "big")
        conn.packets[direction] += 1
        self._stats.icmp_translated += 1
        return Verdict(bytes(out))


def _creatable(packet: bytes, ihl: int, proto: int) -> bool:
    """Whether a packet may start a connection (not a TCP RST, not an ICMP echo reply)."""
    if proto == TCP:
        return not packet[ihl + tcp.FLAGS] & tcp.RST
    if proto == ICMP:
        return packet[ihl + icmp.TYPE] == icmp.ECHO_REQUEST
    return True


def _datagram(packet: bytes) -> bytes:
    """What the fragments of one datagram share (RFC 791): identification, protocol and addresses."""
    return packet[ipv4.IDENT] + packet[_PROTOCOL_BYTE] + packet[ipv4.ADDRESSES]
