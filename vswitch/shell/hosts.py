"""Simulated hosts on ports: :class:`HostRunner` drives a pure
:class:`vswitch.core.host.Host` on a port with Trio, answers what arrives and pings."""

import ipaddress
import itertools

import attrs
import trio

from vswitch.core.host import Host

from .ports.base import Port, PortClosed

_idents = itertools.count(0x5600)   # echo identifiers of the pings sent


@attrs.frozen
class PingResult:
    dst: str
    sent: int
    received: int
    rtts: tuple[float, ...]

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 0.0


class HostRunner:
    """Drives a :class:`Host` on a port: answers whatever arrives, and pings."""

    def __init__(self, host: Host, port: Port) -> None:
        self.host = host
        self.port = port
        self._waiters: dict[tuple[int, int], trio.Event] = {}
        self._arrivals: dict[tuple[int, int], float] = {}

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            try:
                frames = await self.port.receive_batch()
            except PortClosed:
                return
            out = self.host.handle_frames(frames, trio.current_time())
            for reply in self.host.take_replies():
                key = (reply.ident, reply.seq)
                waiter = self._waiters.get(key)
                if waiter is not None:
                    self._arrivals[key] = reply.at
                    waiter.set()
            if out:
                try:
                    await self.port.send_batch(out)
                except PortClosed:
                    return

    async def ping(
        self, dst: str | ipaddress.IPv4Address, *, count: int = 1, interval: float = 0.0, timeout: float = 1.0, size: int = 56
    ) -> PingResult:
        """Send ``count`` echo requests, ``interval`` apart; each waits ``timeout`` for its reply."""
        ident = next(_idents) & 0xFFFF
        target = ipaddress.IPv4Address(dst).packed
        rtts = []
        for seq in range(1, count + 1):
            key = (ident, seq)
            waiter = self._waiters[key] = trio.Event()
            sent_at = trio.current_time()
            frames = self.host.ping(target, ident, seq, sent_at, size=size)
            if frames:
                await self.port.send_batch(frames)
            with trio.move_on_after(timeout):
                await waiter.wait()
            del self._waiters[key]
            arrival = self._arrivals.pop(key, None)
            if arrival is not None:
                rtts.append(arrival - sent_at)
            if interval and seq < count:
                await trio.sleep(interval)
        return PingResult(dst, count, len(rtts), tuple(rtts))
