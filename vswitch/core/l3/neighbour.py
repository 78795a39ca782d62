"""The neighbour cache of one router interface (ARP, RFC 826): pure, time passed in.

States follow Linux and smoltcp: ``INCOMPLETE`` while a request is out,
``REACHABLE`` for ``reachable_time`` after the neighbour confirmed itself
(a reply addressed to us), ``STALE`` after that — still used, and when it
is, asked again after ``delay_first_probe`` seconds, by unicast to the MAC we
know (Linux's DELAY and PROBE), and forgotten if it never answers — and
``STATIC`` for configured entries.

The table knows nothing of frames: it says which addresses to ask for and
hands back the packets it held once an address resolves or fails; the router
builds the ARP frames and ICMP errors.

Bounds: ``max_entries`` dynamic entries (the least recently used one is
evicted when full), ``max_pending`` addresses asked for at once (resolving,
or stale and being refreshed), and
``queue_len`` packets held per resolving address (the oldest is dropped when
full, as Linux's ``unres_qlen`` does). Requests for one address go out at
most once per ``retrans_time``, ``max_probes`` times, so a table asks for at
most ``max_pending / retrans_time`` addresses per second.
"""

import enum
from collections import OrderedDict
from collections.abc import Iterator

import attrs

from vswitch.core.wire.addr import ip_to_str, mac_to_str

REACHABLE_TIME = 30.0    # seconds a confirmed entry is REACHABLE (Linux base_reachable_time)
GC_STALE_TIME = 60.0     # seconds an entry may go unused before it is forgotten
RETRANS_TIME = 1.0       # seconds between requests for one address
DELAY_FIRST_PROBE = 5.0  # seconds a STALE entry in use waits before it is asked again (Linux's DELAY state)
MAX_PROBES = 3           # requests before an address is given up on
MAX_ENTRIES = 1024
MAX_PENDING = 256
QUEUE_LEN = 64
REFRESH_INTERVAL = 1.0   # `used` is updated at this granularity, as the FDB's `updated`


class State(enum.Enum):
    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    STATIC = "static"

    def __str__(self) -> str:
        return self.value


@attrs.define(slots=True, eq=False)
class Neighbour:
    ip: bytes = attrs.field(repr=ip_to_str)
    mac: bytes | None = attrs.field(repr=lambda m: m and mac_to_str(m))
    static: bool = False
    confirmed: float = float("-inf")  # when the neighbour last answered us
    used: float = 0.0                 # when we last sent to it (or learned it)
    probes: int = 0                   # requests sent since the last confirmation
    next_probe: float = float("inf")  # when the next request is due, while probing
    queue: list[bytes] = attrs.Factory(list)

    def state(self, now: float, reachable_time: float) -> State:
        if self.static:
            return State.STATIC
        if self.mac is None:
            return State.INCOMPLETE
        return State.REACHABLE if now < self.confirmed + reachable_time else State.STALE


@attrs.define(slots=True)
class NeighbourStatistics:
    entries: int = 0
    requests: int = 0          # requests the table asked to send
    resolved: int = 0
    failed: int = 0            # addresses given up on after max_probes
    queue_dropped: int = 0     # held packets dropped because the queue was full
    pending_full: int = 0      # packets dropped because too many addresses were resolving
    evicted: int = 0
    expired: int = 0


@attrs.frozen
class Resolution:
    """What :meth:`NeighbourTable.resolve` decided for one packet."""

    mac: bytes | None          # send now to this MAC, or None: held or dropped
    request: bool = False      # ask for the address now
    dropped: list[bytes] = attrs.Factory(list)  # packets dropped to make room (queue or pending full)


@attrs.frozen
class Expiry:
    """What :meth:`NeighbourTable.handle_timer` decided."""

    requests: list[bytes]                    # addresses to ask for now
    failed: list[tuple[bytes, list[bytes]]]  # (address, the packets held for it) given up on


class NeighbourTable:
    def __init__(
        self, *,
        reachable_time: float = REACHABLE_TIME,
        gc_stale_time: float = GC_STALE_TIME,
        retrans_time: float = RETRANS_TIME,
        delay_first_probe: float = DELAY_FIRST_PROBE,
        max_probes: int = MAX_PROBES,
        max_entries: int = MAX_ENTRIES,
        max_pending: int = MAX_PENDING,
        queue_len: int = QUEUE_LEN,
    ) -> None:
        if min(max_entries, max_pending, queue_len, max_probes) < 1:
            raise ValueError("neighbour table limits must be at least 1")
        self.reachable_time = reachable_time
        self.gc_stale_time = gc_stale_time
        self.retrans_time = retrans_time
        self.delay_first_probe = delay_first_probe
        self.max_probes = max_probes
        self.max_entries = max_entries
        self.max_pending = max_pending
        self.queue_len = queue_len
        self._static: dict[bytes, Neighbour] = {}
        self._dynamic: OrderedDict[bytes, Neighbour] = OrderedDict()  # least recently used first
        self._probing: dict[bytes, Neighbour] = {}  # incomplete, or stale and being refreshed
        self._stats = NeighbourStatistics()
        # Counts the changes of who is where (an address added, moved to another MAC or forgotten): what a
        # cache of lookups (the router's hops) checks, with fresh() for what time alone changes.
        self.generation = 0

    # -- queries ----------------------------------------------------------

    def get(self, ip: bytes) -> Neighbour | None:
        return self._static.get(ip) or self._dynamic.get(ip)

    def __iter__(self) -> Iterator[Neighbour]:
        return iter([*self._static.values(), *self._dynamic.values()])

    def __len__(self) -> int:
        return len(self._static) + len(self._dynamic)

    def statistics(self) -> NeighbourStatistics:
        return attrs.evolve(self._stats, entries=len(self))

    # -- sending ----------------------------------------------------------

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        """The fast path: the MAC to send to if one is known and fresh enough to use without side effects."""
        entry = self._static.get(ip) or self._dynamic.get(ip)
        if entry is None or entry.mac is None:
            return None
        if entry.static:
            return entry.mac
        if now >= entry.confirmed + self.reachable_time or now - entry.used >= REFRESH_INTERVAL:
            return None  # stale or due a refresh of `used`: take the slow path in resolve()
        return entry.mac

    def fresh(self, ip: bytes, now: float) -> tuple[bytes, float] | None:
        """The MAC :meth:`lookup` gives now and until when it keeps giving it, unless :attr:`generation` moves;
        None when it gives none now."""
        entry = self._static.get(ip) or self._dynamic.get(ip)
        if entry is None or entry.mac is None:
            return None
        if entry.static:
            return entry.mac, float("inf")
        until = min(entry.confirmed + self.reachable_time, entry.used + REFRESH_INTERVAL)
        return (entry.mac, until) if now < until else None

    def resolve(self, ip: bytes, packet: bytes, now: float) -> Resolution:
        """Where to send ``packet`` for next hop ``ip``: a MAC, or held while the address resolves."""
        entry = self._static.get(ip)
        if entry is not None:
            return Resolution(entry.mac)
        entry = self._dynamic.get(ip)
        if entry is not None and entry.mac is not None:
            self._touch(entry, now)
            if (now >= entry.confirmed + self.reachable_time and ip not in self._probing
                    and len(self._probing) < self.max_pending):
                # STALE and in use: keep sending, and ask again after a delay (Linux's DELAY, then PROBE);
                # with max_pending addresses being asked for already, ask when one is done.
                entry.probes = 0
                entry.next_probe = now + self.delay_first_probe
                self._probing[ip] = entry
            return Resolution(entry.mac)
        dropped: list[bytes] = []
        if entry is None:
            if len(self._probing) >= self.max_pending:
                self._stats.pending_full += 1
                return Resolution(None, dropped=[packet])
            entry = Neighbour(ip, None, used=now, probes=1, next_probe=now + self.retrans_time)
            dropped += self._insert(entry)
            self._probing[ip] = entry
            entry.queue.append(packet)
            self._stats.requests += 1
            return Resolution(None, True, dropped)
        # INCOMPLETE: hold the packet; the timer sends the next request.
        if len(entry.queue) >= self.queue_len:
            dropped.append(entry.queue.pop(0))
            self._stats.queue_dropped += 1
        entry.queue.append(packet)
        return Resolution(None, dropped=dropped)

    # -- receiving ----------------------------------------------------------

    def learn(self, ip: bytes, mac: bytes, now: float, *, confirmed: bool, create: bool) -> list[bytes]:
        """Record that ``ip`` is at ``mac``; returns the packets held for it, now sendable.

        ``confirmed``: the neighbour answered us (a reply), so the entry is
        REACHABLE; otherwise (a request we overheard) it is STALE at best.
        ``create``: add the address if it is not in the table (only for
        messages addressed to us, so strangers cannot fill the table).
        """
        if ip in self._static:
            return []
        entry = self._dynamic.get(ip)
        if entry is None:
            if not create or len(self._probing) >= len(self._dynamic) >= self.max_entries:
                return []  # full of addresses being resolved: evicting one would lose its packets
            entry = Neighbour(ip, mac, used=now)
            self._insert(entry)
        incomplete = entry.mac is None
        if entry.mac != mac:
            self.generation += 1
            entry.mac = mac
            entry.confirmed = float("-inf")
        if confirmed:
            entry.confirmed = now
        if incomplete or confirmed:
            # Any news resolves an INCOMPLETE entry; only an answer ends the refresh of a STALE one.
            self._probing.pop(ip, None)
            entry.probes = 0
            entry.next_probe = float("inf")
        held, entry.queue = entry.queue, []
        if held:
            self._stats.resolved += 1
        return held

    def add_static(self, ip: bytes, mac: bytes) -> None:
        self.remove(ip)
        self.generation += 1
        self._static[ip] = Neighbour(ip, mac, static=True)

    def remove(self, ip: bytes) -> Neighbour | None:
        self.generation += 1
        self._probing.pop(ip, None)
        return self._static.pop(ip, None) or self._dynamic.pop(ip, None)

    def flush(self) -> list[bytes]:
        """Forget every dynamic entry (the interface went down); returns the packets that were held."""
        held = [p for e in self._dynamic.values() for p in e.queue]
        self.generation += 1
        self._dynamic.clear()
        self._probing.clear()
        return held

    # -- time ---------------------------------------------------------------

    def poll_at(self) -> float | None:
        deadline = min((e.next_probe for e in self._probing.values()), default=None)
        if self._dynamic:
            oldest = next(iter(self._dynamic.values()))
            if oldest.ip not in self._probing:  # GC waits for a resolving entry; its next_probe is the deadline
                gc = oldest.used + self.gc_stale_time
                deadline = gc if deadline is None else min(deadline, gc)
        return deadline

    def handle_timer(self, now: float) -> Expiry:
        requests: list[bytes] = []
        failed: list[tuple[bytes, list[bytes]]] = []
        for ip, entry in list(self._probing.items()):
            if now < entry.next_probe:
                continue
            if entry.probes >= self.max_probes:
                del self._probing[ip]
                del self._dynamic[ip]
                self.generation += 1
                self._stats.failed += 1
                failed.append((ip, entry.queue))
                continue
            entry.probes += 1
            entry.next_probe = now + self.retrans_time
            requests.append(ip)
            self._stats.requests += 1
        dynamic = self._dynamic
        while dynamic:
            oldest = next(iter(dynamic.values()))
            if now < oldest.used + self.gc_stale_time or oldest.ip in self._probing:
                break
            dynamic.popitem(last=False)
            self.generation += 1
            self._stats.expired += 1
        return Expiry(requests, failed)

    # -- internals ------------------------------------------------------------

    def _touch(self, entry: Neighbour, now: float) -> None:
        if now - entry.used >= REFRESH_INTERVAL:
            entry.used = now
            self._dynamic.move_to_end(entry.ip)

    def _insert(self, entry: Neighbour) -> list[bytes]:
        """Add a dynamic entry, evicting the least recently used one that is not resolving."""
        dropped: list[bytes] = []
        if len(self._dynamic) >= self.max_entries:
            for ip, victim in self._dynamic.items():
                if ip not in self._probing:
                    break
            else:
                ip, victim = next(iter(self._dynamic.items()))
                self._probing.pop(ip, None)
            del self._dynamic[ip]
            self.generation += 1
            dropped = victim.queue
            self._stats.evicted += 1
        self._dynamic[entry.ip] = entry
        return dropped
