"""The bridge and the router as one core for the switch: pure, time passed in.

Each router interface says what it sits on, its attachment, and the datapath
dispatches on that, as smoltcp's interfaces have a medium and a device:

* :class:`OnBridge`: a port of the bridge with the interface's own name and
  its MAC pinned there, as a Linux bridge's own address (flannel's ``cni0``
  is such a bridge): the containers on the bridge reach their gateway;
* :class:`OnPort`: a device port of its own, which bypasses the bridge (an
  uplink, a TUN);
* :class:`OnOverlay`: the overlay, an L3 interface whose packets a
  :class:`Tunnel` wraps into datagrams for its underlay port, and whose
  datagrams from that port come back into the router unwrapped.

The router speaks of interfaces and the bridge of ports; an interface on the
bridge is the bridge port of the same name, so frames pass between the two
under one name. They go back and forth until nothing is left for either: a
container's frame to the gateway MAC comes out of the bridge towards the
interface's port, the routed packet comes out of the router towards another
interface, and so on. A frame that needs more rounds than any real path does
is dropped as a routing loop. A container's packet for another node goes
bridge → router → tunnel → underlay port, its answer underlay port → tunnel →
router → bridge, each in one call.
"""

from collections.abc import Sequence
from typing import Protocol

import attrs

from .actions import (
    Action,
    Drop,
    DropReason,
    Transmit,
    TunnelAction,
    split_tunnel_actions,
)
from .l2.bridge import Bridge, BridgeStatistics
from .l3.router import Router

MAX_ROUNDS = 8


class Tunnel(Protocol):
    """What the datapath needs of an overlay (:class:`vswitch.overlay.core.tunnel.Overlay`)."""

    def encapsulate(self, packets: Sequence[bytes], now: float) -> list[TunnelAction]: ...
    def decapsulate(self, datagrams: Sequence[bytes], now: float) -> list[TunnelAction]: ...


@attrs.frozen
class OnBridge:
    """The interface is a port of the bridge, named as the interface, its MAC a static FDB entry there."""


@attrs.frozen
class OnPort:
    """The interface is device port ``port``: Ethernet frames (it has a MAC) or IP packets (a TUN) pass unbridged."""

    port: str


@attrs.frozen
class OnOverlay:
    """The interface (an L3 one) is ``tunnel``: its packets leave as datagrams by port ``underlay``."""

    tunnel: Tunnel
    underlay: str


Attachment = OnBridge | OnPort | OnOverlay


class Datapath:
    """Router mode's core for the switch: the bridge, the router, and what each router interface sits on."""

    def __init__(self, bridge: Bridge, router: Router) -> None:
        self.bridge = bridge
        self.router = router
        self._attachments: dict[str, Attachment] = {}   # router interface → what it sits on
        self._carriers: dict[str, str] = {}             # a device port of the router's own → the interface it carries
        self._up: dict[str, bool] = {}                  # those ports that exist → up?

    # -- wiring -------------------------------------------------------------------

    def attach(self, interface: str, attachment: Attachment) -> None:
        """Say what router interface ``interface`` sits on; on a port, it is down until the port exists."""
        iface = self.router.interfaces[interface]   # an unknown interface is misuse: KeyError
        if interface in self._attachments:
            raise ValueError(f"router interface {interface!r} is attached already")
        match attachment:
            case OnBridge():
                if iface.mac is None:
                    raise ValueError(f"router interface {interface!r} has no MAC: it cannot sit on the bridge")
                if interface in self._carriers:
                    raise ValueError(f"{interface!r} is a port of router interface {self._carriers[interface]!r}")
                self.bridge.add_port(interface)    # ValueError if a port of that name is on the bridge
                self.bridge.add_static(iface.mac, interface)
            case OnPort(port):
                self._claim(port, interface)
            case OnOverlay(tunnel, underlay):
                if iface.mac is not None:
                    raise ValueError(f"router interface {interface!r} has a MAC: the overlay needs an L3 interface")
                if any(type(a) is OnOverlay and a.tunnel is tunnel for a in self._attachments.values()):
                    raise ValueError("that tunnel is attached already")
                self._claim(underlay, interface)
        self._attachments[interface] = attachment

    def _claim(self, port: str, interface: str) -> None:
        """Make device port ``port`` the router's own, for ``interface``, which is down until the port exists."""
        if port in self._carriers:
            raise ValueError(f"port {port!r} already carries router interface {self._carriers[port]!r}")
        if port in self.bridge.ports:
            raise ValueError(f"port {port!r} is on the bridge")
        if self.router.set_interface_up(interface, False):
            raise ValueError(f"router interface {interface!r} has carried traffic: attach it before any flows")
        self._carriers[port] = interface

    def interface_of(self, port: str) -> str | None:
        """The router interface a device port carries, if it is not on the bridge."""
        return self._carriers.get(port)

    # -- the Core protocol (switch.py) ------------------------------------------------

    def add_port(self, name: str) -> list[Action]:
        interface = self._carriers.get(name)
        if interface is None:
            if type(self._attachments.get(name)) is OnBridge:
                raise ValueError(f"{name!r} is the name of a router interface on the bridge: choose another")
            self.bridge.add_port(name)
            return []
        if name in self._up:
            raise ValueError(f"port {name!r} already exists")
        self._up[name] = True
        return self.router.set_interface_up(interface, True)

    def remove_port(self, name: str) -> list[Action]:
        interface = self._carriers.get(name)
        if interface is None:
            self.bridge.remove_port(name)
            return []
        del self._up[name]
        return self.router.set_interface_up(interface, False)

    def set_port_up(self, name: str, up: bool) -> list[Action]:
        """A port going down takes its interface with it, and the packets held for that interface's neighbours."""
        interface = self._carriers.get(name)
        if interface is None:
            self.bridge.set_port_up(name, up)
            return []
        if name not in self._up:
            raise KeyError(name)
        self._up[name] = up
        return self.router.set_interface_up(interface, up)

    def is_port_up(self, name: str) -> bool:
        if name in self._carriers:
            return self._up[name]
        return self.bridge.is_port_up(name)

    def handle_frames(self, port: str, frames: Sequence[bytes], now: float) -> list[Action]:
        interface = self._carriers.get(port)
        if interface is None:
            actions = self.bridge.handle_frames(port, frames, now)
            attachments = self._attachments
            for action in actions:
                if type(action) is Transmit and type(attachments.get(action.port)) is OnBridge:
                    return self._settle(actions, [], now)
            return actions
        attachment = self._attachments[interface]
        if type(attachment) is OnOverlay:
            result: list[Action] = []
            decapsulated = attachment.tunnel.decapsulate(frames, now)
            to_router = self._from_tunnel(interface, attachment.underlay, decapsulated, result, now)
            return self._settle([], to_router, now, result)
        return self._settle([], self.router.handle_frames(interface, list(frames), now), now)

    def _settle(
        self, from_bridge: list[Action], from_router: list[Action], now: float, result: list[Action] | None = None,
    ) -> list[Action]:
        """Pass frames between bridge and router until every one leaves by a device port or is dropped."""
        result = [] if result is None else result
        bridge, router, attachments = self.bridge, self.router, self._attachments
        for _ in range(MAX_ROUNDS):
            if not from_bridge and not from_router:
                return result
            to_router: list[Action] = []
            to_bridge: list[Action] = []
            for action in from_bridge:
                if type(action) is Transmit and type(attachments.get(action.port)) is OnBridge:
                    to_router += router.handle_frames(action.port, action.frames, now)
                else:
                    result.append(action)
            for action in from_router:
                if type(action) is not Transmit:
                    result.append(action)
                    continue
                match attachments[action.port]:
                    case OnBridge():
                        to_bridge += bridge.handle_frames(action.port, action.frames, now)
                    case OnPort(port):
                        result.append(Transmit(port, action.frames))
                    case OnOverlay(tunnel, underlay):
                        encapsulated = tunnel.encapsulate(action.frames, now)
                        to_router += self._from_tunnel(action.port, underlay, encapsulated, result, now)
            from_bridge, from_router = to_bridge, to_router
        for action in (*from_bridge, *from_router):
            if type(action) is Transmit:
                result += [Drop(action.port, DropReason.ROUTING_LOOP, f) for f in action.frames]
            else:
                result.append(action)
        return result

    def _from_tunnel(
        self, interface: str, underlay: str, actions: list[TunnelAction], result: list[Action], now: float,
    ) -> list[Action]:
        """Datagrams and drops go to ``result``; the ICMP errors owed and the packets inside go into the router."""
        packets, owed = split_tunnel_actions(actions, interface, underlay, result)
        router = self.router
        to_router: list[Action] = []
        for error in owed:
            to_router += router.icmp_error(error.packet, error.type, error.code, now)
        if packets:
            to_router += router.handle_frames(interface, packets, now)
        return to_router

    def poll_at(self) -> float | None:
        deadlines = [d for d in (self.bridge.poll_at(), self.router.poll_at()) if d is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> list[Action]:
        return self.bridge.handle_timer(now) + self._settle([], self.router.handle_timer(now), now)

    # -- what the control socket reads ------------------------------------------------

    @property
    def fdb(self):
        return self.bridge.fdb

    def add_static(self, mac: bytes, port: str, now: float = 0.0) -> None:
        self.bridge.add_static(mac, port, now)

    def statistics(self) -> BridgeStatistics:
        return self.bridge.statistics()
