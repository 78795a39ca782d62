"""Underlay ports: UDP datagrams to and from peer daemons.

An underlay port's "frames" are datagrams with the 8-byte address header of
:mod:`vswitch.overlay.core.codec` in front: the peer's IPv4 address and port, and our
local port (0: the port the socket is bound to). :class:`UdpPort` carries
them over a real UDP socket; :class:`MemoryUnderlay` is a simulated UDP
network for tests and the demo, where every node's port is an address.

Offloads carry the speed: datagrams to one peer leave several per
``sendmsg`` with UDP GSO (the kernel cuts them apart; a veth passes them on
whole), and the socket takes UDP GRO, so a run of one flow's datagrams
arrives in one read with their size in a control message. On the wire
every datagram is what it would be without them.

A datagram with a local port of its own — VXLAN's source port hashed from
the inner flow, as Linux's vxlan sends it — leaves from a socket bound to
that port and connected to the peer (made when first needed, at most
:data:`FLOW_SOCKETS`; it never receives, as the peer sends to our bound
port). Where that port is taken, a raw ``IPPROTO_RAW`` socket (send only)
sends the datagram with IPv4 and UDP headers built here and a zero UDP
checksum (allowed over IPv4, and what the kernel's vxlan sends); without
the privilege for one, it leaves the bound port, and the log says so.
"""

import errno
import logging
import socket
import struct
from collections.abc import Sequence

import attrs
import trio

from vswitch.errors import DeviceError
from vswitch.overlay.core.codec import ADDRESS_LEN, address_header, arrival
from vswitch.overlay.core.gro import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    DatagramRun,
    datagram_run,
    split_run,
)

from .base import DEFAULT_MTU, Capabilities, Medium, PortClosed, PortStatistics
from .fd import READ_SIZE, FdPort
from .memory import ChannelReceiver

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 << 20   # bytes: room for bursts of a fast peer
SOL_UDP = 17
UDP_SEGMENT = 103         # send: the kernel cuts one buffer into datagrams of this size (GSO)
UDP_GRO = 104             # receive: datagrams of one flow arrive joined, their size in a control message
FLOW_SOCKETS = 256        # sockets bound to a flow's hashed source port (VXLAN), least recently made go first
_UDP = struct.Struct("!HHHH")
_GRO_SPACE = socket.CMSG_SPACE(4)


def _sockaddr(header: bytes) -> tuple[str, int]:
    return socket.inet_ntoa(header[0:4]), (header[4] << 8) | header[5]


class UdpPort(FdPort):
    """A UDP socket bound to ``(address, port)``, carrying datagrams with their address header."""

    kind = "udp"
    gone_errnos = frozenset({errno.EBADF})

    def __init__(self, name: str, sock: socket.socket, *, raw: socket.socket | None = None, mtu: int = DEFAULT_MTU) -> None:
        super().__init__(name, sock.fileno(), mtu=mtu)
        self._sock = sock
        self._raw = raw
        self.address, self.port = sock.getsockname()
        self._local = socket.inet_aton(self.address)
        self._headers: dict[tuple[str, int], bytes] = {}   # sender -> address header (a few peers: bounded below)
        self._sockaddrs: dict[bytes, tuple[str, int]] = {}
        self.hashed_source_ports = raw is not None
        self.offloads = _enable_gro(sock)   # and GSO with it: both came in Linux 5.0 (GSO 4.18)
        self.capabilities = Capabilities(medium=Medium.UDP, send_nowait=True, udp_offloads=self.offloads)
        self._flows: dict[bytes, socket.socket | None] = {}   # address header -> its flow socket (oldest first)

    @classmethod
    def open(cls, name: str, address: str, port: int, *, source_ports: bool = False, mtu: int = DEFAULT_MTU) -> "UdpPort":
        """Bind ``address:port``; with ``source_ports``, also open the raw socket that sends from any port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            hint = {
                errno.EADDRNOTAVAIL: f"{address} is not an address of this host: set overlay.public_ip to one it has",
                errno.EADDRINUSE: f"UDP port {port} is in use on {address} (another daemon, flanneld, or a kernel vxlan"
                                  " device with that dstport?)",
                errno.EACCES: f"no permission to bind UDP port {port}: run as root or choose a port above 1023",
            }.get(exc.errno or 0, exc.strerror)
            raise DeviceError(exc.errno or 1, f"overlay: cannot bind {address}:{port}: {hint}") from None
        raw = None
        if source_ports:
            try:
                raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                raw.setblocking(False)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            except PermissionError:
                log.warning("overlay: no raw socket (needs CAP_NET_RAW): every datagram leaves from port %d,"
                            " not from a port hashed from its flow", port)
        return cls(name, sock, raw=raw, mtu=mtu)

    def _read_one(self, frames: list[bytes]) -> None:
        if self.offloads:
            data, ancillary, _, sender = self._sock.recvmsg(READ_SIZE, _GRO_SPACE)
        else:
            data, sender = self._sock.recvfrom(READ_SIZE)
            ancillary = ()
        header = self._headers.get(sender)
        if header is None:
            if len(self._headers) >= 4096:
                self._headers.clear()
            header = self._headers[sender] = address_header(socket.inet_aton(sender[0]), sender[1], self.port)
        if ancillary:
            frames += split_gro(header, data, ancillary)
        else:
            frames.append(header + data)

    def _write_some(self, frames: Sequence[bytes], start: int) -> int:
        """Send ``frames[start]``, with the datagrams after it that can share one ``sendmsg``.

        Consecutive datagrams to one peer from one local port, all of one size
        but the last, leave together with UDP GSO: the kernel cuts them apart
        (a veth passes them on whole, to a peer that joins them with GRO). A
        datagram with a local port of its own leaves from a socket bound to
        that port and connected to the peer, made the first time it is needed.
        """
        frame = frames[start]
        if type(frame) is DatagramRun:
            self._write_run(frame)
            return 1
        key = frame[:ADDRESS_LEN]
        sock, sockaddr = self._sender(key)
        if sock is None:
            self._write_raw(frame)
            return 1
        end = start + 1
        if self.offloads:
            size, total, limit = len(frame), len(frame) - ADDRESS_LEN, min(len(frames), start + GSO_MAX_SEGMENTS)
            while end < limit:
                following = frames[end]
                if following[:ADDRESS_LEN] != key or len(following) > size or total + len(following) > GSO_MAX_BYTES:
                    break
                total += len(following) - ADDRESS_LEN
                end += 1
                if len(following) < size:
                    break   # a shorter one ends the run
        try:
            if end - start == 1:
                payload = memoryview(frame)[ADDRESS_LEN:]
                if sockaddr:
                    sock.sendto(payload, sockaddr)
                else:
                    sock.send(payload)
            else:
                _send_gso(sock, sockaddr, [memoryview(f)[ADDRESS_LEN:] for f in frames[start:end]],
                          len(frame) - ADDRESS_LEN)
        except BlockingIOError:
            if sock is self._sock:
                raise   # the port waits until the socket can take more
            self._stats.tx_dropped += end - start   # a full flow socket: lost, as UDP may lose
        return end - start

    def _write_run(self, run: DatagramRun) -> None:
        """Send a run of datagrams built back to back (a super-frame the overlay cut) with UDP GSO: as many
        as one ``sendmsg`` takes at a time (:data:`GSO_MAX_SEGMENTS`, :data:`GSO_MAX_BYTES`). From a flow's
        port without a socket for it, they leave one by one by the raw socket."""
        size = run.size
        sock, sockaddr = self._sender(run.header)
        if sock is None:
            for datagram in split_run(run):
                self._write_raw(datagram)
            return
        step = size * max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
        view = memoryview(run)
        for at in range(0, len(run), step):
            try:
                _send_gso(sock, sockaddr, [view[at:at + step]], size)
            except BlockingIOError:
                if sock is self._sock and at == 0:
                    raise   # nothing sent yet: the port waits until the socket can take more
                self._stats.tx_dropped += -(-(len(run) - at) // size)   # the rest is lost, as UDP may lose
                return

    def _sender(self, header: bytes) -> tuple[socket.socket | None, tuple[str, int] | None]:
        """The socket a datagram with address ``header`` leaves by, and the address to send it to (None: the
        socket is connected): the port's own for its own local port, else the flow's (None if it has none)."""
        if header[6:8] == b"\0\0":
            return self._sock, self._sockaddrs.get(header[:6]) or self._sockaddr_of(header)
        return self._flow_socket(header), None

    def _sockaddr_of(self, header: bytes) -> tuple[str, int]:
        if len(self._sockaddrs) >= 4096:
            self._sockaddrs.clear()
        sockaddr = self._sockaddrs[header[:6]] = _sockaddr(header)
        return sockaddr

    def _flow_socket(self, key: bytes) -> socket.socket | None:
        """The socket bound to the datagram's local port and connected to its peer; None if the port is taken."""
        flows = self._flows
        sock = flows.get(key, False)
        if sock is not False:
            return sock
        if len(flows) >= FLOW_SOCKETS:
            stale = flows.pop(next(iter(flows)))
            if stale is not None:
                stale.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind((self.address, (key[6] << 8) | key[7]))
            sock.connect(_sockaddr(key))
        except OSError:
            sock.close()
            sock = None   # the port is another socket's: these datagrams take the raw socket
        flows[key] = sock
        return sock

    def _write_raw(self, frame: bytes) -> None:
        sockaddr = self._sockaddrs.get(frame[:6]) or self._sockaddr_of(frame)
        if self._raw is None:
            self._sock.sendto(memoryview(frame)[ADDRESS_LEN:], sockaddr)   # from the bound port
            return
        length = len(frame) - ADDRESS_LEN + 8
        # IPv4 header: the kernel fills in the identification, total length and checksum of an IPPROTO_RAW packet.
        ip_header = b"\x45\x00" + (length + 20).to_bytes(2, "big") + b"\0\0\0\0\x40\x11\0\0" + self._local + frame[0:4]
        udp_header = _UDP.pack((frame[6] << 8) | frame[7], sockaddr[1], length, 0)
        self._raw.sendto(b"".join((ip_header, udp_header, memoryview(frame)[ADDRESS_LEN:])), (sockaddr[0], 0))

    def _write_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE):
            self._stats.tx_dropped += 1   # a peer not listening (an ICMP error came back), no route, too big
        else:
            self._stats.tx_errors += 1

    def _close_device(self) -> None:
        self._sock.close()
        if self._raw is not None:
            self._raw.close()
        for sock in self._flows.values():
            if sock is not None:
                sock.close()


def _send_gso(sock: socket.socket, sockaddr: tuple[str, int] | None, buffers: list, size: int) -> None:
    """One ``sendmsg`` of datagrams back to back, each ``size`` bytes but the last: the kernel cuts them (UDP GSO)."""
    control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    if sockaddr:
        sock.sendmsg(buffers, control, 0, sockaddr)
    else:
        sock.sendmsg(buffers, control)


def split_gro(header: bytes, data: bytes, ancillary: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The frames of one read: one datagram behind ``header``, or the several of one flow that UDP GRO joined,
    as one :class:`~vswitch.overlay.core.gro.DatagramRun` (the overlay takes it apart in one pass).

    GRO's control message holds their size (the last may be shorter); a
    size of zero or of the whole read means one datagram. Pure: any bytes
    in, frames out.
    """
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            size = int.from_bytes(value[:4], "little")
            if 0 < size < len(data):
                return [datagram_run(header, data, size)]
    return [header + data]


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False   # an old kernel: one datagram per call
    return True


class MemoryUnderlay:
    """A simulated UDP network: ports join at an address and port, datagrams go by the address header."""

    def __init__(self, *, capacity: int = 256) -> None:
        self._capacity = capacity
        self._endpoints: dict[bytes, MemoryUdpPort] = {}   # IPv4 address + port -> port

    def port(self, name: str, address: str, port: int, *, mtu: int = DEFAULT_MTU) -> "MemoryUdpPort":
        key = socket.inet_aton(address) + port.to_bytes(2, "big")
        if key in self._endpoints:
            raise DeviceError(errno.EADDRINUSE, f"overlay: {address}:{port} is already bound on this memory underlay")
        endpoint = self._endpoints[key] = MemoryUdpPort(name, self, key, self._capacity, mtu=mtu)
        return endpoint

    def _deliver(self, sender: "MemoryUdpPort", frames: Sequence[bytes]) -> int:
        """Hand each datagram to the port it is addressed to; returns how many found no one (or no room)."""
        batches: dict[bytes, list[bytes]] = {}
        lost = 0
        for frame in frames:
            destination = frame[0:6]
            if destination not in self._endpoints:
                lost += 1
                continue
            batches.setdefault(destination, []).append(arrival(frame, sender.key))
        for destination, batch in batches.items():
            try:
                self._endpoints[destination]._inbox.send_nowait(batch)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                lost += len(batch)    # UDP: a full receive buffer loses datagrams
        return lost

    def _leave(self, endpoint: "MemoryUdpPort") -> None:
        if self._endpoints.get(endpoint.key) is endpoint:
            del self._endpoints[endpoint.key]


class MemoryUdpPort(ChannelReceiver):
    kind = "udp"
    capabilities = Capabilities(medium=Medium.UDP)

    def __init__(self, name: str, network: MemoryUnderlay, key: bytes, capacity: int, *, mtu: int = DEFAULT_MTU) -> None:
        self.name = name
        self.mtu = mtu
        self.key = key
        self.address, self.port = socket.inet_ntoa(key[0:4]), int.from_bytes(key[4:6], "big")
        self._network = network
        self._inbox, self._receive = trio.open_memory_channel[list[bytes]](capacity)
        self._pending: list[bytes] = []
        self._closed = False
        self._stats = PortStatistics()

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        if self._closed:
            raise PortClosed(f"{self.name}: closed")
        lost = self._network._deliver(self, frames)
        self._stats.count_tx(frames)
        self._stats.tx_dropped += lost
        await trio.lowlevel.checkpoint()

    def statistics(self) -> PortStatistics:
        return attrs.evolve(self._stats)

    async def aclose(self) -> None:
        self._closed = True
        self._network._leave(self)
        self._inbox.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()
