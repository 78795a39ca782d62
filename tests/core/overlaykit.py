"""Helpers for the overlay core tests: a three-node cluster, scapy packets, datagrams, action filters.

The cluster network is 10.244.0.0/16; node N leases 10.244.N.0/24 and
listens on 10.99.0.N. The overlay under test is node 1's; nodes 2 and 3 are
its peers::

    node 1  10.244.1.0/24  10.99.0.1  VTEP 02:00:00:00:01:ff   (us)
    node 2  10.244.2.0/24  10.99.0.2  VTEP 02:00:00:00:02:ff
    node 3  10.244.3.0/24  10.99.0.3  VTEP 02:00:00:00:03:ff
"""

from scapy.all import IP, UDP, Ether, raw
from scapy.layers.vxlan import VXLAN

from vswitch.core.wire.addr import Network, ip_from_str, mac_from_str
from vswitch.overlay.core.codec import address_header
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.core.tunnel import Overlay
from vswitch.testing import drops, transmitted, unreachables  # noqa: F401 (the kit for the overlay tests)

NETWORK = "10.244.0.0/16"
PORT = {"udp": 8285, "vxlan": 8472}


def subnet(n: int) -> str:
    return f"10.244.{n}.0/24"


def public(n: int) -> str:
    return f"10.99.0.{n}"


def vtep(n: int) -> str:
    return f"02:00:00:00:0{n}:ff"


def pod(n: int, host: int = 2) -> str:
    return f"10.244.{n}.{host}"


def ip(text: str) -> bytes:
    return ip_from_str(text)


def mac(text: str) -> bytes:
    return mac_from_str(text)


def lease(n: int, backend: str = "udp") -> Lease:
    return Lease(Network.parse(subnet(n)), ip(public(n)), mac(vtep(n)) if backend == "vxlan" else None)


def make_overlay(backend: str = "udp", *, inside: str = "ip", peers=(2, 3), **kw) -> Overlay:
    """Node 1's overlay with the leases of ``peers``."""
    overlay = Overlay(
        backend=backend, network=Network.parse(NETWORK), subnet=Network.parse(subnet(1)),
        vtep_mac=mac(vtep(1)) if backend == "vxlan" else None, inside=inside, **kw,
    )
    overlay.set_leases([lease(n, backend) for n in peers])
    return overlay


def packet(src: str = "10.244.1.2", dst: str = "10.244.2.2", *, ttl: int = 64, sport: int = 4000, dport: int = 5000,
           payload: bytes = b"hello", **kw) -> IP:
    return IP(src=src, dst=dst, ttl=ttl, **kw) / UDP(sport=sport, dport=dport) / payload


def from_peer(n: int, payload: bytes, backend: str = "udp", *, sport: int | None = None) -> bytes:
    """A received datagram as the core sees it: peer ``n``'s address and port, then our port."""
    return address_header(ip(public(n)), PORT[backend] if sport is None else sport, PORT[backend]) + payload


def vxlan_payload(inner, *, vni: int = 1, flags: int = 0x08, dst: str = vtep(1), src: str = vtep(2)) -> bytes:
    """What peer 2 sends: a standard VXLAN header (scapy defaults to VXLAN-GPE's 0x0C, so flags are explicit)."""
    return raw(VXLAN(flags=flags, vni=vni) / Ether(dst=dst, src=src) / inner)


def ttl_less(pkt: IP, by: int = 1) -> bytes:
    """``pkt`` as it should look ``by`` hops later: TTL lower, checksum recomputed by scapy."""
    copy = pkt.copy()
    copy.ttl = pkt.ttl - by
    del copy.chksum
    return raw(copy)


def ip_checksum_ok(data: bytes) -> bool:
    """scapy's recomputation of the IPv4 header checksum agrees with the one in ``data``."""
    pkt = IP(data)
    copy = pkt.copy()
    del copy.chksum
    return IP(raw(copy)).chksum == pkt.chksum


def to_wire(datagram: bytes, from_ip: str, port: int) -> bytes:
    """Turn a datagram a node sent (to: address, port, our port or 0) into the one its peer receives."""
    local = int.from_bytes(datagram[6:8], "big") or port
    return address_header(ip(from_ip), local, int.from_bytes(datagram[4:6], "big")) + datagram[8:]
