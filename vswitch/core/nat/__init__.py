"""NAT with connection tracking: MASQUERADE, port forwarding, hairpinning. Pure, time passed in.

A :class:`Connection` holds two tuples, as Linux conntrack does: ``orig``, the
first packet as its sender wrote it, and ``reply``, what the answer looks
like when it reaches the router. A packet in the original direction is
rewritten to the inverse of ``reply`` and an answer to the inverse of
``orig``; so one rewrite serves SNAT, DNAT and both at once. Both tuples
index the table, so each packet costs one dict lookup, and the checksum
change of each direction is computed once per connection (RFC 1624), so a
packet costs one copy and three additions.

Tuples are 13-byte keys: protocol, source address, destination address,
source port, destination port (for ICMP echo the identifier stands in for
both ports).

Mappings are endpoint-independent (RFC 4787 REQ-1, RFC 5382 REQ-1): one
internal address and port keeps one external port for every destination
while any of its connections lives; the internal port is kept when free and
otherwise a random free one is taken (iptables ``--random-fully``).
Filtering is address- and port-dependent, as Linux's: only answers to a
connection come back in — except from inside, where a packet to a mapping's
external address and port is hairpinned to its owner (REQ-9).

Only translated connections are tracked, plus connections that come in
through a masquerading interface untranslated (routed straight to an inside
address), so that their answers are not masqueraded. Timeouts are Linux's;
the table is bounded and, when full, drops the oldest unanswered connection
before refusing a new one. One source address may hold only a share of the
table (``max_per_source``), so a container that opens connections as fast as
it can is refused on its own while the others keep theirs.

Nothing here costs more as the table fills: free external ports are kept per
address and protocol in a :class:`PortPool` (a given, a random or a returned
port in O(1)), and connections wait in one queue per protocol and state, oldest
first, so expiry and early drop only ever look at the queues' heads.
"""

import enum
import operator
import random
import struct
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

import attrs

from vswitch.core.actions import DropReason
from vswitch.core.wire import icmp, ipv4
from vswitch.core.wire.addr import Network, ip_to_str
from vswitch.core.wire.checksum import internet_checksum

TCP, UDP, ICMP = ipv4.PROTO_TCP, ipv4.PROTO_UDP, ipv4.PROTO_ICMP
PROTOCOL_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}
DEFAULT_MAX_CONNECTIONS = 65536
MAX_CONNECTIONS = 4_194_304   # the most a table may hold: about 1.4 KB each, so ≈6 GB at the limit
SOURCE_SHARE = 4              # by default a source may hold a quarter of the table (see default_max_per_source)
FRAGMENT_MEMORY = 1024        # first fragments remembered, to translate the rest of their datagram
REFRESH_INTERVAL = 1.0        # `last` moves at this granularity, as in the FDB
PORT_RANGE = (1024, 65535)    # external ports chosen when the internal one is taken
ICMP_RANGE = (0, 65535)       # echo identifiers chosen when the internal one is taken

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_ORIG, _REPLY = 0, 1


class State(enum.Enum):
    # TCP, with Linux's names
    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT = "FIN_WAIT"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"
    CLOSE = "CLOSE"
    # UDP and ICMP
    UNREPLIED = "UNREPLIED"
    REPLIED = "REPLIED"

    # States key the connection queues: hash by identity (as equality is), not Enum's hash in Python code.
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


# The states of connections never answered, which early drop may take (Linux's: not assured). Every
# connection in them is unassured: a connection is assured only once answered, which moves it out of them,
# and a TCP port reused for a new connection (SYN_SENT again) starts unassured.
_UNANSWERED = ((UDP, State.UNREPLIED), (ICMP, State.UNREPLIED), (TCP, State.SYN_SENT), (TCP, State.UNREPLIED))
_last_seen = operator.attrgetter("last")


@attrs.frozen
class Timeouts:
    """Seconds a connection lives without packets, per state (Linux's defaults)."""

    tcp_syn_sent: float = 120.0
    tcp_syn_recv: float = 60.0
    tcp_established: float = 432000.0   # 5 days
    tcp_fin_wait: float = 120.0
    tcp_last_ack: float = 30.0
    tcp_time_wait: float = 120.0
    tcp_close: float = 10.0
    tcp_unreplied: float = 300.0        # picked up mid-stream and not answered yet (Linux's unacknowledged)
    udp_unreplied: float = 30.0
    udp_replied: float = 120.0
    icmp: float = 30.0

    def of(self, proto: int, state: State) -> float:
        if proto == UDP:
            return self.udp_replied if state is State.REPLIED else self.udp_unreplied
        if proto == ICMP:
            return self.icmp
        return {
            State.SYN_SENT: self.tcp_syn_sent, State.SYN_RECV: self.tcp_syn_recv,
            State.ESTABLISHED: self.tcp_established, State.FIN_WAIT: self.tcp_fin_wait,
            State.LAST_ACK: self.tcp_last_ack, State.TIME_WAIT: self.tcp_time_wait, State.CLOSE: self.tcp_close,
            State.UNREPLIED: self.tcp_unreplied,
        }[state]


def default_max_per_source(max_connections: int) -> int:
    """The connections one source address may hold unless configured: a quarter of the table.

    A quarter leaves three quarters of the table to everyone else, however
    fast one container opens connections, and it stays below the 64,512 ports
    of a masquerade address (the 16,384 of the default table), so it takes
    several sources together to run out of ports. It is still far more than
    an ordinary container keeps open, and a flooding source's unanswered
    connections remain the first that early drop reclaims.
    """
    return max(1, max_connections // SOURCE_SHARE)


# -- tuples -----------------------------------------------------------------


def make_key(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    return bytes((proto,)) + src + dst + struct.pack("!HH", sport, dport)


def invert(key: bytes) -> bytes:
    return key[0:1] + key[5:9] + key[1:5] + key[11:13] + key[9:11]


def describe(key: bytes) -> dict[str, object]:
    """A tuple for people and JSON."""
    sport, dport = struct.unpack_from("!HH", key, 9)
    return {
        "protocol": PROTOCOL_NAMES.get(key[0], str(key[0])),
        "src": ip_to_str(key[1:5]), "sport": sport, "dst": ip_to_str(key[5:9]), "dport": dport,
    }


def _fold(value: int) -> int:
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def _delta(old: bytes, new: bytes) -> int:
    """The ones' complement change that turns a checksum over ``old`` into one over ``new`` (RFC 1624)."""
    total = 0
    for i in range(0, len(old), 2):
        total += (0xFFFF - int.from_bytes(old[i:i + 2], "big")) + int.from_bytes(new[i:i + 2], "big")
    return _fold(total)


def _adjust(checksum: int, delta: int) -> int:
    return ~_fold((~checksum & 0xFFFF) + delta) & 0xFFFF


@attrs.frozen
class Rewrite:
    """How packets of one direction of a connection change: new addresses and ports, checksum deltas."""

    addresses: bytes   # new source + destination
    ports: bytes       # new source + destination port (ICMP echo: the identifier, twice)
    ip_delta: int
    l4_delta: int      # for the TCP/UDP checksum (pseudo-header included) or ICMP's (identifier only)
    identity: bool

    @classmethod
    def between(cls, old: bytes, new: bytes) -> "Rewrite":
        """From the key a packet arrives with to the key it leaves with."""
        old_addrs, new_addrs = old[1:9], new[1:9]
        ip_delta = _delta(old_addrs, new_addrs)
        if old[0] == ICMP:
            l4_delta = _delta(old[9:11], new[9:11])
        else:
            l4_delta = _fold(ip_delta + _delta(old[9:13], new[9:13]))
        return cls(new_addrs, new[9:13], ip_delta, l4_delta, old == new)


# -- configuration ------------------------------------------------------------


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
    """

    protocol: int
    port: int
    to: bytes
    to_port: int
    interface: str | None = None


class Routing(Protocol):
    """What NAT asks of the router."""

    def route_interface(self, dst: bytes) -> str | None: ...
    def local_interface(self, ip: bytes) -> str | None: ...
    def interface_address(self, name: str) -> bytes | None: ...


# -- external ports -------------------------------------------------------------


class PortPool:
    """The free ports of one external address and protocol; taking a given port, taking a random one and giving
    one back each cost O(1), however few are left.

    The free ports of ``low..high`` (the range random choices come from) sit in no order in
    ``_free[:_count]``, and ``_where[port - low]`` is a port's place there, meaningful only while it points
    into the free part at that very port. Taking a port moves the last free one into its place and shortens
    the free part; giving one back appends it. So a random choice is uniform over the free ports, as
    iptables' ``--random-fully``. Ports outside the range (a preserved port below 1024) are never chosen at
    random: a set holds those taken. ``reserved`` ports (port forwards) are never free. Two ``array('H')``
    of one entry per port in the range: about 250 KiB for TCP's or UDP's, made when an address first needs one.
    """

    __slots__ = ("low", "high", "_reserved", "_free", "_where", "_count", "_taken_outside")

    def __init__(self, low: int, high: int, reserved: frozenset[int] = frozenset()) -> None:
        if not 0 <= low <= high <= 0xFFFF:
            raise ValueError(f"port range {low}..{high} is not within 0..65535")
        self.low, self.high = low, high
        span = high - low + 1
        self._free = array("H", range(low, high + 1))
        self._where = array("H", range(span))
        self._count = span
        self._reserved = reserved
        self._taken_outside: set[int] = set()
        for port in reserved:
            self.take(port)

    def __len__(self) -> int:
        """Free ports in the random range."""
        return self._count

    def is_free(self, port: int) -> bool:
        if self.low <= port <= self.high:
            where = self._where[port - self.low]
            return where < self._count and self._free[where] == port
        return port not in self._taken_outside and port not in self._reserved

    def take(self, port: int) -> bool:
        """Take ``port`` if it is free; whether it was."""
        low = self.low
        if not low <= port <= self.high:
            if port in self._taken_outside or port in self._reserved:
                return False
            self._taken_outside.add(port)
            return True
        where = self._where[port - low]
        if where >= self._count or self._free[where] != port:
            return False
        self._remove_at(where)
        return True

    def take_random(self, rng: random.Random) -> int | None:
        """A free port of the range, each equally likely; None when there is none."""
        if not self._count:
            return None
        where = rng.randrange(self._count)
        port = self._free[where]
        self._remove_at(where)
        return port

    def give_back(self, port: int) -> None:
        if self.is_free(port) or port in self._reserved:
            raise ValueError(f"port {port} was not taken")
        if not self.low <= port <= self.high:
            self._taken_outside.discard(port)
            return
        self._free[self._count] = port
        self._where[port - self.low] = self._count
        self._count += 1

    def _remove_at(self, where: int) -> None:
        last = self._count - 1
        moved = self._free[last]
        self._free[where] = moved
        self._where[moved - self.low] = where
        self._count = last


# -- connections ----------------------------------------------------------------


@attrs.define(slots=True, eq=False)
class Mapping:
    """An endpoint-independent mapping: internal address and port ↔ external port on ``out``'s address."""

    protocol: int
    internal: bytes   # address (4) + port (2)
    external: bytes   # address (4) + port (2)
    out: str
    refs: int = 0


@attrs.define(slots=True, eq=False)
class Connection:
    orig: bytes
    reply: bytes
    state: State
    timeout: float
    last: float
    rewrites: tuple[Rewrite, Rewrite]   # for packets in the original and the reply direction
    kind: str                           # "snat", "dnat", "dnat+snat" or "none"
    mapping: Mapping | None = None
    fins: int = 0                       # bit 0: FIN seen from the original side, bit 1: from the reply side
    assured: bool = False
    packets: list[int] = attrs.Factory(lambda: [0, 0])
    bytes: list[int] = attrs.Factory(lambda: [0, 0])

    @property
    def protocol(self) -> int:
        return self.orig[0]

    def expires(self) -> float:
        return self.last + self.timeout


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
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.timeouts = timeouts
        self._rng = rng or random.Random()
        self._table: dict[bytes, tuple[Connection, int]] = {}
        # One queue per protocol and state, least recently seen first: each has one timeout, so its head
        # expires first, and the queues of unanswered states hold only connections early drop may take.
        self._queues: dict[tuple[int, State], OrderedDict[Connection, None]] = {}
        self._count = 0
        self._sources: dict[bytes, int] = {}        # source address → its connections (none kept at zero)
        self._mappings: dict[bytes, Mapping] = {}   # proto + internal addr/port + external addr → mapping
        self._external: dict[bytes, Mapping] = {}   # proto + external addr/port → mapping
        self._pools: dict[bytes, PortPool] = {}     # proto + external addr → its free ports
        self._reserved = {(f.protocol, f.port) for f in self.forwards}
        self._fragments: OrderedDict[bytes, Rewrite] = OrderedDict()
        self._masquerade_out = frozenset(m.out for m in self.masquerade)
        self._stats = NatStatistics()

    # -- queries ----------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def connections(self) -> Iterator[Connection]:
        """Every tracked connection, least recently seen first per protocol and state."""
        return iter([c for queue in self._queues.values() for c in queue])

    def statistics(self) -> NatStatistics:
        return attrs.evolve(
            self._stats, connections=self._count, mappings=len(self._mappings), sources=len(self._sources),
        )

    # -- packets ----------------------------------------------------------------

    def process(self, packet: bytes, in_iface: str, now: float) -> Verdict:
        """Translate one checked IPv4 packet that arrived on ``in_iface`` (before routing)."""
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        frag = packet[6:8]
        if frag != b"\x40\x00" and frag != b"\x00\x00":
            flags_offset = int.from_bytes(frag, "big")
            if flags_offset & ipv4.OFFSET_MASK:
                return self._later_fragment(packet, in_iface)
        if proto == TCP or proto == UDP:
            if len(packet) < ihl + (20 if proto == TCP else 8):
                return self._untracked(packet, in_iface)  # too short to carry ports
            key = packet[9:10] + packet[12:20] + packet[ihl:ihl + 4]
        elif proto == ICMP:
            if len(packet) < ihl + 8:
                return self._untracked(packet, in_iface)
            type_ = packet[ihl]
            if type_ == icmp.ECHO_REQUEST or type_ == icmp.ECHO_REPLY:
                ident = packet[ihl + 4:ihl + 6]
                key = packet[9:10] + packet[12:20] + ident + ident
            elif type_ in icmp.ERROR_TYPES:
                return self._related(packet, ihl, now)
            else:
                return self._untracked(packet, in_iface)  # timestamp and other queries: not tracked
        else:
            return self._untracked(packet, in_iface)

        found = self._table.get(key)
        if found is not None:
            conn, direction = found
            if now >= conn.last + conn.timeout:
                self._remove(conn)
                self._stats.expired += 1
            else:
                self._track(conn, direction, packet, ihl, now)
                rewrite = conn.rewrites[direction]
                if rewrite.identity:
                    return Verdict(packet)
                self._stats.translated += 1
                return Verdict(self._apply(packet, ihl, rewrite))
        return self._new(packet, ihl, key, in_iface, now)

    def _new(self, packet: bytes, ihl: int, key: bytes, in_iface: str, now: float) -> Verdict:
        proto = key[0]
        src, dst = key[1:5], key[5:9]
        routing = self.routing
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
        out = routing.route_interface(target[5:9])
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
        creatable = self._creatable(packet, ihl, proto)
        if snat_rule is None and not kind:
            # Routed in from outside untranslated: remember it, so the answer is not masqueraded
            # (unless its answer is already a tracked connection's packet: never take that over).
            if in_iface in self._masquerade_out and creatable and in_iface != out and invert(key) not in self._table:
                refused = self._admit(src, now)
                if refused is DropReason.NAT_SOURCE_LIMIT:
                    return Verdict(None, refused)
                if refused is None:   # a full table with nothing to drop early leaves it untracked
                    conn = self._insert(key, invert(key), key, now, "none", None, self._first_state(packet, ihl))
                    self._track(conn, _ORIG, packet, ihl, now)
            return Verdict(packet)
        if not creatable:
            return Verdict(None, DropReason.NAT_INVALID)
        refused = self._admit(src, now)
        if refused is not None:
            return Verdict(None, refused)
        mapping = None
        if snat_rule is not None:
            address = routing.interface_address(snat_rule.out)
            if address is None:
                return Verdict(packet)
            mapping = self._map(proto, src + key[9:11], address, snat_rule.out)
            if mapping is None:
                return Verdict(None, DropReason.NAT_NO_PORT)
            kind.append("snat")
            ext_port = mapping.external[4:6]
            sport_dport = ext_port + (ext_port if proto == ICMP else target[11:13])
            target = target[0:1] + mapping.external[0:4] + target[5:9] + sport_dport
        if invert(target) in self._table:
            # Its answers would look like another connection's (a forward onto a tracked flow): refuse, never take over.
            if mapping is not None and mapping.refs == 0:
                self._unmap(mapping)
            return Verdict(None, DropReason.NAT_INVALID)
        conn = self._insert(key, invert(target), target, now, "+".join(sorted(kind)), mapping, self._first_state(packet, ihl))
        self._track(conn, _ORIG, packet, ihl, now)
        self._stats.translated += 1
        return Verdict(self._apply(packet, ihl, conn.rewrites[_ORIG]))

    def _dnat(self, key: bytes, local: str, in_iface: str) -> tuple[bytes, Mapping | None]:
        """Where a new connection to a router address goes: a forward rule, a hairpinned mapping, or nowhere."""
        proto, dport = key[0], int.from_bytes(key[11:13], "big")
        for rule in self.forwards:
            if rule.protocol == proto and rule.port == dport and (rule.interface in (None, local)):
                to_port = struct.pack("!H", rule.to_port)
                return key[0:5] + rule.to + key[9:11] + to_port, None
        if proto != ICMP:
            mapping = self._external.get(key[0:1] + key[5:9] + key[11:13])
            if mapping is not None and in_iface != mapping.out:
                self._stats.hairpinned += 1
                return key[0:5] + mapping.internal[0:4] + key[9:11] + mapping.internal[4:6], mapping
        return key, None

    def _untracked(self, packet: bytes, in_iface: str) -> Verdict:
        """A packet NAT cannot track (no ports, or a later fragment whose first never came).

        It is never masqueraded, which would collide, nor sent out with its
        inside address: refused when a masquerade rule would apply.
        """
        src, dst = packet[12:16], packet[16:20]
        out = self.routing.route_interface(dst)
        if out is not None and any(m.matches(src, dst, out) for m in self.masquerade):
            return Verdict(None, DropReason.NAT_UNSUPPORTED)
        return Verdict(packet)

    @staticmethod
    def _first_state(packet: bytes, ihl: int) -> State:
        if packet[9] != TCP:
            return State.UNREPLIED
        # A TCP connection picked up mid-stream (Linux's nf_conntrack_tcp_loose) is established once it is
        # answered; until then it is as unanswered as a SYN: short-lived, and first to go when the table is full
        # (or a flood of bare ACKs would fill the table with five-day entries nothing could reclaim).
        return State.SYN_SENT if packet[ihl + 13] & (_SYN | _ACK) == _SYN else State.UNREPLIED

    @staticmethod
    def _creatable(packet: bytes, ihl: int, proto: int) -> bool:
        """Whether a packet may start a connection (not a TCP RST, not an ICMP echo reply)."""
        if proto == TCP:
            return not packet[ihl + 13] & _RST
        if proto == ICMP:
            return packet[ihl] == icmp.ECHO_REQUEST
        return True

    # -- rewriting ------------------------------------------------------------------

    def _apply(self, packet: bytes, ihl: int, rewrite: Rewrite) -> bytes:
        # _adjust inlined: ~checksum (16 bits) + a folded delta needs one fold, and ~x & 0xFFFF is x ^ 0xFFFF
        out = bytearray(packet)
        out[12:20] = rewrite.addresses
        total = ((packet[10] << 8 | packet[11]) ^ 0xFFFF) + rewrite.ip_delta
        total = ((total & 0xFFFF) + (total >> 16)) ^ 0xFFFF
        out[10] = total >> 8
        out[11] = total & 0xFF
        proto = packet[9]
        if proto == ICMP:
            out[ihl + 4:ihl + 6] = rewrite.ports[0:2]
            csum_at = ihl + 2
        else:
            out[ihl:ihl + 4] = rewrite.ports
            csum_at = ihl + (16 if proto == TCP else 6)
        old = packet[csum_at] << 8 | packet[csum_at + 1]
        if proto != UDP or old:  # a zero UDP checksum means none
            total = (old ^ 0xFFFF) + rewrite.l4_delta
            new = ((total & 0xFFFF) + (total >> 16)) ^ 0xFFFF
            if proto == UDP and new == 0:
                new = 0xFFFF
            out[csum_at] = new >> 8
            out[csum_at + 1] = new & 0xFF
        if packet[6] & 0x20:  # first fragment: remember how to translate the rest of the datagram
            self._remember_fragment(packet, rewrite)
        return bytes(out)

    def _remember_fragment(self, packet: bytes, rewrite: Rewrite) -> None:
        fragments = self._fragments
        fragments[packet[4:6] + packet[9:10] + packet[12:20]] = rewrite
        while len(fragments) > FRAGMENT_MEMORY:
            fragments.popitem(last=False)

    def _later_fragment(self, packet: bytes, in_iface: str) -> Verdict:
        """Fragments after the first carry no ports: translate their addresses as the first one's were."""
        rewrite = self._fragments.get(packet[4:6] + packet[9:10] + packet[12:20])
        if rewrite is None:
            return self._untracked(packet, in_iface)  # the first fragment has not been seen
        if rewrite.identity:
            return Verdict(packet)
        out = bytearray(packet)
        out[12:20] = rewrite.addresses
        out[10:12] = _adjust(int.from_bytes(packet[10:12], "big"), rewrite.ip_delta).to_bytes(2, "big")
        self._stats.translated += 1
        return Verdict(bytes(out))

    def _related(self, packet: bytes, ihl: int, now: float) -> Verdict:
        """An ICMP error about a tracked connection: translate the outer header and the quoted packet.

        The quoted packet travelled the other way; it is restored to what its
        sender wrote, and the error goes to that sender.
        """
        inner_at = ihl + 8
        if len(packet) < inner_at + 20:
            return Verdict(packet)
        inner_ihl = (packet[inner_at] & 0x0F) * 4
        l4 = inner_at + inner_ihl
        inner_proto = packet[inner_at + 9]
        if len(packet) < l4 + 8 or inner_ihl < 20:
            return Verdict(packet)
        src, dst = packet[inner_at + 12:inner_at + 16], packet[inner_at + 16:inner_at + 20]
        if inner_proto == ICMP:
            ident = packet[l4 + 4:l4 + 6]
            quoted = bytes((ICMP,)) + src + dst + ident + ident
        elif inner_proto in (TCP, UDP):
            quoted = bytes((inner_proto,)) + src + dst + packet[l4:l4 + 4]
        else:
            return Verdict(packet)
        found = self._table.get(invert(quoted))
        if found is None:
            return Verdict(packet)
        conn, direction = found
        if conn.rewrites[direction].identity or now >= conn.last + conn.timeout:
            return Verdict(packet)
        restored = conn.reply if direction == _ORIG else conn.orig   # the quoted packet as its sender wrote it
        here = conn.orig if direction == _ORIG else conn.reply       # the error's direction, as it arrives
        out = bytearray(packet)
        # quoted packet: addresses, ports, its IP checksum, and its L4 checksum when quoted
        out[inner_at + 12:inner_at + 20] = restored[1:9]
        out[inner_at + 10:inner_at + 12] = b"\0\0"
        out[inner_at + 10:inner_at + 12] = internet_checksum(out[inner_at:l4]).to_bytes(2, "big")
        if inner_proto == ICMP:
            old_l4 = bytes(out[l4 + 4:l4 + 6])
            out[l4 + 4:l4 + 6] = restored[9:11]
            csum_at, delta = l4 + 2, _delta(old_l4, restored[9:11])
        else:
            old_l4 = src + dst + bytes(out[l4:l4 + 4])
            out[l4:l4 + 4] = restored[9:13]
            csum_at = l4 + (16 if inner_proto == TCP else 6)
            delta = _delta(old_l4, restored[1:13])
        if len(packet) >= csum_at + 2:
            old = int.from_bytes(out[csum_at:csum_at + 2], "big")
            if inner_proto != UDP or old:
                new = _adjust(old, delta)
                if inner_proto == UDP and new == 0:   # only UDP spells a computed zero 0xFFFF
                    new = 0xFFFF
                out[csum_at:csum_at + 2] = new.to_bytes(2, "big")
        # outer header: to the quoted packet's sender; from the translated peer if the peer itself complains
        if packet[12:16] == here[1:5]:
            out[12:16] = restored[5:9]
        out[16:20] = restored[1:5]
        out[10:12] = b"\0\0"
        out[10:12] = internet_checksum(out[0:ihl]).to_bytes(2, "big")
        out[ihl + 2:ihl + 4] = b"\0\0"
        total = int.from_bytes(packet[2:4], "big")
        out[ihl + 2:ihl + 4] = internet_checksum(out[ihl:total]).to_bytes(2, "big")
        conn.packets[direction] += 1
        self._stats.icmp_translated += 1
        return Verdict(bytes(out))

    # -- state --------------------------------------------------------------------

    def _track(self, conn: Connection, direction: int, packet: bytes, ihl: int, now: float) -> None:
        conn.packets[direction] += 1
        conn.bytes[direction] += len(packet)
        proto = conn.orig[0]
        state = conn.state
        new_state = state
        if proto == TCP:
            flags = packet[ihl + 13]
            if flags & (_SYN | _FIN | _RST) or state is not State.ESTABLISHED:
                new_state = self._tcp(conn, direction, flags)
        elif direction == _REPLY and state is State.UNREPLIED:
            new_state = State.REPLIED
            conn.assured = proto == UDP
        if new_state is not state:
            self._move(conn, new_state, now)
        elif now - conn.last >= REFRESH_INTERVAL:
            conn.last = now
            self._queues[proto, state].move_to_end(conn)

    @staticmethod
    def _tcp(conn: Connection, direction: int, flags: int) -> State:
        state = conn.state
        if flags & _RST:
            return State.CLOSE
        if state is State.UNREPLIED:   # picked up mid-stream
            if direction == _REPLY:
                conn.assured = True    # a valid answer to a picked-up connection (Linux sets ASSURED here too)
                return State.ESTABLISHED
            if flags & (_SYN | _ACK) == _SYN:
                return State.SYN_SENT  # a new connection on the same ports
            if not flags & _FIN:
                return state
        if flags & _SYN:
            if direction == _ORIG and not flags & _ACK and state in (State.TIME_WAIT, State.CLOSE):
                conn.fins = 0
                conn.assured = False
                return State.SYN_SENT   # the port is reused for a new connection
            if direction == _REPLY and flags & _ACK and state is State.SYN_SENT:
                return State.SYN_RECV
            return state
        if flags & _FIN:
            conn.fins |= 1 << direction
            return State.LAST_ACK if conn.fins == 3 else State.FIN_WAIT
        if flags & _ACK:
            if state is State.SYN_RECV and direction == _ORIG:
                conn.assured = True
                return State.ESTABLISHED
            if state is State.LAST_ACK:
                return State.TIME_WAIT
        return state

    def _move(self, conn: Connection, state: State, now: float) -> None:
        proto = conn.orig[0]
        del self._queues[proto, conn.state][conn]
        conn.state = state
        conn.last = now
        conn.timeout = self.timeouts.of(proto, state)
        self._queue(proto, state)[conn] = None

    def _queue(self, proto: int, state: State) -> OrderedDict[Connection, None]:
        queue = self._queues.get((proto, state))
        if queue is None:
            queue = self._queues[proto, state] = OrderedDict()
        return queue

    def _insert(
        self, orig: bytes, reply: bytes, target: bytes, now: float, kind: str, mapping: Mapping | None, state: State,
    ) -> Connection:
        rewrites = (Rewrite.between(orig, target), Rewrite.between(reply, invert(orig)))
        conn = Connection(orig, reply, state, self.timeouts.of(orig[0], state), now, rewrites, kind, mapping)
        if mapping is not None:
            mapping.refs += 1
        self._table[orig] = (conn, _ORIG)
        self._table[reply] = (conn, _REPLY)
        self._queue(orig[0], state)[conn] = None
        self._count += 1
        src = orig[1:5]
        self._sources[src] = self._sources.get(src, 0) + 1
        self._stats.created += 1
        return conn

    def _remove(self, conn: Connection) -> None:
        del self._queues[conn.orig[0], conn.state][conn]
        self._table.pop(conn.orig, None)
        self._table.pop(conn.reply, None)
        self._count -= 1
        src = conn.orig[1:5]
        held = self._sources[src] - 1
        if held:
            self._sources[src] = held
        else:
            del self._sources[src]
        mapping = conn.mapping
        if mapping is not None:
            mapping.refs -= 1
            if mapping.refs == 0:
                self._unmap(mapping)

    def _unmap(self, mapping: Mapping) -> None:
        pkey = bytes((mapping.protocol,))
        del self._mappings[pkey + mapping.internal + mapping.external[0:4]]
        del self._external[pkey + mapping.external]
        self._pools[pkey + mapping.external[0:4]].give_back(int.from_bytes(mapping.external[4:6], "big"))

    def _admit(self, src: bytes, now: float) -> DropReason | None:
        """Room for one more connection from ``src``, or why there is none.

        A source at its share is refused before anything is dropped early for it.
        """
        if self._sources.get(src, 0) >= self.max_per_source:
            self.handle_timer(now)   # some of its connections may have expired since the timer last ran
            if self._sources.get(src, 0) >= self.max_per_source:
                self._stats.source_limited += 1
                return DropReason.NAT_SOURCE_LIMIT
        if not self._make_room(now):
            return DropReason.NAT_TABLE_FULL
        return None

    def _make_room(self, now: float) -> bool:
        if self._count < self.max_connections:
            return True
        self.handle_timer(now)
        if self._count < self.max_connections:
            return True
        # Linux's early drop: a connection that was never answered, the least recently seen. Their queues
        # hold nothing else, oldest first, so the candidates are the heads.
        heads = [next(iter(queue)) for queue in map(self._queues.get, _UNANSWERED) if queue]
        if not heads:
            return False
        self._remove(min(heads, key=_last_seen))
        self._stats.early_dropped += 1
        return True

    def _map(self, proto: int, internal: bytes, address: bytes, out: str) -> Mapping | None:
        """The endpoint-independent mapping of ``internal`` (address + port) on ``address``, made if needed.

        The internal port is kept when free, otherwise a random free one is taken; None when none is left.
        """
        pkey = bytes((proto,))
        mapping = self._mappings.get(pkey + internal + address)
        if mapping is not None:
            return mapping
        pool = self._pools.get(pkey + address)
        if pool is None:
            low, high = ICMP_RANGE if proto == ICMP else PORT_RANGE
            reserved = frozenset(port for protocol, port in self._reserved if protocol == proto)
            pool = self._pools[pkey + address] = PortPool(low, high, reserved)
        port = int.from_bytes(internal[4:6], "big")
        if not pool.take(port):
            port = pool.take_random(self._rng)
            if port is None:
                return None
        mapping = Mapping(proto, internal, address + port.to_bytes(2, "big"), out)
        self._mappings[pkey + internal + address] = mapping
        self._external[pkey + mapping.external] = mapping
        return mapping

    # -- time ---------------------------------------------------------------------

    def poll_at(self) -> float | None:
        deadline = None
        for queue in self._queues.values():
            if queue:
                oldest = next(iter(queue))
                expires = oldest.last + oldest.timeout
                if deadline is None or expires < deadline:
                    deadline = expires
        return deadline

    def handle_timer(self, now: float) -> None:
        for queue in self._queues.values():
            while queue:
                oldest = next(iter(queue))
                if now < oldest.last + oldest.timeout:
                    break
                self._remove(oldest)
                self._stats.expired += 1
