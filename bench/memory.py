"""The running daemon: frames per second through Switch + Bridge over MemoryPort links.

Four ports are on the switch (two carry the load, two are idle). A generator
task sends pre-built batches of 64 known-unicast frames into the peer end of
port ``a`` with ``send_batch`` (one ``await`` per 64 frames); a sink task on the
peer end of port ``b`` takes everything available with one ``receive_batch``
and counts it. After a warm-up, the frames delivered to the sink over fixed
windows (3 x 0.7 s by default, back to back) give frames/s; the best window is
reported, every window is listed under ``rounds``. Then the generator stops, the pipeline drains, and
``sent - received`` gives the frames lost (the switch's tail drops included),
reported on a line of its own so a reader sees whether the run was lossless.
A last line, ``memory.harness.64B``, runs the same generator and sink over one
link with no switch in between: the ceiling of the load itself.

The generator, the switch and the sink share one thread, so the figure is
the rate of the whole loop; the load side is kept to one list copy and one
channel send per 64 frames, the sink to one receive per wake-up.
"""

import time
from collections.abc import Iterator
from typing import Any

import trio

from vswitch.core.actions import DropReason
from vswitch.core.l2.bridge import Bridge
from vswitch.shell.ports.memory import MemoryPort
from vswitch.shell.switch import Switch

from .common import (
    BATCH,
    FRAME_SIZES,
    Options,
    ipv4_frame,
    mac,
    profiled,
    rate_result,
    result,
)

TARGET = 500_000  # frames/s
PORTS = ("a", "b", "c", "d")
SOURCE_HOSTS = 4
DISTINCT_BATCHES = 16
SINK_MAX = 1 << 16
DRAIN_TIMEOUT = 1.0

DEFAULTS = dict(duration=0.7, rounds=3, warmup=0.5)  # best of 3 windows ≈ 2.1 s measured


async def _measure(frame_size: int, opts: Options) -> list[dict[str, Any]]:
    bridge = Bridge()
    switch = Switch(bridge)
    peers: dict[str, MemoryPort] = {}
    for name in PORTS:
        port, peer = MemoryPort.pair(name, f"{name}-peer")
        switch.add_port(port)
        peers[name] = peer

    now = trio.current_time()
    for i, name in enumerate(PORTS):
        for h in range(SOURCE_HOSTS):
            bridge.fdb.learn(mac(i, h), name, now)
    dst = mac(1, 0)
    batches = [
        [ipv4_frame(dst, mac(0, k % SOURCE_HOSTS), frame_size, b * BATCH + k) for k in range(BATCH)]
        for b in range(DISTINCT_BATCHES)
    ]

    sent = received = 0
    generator_scope = trio.CancelScope()

    async def generator() -> None:
        nonlocal sent
        send = peers["a"].send_batch
        with generator_scope:
            while True:
                for batch in batches:
                    await send(batch)
                    sent += BATCH

    async def sink() -> None:
        nonlocal received
        receive = peers["b"].receive_batch
        while True:
            received += len(await receive(SINK_MAX))

    async with trio.open_nursery() as nursery:
        await nursery.start(switch.run)
        nursery.start_soon(sink)
        nursery.start_soon(generator)

        await trio.sleep(opts.warmup)
        rates = []
        with profiled(opts.profile, f"memory.unicast.{frame_size}B"):
            for _ in range(opts.rounds):
                r0, t0 = received, time.perf_counter()
                await trio.sleep(opts.duration)
                r1, t1 = received, time.perf_counter()
                rates.append((r1 - r0) / (t1 - t0))

        generator_scope.cancel()
        with trio.move_on_after(DRAIN_TIMEOUT):
            while received + sum(switch.drop_counts().values()) < sent:
                await trio.sleep(0.01)
        drops = switch.drop_counts()
        nursery.cancel_scope.cancel()

    tail = drops.get(DropReason.TX_QUEUE_FULL, 0)
    other = sum(v for k, v in drops.items() if k is not DropReason.TX_QUEUE_FULL)
    name = f"memory.unicast.{frame_size}B"
    return [
        rate_result(
            name, max(rates), frame_size, TARGET,
            batch=BATCH, rounds=[round(r) for r in rates], sent=sent, received=received,
        ),
        result(
            f"{name}.lost", sent - received, "frames",
            tail_drops=tail, other_drops=other, sent=sent, received=received, lossless=sent == received,
        ),
    ]


async def _harness(frame_size: int, opts: Options) -> dict[str, Any]:
    """The same generator and sink joined by one link with no switch: the load's own ceiling."""
    tx, rx = MemoryPort.pair("gen", "sink")
    batches = [
        [ipv4_frame(mac(1, 0), mac(0, k % SOURCE_HOSTS), frame_size, b * BATCH + k) for k in range(BATCH)]
        for b in range(DISTINCT_BATCHES)
    ]
    received = 0

    async def generator() -> None:
        send = tx.send_batch
        while True:
            for batch in batches:
                await send(batch)

    async def sink() -> None:
        nonlocal received
        receive = rx.receive_batch
        while True:
            received += len(await receive(SINK_MAX))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink)
        nursery.start_soon(generator)
        await trio.sleep(opts.warmup)
        rates = []
        for _ in range(opts.rounds):
            r0, t0 = received, time.perf_counter()
            await trio.sleep(opts.duration)
            r1, t1 = received, time.perf_counter()
            rates.append((r1 - r0) / (t1 - t0))
        nursery.cancel_scope.cancel()
    return rate_result(
        f"memory.harness.{frame_size}B", max(rates), frame_size, batch=BATCH, rounds=[round(r) for r in rates],
        note="generator -> link -> sink with no switch: the load's ceiling",
    )


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    opts = options.resolve(**DEFAULTS)
    for size in FRAME_SIZES:
        yield from trio.run(_measure, size, opts)
    yield trio.run(_harness, 64, opts)
