"""The pure core: frames per second through ``Bridge.handle_frames``, no Trio, no I/O.

Every measurement calls the bridge with batches of 64 pre-built frames and
discards the returned actions (the shell's cost is the ``memory`` suite's job).

* ``core.unicast.<size>B``: 4 ports with 4 hosts each, every MAC already
  learned; each port in turn sends a batch to hosts on the other ports.
* ``core.flood.<size>B``: broadcast into a 5-port bridge, copied to 4 ports.
* ``core.learn.refresh``: 10,000 distinct sources cycling through a table large
  enough to hold them; time advances 1 s per cycle, so every frame refreshes
  its entry (the FDB's refresh path).
* ``core.learn.evict``: the same 10,000 sources cycling through a 1,024-entry
  table, so every frame learns a new entry and evicts the oldest.
"""

import itertools
import time
from collections.abc import Iterator
from typing import Any

from vswitch.core.l2.bridge import Bridge
from vswitch.core.wire.addr import BROADCAST_MAC

from .common import (
    BATCH,
    FRAME_SIZES,
    Options,
    best_rate,
    ipv4_frame,
    mac,
    profiled,
    rate_result,
)

TARGET_UNICAST = 1_000_000  # frames/s
PORTS = 4
HOSTS_PER_PORT = 4
FLOOD_EGRESS = 4
LEARN_MACS = 10_000
EVICT_TABLE = 1024

DEFAULTS = dict(duration=0.5, rounds=3, warmup=0.2)


def _unicast_setup(frame_size: int) -> tuple[Bridge, list[tuple[str, list[bytes]]]]:
    bridge = Bridge()
    names = [f"p{i}" for i in range(PORTS)]
    now = time.monotonic()
    for i, name in enumerate(names):
        bridge.add_port(name)
        for h in range(HOSTS_PER_PORT):
            bridge.fdb.learn(mac(i, h), name, now)
    schedule = []
    for i, name in enumerate(names):
        others = [mac(j, h) for j in range(PORTS) if j != i for h in range(HOSTS_PER_PORT)]
        batch = [
            ipv4_frame(others[k % len(others)], mac(i, k % HOSTS_PER_PORT), frame_size, k)
            for k in range(BATCH)
        ]
        schedule.append((name, batch))
    return bridge, schedule


def _unicast(frame_size: int, opts: Options) -> dict[str, Any]:
    bridge, schedule = _unicast_setup(frame_size)
    handle = bridge.handle_frames
    clock = time.monotonic
    per_chunk = sum(len(batch) for _, batch in schedule)

    def chunk() -> int:
        for port, batch in schedule:
            handle(port, batch, clock())
        return per_chunk

    # Check once that the set-up really is known unicast (no floods, no drops).
    stats = bridge.statistics()
    chunk()
    after = bridge.statistics()
    assert after.flooded == stats.flooded and not after.drops, "unicast set-up is not all known unicast"

    with profiled(opts.profile, f"core.unicast.{frame_size}B"):
        fps, rounds = best_rate(chunk, duration=opts.duration, rounds=opts.rounds, warmup=opts.warmup)
    return rate_result(
        f"core.unicast.{frame_size}B", fps, frame_size, TARGET_UNICAST,
        batch=BATCH, ports=PORTS, macs=PORTS * HOSTS_PER_PORT, rounds=[round(r) for r in rounds],
    )


def _flood(frame_size: int, opts: Options) -> dict[str, Any]:
    bridge = Bridge()
    for i in range(FLOOD_EGRESS + 1):
        bridge.add_port(f"p{i}")
    batch = [ipv4_frame(BROADCAST_MAC, mac(0, k % HOSTS_PER_PORT), frame_size, k) for k in range(BATCH)]
    handle = bridge.handle_frames
    clock = time.monotonic

    def chunk() -> int:
        handle("p0", batch, clock())
        return BATCH

    with profiled(opts.profile, f"core.flood.{frame_size}B"):
        fps, rounds = best_rate(chunk, duration=opts.duration, rounds=opts.rounds, warmup=opts.warmup)
    return rate_result(
        f"core.flood.{frame_size}B", fps, frame_size,
        batch=BATCH, egress_ports=FLOOD_EGRESS, copies_per_s=round(fps * FLOOD_EGRESS),
        rounds=[round(r) for r in rounds],
    )


def _learn(mode: str, opts: Options) -> dict[str, Any]:
    frame_size = 64
    if mode == "refresh":
        bridge = Bridge(max_entries=LEARN_MACS + 1)
    else:
        bridge = Bridge(max_entries=EVICT_TABLE)
    bridge.add_port("in")
    bridge.add_port("out")
    dst = mac(1, 0)
    bridge.fdb.add_static(dst, "out")  # the destination stays known however time moves
    frames = [ipv4_frame(dst, mac(0x100 + k // 0x10000, k % 0x10000), frame_size, k) for k in range(LEARN_MACS)]
    batches = [frames[i:i + BATCH] for i in range(0, len(frames), BATCH)]
    handle = bridge.handle_frames
    now = itertools.count(1000.0, 1.0) if mode == "refresh" else itertools.repeat(1000.0)
    fdb_stats = bridge.fdb.statistics

    def chunk() -> int:
        t = next(now)  # one step per cycle: 1 s for "refresh", so every source is due a refresh
        for batch in batches:
            handle("in", batch, t)
        return LEARN_MACS

    chunk()  # fill the table
    before = fdb_stats()
    chunk()
    after = fdb_stats()
    if mode == "evict":
        assert after.evicted - before.evicted == LEARN_MACS, "evict set-up does not learn every frame"
    else:
        assert after.learned == before.learned == LEARN_MACS, "refresh set-up learns new entries"

    with profiled(opts.profile, f"core.learn.{mode}"):
        fps, rounds = best_rate(chunk, duration=opts.duration, rounds=opts.rounds, warmup=opts.warmup)
    return rate_result(
        f"core.learn.{mode}", fps, frame_size,
        batch=BATCH, macs=LEARN_MACS, table=LEARN_MACS + 1 if mode == "refresh" else EVICT_TABLE,
        rounds=[round(r) for r in rounds],
    )


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    opts = options.resolve(**DEFAULTS)
    for size in FRAME_SIZES:
        yield _unicast(size, opts)
    yield _flood(64, opts)
    yield _learn("refresh", opts)
    yield _learn("evict", opts)
