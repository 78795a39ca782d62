"""The bridge and the router as one core for the switch: pure, time passed in.

A router interface lives either on the bridge — an internal bridge port
named ``router/<interface>`` (a name no device can have), with the
interface's MAC pinned to it, as a Linux bridge's own address — or on a
port of its own, which then bypasses the bridge (an uplink, a TUN).

Frames go back and forth between the two until nothing is left for either:
a container's frame to the gateway MAC comes out of the bridge towards the
router port, the routed packet comes out of the router towards another
interface on the bridge, and so on. A frame that needs more rounds than any
real path does is dropped as a routing loop.

The overlay, when there is one, is a third part: an L3 router interface
whose packets the :class:`Tunnel` (the overlay) wraps into datagrams for
the underlay port, and whose datagrams from the underlay come back into the
router unwrapped. A container's packet for another node goes bridge →
router → overlay → underlay port, its answer underlay port → overlay →
router → bridge, each in one call.
"""

from collections.abc import Sequence
from typing import Protocol

from .actions import (
    INSIDE,
    UNDERLAY,
    Action,
    Drop,
    DropReason,
    Transmit,
    TunnelAction,
    Unreachable,
)
from .l2.bridge import Bridge, BridgeStatistics
from .l3.router import Router

INTERNAL_PREFIX = "router/"
MAX_ROUNDS = 8


class Tunnel(Protocol):
    """What the datapath needs of an overlay (:class:`vswitch.overlay.core.tunnel.Overlay`)."""

    def encapsulate(self, packets: Sequence[bytes], now: float) -> list[TunnelAction]: ...
    def decapsulate(self, datagrams: Sequence[bytes], now: float) -> list[TunnelAction]: ...


class Datapath:
    def __init__(self, bridge: Bridge, router: Router) -> None:
        self.bridge = bridge
        self.router = router
        self._port_interface: dict[str, str] = {}      # device port → router interface it carries
        self._interface_port: dict[str, str] = {}      # router interface → its device port
        self._internal: dict[str, str] = {}            # internal bridge port → router interface
        self._bridge_interface: dict[str, str] = {}    # router interface → internal bridge port
        self._ports_present: dict[str, bool] = {}      # router-owned device ports that exist: up?
        self.overlay: Tunnel | None = None
        self._overlay_interface: str | None = None     # the router interface the overlay is
        self._underlay: str | None = None              # the port its datagrams use

    # -- wiring -------------------------------------------------------------------

    def attach_interface(self, interface: str, port: str | None = None) -> None:
        """Put a router interface on the bridge (``port`` None) or on a device port of its own."""
        iface = self.router.interfaces[interface]
        if port is None:
            internal = INTERNAL_PREFIX + interface
            if iface.mac is None:
                raise ValueError(f"router interface {interface!r} has no MAC: it cannot sit on the bridge")
            self.bridge.add_port(internal)
            self.bridge.add_static(iface.mac, internal)
            self._internal[internal] = interface
            self._bridge_interface[interface] = internal
        else:
            if port in self._port_interface:
                raise ValueError(f"port {port!r} already carries router interface {self._port_interface[port]!r}")
            self._port_interface[port] = interface
            self._interface_port[interface] = port
            self.router.set_interface_up(interface, False)  # until the device port exists

    def attach_overlay(self, overlay: Tunnel, interface: str, underlay: str) -> None:
        """Make router interface ``interface`` (an L3 one) the overlay, its datagrams on port ``underlay``."""
        if self.router.interfaces[interface].mac is not None:
            raise ValueError(f"router interface {interface!r} has a MAC: the overlay needs an L3 interface")
        if underlay in self._port_interface or self.overlay is not None:
            raise ValueError("the datapath has an overlay already, or the underlay port carries an interface")
        self.overlay = overlay
        self._overlay_interface = interface
        self._underlay = underlay
        self._port_interface[underlay] = interface     # the port belongs to the router's side
        self.router.set_interface_up(interface, False)  # until the underlay port exists

    def interface_of(self, port: str) -> str | None:
        """The router interface a device port carries, if it is not on the bridge."""
        return self._port_interface.get(port)

    # -- the Core protocol (switch.py) ------------------------------------------------

    def add_port(self, name: str) -> None:
        interface = self._port_interface.get(name)
        if interface is None:
            self.bridge.add_port(name)
            return
        if name in self._ports_present:
            raise ValueError(f"port {name!r} already exists")
        self._ports_present[name] = True
        self.router.set_interface_up(interface, True)

    def remove_port(self, name: str) -> None:
        interface = self._port_interface.get(name)
        if interface is None:
            self.bridge.remove_port(name)
            return
        del self._ports_present[name]
        self.router.set_interface_up(interface, False)

    def set_port_up(self, name: str, up: bool) -> None:
        interface = self._port_interface.get(name)
        if interface is None:
            self.bridge.set_port_up(name, up)
            return
        self._ports_present[name] = up
        self.router.set_interface_up(interface, up)

    def is_port_up(self, name: str) -> bool:
        if name in self._port_interface:
            return self._ports_present[name]
        return self.bridge.is_port_up(name)

    def handle_frames(self, port: str, frames: Sequence[bytes], now: float) -> list[Action]:
        interface = self._port_interface.get(port)
        if interface is not None:
            if port == self._underlay:
                assert self.overlay is not None
                result: list[Action] = []
                to_router = self._from_overlay(self.overlay.decapsulate(frames, now), result, now)
                return result + self._settle([], to_router, now)
            return self._settle([], self.router.handle_frames(interface, list(frames), now), now)
        actions = self.bridge.handle_frames(port, frames, now)
        internal = self._internal
        for action in actions:
            if type(action) is Transmit and action.port in internal:
                return self._settle(actions, [], now)
        return actions

    def _settle(self, from_bridge: list[Action], from_router: list[Action], now: float) -> list[Action]:
        """Pass frames between bridge and router until every one leaves by a device port or is dropped."""
        result: list[Action] = []
        internal, on_bridge, on_port = self._internal, self._bridge_interface, self._interface_port
        for _ in range(MAX_ROUNDS):
            if not from_bridge and not from_router:
                return result
            to_router: list[Action] = []
            to_bridge: list[Action] = []
            for action in from_bridge:
                if type(action) is Transmit and action.port in internal:
                    to_router += self.router.handle_frames(internal[action.port], action.frames, now)
                else:
                    result.append(action)
            for action in from_router:
                if type(action) is Transmit:
                    if action.port == self._overlay_interface:
                        assert self.overlay is not None
                        to_router += self._from_overlay(self.overlay.encapsulate(action.frames, now), result, now)
                        continue
                    port = on_port.get(action.port)
                    if port is not None:
                        result.append(Transmit(port, action.frames))
                    else:
                        to_bridge += self.bridge.handle_frames(on_bridge[action.port], action.frames, now)
                else:
                    result.append(action)
            from_bridge, from_router = to_bridge, to_router
        for action in (*from_bridge, *from_router):
            if type(action) is Transmit:
                result += [Drop(action.port, DropReason.ROUTING_LOOP, f) for f in action.frames]
            else:
                result.append(action)
        return result

    def _from_overlay(self, actions: list[TunnelAction], result: list[Action], now: float) -> list[Action]:
        """Datagrams and drops go to ``result``; inside packets and owed ICMP errors go back to the router."""
        to_router: list[Action] = []
        interface, underlay = self._overlay_interface, self._underlay
        assert interface is not None and underlay is not None
        for action in actions:
            if type(action) is Transmit:
                if action.port == UNDERLAY:
                    result.append(Transmit(underlay, action.frames))
                else:
                    to_router += self.router.handle_frames(interface, action.frames, now)
            elif type(action) is Unreachable:
                to_router += self.router.icmp_error(action.packet, action.type, action.code, now)
            else:
                assert type(action) is Drop
                result.append(Drop(interface if action.port == INSIDE else underlay, action.reason, action.frame))
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
