"""AF_PACKET ports: the bridge on an existing interface (a veth end, a NIC).

The socket is bound to one interface, in promiscuous mode, and ignores its
own transmissions (PACKET_IGNORE_OUTGOING), so the bridge sees only frames
that arrived from the wire.

A local kernel stack behind a veth hands over frames whose checksum it left
to "hardware", and TSO super-frames of up to 64 KB. With PACKET_VNET_HDR the
kernel says so in a virtio-net header on each frame: the port completes a
checksum, and takes a TCP super-frame whole
(:class:`~vswitch.core.wire.offload.SuperFrame`; the switch cuts it for a
port that takes none). A super-frame the daemon sends leaves whole as well,
behind the header that says how to cut it: the kernel segments it (in the
veth's peer, or in software for a device without TSO), one ``send`` for up
to 64 KB.
"""

import errno
import socket
import struct

from vswitch.core.wire.offload import (
    VNET_HDR_LEN,
    VNET_HDR_NONE,
    SuperFrame,
    vnet_header,
)
from vswitch.errors import DeviceError

from .base import DEFAULT_MTU, Capabilities, PortClosed
from .fd import READ_SIZE, FdPort

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
_SOCKET_BUFFER = 4 << 20


class PacketPort(FdPort):
    kind = "packet"
    capabilities = Capabilities(send_nowait=True, vnet_header=True, tso=True)
    gone_errnos = FdPort.gone_errnos | {errno.ENETDOWN}

    def __init__(self, name: str, sock: socket.socket, *, device: str, mtu: int = DEFAULT_MTU) -> None:
        super().__init__(name, sock.fileno(), mtu=mtu)
        self.device = device
        self._sock = sock
        self._recv = sock.recv
        self._send = sock.send
        self._sendmsg = sock.sendmsg

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

    def _read_one(self, frames: list[bytes]) -> None:
        packet = self._recv(READ_SIZE)
        if packet[:2] == b"\0\0":  # no checksum to complete, no segmentation
            frames.append(packet[VNET_HDR_LEN:])
            return
        self._from_vnet(packet, frames)

    def _write_one(self, frame: bytes) -> None:
        if type(frame) is SuperFrame:
            self._sendmsg((vnet_header(frame), frame))
            self._stats.tx_super_frames += 1
        else:
            self._send(VNET_HDR_NONE + frame)

    def _gone(self, exc: OSError) -> PortClosed:
        return PortClosed(f"{self.name}: {self.device} is gone ({exc.strerror})")

    def _close_device(self) -> None:
        self._sock.close()
