"""Shared helpers for the benchmark suites: frames, timing loops, result lines.

A suite is a function ``run(options) -> Iterator[Result]``; each result becomes
one JSON line ``{"name": ..., "value": ..., "unit": ..., ...extra}``.
"""

import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from vswitch.core.wire.ethernet import ETH_P_IP, build_ethernet

BATCH = 64
FRAME_SIZES = (64, 1500)


@attrs.frozen
class Options:
    """How long to measure. ``None`` means "the suite's own default"."""

    duration: float | None = None  # seconds per measured round
    rounds: int | None = None      # measured rounds; the best is reported
    warmup: float | None = None    # seconds run before measuring
    profile: bool = False          # print a cProfile of the measured part to stderr
    quick: bool = False            # smaller set-ups (tables, connections) where a suite has them: smoke tests
    count: int | None = None       # how many inputs (fuzz)
    seed: int | None = None        # the random seed (fuzz)
    core_only: bool = False        # only the in-core parts, no devices (nat): fine while the machine is busy

    def resolve(self, *, duration: float, rounds: int, warmup: float) -> "Options":
        return Options(
            duration=duration if self.duration is None else self.duration,
            rounds=rounds if self.rounds is None else self.rounds,
            warmup=warmup if self.warmup is None else self.warmup,
            profile=self.profile,
            quick=self.quick,
            count=self.count,
            seed=self.seed,
            core_only=self.core_only,
        )


def result(name: str, value: float | int, unit: str, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"name": name, "value": value, "unit": unit}
    line.update(extra)
    return line


def rate_result(name: str, fps: float, frame_size: int, target: float | None = None, **extra: Any) -> dict[str, Any]:
    """A frames/s line, with the bit rate it implies and the target if there is one."""
    line = result(name, round(fps), "frames/s", frame_size=frame_size, mbit_s=round(fps * frame_size * 8 / 1e6, 1))
    if target is not None:
        line["target"] = target
        line["meets_target"] = fps >= target
    line.update(extra)
    return line


def mac(port_index: int, host_index: int) -> bytes:
    """A locally administered unicast MAC: 02:00:PP:PP:HH:HH."""
    return struct.pack("!BBHH", 0x02, 0x00, port_index, host_index)


def ipv4_frame(dst: bytes, src: bytes, size: int, seq: int = 0) -> bytes:
    """An Ethernet frame of exactly ``size`` bytes (no FCS) carrying an IPv4-ish payload."""
    if size < 14 + 4:
        raise ValueError(f"frame size {size} too small")
    payload = struct.pack("!I", seq & 0xFFFFFFFF) + bytes(size - 14 - 4)
    return build_ethernet(dst, src, ETH_P_IP, payload)


def best_rate(
    chunk: Callable[[], int], *, duration: float, rounds: int, warmup: float
) -> tuple[float, list[float]]:
    """Call ``chunk()`` (which returns the frames it processed) repeatedly.

    Warms up for ``warmup`` seconds, then runs ``rounds`` rounds of ``duration``
    seconds each; returns the best frames/s and every round's figure.
    """
    perf_counter = time.perf_counter
    deadline = perf_counter() + warmup
    while perf_counter() < deadline:
        chunk()
    rates = []
    for _ in range(rounds):
        frames = 0
        start = perf_counter()
        deadline = start + duration
        while True:
            frames += chunk()
            now = perf_counter()
            if now >= deadline:
                break
        rates.append(frames / (now - start))
    return max(rates), rates


def profiled(enabled: bool, label: str):
    """A context manager that prints a cProfile of its body to stderr when enabled."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _profile() -> Iterator[None]:
        import cProfile
        import pstats
        import sys

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            print(f"--- profile: {label} ---", file=sys.stderr)
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)

    return _profile()
