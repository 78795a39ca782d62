"""The overlay's backends, in the one table the config, the tunnel, the node wiring and the demo read.

A backend is a wire format (:mod:`.codec`) and what follows from it: the
UDP port peers listen on unless told otherwise, the bytes encapsulation adds
to an inside packet (so the overlay's MTU is the underlay's less those), and
the device flannel makes for it in the host, which drop-in mode opens in its
place: a TUN for flannel's UDP backend, which carries bare IPv4 packets, a
TAP for VXLAN, which carries Ethernet frames.
"""

import attrs

from .codec import FLANNEL_UDP_PORT, UDP_OVERHEAD, VXLAN_OVERHEAD, VXLAN_PORT


@attrs.frozen
class Backend:
    name: str                # as the config and flannel's network config spell it
    title: str               # for people
    default_port: int
    overhead: int            # outer headers per inside packet: overlay MTU = underlay MTU - overhead
    device: str              # flannel's device in the host (drop-in mode)
    carries_ethernet: bool   # datagrams hold Ethernet frames (the device is a TAP), not IPv4 packets (a TUN)


BACKENDS = {
    backend.name: backend
    for backend in (
        Backend("udp", "flannel's UDP backend", FLANNEL_UDP_PORT, UDP_OVERHEAD, "flannel0", carries_ethernet=False),
        Backend("vxlan", "VXLAN", VXLAN_PORT, VXLAN_OVERHEAD, "flannel.1", carries_ethernet=True),
    )
}
