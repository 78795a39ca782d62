"""TAP and TUN devices through ``/dev/net/tun``.

A TAP carries Ethernet frames, a TUN raw IP packets; both are datagram
devices: one ``os.read`` returns one frame. Reading is the Trio way: the fd is
non-blocking, a batch is drained until ``BlockingIOError`` (or the batch
limit), and only then does the task wait in ``wait_readable``.

A TAP is opened with ``IFF_VNET_HDR`` and asks the kernel for checksum
and TCP segmentation offloads (``TUNSETOFFLOAD``: :data:`OFFLOADS`): the
container's stack then hands over TCP super-frames of up to 64 KB with
partial checksums, one ``read`` where there were dozens. A TUN (drop-in
mode's ``flannel0``) does the same with bare IPv4 packets
(:data:`TUN_OFFLOADS`: no TSO6, as nothing here cuts a bare IPv6 one). They pass through
the switch whole (:class:`~vswitch.core.wire.offload.SuperFrame`), and a
TAP writes one whole, behind the virtio-net header that says how to cut
it: between two containers on one node nothing is segmented at all. A
kernel that refuses the offloads hands over whole frames, one a read, and
the daemon logs it once. UDP segmentation (``TUN_F_USO4/6``) is not asked
for: nothing here cuts a UDP super-frame.

What else the daemon writes may be joined into a super-frame too: runs of
one TCP flow's segments in a batch become one
(:func:`~vswitch.core.wire.offload.coalesce_tcp4`, GRO's rules), so the
container's stack takes one packet where there were dozens, and the daemon
makes one ``write``.

When the device disappears (deleted, its namespace removed) reads and writes
fail with EBADFD and the port raises :class:`PortClosed`; the switch takes it
down. A write to a device whose link is down fails with EIO: that frame is a
counted ``tx_dropped`` and the port stays.
"""

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from collections.abc import Sequence

from vswitch.core.wire import ethernet
from vswitch.core.wire.offload import (
    VNET_HDR_LEN,
    VNET_HDR_NONE,
    SuperFrame,
    coalesce_ipv4,
    coalesce_tcp4,
    vnet_header,
)
from vswitch.errors import DeviceError

from .base import DEFAULT_MTU, Capabilities, Medium
from .fd import READ_SIZE, FdPort

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
CLONE_NEWNET = 0x40000000
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN   # what a SuperFrame carries
TUN_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN              # a bare one: IPv4 only
_IFREQ = struct.Struct("16sH")

log = logging.getLogger(__name__)
_refusal_logged = False


def tap_flags(kind: str) -> int:
    if kind not in ("tap", "tun"):
        raise ValueError(f"kind must be 'tap' or 'tun', not {kind!r}")
    return (IFF_TAP if kind == "tap" else IFF_TUN) | IFF_VNET_HDR | IFF_NO_PI


def reopen_tun_device(netns: str | None, name: str, flags: int) -> int:
    """Attach to the existing (persistent) TUN/TAP ``name`` in the namespace file ``netns`` (None: ours).

    ``/dev/net/tun`` binds a device of the namespace it is opened in, so it
    is opened by a thread of its own that joins ``netns`` first and then
    ends: setns(2) moves only the calling thread, and a thread left in a
    container's namespace must never run anything else. Blocking (run it
    in a worker thread); DeviceError with ENOENT when the namespace or the
    device is gone: TUNSETIFF would create a new device, which is not what
    taking one back means.
    """
    outcome: list[int | BaseException] = []

    def work() -> None:
        try:
            if netns is not None:
                try:
                    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise DeviceError(errno.ENOENT, f"network namespace {netns!r} is gone ({exc.strerror})") from None
                try:
                    if _libc.setns(target, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise DeviceError(err, f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
                finally:
                    os.close(target)
            try:
                socket.if_nametoindex(name)   # the socket, and so the lookup, is in the thread's namespace
            except OSError:
                raise DeviceError(errno.ENOENT, f"device {name} is gone from {netns or 'the host'}") from None
            outcome.append(open_tun_device(name, flags))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work, name=f"reopen {name}", daemon=True)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


_libc = ctypes.CDLL(None, use_errno=True)


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


def ask_offloads(fd: int, name: str, offloads: int = OFFLOADS) -> int:
    """Ask the kernel for ``offloads`` on the TAP or TUN ``fd`` (opened with ``IFF_VNET_HDR``); returns what
    it granted: all of them, or 0 when it refuses, which is logged once per daemon (every device would say
    the same) and leaves the device handing over whole frames."""
    global _refusal_logged
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
    except OSError as exc:
        if not _refusal_logged:
            _refusal_logged = True
            log.warning("%s: the kernel refuses TUN/TAP offloads (%s): whole frames, one a read", name, exc.strerror)
        return 0
    return offloads


class TunTapPort(FdPort):
    """A TAP (``kind="tap"``, Ethernet frames) or TUN (``kind="tun"``, IP packets) device."""

    def __init__(self, name: str, fd: int, *, kind: str = "tap", mtu: int = DEFAULT_MTU, vnet: bool = False) -> None:
        super().__init__(name, fd, mtu=mtu)
        self.kind = kind
        self.vnet = vnet
        tap = kind == "tap"
        self.vnet_ip_at = ethernet.HEADER_LEN if tap else 0   # a TUN's packets are bare IP
        self._coalesce = coalesce_tcp4 if tap else coalesce_ipv4
        # TUN_F_* flags the kernel granted
        self.offloads = ask_offloads(fd, name, OFFLOADS if tap else TUN_OFFLOADS) if vnet else 0
        self.capabilities = Capabilities(
            medium=Medium.ETHERNET if kind == "tap" else Medium.IP, send_nowait=True, vnet_header=vnet,
            tso=bool(self.offloads),
        )

    @classmethod
    def open(cls, name: str, *, kind: str = "tap", mtu: int = DEFAULT_MTU) -> "TunTapPort":
        return cls(name, open_tun_device(name, tap_flags(kind)), kind=kind, mtu=mtu, vnet=True)

    def persist(self, on: bool) -> None:
        """Make the device outlive its fd (TUNSETPERSIST 1), or go with it again (0): what a daemon restart
        keeps, and what a detach deletes."""
        try:
            fcntl.ioctl(self._fd, TUNSETPERSIST, int(on))
        except OSError as exc:
            raise DeviceError(exc.errno, f"cannot make {self.name} {'' if on else 'not '}persistent: {exc.strerror}")

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
        joined, count = frames[start], 1
        if type(joined) is not SuperFrame:
            joined, count = self._coalesce(frames, start)   # a lone frame comes back as it was
        if type(joined) is SuperFrame:
            os.writev(self._fd, (vnet_header(joined, self.vnet_ip_at), joined))
            self._stats.tx_super_frames += 1
        else:
            os.writev(self._fd, (VNET_HDR_NONE, joined))
        return count

    def _write_failed(self, exc: OSError) -> None:
        if exc.errno == errno.EIO:
            self._stats.tx_dropped += 1  # the link is down on the far side
        else:
            self._stats.tx_errors += 1  # e.g. EINVAL for a frame the device refuses

    def _close_device(self) -> None:
        os.close(self._fd)
