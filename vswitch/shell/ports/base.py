"""The one small interface every port implements: move batches of frames.

A port is a datagram device: each frame is one ``bytes``. ``receive_batch``
waits for at least one frame and then returns every frame it can take without
waiting (up to ``max_frames``); ``send_batch`` writes a batch. Both raise
:class:`PortClosed` once the device is gone, which the switch treats as the
port going down, never as a crash.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

DEFAULT_MTU = 1500
DEFAULT_BATCH = 64


class PortClosed(Exception):
    """The port's device or link is gone (closed, deleted, peer hung up)."""


class PortFault(Exception):
    """A bug met while a port decoded or encoded a batch, raised ``from`` the original exception.

    It carries the bytes that broke it (``frames``), so the switch, which
    contains every unexpected exception at the batch boundary, can keep
    them for a bug report (see :mod:`vswitch.shell.faults`).
    """

    def __init__(self, port: str, frames: Sequence[bytes]) -> None:
        super().__init__(f"{port}: unexpected error on {len(frames)} frame(s)")
        self.frames = list(frames)


@attrs.define(slots=True)
class PortStatistics:
    """Device-level counters, as ``ip -s link`` shows them."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0  # lost on the way in (e.g. impairment loss)
    tx_dropped: int = 0  # lost on the way out (e.g. a full link)

    def count_rx(self, frames: Sequence[bytes]) -> None:
        self.rx_frames += len(frames)
        self.rx_bytes += sum(map(len, frames))

    def count_tx(self, frames: Sequence[bytes]) -> None:
        self.tx_frames += len(frames)
        self.tx_bytes += sum(map(len, frames))


@runtime_checkable
class Port(Protocol):
    name: str
    mtu: int
    kind: str  # "tap", "tun", "packet", "memory": what `show ports` calls it

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        """Wait for frames; return between 1 and ``max_frames`` of them."""
        ...

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        """Transmit ``frames`` in order."""
        ...

    def statistics(self) -> PortStatistics:
        ...

    async def aclose(self) -> None:
        """Release the device. Idempotent."""
        ...


class PortWrapper:
    """Base for wrappers (pcap, impairment): delegate everything to ``lower``."""

    def __init__(self, lower: Port) -> None:
        self.lower = lower

    @property
    def name(self) -> str:
        return self.lower.name

    @property
    def mtu(self) -> int:
        return self.lower.mtu

    @property
    def kind(self) -> str:
        return self.lower.kind

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        return await self.lower.receive_batch(max_frames)

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        await self.lower.send_batch(frames)

    def statistics(self) -> PortStatistics:
        return self.lower.statistics()

    async def aclose(self) -> None:
        await self.lower.aclose()
