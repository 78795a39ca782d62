"""Several cores joined by wires and an underlay, delivering between them by themselves.

h11's tests drive two connections with a ``ConnectionPair`` that hands each
side's bytes to the other; this is the same for switches. Cores (a bridge, a
datapath, anything with ``handle_frames``/``handle_timer``) join a
:class:`Cluster` under a name. A frame sent out of a wired port arrives at
the port at the wire's other end, and a datagram sent out of a node's
underlay port arrives at the node whose public address and port it names,
as the kernel's UDP would deliver it. :meth:`Cluster.send` runs that until
nothing is in flight and returns what left the cluster: the frames sent out
of unwired ports (to the containers, the uplinks), the drops, and the
datagrams addressed to no node. Pure, time passed in, like the cores.
"""

from collections import deque
from collections.abc import Sequence
from typing import Protocol

import attrs

from vswitch.core.actions import Action, Drop, DropReason, Transmit
from vswitch.core.wire.addr import ip_from_str
from vswitch.overlay.core.codec import arrival, parse_address

MAX_HOPS = 64   # deliveries one send may cause before the cluster calls it a loop


class Core(Protocol):
    def handle_frames(self, port: str, frames: Sequence[bytes], now: float) -> list[Action]: ...
    def handle_timer(self, now: float) -> list[Action]: ...


Where = tuple[str, str]   # (node, port)


@attrs.define
class Delivered:
    """What left the cluster after one send or timer run."""

    transmits: dict[Where, list[bytes]] = attrs.Factory(dict)    # frames out of unwired ports
    drops: list[tuple[str, str, DropReason]] = attrs.Factory(list)   # (node, port, reason)
    lost: list[bytes] = attrs.Factory(list)                      # underlay datagrams addressed to no node

    def to(self, node: str, port: str) -> list[bytes]:
        """The frames that left by ``node``'s ``port`` (none: an empty list)."""
        return self.transmits.get((node, port), [])


@attrs.define
class _Underlay:
    port: str
    address: bytes   # IPv4, 4 bytes
    udp_port: int


class Cluster:
    def __init__(self) -> None:
        self.nodes: dict[str, Core] = {}
        self._wires: dict[Where, Where] = {}
        self._underlays: dict[str, _Underlay] = {}           # node -> its underlay endpoint
        self._endpoints: dict[tuple[bytes, int], str] = {}   # (address, udp port) -> node

    def add(self, name: str, core: Core, *, underlay: tuple[str, str, int] | None = None) -> Core:
        """Join ``core`` as ``name``; ``underlay`` = (its underlay port, public address, UDP port)."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} is in the cluster already")
        self.nodes[name] = core
        if underlay is not None:
            port, address, udp_port = underlay
            endpoint = _Underlay(port, ip_from_str(address), udp_port)
            self._underlays[name] = endpoint
            self._endpoints[(endpoint.address, udp_port)] = name
        return core

    def wire(self, a: Where, b: Where) -> None:
        """A link between port ``a[1]`` of node ``a[0]`` and port ``b[1]`` of node ``b[0]``, both ways."""
        for end in (a, b):
            if end in self._wires:
                raise ValueError(f"{end} is wired already")
        self._wires[a], self._wires[b] = b, a

    def send(self, node: str, port: str, frames: Sequence[bytes], now: float) -> Delivered:
        """``frames`` arrive at ``node``'s ``port``; deliver until nothing is in flight."""
        return self._run(deque([(node, port, list(frames))]), [], now)

    def timer(self, now: float) -> Delivered:
        """Every node's timers run at ``now``; what they send is delivered."""
        return self._run(deque(), [(name, core.handle_timer(now)) for name, core in self.nodes.items()], now)

    def _run(self, inbound: deque[tuple[str, str, list[bytes]]], pending: list[tuple[str, list[Action]]],
             now: float) -> Delivered:
        out = Delivered()
        for name, actions in pending:
            self._route(name, actions, inbound, out)
        for _ in range(MAX_HOPS):
            if not inbound:
                return out
            node, port, frames = inbound.popleft()
            self._route(node, self.nodes[node].handle_frames(port, frames, now), inbound, out)
        raise AssertionError(f"frames still in flight after {MAX_HOPS} deliveries: a forwarding loop?")

    def _route(self, node: str, actions: list[Action], inbound: deque, out: Delivered) -> None:
        underlay = self._underlays.get(node)
        for action in actions:
            if type(action) is Drop:
                out.drops.append((node, action.port, action.reason))
                continue
            assert type(action) is Transmit, action
            where = (node, action.port)
            if where in self._wires:
                inbound.append((*self._wires[where], list(action.frames)))
            elif underlay is not None and action.port == underlay.port:
                for datagram in action.frames:
                    self._datagram(underlay, datagram, inbound, out)
            else:
                out.transmits.setdefault(where, []).extend(action.frames)

    def _datagram(self, sender: _Underlay, datagram: bytes, inbound: deque, out: Delivered) -> None:
        """Deliver one datagram as UDP would: it arrives from the sender's address and port."""
        address, port, _ = parse_address(datagram)
        node = self._endpoints.get((address, port))
        if node is None:
            out.lost.append(datagram)
            return
        sent_from = sender.address + sender.udp_port.to_bytes(2, "big")
        inbound.append((node, self._underlays[node].port, [arrival(datagram, sent_from)]))
