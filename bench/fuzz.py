"""Fuzzing: mutated and forged input through the whole core and every port-side transform.

``python -m bench fuzz [--count N] [--seed S]`` feeds N inputs (1,000,000 by
default, 2,000 with ``--quick``), the same ones for the same seed, to:

* the cores exactly as ``vswitch run`` builds them (:func:`vswitch.daemon.build_core`
  on a config): the bridge alone; bridge, router and NAT (masquerade, two port
  forwards, an uplink and a TUN port with router interfaces of their own); the
  overlay in router mode over the udp and the vxlan backend (with an uplink and
  flannel's ip-masq); drop-in mode (the flannel device and the underlay) for
  both backends. Batches go to ``handle_frames`` on every port, the clock
  moves on, and ``handle_timer`` runs whenever ``poll_at`` says;
* the transforms the ports make on their own: :func:`coalesce_tcp4` on batches
  (as a TAP's ``_write_some`` calls it) and :func:`coalesce_ipv4` on bare
  IP packets with checksums verified (as the overlay's way in),
  :func:`segment_tcp4`,
  :func:`complete_checksum` and :func:`from_vnet` on virtio-net headers and
  frames, the UDP GRO split, :func:`capture_frame` and the overlay codec;
* what comes from etcd (:mod:`vswitch.overlay.core.flannel`): the network
  config, lease values and keys as parsed, and the lease book fed PUTs and
  DELETEs, its peers given to a peer table after every batch.

Inputs are seeds built with scapy (ARP, ICMP echo and errors quoting packets,
TCP with options, UDP, fragments, IP options, VLAN and QinQ tags, flannel and
VXLAN datagrams from the peers' addresses, TSO super-frames behind virtio-net
headers, flannel's JSON as flanneld writes it) run through mutations — bit flips, bytes set to boundary values, cuts
at every header boundary, bad IHL, total length, fragment fields, TCP data
offset, UDP length, JSON values of the wrong type or range, random tails, splices — and floods: many source MACs,
many connections, many ARP targets, forged datagrams (unknown peers, a foreign
VNI, inner sources outside the sender's subnet), and leases in their thousands, sharing addresses and MACs.

Lines: ``fuzz.inputs``; ``fuzz.exceptions`` (target 0); ``fuzz.over_bound``,
tables that grew past their bound (target 0); one ``fuzz.exception.<n>`` per
distinct site (exception, target, and a minimised reproducer in hex, runs of
one byte as ``00*1000``: fewer batches, fewer frames, shorter cuts);
``fuzz.table.<core>.<table>``, the largest size seen against its bound;
``fuzz.forwards.<core>``, a clean exchange through each core after the
campaign (at once, and once every timeout has run out); ``fuzz.rate``.

:func:`campaign` is the engine, for tests: ``campaign(20_000)`` is CI's slice.
"""

import json
import random
import re
import struct
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import attrs
from scapy.all import (
    ARP,
    ICMP,
    IP,
    LLC,
    STP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Ether,
    ICMPv6EchoRequest,
    IPOption_LSRR,
    IPOption_Router_Alert,
    IPOption_RR,
    IPv6,
    fragment,
    raw,
)
from scapy.layers.vxlan import VXLAN

from vswitch.config import loads
from vswitch.core.actions import Drop, Transmit
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l3.icmp import ICMP_PEERS
from vswitch.core.l3.ipam import AddressPool
from vswitch.core.nat import FRAGMENT_MEMORY
from vswitch.core.wire.addr import BROADCAST_MAC, Network, ip_from_str, mac_from_str
from vswitch.core.wire.arp import OP_REQUEST, Arp
from vswitch.core.wire.checksum import internet_checksum
from vswitch.core.wire.errors import WireError
from vswitch.core.wire.icmp import build_echo
from vswitch.core.wire.ipv4 import (
    FLAG_DF,
    FLAG_MF,
    PROTO_TCP,
    PROTO_UDP,
    build_ipv4,
    decrement_ttl,
)
from vswitch.core.wire.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    VNET_HDR,
    VNET_HDR_LEN,
    SuperFrame,
    coalesce_ipv4,
    coalesce_tcp4,
    complete_checksum,
    from_vnet,
    read_vnet,
    segment,
    segment_ipv4,
    segment_tcp4,
)
from vswitch.core.wire.tcp import ACK, FIN, PSH, RST, SYN, build_tcp
from vswitch.core.wire.udp import build_udp
from vswitch.daemon import UNDERLAY_PORT, build_core
from vswitch.overlay.core.codec import (
    MAX_PAYLOAD,
    address_header,
    capture_frame,
    flow_source_port,
    parse_address,
)
from vswitch.overlay.core.dropin import DeviceOverlay
from vswitch.overlay.core.flannel import (
    DEFAULT_PREFIX,
    REASONS,
    FlannelError,
    LeaseAttrs,
    LeaseBook,
    free_subnets,
    is_compatible,
    lease_value,
    parse_lease_value,
    parse_network_config,
    parse_subnet_key,
    subnet_key,
)
from vswitch.overlay.core.gro import DatagramRun, datagrams, join_run
from vswitch.overlay.core.peers import PeerTable
from vswitch.shell.ports.udp import SOL_UDP, UDP_GRO, split_gro

from .common import Options, result

DEFAULT_COUNT = 1_000_000
QUICK_COUNT = 2_000
DEFAULT_SEED = 10            # issue 10
START = 1000.0               # the cores' clock at the start
HISTORY = 16                 # batches kept per target, to replay an exception that needs earlier state
MAX_REPLAYS = 400            # replays spent minimising one finding
ROOT = Path(__file__).resolve().parents[1]

# -- the network the configs describe ----------------------------------------------------------------

C1, C2 = "10.244.1.2", "10.244.1.3"              # containers on c1 and c2
C1_MAC, C2_MAC = "02:00:00:00:01:02", "02:00:00:00:01:03"
GW, GW_MAC = "10.244.1.1", "02:00:00:00:01:01"   # the containers' gateway, on the bridge
EXT, EXT_MAC = "198.51.100.2", "02:00:00:00:00:e1"   # the router's uplink interface
NEXT, NEXT_MAC = "198.51.100.1", "02:00:00:00:00:fe"  # the next router, outside
FAR = "203.0.113.5"                               # somewhere beyond it
L3_HOST = "192.0.2.2"                             # behind the router's TUN port (192.0.2.1/24)
PODS = {2: "10.244.2.2", 3: "10.244.3.2"}         # containers on the peers
PUBLIC = {1: "10.99.0.1", 2: "10.99.0.2", 3: "10.99.0.3"}
VTEP = {1: "02:00:00:00:01:ff", 2: "02:00:00:00:02:ff", 3: "02:00:00:00:03:ff"}
PORTS = {"udp": 8285, "vxlan": 8472}
DEVICES = {"udp": "flannel0", "vxlan": "flannel.1"}
MAX_ENTRIES = 1024           # the FDB's bound in every config (small, so that floods reach it)
MAX_CONNECTIONS = 2048       # the NAT's

_CONTAINERS = """
[[ports]]
name = "c1"
type = "tap"

[[ports]]
name = "c2"
type = "tap"
"""
_UPLINK = """
[[ports]]
name = "uplink"
type = "packet"
device = "eth1"
"""
_EXT = f"""
[[router.interfaces]]
name = "ext"
port = "uplink"
address = "{EXT}/24"
mac = "{EXT_MAC}"

[[router.routes]]
to = "0.0.0.0/0"
via = "{NEXT}"
"""


def _overlay(backend: str, *, device: bool) -> str:
    vxlan = backend == "vxlan"
    text = f"""
[overlay]
backend = "{backend}"
network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
public_ip = "{PUBLIC[1]}"
{f'vtep_mac = "{VTEP[1]}"' if vxlan else ""}
{f'device = "{DEVICES[backend]}"' if device else "ip_masq = true"}
"""
    for n in (2, 3):
        text += f"""
[[overlay.peers]]
subnet = "10.244.{n}.0/24"
public_ip = "{PUBLIC[n]}"
{f'vtep_mac = "{VTEP[n]}"' if vxlan else ""}
"""
    return text


CONFIGS = {
    "bridge": f"""
[node]
name = "fuzz-bridge"
[bridge]
max_entries = {MAX_ENTRIES}
{_CONTAINERS}
[[ports]]
name = "c3"
type = "tap"
""",
    # The containers' network is a /16 here, so ARP floods can reach the neighbour table's bounds.
    "router-nat": f"""
[node]
name = "fuzz-router"
[bridge]
max_entries = {MAX_ENTRIES}
{_CONTAINERS}{_UPLINK}
[[ports]]
name = "t1"
type = "tun"

[[router.interfaces]]
name = "gw"
address = "{GW}/16"
mac = "{GW_MAC}"

[[router.interfaces]]
name = "l3"
port = "t1"
address = "192.0.2.1/24"
{_EXT}
[nat]
max_connections = {MAX_CONNECTIONS}

[[nat.masquerade]]
source = "10.244.0.0/16"
out = "ext"
exclude = ["10.244.0.0/16"]

[[nat.forward]]
protocol = "tcp"
port = 8080
to = "{C1}:80"

[[nat.forward]]
protocol = "udp"
port = 5353
to = "{C2}:53"
""",
    **{f"overlay-{backend}": f"""
[node]
name = "fuzz-overlay-{backend}"
[bridge]
max_entries = {MAX_ENTRIES}
{_CONTAINERS}{_UPLINK}
[[router.interfaces]]
name = "gw"
address = "{GW}/24"
mac = "{GW_MAC}"
{_EXT}
[nat]
max_connections = {MAX_CONNECTIONS}
{_overlay(backend, device=False)}""" for backend in ("udp", "vxlan")},
    **{f"dropin-{backend}": f"""
[node]
name = "fuzz-dropin-{backend}"
{_overlay(backend, device=True)}""" for backend in ("udp", "vxlan")},
}


def _ip(text: str) -> bytes:
    return ip_from_str(text)


def _mac(text: str) -> bytes:
    return mac_from_str(text)


# -- seeds ------------------------------------------------------------------------------------


@attrs.frozen
class Seed:
    """A well-formed input and where its headers are, so mutations can aim at them.

    ``ip_at`` is where the IPv4 header of interest starts (the inner one in a
    datagram); ``cuts`` are the header boundaries (with :meth:`of`'s ``prefix``,
    the bytes before the Ethernet or IP part: a datagram's address and VXLAN
    headers, a virtio-net header).
    """

    data: bytes
    ip_at: int | None = None
    l4_at: int | None = None
    inner_at: int | None = None      # the quoted packet of an ICMP error
    cuts: tuple[int, ...] = ()

    @classmethod
    def of(cls, data: bytes, ip_at: int | None, *, prefix: int = 0) -> "Seed":
        cuts = {1, 6, 12, 13, 14, 18, 22, len(data) - 1, len(data) // 2}
        cuts |= {prefix + c for c in (0, 1, 6, 12, 13, 14, 15, 18, 22)}
        l4_at = inner_at = None
        if ip_at is not None and len(data) >= ip_at + 20:
            l4_at = ip_at + (data[ip_at] & 0x0F) * 4
            proto = data[ip_at + 9]
            cuts |= {ip_at + c for c in (1, 2, 4, 9, 10, 12, 16, 19, 20)} | {l4_at - 1, l4_at}
            cuts |= {l4_at + c for c in (1, 2, 4, 6, 7, 8, 12, 13, 14, 16, 19, 20)}
            if proto == PROTO_TCP and len(data) > l4_at + 12:
                cuts |= {l4_at + (data[l4_at + 12] >> 4) * 4 - 1, l4_at + (data[l4_at + 12] >> 4) * 4}
            if proto == 1 and len(data) >= l4_at + 28 and data[l4_at] in (3, 4, 5, 11, 12):
                inner_at = l4_at + 8
                inner_l4 = inner_at + (data[inner_at] & 0x0F) * 4
                cuts |= {inner_at + c for c in (1, 9, 12, 19, 20)} | {inner_l4 - 1, inner_l4, inner_l4 + 4, inner_l4 + 8}
        return cls(data, ip_at, l4_at, inner_at, tuple(sorted(c for c in cuts if 0 <= c < len(data))))


def _ether(pkt: Any) -> Seed:
    data = raw(pkt)
    ip_at = len(data) - len(raw(pkt[IP])) if IP in pkt else None
    return Seed.of(data, ip_at)


def _ip_seed(pkt: Any) -> Seed:
    return Seed.of(raw(pkt), 0)


def _peer_ip(n: int, dst: str = C1, ttl: int = 64) -> Any:
    return IP(src=PODS[n], dst=dst, ttl=ttl)


@attrs.frozen
class Seeds:
    """The seed pools, by kind of input."""

    inside: tuple[Seed, ...]       # Ethernet frames from the containers
    outside: tuple[Seed, ...]      # Ethernet frames on the uplink
    ip: tuple[Seed, ...]           # IPv4 packets (a TUN port, flannel0)
    vtep: tuple[Seed, ...]         # Ethernet frames from flannel.1 to the peers' VTEPs
    datagrams: dict[str, tuple[Seed, ...]]   # underlay datagrams, by backend
    vnet: tuple[Seed, ...]         # virtio-net header + frame
    streams: tuple[tuple[Seed, ...], ...]   # runs of one TCP flow's segments, to coalesce
    capture: tuple[Seed, ...]      # datagrams as a capture of the underlay sees them, up to the largest
    gro: tuple[Seed, ...]          # GRO's segment size (4 bytes, little-endian) + the data of one read
    flannel: dict[str, tuple[Seed, ...]]   # what etcd holds: "config", "lease", "key", "book" (key NUL value)


def _packets() -> list[Any]:
    """IPv4 packets from container C1: what the router and the overlay see most."""
    tcp_options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    big = bytes(range(256)) * 6
    quoted_udp = IP(src=FAR, dst=C1) / UDP(sport=53, dport=40000) / b"answer"
    quoted_tcp = IP(src=C1, dst=FAR, options=[IPOption_Router_Alert()]) / TCP(sport=40000, dport=443, flags="S")
    packets = [
        IP(src=C1, dst=GW) / ICMP(id=7, seq=1) / b"ping the gateway",
        IP(src=C1, dst=C2) / ICMP(id=7, seq=2) / b"ping a neighbour",
        IP(src=C1, dst=PODS[2]) / ICMP(id=8, seq=1) / b"ping another node",
        IP(src=C1, dst=PODS[3], ttl=1) / ICMP(id=8, seq=2),
        IP(src=C1, dst="10.244.9.9") / ICMP(id=8, seq=3),        # a cluster address no lease holds
        IP(src=C1, dst=NEXT) / ICMP(id=9, seq=1),
        IP(src=C1, dst=FAR, flags="DF") / ICMP(id=9, seq=2) / big[:1452],
        IP(src=C1, dst=PODS[2]) / ICMP(id=9, seq=3) / big[:1472],   # fragmented for the overlay's MTU
        IP(src=C1, dst=L3_HOST) / ICMP(id=10, seq=1),
        IP(src=C1, dst=FAR) / ICMP(type=3, code=3) / raw(quoted_udp)[:28],
        IP(src=C1, dst=FAR) / ICMP(type=11, code=0) / raw(quoted_tcp)[:32],
        IP(src=C1, dst=NEXT) / ICMP(type=3, code=4, nexthopmtu=1400) / raw(IP(src=NEXT, dst=C1) / ICMP(id=9))[:28],
        IP(src=C1, dst=FAR) / ICMP(type=13),                     # a timestamp request: untracked
        IP(src=C1, dst=FAR) / TCP(sport=40000, dport=443, flags="S", options=tcp_options),
        IP(src=C1, dst=FAR) / TCP(sport=40000, dport=443, seq=1, ack=1, flags="PA", options=[("NOP", None)] * 4) / big[:100],
        IP(src=C1, dst=FAR) / TCP(sport=40000, dport=443, flags="FA"),
        IP(src=C1, dst=FAR) / TCP(sport=40000, dport=443, flags="R"),
        IP(src=C1, dst=GW) / TCP(sport=40001, dport=22, flags="S"),        # the router answers RST
        IP(src=C1, dst=PODS[2]) / TCP(sport=40002, dport=80, flags="S", options=tcp_options),
        IP(src=C1, dst=FAR) / UDP(sport=40000, dport=53) / (b"\x12\x34\x01\x00\x00\x01" + bytes(6)),
        IP(src=C1, dst=FAR) / UDP(sport=40000, dport=53, chksum=0) / b"no checksum",
        IP(src=C1, dst=GW) / UDP(sport=40003, dport=53) / b"port unreachable",
        IP(src=C1, dst=PODS[3]) / UDP(sport=40004, dport=4789) / b"to another node",
        IP(src=C1, dst="10.244.1.255") / UDP(sport=68, dport=67),
        IP(src=C1, dst="224.0.0.251") / UDP(sport=5353, dport=5353),
        IP(src=C1, dst=FAR, proto=47) / (b"\x00\x00\x08\x00" + bytes(20)),   # GRE: no ports
        IP(src=C1, dst=FAR, options=[IPOption_RR()]) / UDP(sport=40005, dport=7) / b"record route",
        IP(src=C1, dst=PODS[2], options=[IPOption_LSRR(routers=[NEXT])]) / ICMP(id=11),
        IP(src="0.0.0.0", dst=GW) / ICMP(id=12),
        IP(src=C1, dst=FAR, flags="DF") / TCP(sport=40006, dport=443, flags="A") / (big * 6)[:8000],  # a TSO super-frame
        IP(src=C1, dst=FAR) / UDP(sport=40008, dport=9) / (big * 44)[:65000],    # fragmented 45 times
        # fragmented with options: the later fragments keep only the copied ones (LSRR, not RR)
        IP(src=C1, dst=FAR, options=[IPOption_RR(), IPOption_LSRR(routers=[NEXT])]) / UDP(sport=40009, dport=9) / (big * 2),
        IP(src=C1, dst=PODS[3], options=[IPOption_Router_Alert(), IPOption_RR()]) / ICMP(id=14) / big[:1460],
    ]
    packets += fragment(IP(src=C1, dst=FAR, id=77) / UDP(sport=40007, dport=9999) / big[:2400], fragsize=800)
    packets += fragment(IP(src=C1, dst=PODS[2], id=78) / ICMP(id=13) / big[:2000], fragsize=1000)
    return packets


def _outside() -> list[Any]:
    """What arrives on the uplink: answers to masqueraded flows, forwarded ports, errors about what left."""
    out = Ether(src=NEXT_MAC, dst=EXT_MAC)
    sent_udp = IP(src=EXT, dst=FAR) / UDP(sport=40000, dport=53)
    sent_tcp = IP(src=EXT, dst=FAR, options=[IPOption_Router_Alert()]) / TCP(sport=40000, dport=443, flags="S")
    frames = [
        Ether(src=NEXT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=NEXT_MAC, psrc=NEXT, pdst=EXT),
        out / ARP(op=2, hwsrc=NEXT_MAC, psrc=NEXT, hwdst=EXT_MAC, pdst=EXT),
        out / IP(src=FAR, dst=EXT) / UDP(sport=53, dport=40000) / b"answer",
        out / IP(src=FAR, dst=EXT) / TCP(sport=443, dport=40000, flags="SA", options=[("MSS", 1400)]),
        out / IP(src=FAR, dst=EXT) / ICMP(type=0, id=9, seq=2),
        out / IP(src="203.0.113.9", dst=EXT) / TCP(sport=50000, dport=8080, flags="S"),   # forwarded to C1:80
        out / IP(src="203.0.113.9", dst=EXT) / UDP(sport=50001, dport=5353) / b"query",  # forwarded to C2:53
        out / IP(src=NEXT, dst=EXT) / ICMP(type=3, code=3) / raw(sent_udp / b"question")[:28],
        out / IP(src=NEXT, dst=EXT) / ICMP(type=11, code=0) / raw(sent_tcp)[:32],
        out / IP(src=FAR, dst=EXT) / ICMP(type=3, code=4, nexthopmtu=576) / raw(IP(src=EXT, dst=FAR) / ICMP(id=9))[:28],
        out / IP(src=NEXT, dst=EXT) / ICMP(id=20, seq=1) / b"ping the router",
        out / IP(src=NEXT, dst=C1) / ICMP(id=21, seq=1),       # routed straight in, untranslated
        out / IP(src=NEXT, dst=PODS[2]) / UDP(sport=1, dport=2),   # to another node, masqueraded by ip-masq
        out / IP(src=FAR, dst=EXT, flags="MF", frag=0, id=5) / UDP(sport=53, dport=40000, len=1000) / bytes(200),
        out / IP(src=FAR, dst=EXT, frag=100, id=5, proto=17) / bytes(200),
    ]
    return frames


def _datagram(backend: str, n: int, inner: Any, *, vni: int = 1) -> Seed:
    port = PORTS[backend]
    header = address_header(_ip(PUBLIC[n]), port, port)
    if backend == "udp":
        return Seed.of(header + raw(inner), 8, prefix=8)
    frame = VXLAN(vni=vni, flags=0x08) / Ether(src=VTEP[n], dst=VTEP[1]) / inner
    return Seed.of(header + raw(frame), 8 + 8 + 14 if IP in frame else None, prefix=8 + 8)


def _datagrams(backend: str) -> tuple[Seed, ...]:
    quoted = IP(src=C1, dst=PODS[2]) / UDP(sport=40004, dport=4789)
    inners = [
        (2, _peer_ip(2) / ICMP(id=30, seq=1) / b"from node 2"),
        (3, _peer_ip(3, C2) / UDP(sport=4000, dport=53) / b"from node 3"),
        (2, _peer_ip(2, ttl=1) / ICMP(id=31)),                      # its TTL runs out on arrival
        (2, _peer_ip(2, GW) / ICMP(id=32)),                         # for the router itself
        (2, _peer_ip(2, "10.244.1.255") / UDP(sport=1, dport=2)),
        (2, _peer_ip(2, FAR) / TCP(sport=40000, dport=443, flags="S")),   # leaving the cluster through this node
        (2, _peer_ip(2) / TCP(sport=80, dport=40002, flags="SA", options=[("MSS", 1400), ("Timestamp", (5, 1))])),
        (2, _peer_ip(2) / ICMP(type=3, code=3) / raw(quoted)[:28]),
        (2, IP(src="10.244.7.7", dst=C1) / ICMP(id=33)),            # a source outside node 2's subnet
        (2, IP(src=PODS[2], dst=C1, options=[IPOption_Router_Alert()]) / UDP()),
    ]
    inners += [(3, f) for f in fragment(_peer_ip(3) / ICMP(id=34) / bytes(1800), fragsize=1000)]
    seeds = [_datagram(backend, n, inner) for n, inner in inners]
    if backend == "vxlan":
        seeds.append(_datagram(backend, 2, ARP(op=1, hwsrc=VTEP[2], psrc="10.244.2.0", pdst="10.244.1.0")))
        seeds.append(_datagram(backend, 2, _peer_ip(2) / ICMP(id=35), vni=2))
    return tuple(seeds)


def _vnet(frame: bytes, flags: int = 0, gso_type: int = GSO_NONE, gso_size: int = 0, csum: tuple[int, int] = (0, 0),
          hdr_len: int = 0) -> Seed:
    return Seed.of(VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, *csum) + frame, VNET_HDR_LEN + 14, prefix=VNET_HDR_LEN)


def _partial(pkt: Any, field: int) -> bytes:
    """The frame as a kernel hands it over with CHECKSUM_PARTIAL: the field holds the pseudo-header sum."""
    frame = bytearray(raw(pkt))
    ip = Ether(frame)[IP]
    length = ip.len - ip.ihl * 4
    pseudo = int.from_bytes(_ip(ip.src) + _ip(ip.dst) + struct.pack("!BBH", 0, ip.proto, length), "big") % 0xFFFF
    struct.pack_into("!H", frame, 34 + field, pseudo)
    return bytes(frame)


def _tcp_run(sizes: Sequence[int], *, seq: int = 1000, sport: int = 40000, psh_last: bool = True,
             options: Sequence[Any] = (("Timestamp", (5, 6)),)) -> tuple[Seed, ...]:
    frames = []
    for i, size in enumerate(sizes):
        flags = "PA" if psh_last and i == len(sizes) - 1 else "A"
        tcp = TCP(sport=sport, dport=5201, seq=seq, ack=7, flags=flags, window=512, options=list(options))
        frames.append(_ether(Ether(src=C1_MAC, dst=C2_MAC) / IP(src=C1, dst=C2, id=i, flags="DF") / tcp / (bytes([i]) * size)))
        seq += size
    return tuple(frames)


@cache
def seeds() -> Seeds:
    packets = _packets()
    inside = [_ether(Ether(src=C1_MAC, dst=GW_MAC) / p) for p in packets]
    inside += [_ether(f) for f in (
        Ether(src=C1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=C1_MAC, psrc=C1, pdst=GW),
        Ether(src=C1_MAC, dst=GW_MAC) / ARP(op=2, hwsrc=C1_MAC, psrc=C1, hwdst=GW_MAC, pdst=GW),
        Ether(src=C1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=C1_MAC, psrc=C1, pdst=C1),    # gratuitous
        Ether(src=C1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=C1_MAC, psrc="0.0.0.0", pdst=C2),  # a probe
        Ether(src=C1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=C1_MAC, psrc=C1, pdst=NEXT),  # for proxy ARP
        Ether(src=C1_MAC, dst=C2_MAC) / IP(src=C1, dst=C2) / ICMP(id=40) / b"bridged",
        Ether(src=C1_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=C1, dst="255.255.255.255") / UDP(sport=68, dport=67),
        Ether(src=C1_MAC, dst="01:00:5e:00:00:fb") / IP(src=C1, dst="224.0.0.251") / UDP(sport=5353, dport=5353),
        Ether(src=C1_MAC, dst=GW_MAC) / Dot1Q(vlan=10) / IP(src=C1, dst=FAR) / ICMP(id=41),
        Ether(src=C1_MAC, dst=GW_MAC, type=0x88A8) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / IP(src=C1, dst=FAR) / UDP(),
        Ether(src=C1_MAC, dst=C2_MAC) / Dot1Q(vlan=20) / ARP(op=1, hwsrc=C1_MAC, psrc=C1, pdst=C2),
        Ether(src=C1_MAC, dst=GW_MAC) / IPv6(src="fd00::2", dst="fd00::1") / ICMPv6EchoRequest(),
        Ether(src=C1_MAC, dst="01:80:c2:00:00:00") / LLC() / STP(),
    )]
    outside = [_ether(f) for f in _outside()]
    ip = [_ip_seed(p) for p in packets]
    ip += [_ip_seed(IP(src=L3_HOST, dst=FAR) / UDP(sport=1000, dport=53) / b"from the TUN"),
           _ip_seed(IP(src=L3_HOST, dst=C1) / TCP(sport=1001, dport=80, flags="S"))]
    vtep_frames = [_ether(Ether(src=VTEP[1], dst=VTEP[2]) / p) for p in packets if p[IP].dst != GW]
    vtep_frames += [_ether(f) for f in (
        Ether(src=VTEP[1], dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=VTEP[1], psrc="10.244.1.0", pdst="10.244.2.0"),
        Ether(src=VTEP[1], dst="02:00:00:00:09:ff") / IP(src=C1, dst="10.244.9.9") / ICMP(),   # no lease names it
        Ether(src=VTEP[1], dst=VTEP[3]) / Dot1Q(vlan=3) / IP(src=C1, dst=PODS[3]) / UDP(),
    )]
    tcp_frame = Ether(src=C1_MAC, dst=C2_MAC) / IP(src=C1, dst=C2) / TCP(sport=1, dport=2, flags="S") / (b"payload" * 30)
    udp_frame = Ether(src=C1_MAC, dst=C2_MAC) / IP(src=C1, dst=C2) / UDP(sport=53, dport=99) / (b"payload" * 30)
    payload = bytes(range(256)) * 16
    tso = Ether(src=C1_MAC, dst=C2_MAC) / IP(src=C1, dst=C2, id=7) / TCP(
        sport=40000, dport=5201, seq=1000, ack=5, flags="PA", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))],
    )
    vnet = [
        _vnet(raw(tcp_frame)),
        _vnet(_partial(tcp_frame, 16), F_NEEDS_CSUM, csum=(34, 16)),
        _vnet(_partial(udp_frame, 6), F_NEEDS_CSUM, csum=(34, 6)),
        _vnet(raw(tso / payload[:4000]), F_NEEDS_CSUM, GSO_TCPV4, 1448, (34, 16), 66),
        _vnet(raw(tso / payload[:3000]), F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 536, (34, 16), 66),
        _vnet(raw(Ether(src=C1_MAC, dst=C2_MAC) / IP(src=C1, dst=C2, options=[IPOption_Router_Alert()])
                  / TCP(sport=1, dport=2, flags="A") / payload[:2500]), F_NEEDS_CSUM, GSO_TCPV4, 1000, (38, 16), 58),
        _vnet(raw(Ether(src=C1_MAC, dst=C2_MAC) / Dot1Q(vlan=5) / IP(src=C1, dst=C2) / TCP(flags="A") / payload[:3000]),
              F_NEEDS_CSUM, GSO_TCPV4, 1400, (38, 16), 58),
        _vnet(raw(udp_frame), 0, GSO_UDP, 1400),
        _vnet(raw(tcp_frame), 0, GSO_TCPV6, 1400),
    ]
    streams = (
        _tcp_run([1448, 1448, 1448, 600]),
        _tcp_run([1000] * 6, psh_last=False, options=()),
        _tcp_run([100, 100, 50], sport=40001, options=[("NOP", None), ("NOP", None), ("Timestamp", (9, 9))]),
        _tcp_run([1448, 1448], seq=0xFFFFFA00),   # the sequence number wraps
        _tcp_run([1448, 1448]) + _tcp_run([1448, 1448], sport=40002),
        (_ether(udp_frame), _ether(tcp_frame)) + _tcp_run([500, 500]),
    )
    flannel = [s.data[8:] for s in _datagrams("udp")]
    gro = [Seed.of(struct.pack("<I", len(flannel[0])) + flannel[0] * 3, 4, prefix=4),
           Seed.of(struct.pack("<I", 1000) + bytes(2500), None, prefix=4),
           Seed.of(struct.pack("<I", 0) + flannel[1], 4, prefix=4)]
    datagrams = {backend: _datagrams(backend) for backend in ("udp", "vxlan")}
    capture = datagrams["udp"] + datagrams["vxlan"] + (   # and the largest a UDP datagram carries, or nearly
        Seed.of(address_header(_ip(PUBLIC[2]), 8472, 40000) + bytes(MAX_PAYLOAD), None, prefix=8),
        Seed.of(address_header(_ip(PUBLIC[2]), 8285, 0) + bytes(MAX_PAYLOAD - 100), None, prefix=8),
    )
    return Seeds(tuple(inside), tuple(outside), tuple(ip), tuple(vtep_frames), datagrams, tuple(vnet), streams, capture,
                 tuple(gro), _flannel_seeds())


# -- flannel's keys and JSON in etcd -------------------------------------------------------------

FLANNEL_CONFIG = parse_network_config(b'{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
FLANNEL_OWN = Network.parse("10.244.1.0/24")   # node 1's subnet: the book's own
FLANNEL_MAX_LEASES = 256    # the book's bound (small, so that floods reach it)


def _flannel_key(subnet: str) -> bytes:
    return subnet_key(DEFAULT_PREFIX, Network.parse(subnet))


def _flannel_lease(n: int, *, public: str | None = None) -> bytes:
    """Node ``n``'s vxlan lease (its VTEP MAC 02:00:00:00:0n:ff, as VTEP's)."""
    return lease_value(LeaseAttrs(_ip(public or PUBLIC[n]), "vxlan", 1, _mac(f"02:00:00:00:{n:02x}:ff")))


def _json_seed(data: bytes) -> Seed:
    """JSON, cut at its structure: before and after each bracket, colon, comma and quote."""
    cuts = {i + d for i, byte in enumerate(data) if byte in b'{}[]:,"\0' for d in (0, 1)}
    return Seed(data, cuts=tuple(sorted(c for c in cuts if 0 <= c < len(data))))


def _flannel_seeds() -> dict[str, tuple[Seed, ...]]:
    configs = [
        b'{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}',
        b'{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0",'
        b'"Backend":{"Type":"udp","Port":7890}}',
        b'{ "network": "10.3.0.0/16" }',
        b'{"Network": "10.244.0.0/28", "SubnetLen": 30, "EnableIPv4": true, "EnableIPv6": false}',
        b'{"Network": "10.244.0.0/23", "Backend": {"type": "vxlan", "vni": 4096, "GBP": false, "DirectRouting": false}}',
        b'{"Network": "192.168.0.0/16", "Backend": {"Type": "host-gw"}, "IPv6Network": "fc00::/48"}',
    ]
    leases = [
        _flannel_lease(2), _flannel_lease(3),
        lease_value(LeaseAttrs(_ip(PUBLIC[2]))),
        b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',            # flannel's docs
        b'{"PublicIP":"10.99.0.4","PublicIPv6":"fc00::4","BackendType":"host-gw"}',
        b'{"PublicIP":"10.99.0.5","BackendType":"wireguard","BackendData":{"PublicKey":"abc="},"BackendV6Data":null}',
        b'{"publicip":"10.99.0.6","backendtype":"vxlan","backenddata":{"vni":1,"vtepmac":"02:00:00:00:06:ff"}}',
    ]
    keys = [_flannel_key(s) for s in ("10.244.2.0/24", "10.244.3.0/24", "10.244.0.0/16", "10.244.1.128/25")]
    keys += [b"/coreos.com/network/subnets/10.244.4.0-24&fc00::-64", b"/coreos.com/network/config"]
    book = [_flannel_key("10.244.2.0/24") + b"\0" + _flannel_lease(2),
            _flannel_key("10.244.3.0/24") + b"\0" + _flannel_lease(3),
            _flannel_key("10.244.1.0/24") + b"\0" + _flannel_lease(1),                 # our own
            _flannel_key("10.244.5.0/24") + b"\0" + _flannel_lease(5, public=PUBLIC[2]),   # node 2's address again
            _flannel_key("10.244.6.0/24") + b"\0" + _flannel_lease(6, public=PUBLIC[1]),   # ours
            _flannel_key("10.244.1.128/25") + b"\0" + _flannel_lease(7, public="10.99.0.7"),   # inside our subnet
            _flannel_key("10.244.7.0/24") + b"\0" + leases[2],                         # a udp lease
            _flannel_key("10.244.8.0/24") + b"\0" + leases[4],                         # host-gw
            _flannel_key("10.244.2.0/24"),                                            # a DELETE
            _flannel_key("10.244.9.0/24")]
    pool = AddressPool(Network.parse(IPAM_SUBNET), reserved=[_ip(GW)])
    for owner in ("c1", "c2", "cni-0123456789abcdef", "c3"):
        pool.allocate(owner)
    pool.release("c2")
    ipam = [json.dumps(pool.state()).encode(),
            b'{"subnet":"10.244.1.0/24","last":"10.244.1.254","addresses":{"a":"10.244.1.2","b":"10.244.1.2"}}']
    return {"config": tuple(_json_seed(d) for d in configs), "lease": tuple(_json_seed(d) for d in leases),
            "key": tuple(_json_seed(k) for k in keys), "book": tuple(_json_seed(b) for b in book),
            "ipam": tuple(_json_seed(d) for d in ipam)}


# -- mutations --------------------------------------------------------------------------------

_BOUNDARY = (0x00, 0x01, 0x02, 0x04, 0x05, 0x0F, 0x10, 0x3F, 0x40, 0x45, 0x46, 0x4F, 0x50, 0x7F, 0x80, 0xF0, 0xFE, 0xFF)
_ADDRESSES = tuple(_ip(a) for a in (
    "0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1", "239.255.255.250", GW, C1, C2, EXT, NEXT, FAR, L3_HOST,
    "10.244.1.0", "10.244.1.255", "10.244.255.255", "10.244.0.0", PODS[2], PODS[3], "10.244.9.9", "192.0.2.1",
))
_ETHERTYPES = (0x0800, 0x0806, 0x8100, 0x88A8, 0x86DD, 0x0000, 0xFFFF)
_GSO_SIZES = (0, 1, 8, 88, 536, 1000, 1448, 9000, 0xFFFF)
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null')
_JSON_VALUES = (
    b"null", b"true", b"false", b"0", b"-1", b"1.0", b"1e2", b"1e999", b"30", b"31", b"4294967296", b"16777216",
    b"9" * 30, b'""', b'"x"', b"[]", b"{}", b"[" * 64 + b"]" * 64, b'"10.244.0.0/16"', b'"10.244.1.0"', b'"0.0.0.0"',
    b'"10.244.0.0/0"', b'"255.255.255.255"', b'"02:00:00:00:01:ff"', b'"ff:ff:ff:ff:ff:ff"', b'"vxlan"', b'"udp"',
    b'"host-gw"', b'"VXLAN"', b'"\\u0000"', b'"\\ud800"', b'{"Type":"vxlan","VNI":1}', b'"Network"', b'"PublicIP"',
)


class Mutator:
    """Mutations of seeds, aimed at their headers; deterministic for one ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._fields = (
            self._ihl, self._version, self._total_length, self._fragment, self._ttl, self._protocol,
            self._data_offset, self._tcp_flags, self._udp_length, self._icmp_type, self._inner,
            self._addresses, self._ethertype, self._macs,
        )
        self._ops = (self._flip, self._flip, self._boundary, self._boundary, self._cut, self._cut, self._field,
                     self._field, self._field, self._tail, self._splice)

    def mutate(self, seed: Seed, pool: Sequence[Seed], *, extra: Sequence[Callable[[bytearray, Seed], None]] = ()) -> bytes:
        """``seed`` with one to three mutations; checksums fixed up three times in four, so that deep paths are reached."""
        rng = self.rng
        buf = bytearray(seed.data)
        self._pool = pool
        ops = self._ops + tuple(extra)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            rng.choice(ops)(buf, seed)
        if rng.random() < 0.75:
            fix_checksums(buf, seed)
        return bytes(buf)

    def _position(self, buf: bytearray, seed: Seed) -> int:
        headers = min(len(buf), (seed.l4_at or 34) + 24)
        if headers and self.rng.random() < 0.85:
            return self.rng.randrange(headers)
        return self.rng.randrange(len(buf))

    def _flip(self, buf: bytearray, seed: Seed) -> None:
        if buf:
            buf[self._position(buf, seed)] ^= 1 << self.rng.randrange(8)

    def _boundary(self, buf: bytearray, seed: Seed) -> None:
        if buf:
            buf[self._position(buf, seed)] = self.rng.choice(_BOUNDARY)

    def _cut(self, buf: bytearray, seed: Seed) -> None:
        cuts = seed.cuts or (0,)
        del buf[max(0, self.rng.choice(cuts) + self.rng.choice((0, 0, 0, -1, 1))):]

    def _tail(self, buf: bytearray, seed: Seed) -> None:
        at = min(len(buf), self.rng.choice(seed.cuts or (0,)))
        buf[at:] = self.rng.randbytes(self.rng.choice((0, 1, 4, 8, 20, 64, 300)))

    def _splice(self, buf: bytearray, seed: Seed) -> None:
        other = self.rng.choice(self._pool)
        at = min(len(buf), self.rng.choice(seed.cuts or (0,)))
        buf[at:] = other.data[min(len(other.data), self.rng.choice(other.cuts or (0,))):]

    def _field(self, buf: bytearray, seed: Seed) -> None:
        self.rng.choice(self._fields)(buf, seed)

    # -- header fields --

    def _ihl(self, buf: bytearray, seed: Seed) -> None:
        at = seed.ip_at
        if at is not None and len(buf) > at:
            buf[at] = (buf[at] & 0xF0) | self.rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 15, self.rng.randrange(16)))

    def _version(self, buf: bytearray, seed: Seed) -> None:
        at = seed.ip_at
        if at is not None and len(buf) > at:
            buf[at] = (self.rng.choice((0, 4, 5, 6, 15)) << 4) | (buf[at] & 0x0F)

    def _total_length(self, buf: bytearray, seed: Seed) -> None:
        at = seed.ip_at
        if at is None or len(buf) < at + 4:
            return
        size, ihl = len(buf) - at, (buf[at] & 0x0F) * 4
        value = self.rng.choice((0, 1, 19, 20, ihl - 1, ihl, ihl + 7, size - 1, size, size + 1, 0xFFFF, self.rng.randrange(65536)))
        struct.pack_into("!H", buf, at + 2, value & 0xFFFF)

    def _fragment(self, buf: bytearray, seed: Seed) -> None:
        at = seed.ip_at
        if at is None or len(buf) < at + 8:
            return
        rng = self.rng
        value = rng.choice((FLAG_MF, FLAG_DF, FLAG_DF | FLAG_MF, 0x8000, FLAG_MF | rng.randrange(1, 0x2000),
                            rng.randrange(1, 0x2000), 0x1FFF, FLAG_MF | 0x1FFF, rng.randrange(65536)))
        struct.pack_into("!H", buf, at + 6, value)

    def _ttl(self, buf: bytearray, seed: Seed) -> None:
        if seed.ip_at is not None and len(buf) > seed.ip_at + 8:
            buf[seed.ip_at + 8] = self.rng.choice((0, 1, 2, 64, 255))

    def _protocol(self, buf: bytearray, seed: Seed) -> None:
        if seed.ip_at is not None and len(buf) > seed.ip_at + 9:
            buf[seed.ip_at + 9] = self.rng.choice((0, 1, 2, 4, 6, 17, 47, 50, 132, 255))

    def _data_offset(self, buf: bytearray, seed: Seed) -> None:
        at = seed.l4_at
        if at is not None and len(buf) > at + 12:
            buf[at + 12] = (self.rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 15, self.rng.randrange(16))) << 4) | (buf[at + 12] & 0x0F)

    def _tcp_flags(self, buf: bytearray, seed: Seed) -> None:
        at = seed.l4_at
        if at is not None and len(buf) > at + 13:
            buf[at + 13] = self.rng.choice((0, SYN, ACK, SYN | ACK, RST, RST | ACK, FIN | ACK, PSH | ACK, 0xFF,
                                            self.rng.randrange(256)))

    def _udp_length(self, buf: bytearray, seed: Seed) -> None:
        at = seed.l4_at
        if at is not None and len(buf) >= at + 6:
            size = len(buf) - at
            value = self.rng.choice((0, 1, 7, 8, 9, size - 1, size, size + 1, 0xFFFF))
            struct.pack_into("!H", buf, at + 4, value & 0xFFFF)

    def _icmp_type(self, buf: bytearray, seed: Seed) -> None:
        at = seed.l4_at
        if at is not None and len(buf) >= at + 2:
            buf[at] = self.rng.choice((0, 3, 4, 5, 8, 11, 12, 13, 14, 255))
            buf[at + 1] = self.rng.choice((0, 1, 2, 3, 4, 13, 255))

    def _inner(self, buf: bytearray, seed: Seed) -> None:
        """The quoted packet of an ICMP error: its IHL, protocol, addresses, ports, or a cut inside it."""
        at = seed.inner_at
        if at is None or len(buf) < at + 20:
            return
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            buf[at] = (buf[at] & 0xF0) | rng.choice((0, 4, 5, 6, 15))
        elif choice == 1:
            buf[at + 9] = rng.choice((1, 6, 17, 47))
        elif choice == 2:
            buf[at + 12 + rng.choice((0, 4)):at + 16 + rng.choice((0, 4))] = rng.choice(_ADDRESSES)
        elif choice == 3:
            del buf[at + rng.choice((20, 21, 24, 26, 27, 28)):]
        else:
            l4 = at + (buf[at] & 0x0F) * 4
            if len(buf) >= l4 + 4:
                struct.pack_into("!HH", buf, l4, rng.choice((0, 53, 443, 40000, 8080, rng.randrange(65536))),
                                 rng.choice((0, 53, 40000, rng.randrange(65536))))

    def _addresses(self, buf: bytearray, seed: Seed) -> None:
        at = seed.ip_at
        if at is not None and len(buf) >= at + 20:
            where = at + self.rng.choice((12, 16))
            buf[where:where + 4] = self.rng.choice(_ADDRESSES)

    def _ethertype(self, buf: bytearray, seed: Seed) -> None:
        at = (seed.ip_at - 2) if seed.ip_at is not None and seed.ip_at >= 14 else 12
        if len(buf) >= at + 2:
            struct.pack_into("!H", buf, at, self.rng.choice(_ETHERTYPES))

    def _macs(self, buf: bytearray, seed: Seed) -> None:
        at = (seed.ip_at - 14) if seed.ip_at is not None and seed.ip_at >= 14 and seed.data[seed.ip_at - 2:seed.ip_at] \
            == b"\x08\x00" else 0
        if len(buf) < at + 12:
            return
        macs = (BROADCAST_MAC, b"\x01\x80\xc2\x00\x00\x00", b"\x01\x00\x5e\x00\x00\x01", bytes(6), _mac(GW_MAC),
                _mac(C2_MAC), _mac(EXT_MAC), self.rng.randbytes(6))
        where = at + self.rng.choice((0, 6))
        buf[where:where + 6] = self.rng.choice(macs)

    # -- JSON --

    def json_value(self, buf: bytearray, seed: Seed) -> None:
        """A JSON value (or key) replaced by one of the wrong type, out of range, huge or deep."""
        tokens = list(_JSON_TOKENS.finditer(buf))
        if tokens:
            token = self.rng.choice(tokens)
            buf[token.start():token.end()] = self.rng.choice(_JSON_VALUES)

    # -- datagrams and virtio-net headers --

    def datagram_header(self, buf: bytearray, seed: Seed) -> None:
        """The address header: a peer, a stranger, ourselves; another port."""
        rng = self.rng
        if len(buf) < 8:
            return
        if rng.random() < 0.5:
            buf[0:4] = rng.choice((_ip(PUBLIC[2]), _ip(PUBLIC[3]), _ip(PUBLIC[1]), bytes(4), rng.randbytes(4)))
        else:
            struct.pack_into("!HH", buf, 4, rng.choice((8285, 8472, 4789, 0, rng.randrange(65536))),
                             rng.choice((0, 8285, 8472, rng.randrange(65536))))

    def vxlan_header(self, buf: bytearray, seed: Seed) -> None:
        rng = self.rng
        if len(buf) < 16:
            return
        if rng.random() < 0.5:
            buf[8] = rng.choice((0x00, 0x08, 0x0C, 0xFF, 0xF7))
        else:
            buf[12:15] = rng.choice((0, 1, 2, 0xFFFFFF, rng.randrange(1 << 24))).to_bytes(3, "big")

    def vnet_header(self, buf: bytearray, seed: Seed) -> None:
        rng = self.rng
        if len(buf) < VNET_HDR_LEN:
            return
        field = rng.randrange(6)
        if field == 0:
            buf[0] = rng.choice((0, F_NEEDS_CSUM, 2, 3, 0xFF))
        elif field == 1:
            buf[1] = rng.choice((GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, 5, GSO_ECN, GSO_TCPV4 | GSO_ECN, 0xFF))
        else:
            size = len(buf) - VNET_HDR_LEN
            value = rng.choice((0, 1, 14, 34, 38, size - 2, size - 1, size, size + 1, 0xFFFF, rng.randrange(65536)))
            if field == 3:
                value = rng.choice(_GSO_SIZES)
            elif field == 5:
                value = rng.choice((0, 6, 16, 18, size, 0xFFFF, rng.randrange(65536)))
            struct.pack_into("<H", buf, 2 * (field - 1), max(0, value) & 0xFFFF)


def fix_checksums(buf: bytearray, seed: Seed) -> None:
    """Make the IPv4 header checksum (and an ICMP message's) right again, where the header still parses."""
    at = seed.ip_at
    if at is None or len(buf) < at + 20:
        return
    ihl = (buf[at] & 0x0F) * 4
    if ihl < 20 or len(buf) < at + ihl:
        return
    buf[at + 10:at + 12] = b"\0\0"
    buf[at + 10:at + 12] = internet_checksum(buf[at:at + ihl]).to_bytes(2, "big")
    if buf[at + 9] == 1:
        end = min(len(buf), at + int.from_bytes(buf[at + 2:at + 4], "big"))
        if end >= at + ihl + 4:
            buf[at + ihl + 2:at + ihl + 4] = b"\0\0"
            buf[at + ihl + 2:at + ihl + 4] = internet_checksum(buf[at + ihl:end]).to_bytes(2, "big")


# -- floods -----------------------------------------------------------------------------------

Generator = Callable[[int], list[bytes]]   # how many inputs → the inputs

_PAYLOAD = build_ipv4(_ip(C1), _ip(C2), PROTO_UDP, build_udp(_ip(C1), _ip(C2), 1, 2, b"flood"))


class Floods:
    """Many well-formed inputs that each take a new entry somewhere: the tables' bounds are the point."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _host(self, network: str) -> bytes:
        """A host address in 10.244.0.0/16 or 10.244.1.0/24, never the network or broadcast address."""
        rng = self.rng
        if network == "/16":
            return bytes((10, 244, rng.randrange(256), rng.randrange(1, 255)))
        return bytes((10, 244, 1, rng.randrange(2, 255)))

    def _outside(self) -> bytes:
        rng = self.rng
        return rng.choice((bytes((203, 0, 113, rng.randrange(1, 255))), bytes((rng.randrange(1, 224), *rng.randbytes(3)))))

    def _unicast_mac(self) -> bytes:
        return b"\x02\xf1" + self.rng.randbytes(4)

    def _l4(self, src: bytes, dst: bytes) -> tuple[int, bytes, int]:
        """A packet that starts a connection, or continues one NAT has never seen: (protocol, payload, flags)."""
        rng = self.rng
        sport, dport = rng.randrange(1024, 65536), rng.choice((53, 80, 443, rng.randrange(1, 65536)))
        kind = rng.randrange(5)
        if kind == 0:
            return PROTO_TCP, build_tcp(src, dst, sport, dport, flags=SYN), FLAG_DF
        if kind == 1:
            return PROTO_TCP, build_tcp(src, dst, sport, dport, seq=rng.randrange(1 << 32), flags=ACK), FLAG_DF
        if kind == 2:
            return PROTO_UDP, build_udp(src, dst, sport, dport, b"query"), 0
        if kind == 3:   # a first fragment: NAT remembers how it translated it
            return PROTO_UDP, build_udp(src, dst, sport, dport, bytes(64))[:40], FLAG_MF
        return 1, build_echo(rng.randrange(65536), rng.randrange(65536), b"flood"), 0

    def macs(self, count: int) -> list[bytes]:
        """Frames from many source MACs, to unknown unicast and broadcast destinations."""
        rng = self.rng
        return [rng.choice((BROADCAST_MAC, b"\x02\xf2" + rng.randbytes(4), _mac(C2_MAC))) + self._unicast_mac()
                + b"\x08\x00" + _PAYLOAD for _ in range(count)]

    def connections(self, network: str) -> Generator:
        """Containers starting connections to many destinations: masqueraded, each a NAT entry."""
        def flood(count: int) -> list[bytes]:
            frames = []
            for _ in range(count):
                src, dst = self._host(network), self._outside()
                proto, l4, flags = self._l4(src, dst)
                packet = build_ipv4(src, dst, proto, l4, ident=self.rng.randrange(65536), flags_offset=flags)
                frames.append(_mac(GW_MAC) + self._unicast_mac() + b"\x08\x00" + packet)
            return frames
        return flood

    def arp(self, network: str, *, on_uplink: bool = False) -> Generator:
        """Requests for the router's address from many senders (each an entry), and packets to many on-link
        addresses, or many to one, that the router must resolve (addresses asked for, and their queues):
        from containers to the gateway, or (``on_uplink``) from the next router to the uplink interface."""
        rng = self.rng
        address, mac = (_ip(EXT), _mac(EXT_MAC)) if on_uplink else (_ip(GW), _mac(GW_MAC))
        src, src_mac = (_ip(NEXT), _mac(NEXT_MAC)) if on_uplink else (_ip(C1), _mac(C1_MAC))

        def sender() -> bytes:
            return bytes((198, 51, 100, rng.randrange(3, 255))) if on_uplink else self._host(network)

        def flood(count: int) -> list[bytes]:
            frames = []
            same = self._host(network)
            for _ in range(count):
                kind = rng.randrange(3)
                if kind == 0:
                    sender_mac = self._unicast_mac()
                    request = Arp(OP_REQUEST, sender_mac, sender(), bytes(6), address).build()
                    frames.append(BROADCAST_MAC + sender_mac + b"\x08\x06" + request)
                else:
                    dst = self._host(network) if kind == 1 else same
                    packet = build_ipv4(src, dst, 1, build_echo(1, rng.randrange(65536)), ident=rng.randrange(65536))
                    frames.append(mac + src_mac + b"\x08\x00" + packet)
            return frames
        return flood

    def outside(self, count: int) -> list[bytes]:
        """Strangers on the uplink: unsolicited packets to the router's address, and to the inside."""
        rng = self.rng
        frames = []
        for _ in range(count):
            src = self._outside()
            dst = rng.choice((_ip(EXT), _ip(EXT), self._host("/24")))
            proto, l4, flags = self._l4(src, dst)
            packet = build_ipv4(src, dst, proto, l4, ident=rng.randrange(65536), flags_offset=flags)
            frames.append(_mac(EXT_MAC) + _mac(NEXT_MAC) + b"\x08\x00" + packet)
        return frames

    def l3(self, count: int) -> list[bytes]:
        """Packets from behind the TUN port to many destinations."""
        rng = self.rng
        packets = []
        for _ in range(count):
            src, dst = bytes((192, 0, 2, rng.randrange(2, 255))), self._outside()
            proto, l4, flags = self._l4(src, dst)
            packets.append(build_ipv4(src, dst, proto, l4, ttl=rng.choice((1, 64)), flags_offset=flags))
        return packets

    def underlay(self, backend: str) -> Generator:
        """Datagrams from strangers, with a foreign VNI, with inner sources outside the sender's subnet, and
        well-formed ones to many addresses in our subnet (the router resolves each)."""
        port = PORTS[backend]

        def flood(count: int) -> list[bytes]:
            rng = self.rng
            datagrams = []
            for _ in range(count):
                n = rng.choice((2, 3))
                peer = _ip(PUBLIC[n])
                kind = rng.randrange(4)
                if kind == 0:
                    peer = bytes((10, 99, rng.randrange(1, 256), rng.randrange(256)))   # no lease names it
                src = bytes((10, 244, rng.randrange(256) if kind == 2 else n, rng.randrange(1, 255)))
                packet = build_ipv4(src, self._host("/24"), 1, build_echo(rng.randrange(65536), 1), ttl=rng.choice((1, 2, 64)))
                if backend == "udp":
                    payload = packet
                else:
                    vni = rng.randrange(2, 1 << 24) if kind == 1 else 1
                    payload = bytes((8, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\0" + _mac(VTEP[1]) + _mac(VTEP[n]) \
                        + b"\x08\x00" + packet
                datagrams.append(address_header(peer, port, port) + payload)
            return datagrams
        return flood

    def leases(self, count: int) -> list[bytes]:
        """PUTs of leases all over the network and beyond (thousands of keys for a book of 256), sharing
        addresses and MACs now and then, and DELETEs."""
        rng = self.rng
        ops = []
        for _ in range(count):
            length = rng.choice((24, 24, 24, 25, 23, 16))
            subnet = Network.of(bytes((10, rng.choice((244, 244, 244, 245)), rng.randrange(256), rng.randrange(256))),
                                length)
            key = subnet_key(DEFAULT_PREFIX, subnet)
            if rng.random() < 0.2:
                ops.append(key)
                continue
            shared = rng.random() < 0.3
            public = bytes((10, 99, 0, rng.randrange(1, 4))) if shared else bytes((10, 99, *rng.randbytes(2)))
            vtep = b"\x02\x00\x00\x00" + (bytes((rng.randrange(1, 4), 0xFF)) if shared else rng.randbytes(2))
            ops.append(key + b"\0" + lease_value(LeaseAttrs(public, "vxlan", 1, vtep)))
        return ops

    def device(self, backend: str) -> Generator:
        """flannel's device: packets to many cluster addresses, leased or not, some whose TTL runs out."""
        def flood(count: int) -> list[bytes]:
            rng = self.rng
            out = []
            for _ in range(count):
                n = rng.choice((2, 3, rng.randrange(4, 256)))
                dst = bytes((10, 244, n, rng.randrange(1, 255)))
                packet = build_ipv4(self._host("/24"), dst, 1, build_echo(rng.randrange(65536), 1), ttl=rng.choice((1, 2, 64)))
                if backend == "vxlan":
                    vtep = _mac(VTEP[n]) if n in VTEP else b"\x02\x00\x00\x00" + bytes((n, 0xFF))
                    packet = vtep + _mac(VTEP[1]) + b"\x08\x00" + packet
                out.append(packet)
            return out
        return flood


# -- targets ----------------------------------------------------------------------------------


@attrs.frozen
class Batch:
    """One call: ``inputs`` to ``port`` at ``now`` (a transform ignores both)."""

    port: str
    inputs: tuple[bytes, ...]
    now: float = 0.0


class Invariant(AssertionError):
    """An output the core or a transform must never give, found by the fuzzer's own checks."""


class CoreTarget:
    """A core as ``vswitch run`` builds it from ``config``, with every port of the config added."""

    def __init__(self, name: str, config: str, seed: int) -> None:
        self.name = name
        parsed = loads(config)
        self.core, self.router, self.overlay, _ = build_core(parsed)
        if isinstance(self.core, DeviceOverlay):
            self.ports: tuple[str, ...] = (self.core.device, self.core.underlay)
        else:
            self.ports = tuple(p.name for p in parsed.ports) + ((UNDERLAY_PORT,) if self.overlay is not None else ())
        for port in self.ports:
            self.core.add_port(port)
        if self.router is not None and self.router.nat is not None:
            self.router.nat.mappings._rng.seed(seed)   # its port choices, the same every run
        self._outputs = frozenset(self.ports)

    def feed(self, batch: Batch) -> list[Any]:
        core = self.core
        actions = core.handle_frames(batch.port, list(batch.inputs), batch.now)
        deadline = core.poll_at()
        if deadline is not None and deadline <= batch.now:
            actions += core.handle_timer(batch.now)
        for action in actions:
            if type(action) is Transmit:
                if action.port not in self._outputs or not action.frames:
                    raise Invariant(f"Transmit to {action.port!r} with {len(action.frames)} frames")
            elif type(action) is not Drop:
                raise Invariant(f"an action of type {type(action).__name__}")
        return actions

    def expire(self, now: float) -> float:
        """Let the clock run until every timer due by ``now`` has fired (neighbour probes take a few rounds)."""
        for _ in range(32):
            deadline = self.core.poll_at()
            if deadline is None or deadline > now + 60:
                break
            now = max(now, deadline)
            self.core.handle_timer(now)
        return now

    def tables(self) -> Iterator[tuple[str, int, int]]:
        """(table, size now, bound) for every bounded table in the core."""
        core = self.core
        bridge = core if isinstance(core, Bridge) else getattr(core, "bridge", None)
        if bridge is not None:
            yield "fdb", len(bridge.fdb), bridge.fdb.max_entries
        router = self.router
        if router is not None:
            for name, iface in router._interfaces.items():
                table = iface.neighbours
                if table is None:
                    continue
                yield f"neighbours.{name}", len(table._dynamic), table.max_entries
                yield f"neighbours.{name}.resolving", len(table._probing), table.max_pending
                yield f"neighbours.{name}.queue", max((len(e.queue) for e in table._probing.values()), default=0), table.queue_len
            yield "route-cache", len(router.routes._cache), router.routes._cache_size
            yield "icmp-peers", len(router._icmp._peers), ICMP_PEERS
            nat = router.nat
            if nat is not None:
                yield "nat.connections", len(nat), nat.max_connections
                yield "nat.mappings", len(nat.mappings), nat.max_connections
                yield "nat.fragments", len(nat._fragments), FRAGMENT_MEMORY
                yield "nat.sources", nat.conntrack.sources, nat.max_connections
                yield "nat.per-source", max(nat.conntrack._sources.values(), default=0), nat.max_per_source
                yield "nat.port-pools", len(nat.mappings._pools), 3 * len(router._interfaces)   # tcp, udp, icmp per address
        overlay = self.overlay
        if overlay is not None:
            yield "overlay.peers", len(overlay.peers), overlay.peers.max_peers
            yield "overlay.peer-cache", len(overlay.peers._routes._cache), overlay.peers._routes._cache_size


class TransformTarget:
    """A port-side transform: stateless, so every input stands alone (and ``tables`` is empty)."""

    def __init__(self, name: str, apply: Callable[[Batch], None]) -> None:
        self.name = name
        self._apply = apply

    def feed(self, batch: Batch) -> list[Any]:
        self._apply(batch)
        return []

    def tables(self) -> Iterator[tuple[str, int, int]]:
        return iter(())


def _coalescing(join: Callable[[list[bytes], int], tuple[bytes, int]], ip_at: int) -> Callable[[Batch], None]:
    """Join what joins, write, go on, as a TAP's ``_write_some`` (Ethernet frames, ``ip_at`` 14) or the overlay's
    way in (bare IP packets, ``ip_at`` 0, checksums verified); segmenting a join gives the payloads back."""
    def apply(batch: Batch) -> None:
        frames = [frame[14 - ip_at:] for frame in batch.inputs] if ip_at != 14 else list(batch.inputs)
        start = 0
        while start < len(frames):
            joined, count = join(frames, start)
            if not 1 <= count <= len(frames) - start:
                raise Invariant(f"a join used {count} frames of {len(frames) - start}")
            if count == 1:
                if joined is not frames[start]:
                    raise Invariant("a lone frame came back changed")
            else:
                run = frames[start:start + count]
                headers = ip_at + 20 + (run[0][ip_at + 32] >> 4) * 4
                wanted = b"".join(f[headers:ip_at + int.from_bytes(f[ip_at + 2:ip_at + 4], "big")] for f in run)
                pieces = segment(joined) if ip_at else segment_ipv4(joined, joined.gso_size)
                if b"".join(piece[headers:] for piece in pieces) != wanted:
                    raise Invariant(f"{count} frames joined into a super-frame that segments into other payload")
            start += count
    return apply


def _vnet_call(call: Callable[[bytes, tuple[int, ...]], object]) -> Callable[[Batch], None]:
    """A transform of a frame behind a virtio-net header; WireError is the port's rx_errors."""
    def apply(batch: Batch) -> None:
        for packet in batch.inputs:
            if len(packet) < VNET_HDR_LEN:
                continue   # the port checks the length of what it read
            try:
                call(packet, VNET_HDR.unpack_from(packet))
            except WireError:
                pass
    return apply


def _from_vnet(batch: Batch) -> None:
    """As a port reads: segmenting at once (from_vnet), or taking a super-frame whole (read_vnet), which must
    then cut as well, or be refused as malformed."""
    for packet in batch.inputs:
        try:
            from_vnet(packet)
        except WireError:
            pass
        try:
            frame = read_vnet(packet)
            if type(frame) is SuperFrame:
                segment(frame)
        except WireError:
            pass


def _split_gro(batch: Batch) -> None:
    """A GRO read as the port hands it over (one datagram, or a run), and a run joined in one pass as the
    overlay does it (udp's inner packets at 0, vxlan's at 22): a super-frame or None, never an exception."""
    header = address_header(_ip(PUBLIC[2]), 8285, 8285)
    for read in batch.inputs:
        data = read[4:]
        frames = split_gro(header, data, [(SOL_UDP, UDP_GRO, read[:4])])
        got = datagrams(frames)
        if b"".join(d[8:] for d in got) != data or any(d[:8] != header for d in got):
            raise Invariant("the GRO split lost or changed bytes")
        for frame in frames:
            if type(frame) is DatagramRun:
                count = -(-len(frame) // frame.size)
                for ip_at, verify in ((0, False), (22, True)):
                    start = 0
                    while start < count:   # as the overlay walks a run
                        joined, used = join_run(frame, ip_at, verify, start)
                        if joined is None:
                            if not used:
                                break
                        elif used < 2 or start + used > count or len(segment(joined, None, 0)) != used:
                            raise Invariant(f"{used} datagrams joined into {len(segment(joined, None, 0))} segments")
                        start += used


def _capture(batch: Batch) -> None:
    for datagram in batch.inputs:
        if len(datagram) >= 8:   # the address header is the port's own, always there
            frame = capture_frame(datagram, _ip(PUBLIC[1]), PORTS["vxlan"])
            if frame[14] != 0x45 or int.from_bytes(frame[16:18], "big") != len(frame) - 14:
                raise Invariant("a captured datagram is not one whole IPv4 packet")


def _codec(batch: Batch) -> None:
    """The overlay codec on what its callers guarantee: an address header, 20 bytes of IPv4 header."""
    for data in batch.inputs:
        if len(data) >= 8:
            parse_address(data)
        for offset in (0, 8):
            if len(data) >= offset + 20:
                decrement_ttl(data, offset)
                if not 32768 <= flow_source_port(data, offset) <= 60999:
                    raise Invariant("a VXLAN source port outside Linux's range")


def _parsed(parse: Callable[[bytes], Any], inputs: Sequence[bytes]) -> Iterator[Any]:
    """What ``parse`` makes of each input it does not refuse with a FlannelError (anything else it raises is a finding)."""
    for data in inputs:
        try:
            yield parse(data)
        except FlannelError:
            pass


def _flannel_config(batch: Batch) -> None:
    """The network config as parsed: FlannelError, or a config whose range lies in its network."""
    for config in _parsed(parse_network_config, batch.inputs):
        network = config.network
        if not (is_compatible(config, config.subnet_min) and is_compatible(config, config.subnet_max)
                and config.subnet_min.address & network.mask == network.address
                and config.subnet_max.address & network.mask == network.address
                and free_subnets(config, [], 1) == [config.subnet_min]):
            raise Invariant(f"a config whose subnets do not lie in its network: {config}")


def _flannel_lease_value(batch: Batch) -> None:
    """A lease value as parsed: FlannelError, or a lease that (if vswitch could have written it) writes back."""
    for lease in _parsed(parse_lease_value, batch.inputs):
        ours = lease.backend == "" or (lease.backend == "vxlan" and lease.vtep_mac is not None
                                        and lease.vni is not None and lease.vni < 1 << 24)
        if ours and parse_lease_value(lease_value(lease)) != lease:
            raise Invariant(f"a lease that does not survive being written: {lease}")


def _flannel_subnet_key(batch: Batch) -> None:
    """A key as parsed: None, or a subnet whose key is exactly the one parsed."""
    for key in batch.inputs:
        subnet = parse_subnet_key(DEFAULT_PREFIX, key)
        if subnet is not None and subnet_key(DEFAULT_PREFIX, subnet) != key:
            raise Invariant(f"{key!r} parsed as {subnet}, whose key is another")


IPAM_SUBNET = "10.244.1.0/24"


def _ipam_state(batch: Batch) -> None:
    """A state dir's addresses.json as the daemon reads it back (JSON, then AddressPool.restore): refused
    entries are listed, never raised, and what is taken back gives no address twice and none reserved."""
    for data in batch.inputs:
        try:
            state = json.loads(data)
        except ValueError:   # StateDir.read: a damaged file is logged and treated as absent
            continue
        if not isinstance(state, dict):
            continue
        pool = AddressPool(Network.parse(IPAM_SUBNET), reserved=[_ip(GW)])
        pool.restore(state)
        given = list(pool.allocations.values())
        if len(set(given)) != len(given) or _ip(GW) in given or any(a not in pool.subnet for a in given):
            raise Invariant(f"a restored pool that gives {given} for {data[:200]!r}")
        if len(given) < pool.capacity and pool.allocate("one more") in given:
            raise Invariant(f"a restored pool gives an address it had given already: {data[:200]!r}")


class LeaseBookTarget:
    """The lease book as the etcd shell drives it: each input a PUT (``key NUL value``) or a DELETE (a key
    alone), every fourth a reservation; after each batch its peers go to a peer table, as they do in the
    daemon, which refuses (raises on) a set with a conflict."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.book = LeaseBook(DEFAULT_PREFIX, FLANNEL_CONFIG, public_ip=_ip(PUBLIC[1]), vtep_mac=_mac(VTEP[1]),
                              max_leases=FLANNEL_MAX_LEASES)
        self.book.own = FLANNEL_OWN
        self.peers = PeerTable(port=PORTS["vxlan"])
        self.revision = 0

    def feed(self, batch: Batch) -> list[Any]:
        book = self.book
        for op in batch.inputs:
            self.revision += 1
            key, put, value = op.partition(b"\0")
            if put:
                reason = book.put(key, value, self.revision % 4, self.revision)
                if reason is not None and reason not in REASONS:
                    raise Invariant(f"an ignore reason that is not one of REASONS: {reason!r}")
            else:
                book.delete(key)
        leases = book.peers()
        self.peers.update(leases)
        if any(lease.subnet == FLANNEL_OWN or lease.subnet not in book.records for lease in leases):
            raise Invariant("a peer that is our own subnet, or no record's")
        return []

    def tables(self) -> Iterator[tuple[str, int, int]]:
        book = self.book
        yield "flannel.keys", len(book), book.max_leases
        yield "flannel.index", max(len(book._by_address), len(book._by_mac)), book.max_leases
        yield "flannel.peers", len(self.peers), book.max_leases
        yield "flannel.reasons", len(book.ignored), len(REASONS)


# -- what each target is fed ----------------------------------------------------------------------

@attrs.frozen
class Feed:
    """What one port (or transform) takes: mutations of a seed pool (with extra mutations), and floods."""

    pool: tuple[Seed, ...]
    extra: tuple[str, ...] = ()           # Mutator methods for this kind: datagram_header, vxlan_header, vnet_header
    floods: tuple[Generator, ...] = ()


@attrs.frozen
class Spec:
    name: str
    make: Callable[[], Any]
    feeds: dict[str, Feed]                # port → what it takes
    weight: float
    clocked: bool = False                 # a core: batches carry the clock
    streams: bool = False                 # coalesce: batches are runs of one flow, mutated


def specs(seed: int, rng: random.Random) -> list[Spec]:
    s = seeds()
    floods = Floods(rng)
    result: list[Spec] = []

    def core(name: str, feeds: dict[str, Feed], weight: float) -> None:
        result.append(Spec(name, lambda: CoreTarget(name, CONFIGS[name], seed), feeds, weight, clocked=True))

    def inside(network: str) -> Feed:
        return Feed(s.inside, floods=(floods.macs, floods.connections(network), floods.arp(network)))

    uplink = Feed(s.outside, floods=(floods.outside, floods.arp("/16", on_uplink=True)))
    core("bridge", {port: Feed(s.inside + s.outside, floods=(floods.macs,)) for port in ("c1", "c2", "c3")}, 1.0)
    core("router-nat", {"c1": inside("/16"), "c2": inside("/16"), "uplink": uplink,
                        "t1": Feed(s.ip, floods=(floods.l3,))}, 1.5)
    for backend in ("udp", "vxlan"):
        underlay = Feed(s.datagrams[backend], ("datagram_header",) + (("vxlan_header",) if backend == "vxlan" else ()),
                        (floods.underlay(backend),))
        core(f"overlay-{backend}", {"c1": inside("/24"), "c2": inside("/24"), "uplink": uplink, UNDERLAY_PORT: underlay},
             1.5)
        device = Feed(s.ip if backend == "udp" else s.vtep, floods=(floods.device(backend),))
        core(f"dropin-{backend}", {DEVICES[backend]: device, UNDERLAY_PORT: underlay}, 1.0)
    # A core takes some 60 inputs a pick (its floods come in bursts), a transform some 5: weights even that out.
    transforms = (
        ("coalesce_tcp4", _coalescing(coalesce_tcp4, 14), Feed(s.inside), 6.0),
        ("coalesce_ipv4", _coalescing(lambda p, i: coalesce_ipv4(p, i, verify=True), 0), Feed(s.inside), 1.5),
        ("segment_tcp4", _vnet_call(lambda p, h: segment_tcp4(p[VNET_HDR_LEN:], h[3])), Feed(s.vnet, ("vnet_header",)), 3.0),
        ("complete_checksum", _vnet_call(lambda p, h: complete_checksum(p[VNET_HDR_LEN:], h[4], h[5])),
         Feed(s.vnet, ("vnet_header",)), 3.0),
        ("from_vnet", _from_vnet, Feed(s.vnet, ("vnet_header",)), 3.0),
        ("split_gro", _split_gro, Feed(s.gro), 2.0),
        ("capture_frame", _capture, Feed(s.capture, ("datagram_header",)), 2.0),
        ("codec", _codec, Feed(s.datagrams["udp"] + s.datagrams["vxlan"] + s.ip, ("datagram_header", "vxlan_header")), 3.0),
    )
    json_feed = ("json_value", "json_value")   # twice as likely as any other mutation
    transforms += (
        ("flannel-config", _flannel_config, Feed(s.flannel["config"], json_feed), 1.5),
        ("flannel-lease", _flannel_lease_value, Feed(s.flannel["lease"], json_feed), 1.5),
        ("flannel-key", _flannel_subnet_key, Feed(s.flannel["key"] + s.flannel["book"][-2:]), 1.0),
        ("ipam-state", _ipam_state, Feed(s.flannel["ipam"], json_feed), 1.0),
    )
    for name, apply, feed, weight in transforms:
        result.append(Spec(name, lambda name=name, apply=apply: TransformTarget(name, apply), {"-": feed}, weight,
                           streams=name in ("coalesce_tcp4", "coalesce_ipv4")))
    result.append(Spec("flannel-book", lambda: LeaseBookTarget("flannel-book"),
                       {"-": Feed(s.flannel["book"], json_feed, (floods.leases,))}, 1.5))
    return result


# -- the campaign -------------------------------------------------------------------------------


@attrs.define
class Finding:
    """One distinct exception site: how often, the first input that raised it, and that input minimised."""

    target: str
    exception: str
    site: str
    count: int
    batches: list[Batch]                  # the batch that raised it, after the ones before it on its target
    reproducer: list[Batch] | None = None   # minimised; None while not tried or when a fresh target does not raise


@attrs.define
class Check:
    """A clean exchange through a core: what was expected and what went wrong."""

    ok: bool
    steps: int
    problems: list[str] = attrs.Factory(list)


@attrs.define
class Report:
    seed: int
    inputs: int = 0
    seconds: float = 0.0
    by_target: Counter[str] = attrs.Factory(Counter)
    findings: dict[tuple[str, str, str], Finding] = attrs.Factory(dict)
    tables: dict[tuple[str, str], list[int]] = attrs.Factory(dict)   # (target, table) → [largest seen, bound]
    forwards: dict[str, tuple[Check, Check]] = attrs.Factory(dict)   # core → (at once, after every timeout)

    @property
    def exceptions(self) -> int:
        return sum(f.count for f in self.findings.values())

    def over_bound(self) -> list[str]:
        return [f"{t}.{n}: {size} > {bound}" for (t, n), (size, bound) in self.tables.items() if size > bound]


def exception_site(exc: BaseException) -> str:
    """Where an exception was raised: the innermost frame in the project's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(ROOT) and path.parts[len(ROOT.parts)] in ("vswitch", "overlay"):
            return f"{path.relative_to(ROOT)}:{frame.lineno} in {frame.name}"
    frame = frames[-1]
    where = Path(frame.filename)
    return f"{where.relative_to(ROOT) if where.is_relative_to(ROOT) else where.name}:{frame.lineno} in {frame.name}"


def _key(target: str, exc: BaseException) -> tuple[str, str, str]:
    return target, type(exc).__name__, exception_site(exc)


class Campaign:
    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.rng = random.Random(seed)
        self.mutator = Mutator(self.rng)
        self.specs = specs(seed, self.rng)
        self.report = Report(seed)
        self.targets = {spec.name: spec.make() for spec in self.specs}
        self.history: dict[str, deque[Batch]] = {spec.name: deque(maxlen=HISTORY) for spec in self.specs}
        self.clocks = {spec.name: START for spec in self.specs}
        self._weights = [spec.weight for spec in self.specs]

    def run(self, count: int) -> Report:
        report = self.report
        started = time.perf_counter()
        while report.inputs < count:
            spec = self.rng.choices(self.specs, self._weights)[0]
            for batch in self.batches(spec, count - report.inputs):
                self.step(spec, batch)
        report.seconds = time.perf_counter() - started
        for finding in report.findings.values():
            finding.reproducer = minimise(self.spec(finding.target), finding)
        for spec in self.specs:
            if spec.clocked:
                report.forwards[spec.name] = forwarding(self.targets[spec.name], self.clocks[spec.name])
        return report

    def spec(self, name: str) -> Spec:
        return next(spec for spec in self.specs if spec.name == name)

    def batches(self, spec: Spec, left: int) -> list[Batch]:
        """One batch of mutations, or a burst of flood batches at one instant (so that tables fill faster than
        they age), never more inputs than ``left``."""
        rng, mutator = self.rng, self.mutator
        port = rng.choice(list(spec.feeds))
        feed = spec.feeds[port]
        extra = tuple(getattr(mutator, name) for name in feed.extra)
        if spec.streams:
            runs = [self._run(feed.pool)]
        elif feed.floods and rng.random() < 0.3:
            flood, size = rng.choice(feed.floods), rng.choice((16, 32, 64))
            runs = [flood(size) for _ in range(rng.choice((1, 2, 4, 16)))]
        else:
            runs = [[mutator.mutate(rng.choice(feed.pool), feed.pool, extra=extra)
                     for _ in range(rng.choice((1, 1, 2, 4, 8, 16)))]]
        now = 0.0
        if spec.clocked:
            step = rng.random()
            now = self.clocks[spec.name] = self.clocks[spec.name] + (
                0.0 if step < 0.3 else rng.random() if step < 0.9 else rng.choice((2.0, 5.0, 31.0, 61.0, 125.0, 301.0)))
        batches = []
        for inputs in runs:
            if left <= 0:
                break
            batches.append(Batch(port, tuple(inputs[:left]), now))
            left -= len(batches[-1].inputs)
        return batches

    def _run(self, pool: Sequence[Seed]) -> list[bytes]:
        """A run of one TCP flow's segments to coalesce: one mutation alike in every segment (the sequence numbers
        then following on again, as a run's do), a few segments mutated each their own way, or extra frames."""
        rng, mutator = self.rng, self.mutator
        run = rng.choice(seeds().streams)
        choice = rng.random()
        if choice < 0.4:
            state = rng.getstate()
            frames = []
            for seed in run:
                rng.setstate(state)
                buf = bytearray(seed.data)
                rng.choice((mutator._field, mutator._field, mutator._boundary, mutator._cut))(buf, seed)
                frames.append(buf)
            if rng.random() < 0.7:
                _follow_on(frames)
            return [bytes(f) for f in frames]
        frames = [mutator.mutate(seed, pool) if rng.random() < 0.3 else seed.data for seed in run]
        if choice > 0.8:
            frames.insert(rng.randrange(len(frames) + 1), rng.choice((*frames, *(s.data for s in pool[:8]))))
        return frames

    def step(self, spec: Spec, batch: Batch) -> None:
        report = self.report
        target = self.targets[spec.name]
        report.inputs += len(batch.inputs)
        report.by_target[spec.name] += len(batch.inputs)
        history = self.history[spec.name]
        try:
            target.feed(batch)
        except Exception as exc:   # noqa: BLE001 - what the fuzzer is looking for
            key = _key(spec.name, exc)
            finding = report.findings.get(key)
            if finding is None:
                finding = report.findings[key] = Finding(
                    spec.name, f"{type(exc).__name__}: {exc}", key[2], 0, [*history, batch])
            finding.count += 1
            self.targets[spec.name] = spec.make()   # a fresh one: the old state may be half-changed
            history.clear()
            return
        history.append(batch)
        tables = report.tables
        for name, size, bound in target.tables():
            seen = tables.get((spec.name, name))
            if seen is None:
                tables[spec.name, name] = [size, bound]
            elif size > seen[0]:
                seen[0] = size


def _follow_on(frames: list[bytearray]) -> None:
    """Each segment's sequence number where the one before ends, its length reckoned from its own headers."""
    for before, frame in zip(frames, frames[1:]):
        if len(before) < 47 or len(frame) < 42:
            return
        size = int.from_bytes(before[16:18], "big") - 20 - (before[46] >> 4) * 4
        frame[38:42] = ((int.from_bytes(before[38:42], "big") + size) & 0xFFFFFFFF).to_bytes(4, "big")


def campaign(count: int, seed: int = DEFAULT_SEED) -> Report:
    """Feed ``count`` inputs, the same for the same ``seed``; the report says what broke and how big tables grew."""
    return Campaign(seed).run(count)


# -- minimising --------------------------------------------------------------------------------


def _raises(spec: Spec, batches: Sequence[Batch], key: tuple[str, str, str]) -> bool:
    target = spec.make()
    try:
        for batch in batches:
            target.feed(batch)
    except Exception as exc:   # noqa: BLE001
        return _key(spec.name, exc) == key
    return False


def minimise(spec: Spec, finding: Finding) -> list[Batch] | None:
    """The shortest input found that still raises the same exception at the same site on a fresh target:
    fewer batches, fewer frames in each, each frame cut shorter. None when even the whole recorded input
    does not (the exception needed state from further back)."""
    key = (finding.target, finding.exception.split(":")[0], finding.site)
    budget = [MAX_REPLAYS]

    def raises(candidate: Sequence[Batch]) -> bool:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        return _raises(spec, candidate, key)

    batches = list(finding.batches)
    if raises(batches[-1:]):
        batches = batches[-1:]
    elif not raises(batches):
        return None
    i = 0
    while i < len(batches) - 1:     # fewer batches (the last one raised: it stays)
        if raises(batches[:i] + batches[i + 1:]):
            del batches[i]
        else:
            i += 1
    for b, batch in enumerate(batches):
        inputs = list(batch.inputs)
        i = 0
        while len(inputs) > 1 and i < len(inputs):   # fewer inputs in each batch
            candidate = inputs[:i] + inputs[i + 1:]
            if raises(batches[:b] + [attrs.evolve(batch, inputs=tuple(candidate))] + batches[b + 1:]):
                inputs = candidate
            else:
                i += 1
        for i, data in enumerate(inputs):              # each input cut as short as it will go
            def still(length: int) -> bool:
                trial = inputs[:i] + [data[:length]] + inputs[i + 1:]
                return raises(batches[:b] + [attrs.evolve(batch, inputs=tuple(trial))] + batches[b + 1:])

            shorter, longer = 0, len(data)    # cut at header boundaries first, then halve the gap
            for length in Seed.of(data, _guess_ip(data)).cuts:
                if still(length):
                    longer = length
                    break
                shorter = length
            while longer - shorter > 1 and budget[0] > 0:
                middle = (shorter + longer) // 2
                if still(middle):
                    longer = middle
                else:
                    shorter = middle
            inputs[i] = data = data[:longer]
        batches[b] = attrs.evolve(batch, inputs=tuple(inputs))
    return batches


def _guess_ip(data: bytes) -> int | None:
    """Where an IPv4 header probably starts, for cuts at its boundaries."""
    for at in (14, 0, 8, 30, 24, 18, 22):
        if len(data) >= at + 20 and data[at] >> 4 == 4:
            return at
    return None


# -- does valid traffic still flow? ------------------------------------------------------------------

H_MAC, H = "02:0c:00:00:00:01", "10.244.1.250"    # a host the campaign never used
PEER_HOST = "10.244.2.250"


def _transmits(actions: list[Any], port: str) -> list[bytes]:
    return [f for a in actions if type(a) is Transmit and a.port == port for f in a.frames]


def _drops(actions: list[Any]) -> str:
    reasons = Counter(str(a.reason) for a in actions if type(a) is Drop)
    return ", ".join(f"{r} x{n}" for r, n in reasons.items()) or "none"


def _check_bridge(target: CoreTarget, now: float) -> Check:
    a, b = _mac("02:0c:00:00:00:01"), _mac("02:0c:00:00:00:02")
    request = raw(Ether(src=a, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=a, psrc="10.250.0.1", pdst="10.250.0.2"))
    reply = raw(Ether(src=b, dst=a) / ARP(op=2, hwsrc=b, psrc="10.250.0.2", hwdst=a, pdst="10.250.0.1"))
    echo = raw(Ether(src=a, dst=b) / IP(src="10.250.0.1", dst="10.250.0.2") / ICMP(id=1) / b"after the campaign")
    problems = []
    for port, frame, want in (("c1", request, {"c2", "c3"}), ("c2", reply, {"c1"}), ("c1", echo, {"c2"})):
        actions = target.feed(Batch(port, (frame,), now))
        got = {a.port for a in actions if type(a) is Transmit and a.frames == [frame]}
        if got != want or len(actions) != len(want):
            problems.append(f"{port}: wanted the frame on {sorted(want)}, got {sorted(got)} (drops: {_drops(actions)})")
    return Check(not problems, 3, problems)


def _check_router(target: CoreTarget, now: float) -> Check:
    """A host new to the router asks for its gateway, pings beyond the uplink (masqueraded) and through the
    overlay when there is one, and gets each answer back. The uplink's next hop answers the router's ARP
    request if it asks (the campaign may have left its entry failed and gone; as with Linux's arp_accept off,
    the reply it sends first makes no new entry)."""
    problems: list[str] = []
    steps = 0
    feed = target.feed
    feed(Batch("uplink", (raw(Ether(src=NEXT_MAC, dst=EXT_MAC) / ARP(op=2, hwsrc=NEXT_MAC, psrc=NEXT, hwdst=EXT_MAC,
                                                                        pdst=EXT)),), now))
    actions = feed(Batch("c1", (raw(Ether(src=H_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=H_MAC, psrc=H, pdst=GW)),),
                         now))
    steps += 1
    if not any(ARP in Ether(f) and Ether(f)[ARP].op == 2 and Ether(f)[ARP].psrc == GW for f in _transmits(actions, "c1")):
        problems.append(f"no ARP reply for the gateway (drops: {_drops(actions)})")
    exchanges = [("uplink", FAR, lambda f: Ether(f)[IP] if IP in Ether(f) else None, lambda ip: Ether(src=NEXT_MAC, dst=EXT_MAC) / ip)]
    if target.overlay is not None:
        exchanges.append((UNDERLAY_PORT, PEER_HOST, _inner_ip(target), _wrap(target)))
    for port, far, unwrap, wrap in exchanges:
        steps += 2
        echo = raw(Ether(src=H_MAC, dst=GW_MAC) / IP(src=H, dst=far) / ICMP(id=0xC0DE, seq=1) / b"after the campaign")
        actions = feed(Batch("c1", (echo,), now))
        if port == "uplink" and _asks_for(actions, NEXT):   # the campaign left no entry for the next hop: it answers
            actions = feed(Batch("uplink", (raw(Ether(src=NEXT_MAC, dst=EXT_MAC) / ARP(
                op=2, hwsrc=NEXT_MAC, psrc=NEXT, hwdst=EXT_MAC, pdst=EXT)),), now))
        sent = [unwrap(f) for f in _transmits(actions, port)]
        sent = [ip for ip in sent if ip is not None and ICMP in ip and ip[ICMP].type == 8 and ip.dst == far]
        if not sent:
            problems.append(f"echo to {far}: nothing out of {port} (drops: {_drops(actions)})")
            continue
        request = sent[0]
        answer = IP(src=far, dst=request.src) / ICMP(type=0, id=request[ICMP].id, seq=1) / b"after the campaign"
        actions = feed(Batch(port, (raw(wrap(answer)),), now))
        back = [Ether(f) for f in _transmits(actions, "c1")]
        if not any(f.dst == H_MAC and IP in f and f[IP].dst == H and ICMP in f and f[ICMP].type == 0
                   and f[ICMP].id == 0xC0DE for f in back):
            problems.append(f"echo reply from {far}: not back on c1 (drops: {_drops(actions)})")
    return Check(not problems, steps, problems)


def _asks_for(actions: list[Any], address: str) -> bool:
    """Whether the router sent an ARP request for ``address`` out of the uplink."""
    return any(ARP in Ether(f) and Ether(f)[ARP].op == 1 and Ether(f)[ARP].pdst == address
               for f in _transmits(actions, "uplink"))


def _inner_ip(target: CoreTarget) -> Callable[[bytes], Any]:
    vxlan = target.overlay.backend == "vxlan"

    def unwrap(datagram: bytes) -> Any:
        if datagram[0:4] != _ip(PUBLIC[2]):
            return None
        return IP(datagram[8 + 8 + 14:] if vxlan else datagram[8:])
    return unwrap


def _wrap(target: CoreTarget) -> Callable[[Any], bytes]:
    backend = target.overlay.backend

    def wrap(packet: Any) -> bytes:
        port = PORTS[backend]
        if backend == "udp":
            return address_header(_ip(PUBLIC[2]), port, port) + raw(packet)
        return address_header(_ip(PUBLIC[2]), port, port) + raw(
            VXLAN(vni=1, flags=0x08) / Ether(src=VTEP[2], dst=VTEP[1]) / packet)
    return wrap


def _check_dropin(target: CoreTarget, now: float) -> Check:
    """A packet from the device to a peer's container leaves as its datagram; the answer comes back in."""
    backend = target.overlay.backend
    device = DEVICES[backend]
    echo = IP(src=H, dst=PEER_HOST) / ICMP(id=0xC0DE, seq=1) / b"after the campaign"
    frame = raw(Ether(src=VTEP[1], dst=VTEP[2]) / echo) if backend == "vxlan" else raw(echo)
    problems = []
    actions = target.feed(Batch(device, (frame,), now))
    if not any(d[0:4] == _ip(PUBLIC[2]) and d.endswith(b"after the campaign") for d in _transmits(actions, UNDERLAY_PORT)):
        problems.append(f"nothing to node 2 out of the underlay (drops: {_drops(actions)})")
    answer = IP(src=PEER_HOST, dst=H) / ICMP(type=0, id=0xC0DE, seq=1) / b"after the campaign"
    actions = target.feed(Batch(UNDERLAY_PORT, (_wrap(target)(answer),), now))
    if not any(f.endswith(b"after the campaign") for f in _transmits(actions, device)):
        problems.append(f"the answer did not come out of {device} (drops: {_drops(actions)})")
    return Check(not problems, 2, problems)


def forwarding(target: CoreTarget, now: float) -> tuple[Check, Check]:
    """The clean exchange at once (tables as the campaign left them), then after every timeout has run out."""
    def check(now: float) -> Check:
        try:
            if isinstance(target.core, DeviceOverlay):
                return _check_dropin(target, now)
            if target.router is None:
                return _check_bridge(target, now)
            return _check_router(target, now)
        except Exception as exc:   # noqa: BLE001 - reported, as any exception the campaign finds
            return Check(False, 0, [f"{type(exc).__name__}: {exc} at {exception_site(exc)}"])

    at_once = check(now + 1.0)
    later = target.expire(now + 7 * 86400.0)
    return at_once, check(later + 1.0)


# -- the suite ----------------------------------------------------------------------------------


def to_hex(data: bytes) -> str:
    """Hex, with runs of one byte written ``00*1000`` (pieces joined by ``+``): a 64 KB reproducer stays readable."""
    pieces, i = [], 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        if j - i >= 16:
            pieces.append(f"{data[i]:02x}*{j - i}")
            i = j
            continue
        start = i
        while i < len(data) and not (i + 16 <= len(data) and data[i:i + 16] == bytes((data[i],)) * 16):
            i += 1
        pieces.append(data[start:i].hex())
    return "+".join(pieces)


def from_hex(text: str) -> bytes:
    """The bytes :func:`to_hex` wrote: paste a reproducer into a test."""
    return b"".join(bytes.fromhex(p.split("*")[0]) * int(p.split("*")[1]) if "*" in p else bytes.fromhex(p)
                    for p in text.split("+") if p)


def _hex(batches: Sequence[Batch]) -> list[dict[str, Any]]:
    return [{"port": b.port, "now": b.now, "inputs": [to_hex(i) for i in b.inputs]} for b in batches]


def lines(report: Report) -> Iterator[dict[str, Any]]:
    yield result("fuzz.inputs", report.inputs, "inputs", seed=report.seed, targets=dict(sorted(report.by_target.items())))
    yield result("fuzz.exceptions", report.exceptions, "exceptions", target=0, meets_target=report.exceptions == 0,
                 sites=len(report.findings))
    over = report.over_bound()
    yield result("fuzz.over_bound", len(over), "tables", target=0, meets_target=not over, tables=len(report.tables),
                 over=over)
    for n, finding in enumerate(report.findings.values()):
        yield result(
            f"fuzz.exception.{n}", finding.count, "exceptions", target=finding.target, exception=finding.exception,
            site=finding.site, minimised=finding.reproducer is not None,
            reproducer=_hex(finding.reproducer if finding.reproducer is not None else finding.batches),
        )
    for (target, table), (size, bound) in sorted(report.tables.items()):
        yield result(f"fuzz.table.{target}.{table}", size, "entries", bound=bound, within_bound=size <= bound)
    for name, (at_once, later) in report.forwards.items():
        yield result(f"fuzz.forwards.{name}", int(later.ok), "ok", at_once=at_once.ok, after_timeouts=later.ok,
                     problems_at_once=at_once.problems, problems_after_timeouts=later.problems)
    yield result("fuzz.rate", round(report.inputs / report.seconds) if report.seconds else 0, "inputs/s",
                 seconds=round(report.seconds, 1))


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    count = options.count if options.count is not None else QUICK_COUNT if options.quick else DEFAULT_COUNT
    yield from lines(campaign(count, DEFAULT_SEED if options.seed is None else options.seed))
