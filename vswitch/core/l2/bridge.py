"""The learning bridge: pure, synchronous, time passed in.

``handle_frames(port, frames, now)`` learns the source of each frame and
decides where it goes, returning :mod:`vswitch.core.actions`. Frames are never
copied or re-serialized: the fast path reads the two MAC addresses by slicing
the original ``bytes``.
"""

from collections import Counter
from collections.abc import Iterable, Sequence

import attrs

from vswitch.core.actions import Action, Drop, DropReason, Transmit
from vswitch.core.wire import ethernet

from .fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, REFRESH_INTERVAL, Fdb

_ZERO_MAC = b"\x00" * 6
_LINK_LOCAL_PREFIX = b"\x01\x80\xc2\x00\x00"
_HEADER_LEN, _DST, _SRC = ethernet.HEADER_LEN, ethernet.DST, ethernet.SRC


@attrs.define(slots=True)
class BridgePortStatistics:
    """What the bridge did with one port's frames (device counters live on the Port)."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0   # handed to the port for transmission
    tx_bytes: int = 0
    rx_dropped: int = 0


@attrs.define(slots=True)
class BridgePort:
    name: str
    up: bool = True
    stats: BridgePortStatistics = attrs.Factory(BridgePortStatistics)


@attrs.frozen
class BridgeStatistics:
    ports: dict[str, BridgePortStatistics]
    drops: dict[DropReason, int]
    unicast: int
    flooded: int
    fdb: object


class Bridge:
    def __init__(self, *, ageing: float = DEFAULT_AGEING, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.fdb = Fdb(ageing=ageing, max_entries=max_entries)
        self._ports: dict[str, BridgePort] = {}
        self._flood_cache: dict[str, list[str]] = {}
        self._drops: Counter[DropReason] = Counter()
        self._unicast = 0
        self._flooded = 0

    # -- ports --------------------------------------------------------------

    def add_port(self, name: str, *, up: bool = True) -> None:
        if name in self._ports:
            raise ValueError(f"port {name!r} is already on the bridge")
        self._ports[name] = BridgePort(name, up)
        self._flood_cache.clear()

    def remove_port(self, name: str) -> None:
        del self._ports[name]
        self.fdb.flush(name, include_static=True)
        self._flood_cache.clear()

    def set_port_up(self, name: str, up: bool) -> None:
        """A port going down loses its learned addresses and stops receiving and sending."""
        port = self._ports[name]
        if port.up == up:
            return
        port.up = up
        if not up:
            self.fdb.flush(name)
        self._flood_cache.clear()

    def add_static(self, mac: bytes, port: str, now: float = 0.0) -> None:
        """Pin ``mac`` to ``port`` (which must be on the bridge); it never ages or moves."""
        if port not in self._ports:
            raise KeyError(f"port {port!r} is not on the bridge")
        if len(mac) != 6 or mac[0] & 1:
            raise ValueError("a static FDB entry needs a unicast MAC address")
        self.fdb.add_static(mac, port, now)

    def is_port_up(self, name: str) -> bool:
        return self._ports[name].up

    @property
    def ports(self) -> dict[str, BridgePort]:
        return dict(self._ports)

    def _flood_targets(self, ingress: str) -> list[str]:
        targets = self._flood_cache.get(ingress)
        if targets is None:
            targets = [p.name for p in self._ports.values() if p.up and p.name != ingress]
            self._flood_cache[ingress] = targets
        return targets

    # -- frames -------------------------------------------------------------

    def handle_frames(self, port: str, frames: Sequence[bytes], now: float) -> list[Action]:
        """Switch a batch of frames received on ``port`` at time ``now``.

        Frames keep their order on every egress port.
        """
        ingress = self._ports[port]  # an unknown port is misuse: KeyError
        stats = ingress.stats
        stats.rx_frames += len(frames)
        stats.rx_bytes += sum(map(len, frames))
        if not ingress.up:
            return self._drop_all(port, frames, DropReason.PORT_DOWN)

        drops: list[Action] = []
        out: dict[str, list[bytes]] = {}
        targets = self._flood_targets(port)
        entries_get = self.fdb._entries.get
        learn = self.fdb.learn
        ageing = self.fdb.ageing
        unicast = flooded = 0

        for frame in frames:
            if len(frame) < _HEADER_LEN:
                drops.append(Drop(port, DropReason.TRUNCATED, frame))
                continue
            src = frame[_SRC]
            if src[0] & 1 or src == _ZERO_MAC:   # a group address (I/G bit) or none
                drops.append(Drop(port, DropReason.INVALID_SOURCE, frame))
                continue
            entry = entries_get(src)
            if entry is None or entry.port != port or now - entry.updated >= REFRESH_INTERVAL:
                learn(src, port, now)

            dst = frame[_DST]
            if dst[0] & 1:
                if dst[5] <= 0x0F and dst[:5] == _LINK_LOCAL_PREFIX:
                    drops.append(Drop(port, DropReason.LINK_LOCAL, frame))
                    continue
            else:
                entry = entries_get(dst)
                if entry is not None and (entry.static or now < entry.updated + ageing):
                    if entry.port == port:
                        drops.append(Drop(port, DropReason.SAME_PORT, frame))
                        continue
                    egress = out.get(entry.port)
                    if egress is None:
                        if not self._ports[entry.port].up:
                            drops.append(Drop(port, DropReason.PORT_DOWN, frame))
                            continue
                        egress = out[entry.port] = []
                    egress.append(frame)
                    unicast += 1
                    continue
            # broadcast, multicast or unknown unicast: every other port that is up
            if not targets:
                drops.append(Drop(port, DropReason.NO_EGRESS, frame))
                continue
            flooded += 1
            for name in targets:
                egress = out.get(name)
                if egress is None:
                    egress = out[name] = []
                egress.append(frame)

        self._unicast += unicast
        self._flooded += flooded
        actions: list[Action] = []
        ports = self._ports
        for name, egress in out.items():
            egress_stats = ports[name].stats
            egress_stats.tx_frames += len(egress)
            egress_stats.tx_bytes += sum(map(len, egress))
            actions.append(Transmit(name, egress))
        if drops:
            self._count_drops(stats, drops)
            actions.extend(drops)
        return actions

    def _drop_all(self, port: str, frames: Iterable[bytes], reason: DropReason) -> list[Action]:
        drops: list[Action] = [Drop(port, reason, f) for f in frames]
        self._count_drops(self._ports[port].stats, drops)
        return drops

    def _count_drops(self, stats: BridgePortStatistics, drops: list[Action]) -> None:
        stats.rx_dropped += len(drops)
        for drop in drops:
            self._drops[drop.reason] += 1

    # -- time -------------------------------------------------------------

    def poll_at(self) -> float | None:
        return self.fdb.poll_at()

    def handle_timer(self, now: float) -> list[Action]:
        self.fdb.handle_timer(now)
        return []

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            ports={name: attrs.evolve(p.stats) for name, p in self._ports.items()},
            drops=dict(self._drops),
            unicast=self._unicast,
            flooded=self._flooded,
            fdb=self.fdb.statistics(),
        )
