"""AF_PACKET ports: the bridge on an existing interface (a veth end, a NIC).

The socket is bound to one interface, in promiscuous mode, and ignores its
own transmissions (PACKET_IGNORE_OUTGOING), so the bridge sees only frames
that arrived from the wire.

A local kernel stack behind a veth hands over frames whose checksum it left
to "hardware", and TSO super-frames of up to 64 KB. With PACKET_VNET_HDR the
kernel says so in a virtio-net header on each frame, and the port completes
the checksum or segments the frame (vswitch.wire.offload) before the bridge
sees it, so every other port receives ordinary, valid frames.
"""

import errno
import socket
import struct
from collections.abc import Sequence

import attrs
import trio

from .base import DEFAULT_BATCH, DEFAULT_MTU, PortClosed, PortStatistics
from ..wire.errors import WireError
from ..wire.offload import VNET_HDR_NONE, from_vnet
from .tuntap import DeviceError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
_RECV_SIZE = 65536 + 64
_SOCKET_BUFFER = 4 << 20
_GONE = frozenset({errno.ENETDOWN, errno.ENXIO, errno.ENODEV, errno.EBADF})


class PacketPort:
    kind = "packet"

    def __init__(self, name: str, sock: socket.socket, *, device: str, mtu: int = DEFAULT_MTU) -> None:
        self.name = name
        self.device = device
        self.mtu = mtu
        self._sock = sock
        self._stats = PortStatistics()

    @classmethod
    def open(cls, device: str, *, name: str | None = None, mtu: int = DEFAULT_MTU) -> "PacketPort":
        try:
            # protocol 0 receives nothing until bound, so no frame from another interface slips in
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise DeviceError(errno.EPERM, "AF_PACKET sockets need root or CAP_NET_RAW") from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            sock.bind((device, ETH_P_ALL))
            ifindex = socket.if_nametoindex(device)
            membership = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENODEV, errno.ENXIO) or "no interface" in str(exc):
                raise DeviceError(errno.ENODEV, f"interface {device!r} does not exist (see `ip link`)") from None
            raise DeviceError(exc.errno or 1, f"cannot bind to {device}: {exc.strerror or exc}") from None
        return cls(name or device, sock, device=device, mtu=mtu)

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        recv = self._sock.recv
        while True:
            frames: list[bytes] = []
            try:
                while len(frames) < max_frames:
                    packet = recv(_RECV_SIZE)
                    if packet[:2] == b"\0\0":  # no checksum to complete, no segmentation
                        frames.append(packet[10:])
                        continue
                    try:
                        frames += from_vnet(packet)
                    except WireError:
                        self._stats.rx_errors += 1
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in _GONE or self._sock.fileno() < 0:
                    raise PortClosed(f"{self.name}: {self.device} is gone ({exc.strerror})") from None
                self._stats.rx_errors += 1
            if frames:
                self._stats.count_rx(frames)
                await trio.lowlevel.checkpoint()
                return frames
            try:
                await trio.lowlevel.wait_readable(self._sock)
            except trio.ClosedResourceError:
                raise PortClosed(f"{self.name}: closed") from None

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        send = self._sock.send
        for frame in frames:
            while True:
                try:
                    send(VNET_HDR_NONE + frame)
                    self._stats.tx_frames += 1
                    self._stats.tx_bytes += len(frame)
                    break
                except BlockingIOError:
                    try:
                        await trio.lowlevel.wait_writable(self._sock)
                    except trio.ClosedResourceError:
                        raise PortClosed(f"{self.name}: closed") from None
                except OSError as exc:
                    if exc.errno in _GONE or self._sock.fileno() < 0:
                        raise PortClosed(f"{self.name}: {self.device} is gone ({exc.strerror})") from None
                    self._stats.tx_errors += 1  # e.g. EMSGSIZE for a frame over the interface MTU
                    break
        await trio.lowlevel.checkpoint()

    def statistics(self) -> PortStatistics:
        return attrs.evolve(self._stats)

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()
