"""Helpers for the shell tests: a running switch over memory links, frames
built by scapy (an independent oracle), and receive helpers that never hang.

Synchronisation is by observed frames: a frame is known to have been switched
once a peer end has received it, and a port is known to have received nothing
else when a later *marker* frame from the same ingress arrives first (the
switch keeps each egress port's frames in order).
"""

import itertools
from collections.abc import Callable, Iterable, Sequence

import attrs
import trio
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from vswitch.core.l2.bridge import Bridge
from vswitch.shell.ports import MemoryPort, Port
from vswitch.shell.switch import SHUTDOWN_TIMEOUT, Switch

BROADCAST = b"\xff" * 6
ETH_P_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental ethertype
TIMEOUT = 2.0
_markers = itertools.count(1)


def mac(n: int) -> bytes:
    """A locally administered unicast MAC, 02:00:00:00:hh:ll."""
    return bytes([0x02, 0, 0, 0, (n >> 8) & 0xFF, n & 0xFF])


def smac(raw: bytes) -> str:
    return raw.hex(":")


def eth(dst: bytes, src: bytes, seq: int = 0, *, size: int = 60) -> bytes:
    """An Ethernet frame built by scapy, carrying ``seq`` so frames can be told apart."""
    body = seq.to_bytes(4, "big").ljust(size - 14, b"\xa5")
    return bytes(Ether(dst=smac(dst), src=smac(src), type=ETH_P_EXPERIMENTAL) / Raw(load=body))


def seq_of(frame: bytes) -> int:
    return int.from_bytes(bytes(Ether(frame)[Raw].load)[:4], "big")


MARKER_MAC = mac(0xFFF)


def marker() -> bytes:
    """A broadcast frame with a unique payload, used as an ordering barrier."""
    return eth(BROADCAST, MARKER_MAC, 0x4D000000 + next(_markers))


async def recv(peer: Port, n: int = 1, *, timeout: float = TIMEOUT) -> list[bytes]:
    """Exactly ``n`` frames from ``peer`` (fails instead of hanging)."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < n:
            got += await peer.receive_batch(n - len(got))
    return got


async def frames_before(peer: Port, mark: bytes, *, timeout: float = TIMEOUT) -> list[bytes]:
    """Every frame ``peer`` receives before ``mark``; ``mark`` itself is consumed."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while True:
            for frame in await peer.receive_batch(1):
                if frame == mark:
                    return got
                got.append(frame)


@attrs.define
class Rig:
    """A running :class:`Switch` whose ports are memory links; ``peers`` are the far ends."""

    switch: Switch
    bridge: Bridge
    peers: dict[str, MemoryPort]
    scope: trio.CancelScope
    stopped: trio.Event

    async def send(self, port: str, *frames: bytes) -> None:
        await self.peers[port].send_batch(list(frames))

    async def barrier(self, ingress: str, egress: Iterable[str]) -> dict[str, list[bytes]]:
        """Send a marker broadcast from ``ingress``; return what each ``egress`` got before it."""
        mark = marker()
        await self.send(ingress, mark)
        return {name: await frames_before(self.peers[name], mark) for name in egress}

    def fdb(self) -> dict[bytes, str]:
        return {entry.mac: entry.port for entry in self.bridge.fdb}

    def status(self, name: str):
        return next(s for s in self.switch.port_status() if s.name == name)

    async def stop(self) -> float:
        """Cancel ``Switch.run``; returns how long it took to return."""
        start = trio.current_time()
        self.scope.cancel()
        with trio.fail_after(SHUTDOWN_TIMEOUT + 1):
            await self.stopped.wait()
        return trio.current_time() - start


async def start_switch(
    nursery: trio.Nursery,
    names: Sequence[str],
    *,
    bridge: Bridge | None = None,
    capacity: dict[str, int] | None = None,
    wrap: Callable[[MemoryPort], Port] | None = None,
    **switch_options,
) -> Rig:
    """Start a switch with one memory link per name; ``wrap`` may wrap the switch-side ends."""
    bridge = bridge if bridge is not None else Bridge()
    switch = Switch(bridge, **switch_options)
    peers = {}
    for name in names:
        kwargs = {"capacity": capacity[name]} if capacity and name in capacity else {}
        port, peer = MemoryPort.pair(name, **kwargs)
        switch.add_port(wrap(port) if wrap else port)
        peers[name] = peer
    rig = Rig(switch, bridge, peers, trio.CancelScope(), trio.Event())

    async def run(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with rig.scope:
                await switch.run(task_status=task_status)
        finally:
            rig.stopped.set()

    await nursery.start(run)
    return rig


# -- daemons built from configs (vswitch.daemon.build) ---------------------------------------


def host(node, port: str):
    """The simulated host on memory port ``port`` of a built node."""
    return next(runner for runner, _, _ in node.hosts if runner.host.name == f"{port}-host")


def watch(node, port: str) -> list:
    """Every IPv4 packet the switch receives or sends on ``port``, parsed by scapy (a live list)."""
    from scapy.layers.inet import IP

    seen: list = []

    def record(frames: list[bytes]) -> None:
        seen.extend(Ether(frame)[IP] for frame in frames if IP in Ether(frame))

    node.switch.add_monitor(port, record)
    return seen
