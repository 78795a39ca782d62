"""A wrapper that impairs a port's receive side like ``tc netem``: loss,
delay with jitter, duplication and reordering, from a seeded generator so a
failing test can be replayed exactly."""

import heapq
import itertools
import random

import attrs
import trio

from .base import DEFAULT_BATCH, Port, PortStatistics, PortWrapper


@attrs.frozen
class Impairment:
    loss: float = 0.0         # probability a frame is lost
    delay: float = 0.0        # seconds added to every frame
    jitter: float = 0.0       # up to this many seconds more, uniformly
    duplicate: float = 0.0    # probability a frame arrives twice
    reorder: float = 0.0      # probability a frame is held back behind later ones
    reorder_gap: float = 0.001  # how long a reordered frame is held back
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        for field in ("loss", "duplicate", "reorder"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field} must be a probability in [0, 1], got {value}")
        for field in ("delay", "jitter", "reorder_gap"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative")


class ImpairedPort(PortWrapper):
    """Frames received from ``lower`` are lost, delayed, duplicated or
    reordered before the switch sees them. Wrap both ends of a link to impair
    both directions."""

    def __init__(self, lower: Port, impairment: Impairment) -> None:
        super().__init__(lower)
        self.impairment = impairment
        self._random = random.Random(impairment.seed)
        self._held: list[tuple[float, int, bytes]] = []  # (release time, sequence, frame)
        self._sequence = itertools.count()
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        while True:
            # Cancelled before taking frames, never after: a cancelled receive loses nothing.
            await trio.lowlevel.checkpoint_if_cancelled()
            ready = self._release(trio.current_time(), max_frames)
            if ready:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return ready
            deadline = self._held[0][0] if self._held else float("inf")
            with trio.move_on_at(deadline):
                self._hold(await self.lower.receive_batch(max_frames))

    def _hold(self, frames: list[bytes]) -> None:
        imp, rng, now = self.impairment, self._random, trio.current_time()
        for frame in frames:
            if imp.loss and rng.random() < imp.loss:
                self.lost += 1
                continue
            copies = 1
            if imp.duplicate and rng.random() < imp.duplicate:
                copies = 2
                self.duplicated += 1
            for _ in range(copies):
                release = now + imp.delay + (rng.uniform(0, imp.jitter) if imp.jitter else 0.0)
                if imp.reorder and rng.random() < imp.reorder:
                    release += imp.reorder_gap
                    self.reordered += 1
                heapq.heappush(self._held, (release, next(self._sequence), frame))

    def _release(self, now: float, max_frames: int) -> list[bytes]:
        ready = []
        held = self._held
        while held and held[0][0] <= now and len(ready) < max_frames:
            ready.append(heapq.heappop(held)[2])
        return ready

    def statistics(self) -> PortStatistics:
        stats = attrs.evolve(self.lower.statistics())
        stats.rx_dropped += self.lost
        return stats
