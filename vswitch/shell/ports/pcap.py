"""Record any port to a pcap file that Wireshark and tshark open.

:class:`PcapWriter` writes the classic libpcap format (snaplen 65535, real
microsecond timestamps) through dpkt and flushes once per batch, so a file is
readable while the daemon runs. :class:`PcapPort` wraps a port and records
what it receives, what it sends, or both.

A file the daemon writes is locked (``flock``) while it is open, and
:func:`open_pcaps` claims every file of a start-up before it truncates any:
a second daemon, or a start refused for another reason, leaves a running
daemon's capture whole.
"""

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO

import dpkt

from vswitch.core.wire import ethernet
from vswitch.core.wire.offload import cut_super_frames
from vswitch.errors import PcapError

from .base import DEFAULT_BATCH, Port, PortWrapper

SNAPLEN = 65535
LINKTYPE_ETHERNET = dpkt.pcap.DLT_EN10MB
LINKTYPE_RAW = 101  # raw IPv4/IPv6, for TUN ports




class PcapWriter:
    def __init__(
        self, file: BinaryIO | None, *, linktype: int = LINKTYPE_ETHERNET, clock: Callable[[], float] = time.time,
        path: str | None = None,
    ) -> None:
        self.path = path
        self._linktype = linktype
        self._clock = clock
        self.frames = 0
        self._file: BinaryIO | None = None
        if file is not None:
            self._start(file)

    @classmethod
    def open(cls, path: str, **kwargs) -> "PcapWriter":
        """A writer on a new (or truncated) file at ``path``; OSError if it cannot be, or another process writes it."""
        writer = cls.deferred(path, **kwargs)
        open_pcaps([writer])
        return writer

    @classmethod
    def deferred(cls, path: str, **kwargs) -> "PcapWriter":
        """A writer for ``path`` whose file :func:`open_pcaps` opens later (the daemon: once its devices are open)."""
        return cls(None, path=path, **kwargs)

    @property
    def opened(self) -> bool:
        return self._file is not None

    def _start(self, file: BinaryIO) -> None:
        self._file = file
        self._writer = dpkt.pcap.Writer(file, snaplen=SNAPLEN, linktype=self._linktype)
        file.flush()

    def write(self, frames: Sequence[bytes]) -> None:
        if self._file is None:
            raise RuntimeError(f"pcap {self.path} is not open yet (open_pcaps)")
        # Round to the file's microseconds first: dpkt would otherwise write
        # ts_usec = 1000000 for a time just below a whole second.
        ts = round(self._clock(), 6)
        frames = cut_super_frames(frames, 0 if self._linktype == LINKTYPE_RAW else ethernet.HEADER_LEN)[0]   # the segments
        for frame in frames:
            self._writer.writepkt(frame[:SNAPLEN], ts)
        self._file.flush()
        self.frames += len(frames)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def open_pcaps(writers: Iterable[PcapWriter]) -> None:
    """Open the files of deferred writers: each is claimed (created if need be, and locked) before any is
    truncated, so if one cannot be opened, or another process is writing it, none has changed and the
    files this call created are removed again. Raises PcapError naming the file and what to do."""
    claimed: list[tuple[PcapWriter, int, bool]] = []
    try:
        for writer in writers:
            assert writer.path is not None and not writer.opened, "open_pcaps takes deferred writers"
            created = not os.path.exists(writer.path)
            try:
                fd = os.open(writer.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise PcapError(exc.errno, f"cannot write pcap {writer.path}: {exc.strerror}") from None
            claimed.append((writer, fd, created))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PcapError(errno.EBUSY, f"pcap {writer.path} is being written by another process"
                                           " (another daemon?): choose another file") from None
    except BaseException:
        for writer, fd, created in claimed:
            os.close(fd)
            if created:
                os.unlink(writer.path)
        raise
    for writer, fd, _ in claimed:
        os.ftruncate(fd, 0)
        writer._start(os.fdopen(fd, "wb"))


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

    def send_nowait(self, frames: Sequence[bytes]) -> int:
        """The lower port's fast path, recording what it took."""
        done = self.lower.send_nowait(frames)  # type: ignore[attr-defined]
        if self._tx and done:
            self.writer.write(frames[:done])
        return done

    async def aclose(self) -> None:
        try:
            await self.lower.aclose()
        finally:
            if self._close_writer:
                self.writer.close()
