"""Helpers for the layer 3 core tests: a small topology, scapy frames, and action filters.

The router under test has two Ethernet interfaces::

    h1 198.51.100.10 ── a 198.51.100.1/24 ┐
                                         router ── b 203.0.113.1/24 ── h2 203.0.113.20
                                                                   └── gw 203.0.113.254 ── 192.0.2.0/24
"""

from scapy.all import ARP, IP, Ether, Raw, raw

from vswitch.core.l3.router import Router
from vswitch.core.wire.addr import Network, ip_from_str, mac_from_str
from vswitch.testing import dropped, drops, transmits  # noqa: F401 (the kit for the l3 tests)

BCAST = "ff:ff:ff:ff:ff:ff"
MAC = {
    "a": "02:00:00:00:01:01",   # router interface a
    "b": "02:00:00:00:01:02",   # router interface b
    "h1": "02:00:00:00:00:10",
    "h2": "02:00:00:00:00:20",
    "gw": "02:00:00:00:00:fe",
    "x": "02:00:00:00:00:99",   # a stranger
}
IPS = {
    "a": "198.51.100.1",
    "b": "203.0.113.1",
    "h1": "198.51.100.10",
    "h2": "203.0.113.20",
    "gw": "203.0.113.254",
}
REMOTE = "192.0.2.7"            # behind gw


def ip(text: str) -> bytes:
    return ip_from_str(IPS.get(text, text))


def mac(text: str) -> bytes:
    return mac_from_str(MAC.get(text, text))


def make_router(*, neighbours: bool = True, mtu_b: int = 1500, proxy_arp: bool = False, **options) -> Router:
    """The two-interface router, its gratuitous ARPs already sent, h1/h2/gw known statically unless told otherwise."""
    router = Router(neighbour_options=options or None)
    router.add_interface("a", ip("a"), 24, mac=mac("a"), proxy_arp=proxy_arp)
    router.add_interface("b", ip("b"), 24, mac=mac("b"), mtu=mtu_b, proxy_arp=proxy_arp)
    router.add_route(net("192.0.2.0/24"), via=ip("gw"))
    if neighbours:
        router.add_neighbour("a", ip("h1"), mac("h1"))
        router.add_neighbour("b", ip("h2"), mac("h2"))
        router.add_neighbour("b", ip("gw"), mac("gw"))
    router.handle_timer(0.0)  # the gratuitous ARPs owed since the interfaces were added
    return router


def net(text: str) -> Network:
    return Network.parse(text)


def eth(src: str, dst: str, payload) -> bytes:
    """An Ethernet frame from ``src`` to ``dst`` (names from MAC, or MAC strings) carrying a scapy layer.

    Raw bytes travel as IPv4 (scapy would otherwise pick no ethertype for them).
    """
    header = Ether(src=MAC.get(src, src), dst=MAC.get(dst, dst))
    if isinstance(payload, Raw):
        header.type = 0x0800
    return raw(header / payload)


def to_router(payload, *, src: str = "h1", iface: str = "a") -> bytes:
    return eth(src, iface, payload)


def arp_request(sender: str, target: str, *, dst: str = BCAST, sender_mac: str | None = None) -> bytes:
    hw = MAC.get(sender_mac or sender, sender_mac or sender)
    return raw(Ether(src=hw, dst=MAC.get(dst, dst)) / ARP(
        op=1, hwsrc=hw, psrc=IPS.get(sender, sender), hwdst="00:00:00:00:00:00", pdst=IPS.get(target, target),
    ))


def arp_reply(sender: str, target: str, *, dst: str, sender_mac: str | None = None) -> bytes:
    """``sender`` says it is at its MAC, to ``target`` (an address) at Ethernet ``dst``."""
    hw = MAC.get(sender_mac or sender, sender_mac or sender)
    return raw(Ether(src=hw, dst=MAC.get(dst, dst)) / ARP(
        op=2, hwsrc=hw, psrc=IPS.get(sender, sender), hwdst=MAC.get(dst, dst), pdst=IPS.get(target, target),
    ))


def drop_frames(actions) -> list[bytes]:
    return [frame for _port, _reason, frame in dropped(actions)]


def only_frame(actions, port: str) -> Ether:
    """The one frame sent out of ``port``, parsed, and nothing sent anywhere else."""
    out = transmits(actions)
    assert list(out) == [port], out
    assert len(out[port]) == 1, out[port]
    return Ether(out[port][0])


def arp_requests(frames) -> list[str]:
    """The addresses the frames ask for (ARP requests only)."""
    asked = []
    for f in frames:
        pkt = Ether(f)
        if ARP in pkt and pkt[ARP].op == 1:
            assert pkt.dst == BCAST
            asked.append(pkt[ARP].pdst)
    return asked


def ip_checksum_ok(pkt) -> bool:
    """scapy's own recomputation of the IPv4 header checksum agrees with the one in ``pkt``."""
    layer = pkt[IP].copy()
    del layer.chksum
    return IP(raw(layer)).chksum == pkt[IP].chksum


def l4_checksum_ok(pkt, layer) -> bool:
    copy = pkt[IP].copy()
    del copy[layer].chksum
    return IP(raw(copy))[layer].chksum == pkt[layer].chksum
