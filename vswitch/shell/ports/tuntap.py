"""TAP and TUN devices through ``/dev/net/tun``.

A TAP carries Ethernet frames, a TUN raw IP packets; both are datagram
devices: one ``os.read`` returns one frame. Reading is the Trio way: the fd is
non-blocking, a batch is drained until ``BlockingIOError`` (or the batch
limit), and only then does the task wait in ``wait_readable``.

A TAP is opened with ``IFF_VNET_HDR`` and no offloads asked for: every
frame the kernel hands over is whole (complete checksums, no super-frames)
behind a virtio-net header that says so. What the daemon writes may then
be a super-frame: runs of one TCP flow's segments in a batch are joined
into one (:func:`~vswitch.core.wire.offload.coalesce_tcp4`, GRO's rules), so
the container's stack takes one packet where there were dozens, and the
daemon makes one ``write``.

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

from vswitch.core.wire.offload import VNET_HDR_LEN, coalesce_tcp4
from vswitch.errors import DeviceError

from .base import DEFAULT_MTU, Capabilities, Medium
from .fd import READ_SIZE, FdPort

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
_IFREQ = struct.Struct("16sH")




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


class TunTapPort(FdPort):
    """A TAP (``kind="tap"``, Ethernet frames) or TUN (``kind="tun"``, IP packets) device."""

    def __init__(self, name: str, fd: int, *, kind: str = "tap", mtu: int = DEFAULT_MTU, vnet: bool = False) -> None:
        super().__init__(name, fd, mtu=mtu)
        self.kind = kind
        self.vnet = vnet
        self.capabilities = Capabilities(
            medium=Medium.ETHERNET if kind == "tap" else Medium.IP, send_nowait=True, vnet_header=vnet,
        )

    @classmethod
    def open(cls, name: str, *, kind: str = "tap", mtu: int = DEFAULT_MTU) -> "TunTapPort":
        if kind not in ("tap", "tun"):
            raise ValueError(f"kind must be 'tap' or 'tun', not {kind!r}")
        flags = (IFF_TAP | IFF_VNET_HDR if kind == "tap" else IFF_TUN) | IFF_NO_PI
        return cls(name, open_tun_device(name, flags), kind=kind, mtu=mtu, vnet=kind == "tap")

    def _read_one(self, frames: list[bytes]) -> None:
        packet = os.read(self._fd, READ_SIZE)
        if not self.vnet:
            frames.append(packet)
        elif packet[0:2] == b"\0\0":       # no flags, no GSO: the frame as it is
            frames.append(packet[VNET_HDR_LEN:])
        else:
            self._from_vnet(packet, frames)

    def _write_some(self, frames: Sequence[bytes], start: int) -> int:
        if not self.vnet:
            os.write(self._fd, frames[start])
            return 1
        joined, count = coalesce_tcp4(frames, start)   # a lone frame comes back behind an empty header
        os.write(self._fd, joined)
        return count

    def _write_failed(self, exc: OSError) -> None:
        if exc.errno == errno.EIO:
            self._stats.tx_dropped += 1  # the link is down on the far side
        else:
            self._stats.tx_errors += 1  # e.g. EINVAL for a frame the device refuses

    def _close_device(self) -> None:
        os.close(self._fd)
