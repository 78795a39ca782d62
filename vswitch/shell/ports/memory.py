"""In-memory links: two ports joined back to back, for tests and the demo."""

from collections.abc import Sequence

import attrs
import trio

from .base import DEFAULT_BATCH, DEFAULT_MTU, Capabilities, PortClosed, PortStatistics

DEFAULT_CAPACITY = 256  # batches in flight per direction


class ChannelReceiver:
    """Receiving batches from a Trio channel of lists of frames, at most ``max_frames`` at a time.

    Needs ``name``, ``_receive`` (the channel), ``_pending`` (a list) and ``_stats``.
    """

    name: str
    _receive: trio.MemoryReceiveChannel
    _pending: list[bytes]
    _stats: PortStatistics

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        frames = self._pending
        if not frames:
            try:
                frames = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise PortClosed(f"{self.name}: link closed") from None
            while len(frames) < max_frames:
                try:
                    frames += self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
        else:
            await trio.lowlevel.checkpoint()
        frames, self._pending = frames[:max_frames], frames[max_frames:]
        self._stats.count_rx(frames)
        return frames


class MemoryPort(ChannelReceiver):
    """One end of an in-memory link. Create the two ends with :meth:`pair`.

    Batches travel whole through a bounded Trio channel, so a full link makes
    the sender wait, like a real device's queue.
    """

    kind = "memory"
    capabilities = Capabilities()

    def __init__(
        self, name: str, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel, *, mtu: int = DEFAULT_MTU
    ) -> None:
        self.name = name
        self.mtu = mtu
        self._send = send
        self._receive = receive
        self._pending: list[bytes] = []  # frames of a batch larger than max_frames
        self._stats = PortStatistics()

    @classmethod
    def pair(
        cls, name_a: str, name_b: str | None = None, *, mtu: int = DEFAULT_MTU, capacity: int = DEFAULT_CAPACITY
    ) -> tuple["MemoryPort", "MemoryPort"]:
        """Two ports joined back to back: what one sends, the other receives."""
        a_to_b_send, a_to_b_receive = trio.open_memory_channel[list[bytes]](capacity)
        b_to_a_send, b_to_a_receive = trio.open_memory_channel[list[bytes]](capacity)
        a = cls(name_a, a_to_b_send, b_to_a_receive, mtu=mtu)
        b = cls(name_b or f"{name_a}-peer", b_to_a_send, a_to_b_receive, mtu=mtu)
        return a, b

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        if not frames:
            return
        try:
            await self._send.send(list(frames))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise PortClosed(f"{self.name}: link closed") from None
        self._stats.count_tx(frames)

    def statistics(self) -> PortStatistics:
        return attrs.evolve(self._stats)

    async def aclose(self) -> None:
        # Close both directions before the checkpoint, so a cancelled aclose still closes.
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()
