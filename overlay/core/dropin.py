"""Drop-in mode: the overlay between a flannel device and the underlay, as flanneld runs it. Pure.

The host kernel routes and bridges the containers (docker0, cni0); the
daemon owns only ``flannel0`` (a TUN, udp backend) or ``flannel.1`` (a TAP
standing in for the kernel's vxlan device) and the UDP socket. This core
joins the two through the same :class:`~vswitch.overlay.core.tunnel.Overlay` that router
mode uses, and writes its ICMP errors as flannel's proxy does: an error
about a packet from the device goes back into the device, one about a
packet from a peer (its TTL ran out on arrival) goes back to that peer.

One departure from flannel: an error written into the device does not come
from the device's own address (10.244.N.0), as flannel's proxy writes it,
since the host kernel drops a packet arriving with one of its own addresses
as source ("martian source", unless accept_local is set), so flannel's
"net unreachable" never reaches anyone. It comes from the cluster network's
own address (10.244.0.0): not the host's, routed into the device (udp: the
network's route), never a node's address with flannel's default SubnetMin,
and it names the sender truly: the overlay itself, not any one node. (If
this node holds the network's first subnet, the network's last address.)
"""

from collections.abc import Sequence

from vswitch.core.actions import (
    Action,
    Drop,
    DropReason,
    Transmit,
    TunnelAction,
    split_tunnel_actions,
)

from .tunnel import Overlay


class DeviceOverlay:
    """The switch's Core for drop-in mode: two ports, ``device`` and ``underlay``."""

    def __init__(self, overlay: Overlay, device: str, underlay: str) -> None:
        self.overlay = overlay
        self.device = device
        self.underlay = underlay
        self._up: dict[str, bool] = {}
        network = overlay.network   # the source of ICMP errors written into the device: see the module's docstring
        self.error_source = network.network if network.network not in overlay.subnet else \
            (network.address | (~network.mask & 0xFFFFFFFF)).to_bytes(4, "big")

    # -- the Core protocol (switch.py) --------------------------------------------------

    def add_port(self, name: str) -> None:
        if name not in (self.device, self.underlay):
            raise ValueError(f"drop-in mode has two ports, {self.device!r} and {self.underlay!r}, not {name!r}")
        if name in self._up:
            raise ValueError(f"port {name!r} already exists")
        self._up[name] = True

    def remove_port(self, name: str) -> None:
        del self._up[name]

    def set_port_up(self, name: str, up: bool) -> None:
        self._up[name] = up

    def is_port_up(self, name: str) -> bool:
        return self._up.get(name, False)

    def handle_frames(self, port: str, frames: Sequence[bytes], now: float) -> list[Action]:
        if not (self._up.get(self.device) and self._up.get(self.underlay)):
            return [Drop(port, DropReason.PORT_DOWN, f) for f in frames]   # half a tunnel carries nothing
        if port == self.device:
            return self._convert(self.overlay.encapsulate(frames, now), now, errors_inside=True)
        return self._convert(self.overlay.decapsulate(frames, now), now, errors_inside=False)

    def _convert(self, actions: list[TunnelAction], now: float, *, errors_inside: bool) -> list[Action]:
        result: list[Action] = []
        packets, owed = split_tunnel_actions(actions, self.device, self.underlay, result)
        if packets:
            result.append(Transmit(self.device, packets))
        source = self.error_source if errors_inside else None
        errors = [e for e in (self.overlay.icmp_error(error, now, source) for error in owed) if e is not None]
        if errors:
            if errors_inside:
                result.append(Transmit(self.device, errors))
            else:
                result += self._convert(self.overlay.encapsulate(errors, now), now, errors_inside=True)
        return result

    def poll_at(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> list[Action]:
        return []
