"""The forwarding database: which port each MAC address was last seen on.

Entries age out ``ageing`` seconds after the last frame from their address and
the table holds at most ``max_entries``; when full, learning a new address
evicts the oldest dynamic entry. Time is passed in by the caller.

Dynamic entries are kept in a second dict ordered by ``updated``: refreshing an
entry moves it to the end, at most once per ``REFRESH_INTERVAL`` seconds (the
kernel bridge has the same granularity, a jiffy), so the oldest entry is always
first, ageing pops from the front and ``poll_at`` is O(1).
"""

from collections.abc import Iterator

import attrs

from vswitch.core.wire.addr import mac_to_str

REFRESH_INTERVAL = 1.0
DEFAULT_AGEING = 300.0
DEFAULT_MAX_ENTRIES = 65536


@attrs.define(slots=True)
class FdbEntry:
    mac: bytes = attrs.field(repr=mac_to_str)
    port: str
    static: bool
    updated: float


@attrs.define(slots=True)
class FdbStatistics:
    entries: int = 0
    learned: int = 0
    moved: int = 0
    aged: int = 0
    evicted: int = 0
    flushed: int = 0
    static_conflicts: int = 0  # a static address seen on another port (not moved)


class Fdb:
    def __init__(self, *, ageing: float = DEFAULT_AGEING, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if ageing <= 0:
            raise ValueError(f"ageing must be positive, got {ageing}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.ageing = float(ageing)
        self.max_entries = max_entries
        self._entries: dict[bytes, FdbEntry] = {}
        self._dynamic: dict[bytes, FdbEntry] = {}  # ordered oldest-updated first
        self._stats = FdbStatistics()

    # -- queries --------------------------------------------------------

    def get(self, mac: bytes) -> FdbEntry | None:
        """The raw entry, expired or not (the bridge checks expiry itself on the fast path)."""
        return self._entries.get(mac)

    def lookup(self, mac: bytes, now: float) -> FdbEntry | None:
        entry = self._entries.get(mac)
        if entry is None or (not entry.static and now >= entry.updated + self.ageing):
            return None
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FdbEntry]:
        return iter(list(self._entries.values()))

    def statistics(self) -> FdbStatistics:
        return attrs.evolve(self._stats, entries=len(self._entries))

    # -- changes --------------------------------------------------------

    def learn(self, mac: bytes, port: str, now: float) -> None:
        """Record that ``mac`` was seen as a source on ``port`` at ``now``.

        The caller has already rejected group and all-zero addresses.
        """
        entry = self._entries.get(mac)
        if entry is not None:
            if entry.static:
                if entry.port != port:
                    self._stats.static_conflicts += 1
                else:
                    entry.updated = now
                return
            if entry.port != port:
                entry.port = port
                self._stats.moved += 1
            entry.updated = now
            del self._dynamic[mac]
            self._dynamic[mac] = entry
            return
        if len(self._entries) >= self.max_entries and not self._evict_oldest():
            return  # full of static entries: nothing to learn into
        entry = FdbEntry(mac, port, False, now)
        self._entries[mac] = entry
        self._dynamic[mac] = entry
        self._stats.learned += 1

    def add_static(self, mac: bytes, port: str, now: float = 0.0) -> FdbEntry:
        """Pin ``mac`` to ``port``; it never ages, moves or is evicted."""
        old = self._entries.get(mac)
        if old is not None and not old.static:
            del self._dynamic[mac]
        elif old is None and len(self._entries) >= self.max_entries and not self._evict_oldest():
            raise ValueError(f"fdb full ({self.max_entries} static entries)")
        entry = FdbEntry(mac, port, True, now)
        self._entries[mac] = entry
        return entry

    def remove(self, mac: bytes) -> bool:
        entry = self._entries.pop(mac, None)
        if entry is None:
            return False
        self._dynamic.pop(mac, None)
        return True

    def flush(self, port: str | None = None, *, include_static: bool = False) -> int:
        """Remove the entries of ``port`` (every port if None); dynamic only unless asked."""
        doomed = [
            e.mac for e in self._entries.values()
            if (port is None or e.port == port) and (include_static or not e.static)
        ]
        for mac in doomed:
            self.remove(mac)
        self._stats.flushed += len(doomed)
        return len(doomed)

    def _evict_oldest(self) -> bool:
        if not self._dynamic:
            return False
        mac = next(iter(self._dynamic))
        self.remove(mac)
        self._stats.evicted += 1
        return True

    # -- time -------------------------------------------------------------

    def poll_at(self) -> float | None:
        """When the oldest dynamic entry expires, or None with nothing to age."""
        for entry in self._dynamic.values():
            return entry.updated + self.ageing
        return None

    def handle_timer(self, now: float) -> int:
        """Remove every dynamic entry whose ageing time has run out; returns how many.

        An entry expires at exactly ``updated + ageing``, the instant ``poll_at``
        names, so a timer woken then always makes progress.
        """
        aged = 0
        dynamic = self._dynamic
        while dynamic:
            mac, entry = next(iter(dynamic.items()))
            if now < entry.updated + self.ageing:
                break
            del dynamic[mac]
            del self._entries[mac]
            aged += 1
        self._stats.aged += aged
        return aged
