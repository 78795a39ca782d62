"""Connection tracking: tuples, states, timeouts, and a bounded table. Pure, time passed in.

A :class:`Connection` holds two tuples, as Linux conntrack does: ``orig``, the
first packet as its sender wrote it, and ``reply``, what the answer looks
like when it reaches the router. A packet in the original direction is
rewritten to the inverse of ``reply`` and an answer to the inverse of
``orig``; so one rewrite serves SNAT, DNAT and both at once. Both tuples
index the table, so each packet costs one dict lookup, and the checksum
change of each direction is computed once per connection (RFC 1624,
:class:`Rewrite`), so a packet costs one copy and three additions.

Tuples are 13-byte keys: protocol, source address, destination address,
source port, destination port (for ICMP echo the identifier stands in for
both ports); ``KEY_*`` name their fields.

Timeouts are Linux's. The table is bounded and, when full, drops the oldest
unanswered connection before refusing a new one (Linux's early drop). One
source address may hold only a share of the table (``max_per_source``), so
a container that opens connections as fast as it can is refused on its own
while the others keep theirs. Connections wait in one queue per protocol and
state, oldest first, so expiry and early drop only ever look at the queues'
heads: nothing costs more as the table fills.
"""

import enum
import operator
import struct
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import attrs

from vswitch.core.actions import DropReason
from vswitch.core.wire import ipv4, tcp
from vswitch.core.wire.addr import ip_to_str
from vswitch.core.wire.checksum import delta, fold

from .mapping import Mapping, Mappings

TCP, UDP, ICMP = ipv4.PROTO_TCP, ipv4.PROTO_UDP, ipv4.PROTO_ICMP
PROTOCOL_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}
DEFAULT_MAX_CONNECTIONS = 65536
MAX_CONNECTIONS = 4_194_304   # the most a table may hold: about 1.4 KB each, so ≈6 GB at the limit
SOURCE_SHARE = 4              # by default a source may hold a quarter of the table (see default_max_per_source)
REFRESH_INTERVAL = 1.0        # `last` moves at this granularity, as in the FDB
ORIG, REPLY = 0, 1            # the directions of a connection

_TCP_FLAGS = tcp.FLAGS                    # where track reads TCP's flags, as module-level constants
_SYN, _FIN, _RST, _ACK = tcp.SYN, tcp.FIN, tcp.RST, tcp.ACK

# The fields of a tuple (a key).
KEY_PROTOCOL = 0
KEY_PROTOCOL_BYTE = slice(0, 1)   # the same as bytes, to build a tuple
KEY_SRC = slice(1, 5)
KEY_DST = slice(5, 9)
KEY_ADDRESSES = slice(1, 9)
KEY_SPORT = slice(9, 11)      # ICMP echo: the identifier
KEY_DPORT = slice(11, 13)
KEY_PORTS = slice(9, 13)


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
    return key[KEY_PROTOCOL_BYTE] + key[KEY_DST] + key[KEY_SRC] + key[KEY_DPORT] + key[KEY_SPORT]


def describe(key: bytes) -> dict[str, object]:
    """A tuple for people and JSON."""
    return {
        "protocol": PROTOCOL_NAMES.get(key[KEY_PROTOCOL], str(key[KEY_PROTOCOL])),
        "src": ip_to_str(key[KEY_SRC]), "sport": int.from_bytes(key[KEY_SPORT], "big"),
        "dst": ip_to_str(key[KEY_DST]), "dport": int.from_bytes(key[KEY_DPORT], "big"),
    }


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
        old_addrs, new_addrs = old[KEY_ADDRESSES], new[KEY_ADDRESSES]
        ip_delta = delta(old_addrs, new_addrs)
        if old[KEY_PROTOCOL] == ICMP:
            l4_delta = delta(old[KEY_SPORT], new[KEY_SPORT])
        else:
            l4_delta = fold(ip_delta + delta(old[KEY_PORTS], new[KEY_PORTS]))
        return cls(new_addrs, new[KEY_PORTS], ip_delta, l4_delta, old == new)


# -- connections ----------------------------------------------------------------


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
        return self.orig[KEY_PROTOCOL]

    def expires(self) -> float:
        return self.last + self.timeout


def first_state(packet: bytes, ihl: int) -> State:
    """The state a connection starts in, from its first packet (a checked IPv4 packet carrying ports)."""
    if packet[ipv4.PROTOCOL] != TCP:
        return State.UNREPLIED
    # A TCP connection picked up mid-stream (Linux's nf_conntrack_tcp_loose) is established once it is
    # answered; until then it is as unanswered as a SYN: short-lived, and first to go when the table is full
    # (or a flood of bare ACKs would fill the table with five-day entries nothing could reclaim).
    return State.SYN_SENT if packet[ihl + _TCP_FLAGS] & (_SYN | _ACK) == _SYN else State.UNREPLIED


class ConnectionTable:
    """The tracked connections, by both their tuples; each holds its mapping (if any) until it goes.

    ``by_tuple`` maps a tuple to its connection and the direction it is
    (``ORIG`` or ``REPLY``): the one lookup of every packet.

    ``decided`` maps a tuple to what the router decided for its packets (the rewrite and where they go,
    flattened into one object: its per-flow fast path, one lookup instead of the conntrack's, the route's and
    the neighbour's). The router fills it; the table drops a connection's entries with the connection, so the
    cache never outlives nor outgrows it.
    """

    def __init__(self, mappings: Mappings, *, max_connections: int, max_per_source: int, timeouts: Timeouts) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.timeouts = timeouts
        self.by_tuple: dict[bytes, tuple[Connection, int]] = {}
        self.decided: dict[bytes, Any] = {}   # the router's decisions (l3.router._Hop), which this package does not know
        self.created = 0
        self.expired = 0
        self.early_dropped = 0      # unanswered connections dropped to make room
        self.source_limited = 0     # new connections refused: their source held max_per_source already
        self._mappings = mappings
        # One queue per protocol and state, least recently seen first: each has one timeout, so its head
        # expires first, and the queues of unanswered states hold only connections early drop may take.
        self._queues: dict[tuple[int, State], OrderedDict[Connection, None]] = {}
        self._count = 0
        self._sources: dict[bytes, int] = {}        # source address → its connections (none kept at zero)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Connection]:
        """Every connection, least recently seen first per protocol and state."""
        return iter([c for queue in self._queues.values() for c in queue])

    @property
    def sources(self) -> int:
        """Source addresses holding connections."""
        return len(self._sources)

    def insert(
        self, orig: bytes, reply: bytes, target: bytes, now: float, kind: str, mapping: Mapping | None, state: State,
    ) -> Connection:
        """A new connection whose first packet leaves as ``target``; its answers arrive as ``reply``."""
        rewrites = (Rewrite.between(orig, target), Rewrite.between(reply, invert(orig)))
        conn = Connection(orig, reply, state, self.timeouts.of(orig[KEY_PROTOCOL], state), now, rewrites, kind, mapping)
        if mapping is not None:
            mapping.refs += 1
        self.by_tuple[orig] = (conn, ORIG)
        self.by_tuple[reply] = (conn, REPLY)
        self._queue(orig[KEY_PROTOCOL], state)[conn] = None
        self._count += 1
        src = orig[KEY_SRC]
        self._sources[src] = self._sources.get(src, 0) + 1
        self.created += 1
        return conn

    def expire(self, conn: Connection) -> None:
        self.remove(conn)
        self.expired += 1

    def remove(self, conn: Connection) -> None:
        del self._queues[conn.orig[KEY_PROTOCOL], conn.state][conn]
        self.by_tuple.pop(conn.orig, None)
        self.by_tuple.pop(conn.reply, None)
        self.decided.pop(conn.orig, None)
        self.decided.pop(conn.reply, None)
        self._count -= 1
        src = conn.orig[KEY_SRC]
        held = self._sources[src] - 1
        if held:
            self._sources[src] = held
        else:
            del self._sources[src]
        mapping = conn.mapping
        if mapping is not None:
            mapping.refs -= 1
            if mapping.refs == 0:
                self._mappings.unmap(mapping)

    def track(self, conn: Connection, direction: int, packet: bytes, ihl: int, now: float) -> None:
        """Count ``packet`` (of ``direction``) and move the connection on: its state, and its place in the queues."""
        proto = conn.orig[KEY_PROTOCOL]
        self.count(conn, direction, proto, packet[ihl + _TCP_FLAGS] if proto == TCP else 0, len(packet), now)

    def count(self, conn: Connection, direction: int, proto: int, tcp_flags: int, size: int, now: float) -> None:
        """:meth:`track` for a packet of ``size`` bytes whose protocol (the connection's) and TCP flags (if TCP)
        were read already: the router's fast path has them from the frame."""
        conn.packets[direction] += 1
        conn.bytes[direction] += size
        state = conn.state
        new_state = state
        if proto == TCP:
            if tcp_flags & (_SYN | _FIN | _RST) or state is not State.ESTABLISHED:
                new_state = self._tcp(conn, direction, tcp_flags)
        elif direction == REPLY and state is State.UNREPLIED:
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
            if direction == REPLY:
                conn.assured = True    # a valid answer to a picked-up connection (Linux sets ASSURED here too)
                return State.ESTABLISHED
            if flags & (_SYN | _ACK) == _SYN:
                return State.SYN_SENT  # a new connection on the same ports
            if not flags & _FIN:
                return state
        if flags & _SYN:
            if direction == ORIG and not flags & _ACK and state in (State.TIME_WAIT, State.CLOSE):
                conn.fins = 0
                conn.assured = False
                return State.SYN_SENT   # the port is reused for a new connection
            if direction == REPLY and flags & _ACK and state is State.SYN_SENT:
                return State.SYN_RECV
            return state
        if flags & _FIN:
            conn.fins |= 1 << direction
            return State.LAST_ACK if conn.fins == 3 else State.FIN_WAIT
        if flags & _ACK:
            if state is State.SYN_RECV and direction == ORIG:
                conn.assured = True
                return State.ESTABLISHED
            if state is State.LAST_ACK:
                return State.TIME_WAIT
        return state

    def _move(self, conn: Connection, state: State, now: float) -> None:
        proto = conn.orig[KEY_PROTOCOL]
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

    def admit(self, src: bytes, now: float) -> DropReason | None:
        """Room for one more connection from ``src``, or why there is none.

        A source at its share is refused before anything is dropped early for it.
        """
        if self._sources.get(src, 0) >= self.max_per_source:
            self.handle_timer(now)   # some of its connections may have expired since the timer last ran
            if self._sources.get(src, 0) >= self.max_per_source:
                self.source_limited += 1
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
        self.remove(min(heads, key=_last_seen))
        self.early_dropped += 1
        return True

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
                self.expire(oldest)
