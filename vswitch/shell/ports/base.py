"""The one small interface every port implements: move batches of frames.

A port is a datagram device: each frame is one ``bytes``. ``receive_batch``
waits for at least one frame and then returns every frame it can take without
waiting (up to ``max_frames``); ``send_batch`` writes a batch. Both raise
:class:`PortClosed` once the device is gone, which the switch treats as the
port going down, never as a crash.

What a port is and can do, it declares in its :class:`Capabilities` (as
smoltcp's devices do): the switch asks those, never the port's type, and a
wrapper passes them through.
"""

import enum
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
    rx_super_frames: int = 0  # of rx_frames, TCP super-frames taken whole (TSO)
    tx_super_frames: int = 0  # of tx_frames, TCP super-frames handed over whole, for the device or the stack to cut

    def count_rx(self, frames: Sequence[bytes]) -> None:
        self.rx_frames += len(frames)
        self.rx_bytes += sum(map(len, frames))

    def count_tx(self, frames: Sequence[bytes]) -> None:
        self.tx_frames += len(frames)
        self.tx_bytes += sum(map(len, frames))


class Medium(enum.Enum):
    """What one frame of a port is."""

    ETHERNET = "ethernet"   # an Ethernet frame: TAP, AF_PACKET, memory links
    IP = "ip"               # an IPv4 packet with no link header: TUN
    UDP = "udp"             # a datagram to or from a peer daemon behind the overlay's address header: the underlay


@attrs.frozen
class Capabilities:
    """What a port is and can do, declared by the port (smoltcp's ``DeviceCapabilities``).

    ``max_batch``: the most frames the device moves in one call; the switch
    asks for and hands over no more (None: any number). ``send_nowait``: a
    synchronous fast path, ``send_nowait(frames) -> int``, which writes what
    the device takes at once and says how many; the switch calls it from the
    receiving task while the port's queue is empty, which saves a task switch
    per batch. ``vnet_header``: frames cross the device behind a virtio-net
    header, so the port completes the checksums and segments the super-frames
    it receives, and joins runs of one TCP flow into super-frames it sends.
    ``tso``: the device takes TCP super-frames whole
    (:class:`~vswitch.core.wire.offload.SuperFrame`, segmented by the kernel
    or by the container's stack taking them as they are); for a port
    without it, the switch cuts them into segments first.
    ``udp_offloads``: UDP GSO on send and GRO on receive.
    """

    medium: Medium = Medium.ETHERNET
    max_batch: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    send_nowait: bool = False
    vnet_header: bool = False
    tso: bool = False
    udp_offloads: bool = False


@runtime_checkable
class Port(Protocol):
    name: str
    mtu: int
    kind: str  # "tap", "tun", "packet", "udp", "memory": what `show ports` calls it
    capabilities: Capabilities

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

    @property
    def capabilities(self) -> Capabilities:
        return self.lower.capabilities

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        return await self.lower.receive_batch(max_frames)

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        await self.lower.send_batch(frames)

    def send_nowait(self, frames: Sequence[bytes]) -> int:
        """The lower port's fast path; called only when its capabilities declare one."""
        return self.lower.send_nowait(frames)  # type: ignore[attr-defined]

    def statistics(self) -> PortStatistics:
        return self.lower.statistics()

    async def aclose(self) -> None:
        await self.lower.aclose()
