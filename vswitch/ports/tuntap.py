"""TAP and TUN devices through ``/dev/net/tun``.

A TAP carries Ethernet frames, a TUN raw IP packets; both are datagram
devices: one ``os.read`` returns one frame. Reading is the Trio way: the fd is
non-blocking, a batch is drained until ``BlockingIOError`` (or the batch
limit), and only then does the task wait in ``wait_readable``.

When the device disappears (deleted, its namespace removed) reads and writes
fail with EBADFD and the port raises :class:`PortClosed`; the switch takes it
down. A write to a device whose link is down fails with EIO: that frame is a
counted ``tx_dropped`` and the port stays.
"""

import errno
import fcntl
import os
import struct
from collections.abc import Sequence

import attrs
import trio

from .base import DEFAULT_BATCH, DEFAULT_MTU, PortClosed, PortStatistics

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_IFREQ = struct.Struct("16sH")
_READ_SIZE = 65536 + 64  # the largest frame a device can hand us, with room to spare

# errno values that mean the device is gone (deleted, or its namespace removed).
# EIO is not among them: a write fails with EIO while the link is merely down.
_GONE = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO})


class DeviceError(OSError):
    """A device could not be opened or configured; the message says what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def open_tun_device(name: str, flags: int) -> int:
    """Create (or attach to) the TUN/TAP ``name``; returns a non-blocking fd."""
    if len(name.encode()) > 15:
        raise DeviceError(errno.EINVAL, f"device name {name!r} is longer than 15 bytes")
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(errno.ENOENT, f"{TUN_DEVICE} is missing: load the tun module (`modprobe tun`)") from None
    except PermissionError:
        raise DeviceError(
            errno.EPERM, f"cannot open {TUN_DEVICE}: run as root or grant CAP_NET_ADMIN"
        ) from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        hint = {
            errno.EPERM: "run as root or grant CAP_NET_ADMIN",
            errno.EBUSY: "a device of that name exists and is in use (another daemon?)",
            errno.EINVAL: "a non-TUN/TAP device of that name already exists",
        }.get(exc.errno, exc.strerror)
        raise DeviceError(exc.errno, f"cannot create {name}: {hint}") from None
    return fd


class TunTapPort:
    """A TAP (``kind="tap"``, Ethernet frames) or TUN (``kind="tun"``, IP packets) device."""

    def __init__(self, name: str, fd: int, *, kind: str = "tap", mtu: int = DEFAULT_MTU) -> None:
        self.name = name
        self.kind = kind
        self.mtu = mtu
        self._fd = fd
        self._closed = False
        self._stats = PortStatistics()

    @classmethod
    def open(cls, name: str, *, kind: str = "tap", mtu: int = DEFAULT_MTU) -> "TunTapPort":
        if kind not in ("tap", "tun"):
            raise ValueError(f"kind must be 'tap' or 'tun', not {kind!r}")
        flags = (IFF_TAP if kind == "tap" else IFF_TUN) | IFF_NO_PI
        return cls(name, open_tun_device(name, flags), kind=kind, mtu=mtu)

    def fileno(self) -> int:
        return self._fd

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        fd, read = self._fd, os.read
        while True:
            if self._closed:
                raise PortClosed(f"{self.name}: closed")
            frames: list[bytes] = []
            try:
                while len(frames) < max_frames:
                    frames.append(read(fd, _READ_SIZE))
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in _GONE:
                    raise PortClosed(f"{self.name}: device gone ({exc.strerror})") from None
                self._stats.rx_errors += 1
            if frames:
                self._stats.count_rx(frames)
                await trio.lowlevel.checkpoint()
                return frames
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                raise PortClosed(f"{self.name}: closed") from None

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        fd, write = self._fd, os.write
        sent = sent_bytes = 0
        for frame in frames:
            while True:
                if self._closed:
                    raise PortClosed(f"{self.name}: closed")
                try:
                    write(fd, frame)
                    sent += 1
                    sent_bytes += len(frame)
                    break
                except BlockingIOError:
                    try:
                        await trio.lowlevel.wait_writable(fd)
                    except trio.ClosedResourceError:
                        raise PortClosed(f"{self.name}: closed") from None
                except OSError as exc:
                    if exc.errno in _GONE:
                        raise PortClosed(f"{self.name}: device gone ({exc.strerror})") from None
                    if exc.errno == errno.EIO:
                        self._stats.tx_dropped += 1  # the link is down on the far side
                    else:
                        self._stats.tx_errors += 1  # e.g. EINVAL for a frame the device refuses
                    break
        self._stats.tx_frames += sent
        self._stats.tx_bytes += sent_bytes
        await trio.lowlevel.checkpoint()

    def statistics(self) -> PortStatistics:
        return attrs.evolve(self._stats)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
        await trio.lowlevel.checkpoint()
