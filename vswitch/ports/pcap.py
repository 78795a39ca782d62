"""Record any port to a pcap file that Wireshark and tshark open.

:class:`PcapWriter` writes the classic libpcap format (snaplen 65535, real
microsecond timestamps) through dpkt and flushes once per batch, so a file is
readable while the daemon runs. :class:`PcapPort` wraps a port and records
what it receives, what it sends, or both.
"""

import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

import dpkt

from .base import DEFAULT_BATCH, Port, PortWrapper

SNAPLEN = 65535
LINKTYPE_ETHERNET = dpkt.pcap.DLT_EN10MB
LINKTYPE_RAW = 101  # raw IPv4/IPv6, for TUN ports


class PcapWriter:
    def __init__(
        self, file: BinaryIO, *, linktype: int = LINKTYPE_ETHERNET, clock: Callable[[], float] = time.time
    ) -> None:
        self._file = file
        self._writer = dpkt.pcap.Writer(file, snaplen=SNAPLEN, linktype=linktype)
        self._clock = clock
        self.frames = 0

    @classmethod
    def open(cls, path: str, **kwargs) -> "PcapWriter":
        return cls(open(path, "wb"), **kwargs)

    def write(self, frames: Sequence[bytes]) -> None:
        # Round to the file's microseconds first: dpkt would otherwise write
        # ts_usec = 1000000 for a time just below a whole second.
        ts = round(self._clock(), 6)
        for frame in frames:
            self._writer.writepkt(frame[:SNAPLEN], ts)
        self._file.flush()
        self.frames += len(frames)

    def close(self) -> None:
        self._file.close()


class PcapPort(PortWrapper):
    """Records frames passing through ``lower`` to ``writer``.

    ``rx``/``tx`` choose the directions (both by default). The writer is
    closed with the port unless ``close_writer`` is False (a writer shared by
    several ports).
    """

    def __init__(
        self, lower: Port, writer: PcapWriter, *, rx: bool = True, tx: bool = True, close_writer: bool = True
    ) -> None:
        super().__init__(lower)
        self.writer = writer
        self._rx, self._tx, self._close_writer = rx, tx, close_writer

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        frames = await self.lower.receive_batch(max_frames)
        if self._rx:
            self.writer.write(frames)
        return frames

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        if self._tx:
            self.writer.write(frames)
        await self.lower.send_batch(frames)

    async def aclose(self) -> None:
        try:
            await self.lower.aclose()
        finally:
            if self._close_writer:
                self.writer.close()
