"""Live capture: a port's frames, as the switch passes them, streamed to a client as pcap.

After the ``{"ok": true, ...}`` line of a ``capture`` request the daemon
streams a classic pcap file (global header, then records) until the client
hangs up, ``count`` frames have been written, the port goes away, or the
daemon stops. Each capture's buffer is bounded: a slow reader loses frames,
counted, and never slows the switch. A capture whose client takes nothing
of what waits for it for ``STALL_TIMEOUT`` seconds is ended; a quiet port's
capture, with nothing to send, never is.
"""

import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from vswitch.core.wire import ethernet
from vswitch.core.wire.offload import cut_super_frames
from vswitch.overlay.core.codec import capture_frame
from vswitch.overlay.core.gro import datagrams
from vswitch.shell.ports import Port
from vswitch.shell.ports.base import Medium
from vswitch.shell.ports.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    SNAPLEN,
    PcapWriter,
)

STALL_TIMEOUT = 10.0             # seconds a capture waits for its client to take the next piece
SEND_PIECE = 64 * 1024           # bytes a capture sends at a time: progress is measured per piece
CAPTURE_FRAMES = 4096            # frames a capture buffers for a slow reader ...
CAPTURE_BYTES = 8 * 1024 * 1024  # ... and bytes; beyond either, frames are dropped and counted


class _Chunk:
    """The file PcapWriter writes into: bytes collected until the next send."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


class CaptureSession:
    """One client's live capture of a port: a bounded buffer between the
    switch's tasks (:meth:`push`, sync, never blocks) and the client's socket
    (:meth:`stream`). Should :meth:`push` raise (a bug), the switch contains
    it in the port's task and ends the monitor, and with it this capture.

    ``convert`` turns the port's frames into what is recorded (the underlay's
    datagrams into UDP frames); ``linktype`` says what they are (Ethernet, or
    raw IP for a TUN port).
    """

    def __init__(
        self, port: str, *, count: int | None = None, max_frames: int = CAPTURE_FRAMES,
        max_bytes: int = CAPTURE_BYTES, clock: Callable[[], float] = time.time,
        convert: Callable[[list[bytes]], list[bytes]] | None = None, linktype: int = LINKTYPE_ETHERNET,
    ) -> None:
        self.port = port
        self.linktype = linktype
        self.count = count
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._clock = clock
        self._convert = convert
        self._batches: deque[tuple[float, list[bytes]]] = deque()
        self._frames = 0
        self._bytes = 0
        self._wakeup = trio.Event()
        self.written = 0
        self.dropped = 0
        self.stalled = False   # ended because the client took nothing for the stall timeout

    @classmethod
    def of_port(cls, device: Port, *, count: int | None, max_frames: int, max_bytes: int) -> "CaptureSession":
        """A capture of ``device`` that records what it carries as it is on the wire: the underlay's
        datagrams as the UDP frames they arrive in, a TUN's bare IP packets as raw IP."""
        convert = None
        medium = device.capabilities.medium
        if medium is Medium.UDP:
            local_ip, local_port = socket.inet_aton(device.address), device.port  # type: ignore[attr-defined]

            def convert(frames: list[bytes]) -> list[bytes]:
                return [capture_frame(f, local_ip, local_port) for f in datagrams(frames)]

        linktype = LINKTYPE_RAW if medium is Medium.IP else LINKTYPE_ETHERNET
        return cls(device.name, count=count, max_frames=max_frames, max_bytes=max_bytes, convert=convert,
                   linktype=linktype)

    def summary(self) -> dict[str, Any]:
        return {"port": self.port, "written": self.written, "dropped": self.dropped,
                "buffered": self._frames, "count": self.count}

    def push(self, frames: list[bytes]) -> None:
        """The switch's monitor callback, run in a port's task: keep what fits, count the rest. A super-frame
        is kept as the segments it stands for, what the wire between two kernels would carry."""
        frames = cut_super_frames(frames, 0 if self.linktype == LINKTYPE_RAW else ethernet.HEADER_LEN)[0]
        if self._convert is not None:
            frames = self._convert(frames)
        room = min(self.max_frames - self._frames, len(frames))
        size = 0
        for i in range(room):
            length = min(len(frames[i]), SNAPLEN)
            if self._bytes + size + length > self.max_bytes:
                room = i
                break
            size += length
        if room:
            self._batches.append((self._clock(), frames[:room]))
            self._frames += room
            self._bytes += size
            self._wakeup.set()
        self.dropped += len(frames) - room

    async def _next(self) -> list[tuple[float, list[bytes]]]:
        while not self._batches:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        batches = list(self._batches)
        self._batches.clear()
        self._frames = self._bytes = 0
        return batches

    async def stream(self, out: trio.abc.SendStream, *, stall_timeout: float = STALL_TIMEOUT) -> None:
        """Write the pcap header, then records, until ``count`` frames are written (forever if None).

        Returns early, with ``stalled`` set, when the client has taken nothing
        of what waits for it for ``stall_timeout`` seconds. Waiting for frames
        is not a stall: a quiet port's capture waits as long as its client.
        """
        ts = 0.0
        chunk = _Chunk()
        writer = PcapWriter(chunk, linktype=self.linktype, clock=lambda: ts)
        if not await self._send(out, chunk.take(), stall_timeout):
            return
        while self.count is None or self.written < self.count:
            for ts, frames in await self._next():
                if self.count is not None:
                    frames = frames[: self.count - self.written]
                writer.write(frames)
                self.written += len(frames)
            if not await self._send(out, chunk.take(), stall_timeout):
                return

    async def _send(self, out: trio.abc.SendStream, data: bytes, stall_timeout: float) -> bool:
        """Send ``data`` a piece at a time; False, and ``stalled``, if a piece waits ``stall_timeout``."""
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE):
            with trio.move_on_after(stall_timeout) as scope:
                await out.send_all(view[start:start + SEND_PIECE])
            if scope.cancelled_caught:
                self.stalled = True
                return False
        return True
