"""The receive and send loops shared by ports on a non-blocking datagram fd
(TAP/TUN devices, AF_PACKET sockets), the Trio way: drain until
``BlockingIOError`` or the batch limit, then wait in ``wait_readable``; on
close, ``notify_closing`` first.

A subclass reads or writes one frame (``_read_one``/``_write_one``, or
``_write_some`` for several in one call) and says
which errno values mean the device is gone; this class does the rest.
"""

import errno
from collections.abc import Sequence

import attrs
import trio

from vswitch.core.wire import ethernet
from vswitch.core.wire.errors import WireError
from vswitch.core.wire.offload import (
    SuperFrame,
    UnsupportedOffload,
    from_vnet,
    read_vnet,
)

from .base import (
    DEFAULT_BATCH,
    DEFAULT_MTU,
    Capabilities,
    PortClosed,
    PortFault,
    PortStatistics,
)

READ_SIZE = 65536 + 64  # the largest frame a device can hand over, with room to spare


class FdPort:
    kind = "fd"
    capabilities = Capabilities(send_nowait=True)
    vnet_ip_at = ethernet.HEADER_LEN   # where the IP header is behind a virtio-net header (0: bare IP, a TUN)
    # errno values meaning the device or interface is gone (not a bad frame)
    gone_errnos: frozenset[int] = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO})

    def __init__(self, name: str, fd: int, *, mtu: int = DEFAULT_MTU) -> None:
        self.name = name
        self.mtu = mtu
        self._fd = fd
        self._closed = False
        self._stats = PortStatistics()

    def fileno(self) -> int:
        return self._fd

    # -- what a subclass provides -----------------------------------------

    def _read_one(self, frames: list[bytes]) -> None:
        """Read one datagram and append the frame(s) it holds; raise BlockingIOError when none."""
        raise NotImplementedError

    def _write_one(self, frame: bytes) -> None:
        raise NotImplementedError

    def _write_some(self, frames: Sequence[bytes], start: int) -> int:
        """Write ``frames[start]`` with ``_write_one``; a device that takes several in one call (a TAP
        taking a super-frame, UDP GSO) overrides this instead. Returns how many were written."""
        self._write_one(frames[start])
        return 1

    def _write_failed(self, exc: OSError) -> None:
        """A write failed for a reason other than the device being gone: count it."""
        self._stats.tx_errors += 1

    def _close_device(self) -> None:
        raise NotImplementedError

    def _from_vnet(self, packet: bytes, frames: list[bytes]) -> None:
        """Append the frame of a packet whose virtio-net header asks for work: a checksum to complete, or a
        TCP super-frame, taken whole (the switch cuts it for ports that take none). One the core does not
        carry whole (VLAN-tagged, say) is cut here into its segments; a malformed one is a counted receive
        error."""
        try:
            try:
                frame = read_vnet(packet, self.vnet_ip_at)
            except UnsupportedOffload:
                if not self.vnet_ip_at:
                    raise
                frames += from_vnet(packet)
                return
            if type(frame) is SuperFrame:
                self._stats.rx_super_frames += 1
            frames.append(frame)
        except WireError:
            self._stats.rx_errors += 1
        except Exception as exc:   # a bug in the decoder: the switch contains it, with this packet
            raise PortFault(self.name, [packet]) from exc

    # -- the loops ------------------------------------------------------------

    def _gone(self, exc: OSError) -> PortClosed:
        return PortClosed(f"{self.name}: device gone ({exc.strerror})")

    async def receive_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        read_one = self._read_one
        while True:
            if self._closed:
                raise PortClosed(f"{self.name}: closed")
            frames: list[bytes] = []
            try:
                while len(frames) < max_frames:
                    read_one(frames)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in self.gone_errnos:
                    raise self._gone(exc) from None
                self._stats.rx_errors += 1
            if frames:
                self._stats.count_rx(frames)
                await trio.lowlevel.checkpoint()
                return frames
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                raise PortClosed(f"{self.name}: closed") from None

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        position = 0
        while position < len(frames):
            position += self.send_nowait(frames[position:] if position else frames)
            if position < len(frames):
                try:
                    await trio.lowlevel.wait_writable(self._fd)
                except trio.ClosedResourceError:
                    raise PortClosed(f"{self.name}: closed") from None
        await trio.lowlevel.checkpoint()

    def send_nowait(self, frames: Sequence[bytes]) -> int:
        """Write frames until the device would block; returns how many it took (written or counted as failed).

        The switch calls this from a receiving task when the port's queue is
        empty, saving the hand-over to the port's send task; what is left
        goes through the queue as usual.
        """
        if self._closed:
            raise PortClosed(f"{self.name}: closed")
        write_some = self._write_some
        done = sent = sent_bytes = 0
        count = len(frames)
        while done < count:
            try:
                taken = write_some(frames, done)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in self.gone_errnos:
                    raise self._gone(exc) from None
                self._write_failed(exc)
                done += 1
                continue
            except Exception as exc:   # a bug while encoding: the rest of the batch goes to the switch's containment
                self._stats.tx_frames += sent
                self._stats.tx_bytes += sent_bytes
                raise PortFault(self.name, frames[done:]) from exc
            sent += taken
            for i in range(done, done + taken):
                sent_bytes += len(frames[i])
            done += taken
        self._stats.tx_frames += sent
        self._stats.tx_bytes += sent_bytes
        return done

    def statistics(self) -> PortStatistics:
        return attrs.evolve(self._stats)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self._close_device()
        await trio.lowlevel.checkpoint()
