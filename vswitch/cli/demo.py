"""``vswitch demo``: the embedded in-memory default, two nodes joined by the overlay.

Each node is what ``vswitch run`` builds from a config (:func:`node_config`
writes them): simulated hosts on the bridge, their gateway on the router,
and the overlay to the other node, its datagrams on a simulated UDP network
(:class:`~vswitch.shell.ports.udp.MemoryUnderlay`) instead of a socket. Hosts find
each other by ARP and ping across the bridge and across the overlay; a bad
frame and a datagram from a stranger are counted drops; the demo prints what
it saw, each node's peers and counters, and with ``--pcap`` records every
frame the hosts put on their links.
"""

import statistics
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import trio

from vswitch import config, daemon
from vswitch.control.reports import show_peers
from vswitch.core.actions import DropReason
from vswitch.core.wire import build_echo, build_ethernet, build_ipv4
from vswitch.core.wire.addr import ip_to_str, mac_from_str, mac_to_str
from vswitch.core.wire.ipv4 import PROTO_ICMP
from vswitch.overlay.core.backends import BACKENDS
from vswitch.overlay.core.codec import (
    ADDRESS_LEN,
    VXLAN_HEADER_LEN,
    address_header,
    vxlan_header,
)
from vswitch.shell.hosts import HostRunner, PingResult
from vswitch.shell.ports import PcapPort, PcapWriter
from vswitch.shell.ports.udp import MemoryUnderlay

from .format import format_peers, format_table

PINGS = 3
STRANGER = "10.99.0.66"      # an underlay address that holds no lease
_NODE1_PREFIX = bytes((10, 244, 1))
_TTL_NOTE = {
    "udp": "(64, less one for each router and for flannel's proxy on each side)",
    "vxlan": "(64, less one for each router)",
}


def _address(node: int, index: int) -> str:
    """The ``index``-th host (0-based) of ``node``: 10.244.<node>.<index + 2>."""
    return f"10.244.{node}.{index + 2}"


def _vtep(node: int) -> str:
    return f"02:00:00:00:{node:02x}:fe"


def node_config(node: int, *, backend: str = "udp", hosts: int = 2) -> str:
    """The TOML of demo node ``node`` (1 or 2): ``hosts`` simulated hosts, their gateway, the other node as peer."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    other = 3 - node
    vxlan = backend == "vxlan"
    lines = [
        f"# vswitch demo, node{node} of 2: {hosts} simulated hosts, the overlay ({backend}) to node{other}.",
        f"# config/overlay-node{node}.toml in the source tree is this node for `vswitch run -c`, over real UDP.",
        "[node]",
        f'name = "node{node}"',
        "",
    ]
    for i in range(hosts):
        ip, mac = _address(node, i), f"02:00:00:00:{node:02x}:{i + 2:02x}"
        name = f"c{(node - 1) * hosts + i + 1}"
        lines += [
            "[[ports]]",
            f'name = "{name}"',
            'type = "memory"',
            f'host = {{ address = "{ip}/24", gateway = "10.244.{node}.1", mac = "{mac}" }}',
            "",
        ]
    lines += [
        "[[router.interfaces]]   # the hosts' gateway, on the bridge",
        'name = "gw"',
        f'address = "10.244.{node}.1/24"',
        f'mac = "02:00:00:00:{node:02x}:01"',
        "",
        "[overlay]",
        f'backend = "{backend}"',
        'network = "10.244.0.0/16"',
        f'subnet = "10.244.{node}.0/24"',
        f'public_ip = "10.99.0.{node}"    # this node\'s underlay address (here on a simulated UDP network)',
        *([f'vtep_mac = "{_vtep(node)}"'] if vxlan else []),
        "",
        "[[overlay.peers]]",
        f'subnet = "10.244.{other}.0/24"',
        f'public_ip = "10.99.0.{other}"',
        *([f'vtep_mac = "{_vtep(other)}"'] if vxlan else []),
    ]
    return "\n".join(lines) + "\n"


async def run_demo(
    *, pcap: str | None = None, hosts: int = 2, backend: str = "udp", out: TextIO | None = None,
) -> dict[str, Any]:
    """Run the demo, print its account to ``out`` and return a summary.

    ``hosts`` is the number of simulated hosts on each node (2-50).
    """
    if not 2 <= hosts <= 50:
        raise ValueError("the demo needs between 2 and 50 hosts per node")
    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out)

    underlay = MemoryUnderlay()
    nodes = [
        daemon.build(config.loads(node_config(n, backend=backend, hosts=hosts), source=f"demo node{n}"),
                     underlay=underlay)
        for n in (1, 2)
    ]
    node1, node2 = nodes
    runners: dict[str, HostRunner] = {}     # by port name: c1, c2 on node1, then node2's
    node_of: dict[str, daemon.Node] = {}
    for node in nodes:
        for runner, _, _ in node.hosts:
            name = runner.host.name.removesuffix("-host")
            runners[name], node_of[name] = runner, node
    writer = PcapWriter.open(pcap) if pcap else None
    if writer is not None:
        for runner in runners.values():   # every frame a host puts on its link, once
            runner.port = PcapPort(runner.port, writer, rx=False, close_writer=False)

    overlay = node1.overlay
    assert overlay is not None
    port = overlay.port
    say(f"vswitch demo: two nodes joined by the overlay ({BACKENDS[backend].title}), simulated hosts, all in memory")
    say()
    rows = []
    for node in nodes:
        oc = node.config.overlay
        assert oc is not None
        gateway = node.config.router.interfaces[0]
        rows.append([node.config.node.name, f"{oc.public_ip}:{oc.port}", oc.subnet, "router gw",
                     gateway.address, mac_to_str(gateway.mac) if gateway.mac else ""])
        for runner, _, _ in node.hosts:
            rows.append(["", "", "", runner.host.name.removesuffix("-host"), str(runner.host.interface),
                         mac_to_str(runner.host.mac)])
    _table(say, ["node", "underlay", "subnet", "host", "address", "mac"], rows)
    say()

    names = list(runners)
    a, b = names[0], names[1]           # on node1
    far = names[hosts]                  # the first host on node2
    results: list[PingResult] = []
    across: list[PingResult] = []       # the pings between the nodes
    try:
        with trio.fail_after(10 + hosts * hosts / 20):
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    await nursery.start(daemon.serve, node)
                _drain(runners.values())

                # 1. ARP and a ping on one bridge.
                ra, rb = runners[a], runners[b]
                say(f"1. On node1's bridge: {a} pings {b} ({rb.host.interface.ip}), {PINGS} times")
                learned = _learned(node1)
                result = await ra.ping(str(rb.host.interface.ip), count=PINGS, timeout=1.0)
                results.append(result)
                for line in _drain(runners.values()):
                    say(f"   {line}")
                for mac, where in sorted(_learned(node1) - learned, key=lambda e: e[1]):
                    say(f"   node1 bridge: learned {mac} on port {where}")
                say(f"   {_summary(result)}")
                say()

                # 2. A ping across the overlay, and where it went.
                rfar = runners[far]
                seen = _Seen(node1, node2, far, backend)
                say(f"2. Across the overlay: {a} (node1) pings {far} ({rfar.host.interface.ip}) on node2,"
                    f" {PINGS} times")
                result = await ra.ping(str(rfar.host.interface.ip), count=PINGS, timeout=1.0)
                results.append(result)
                across.append(result)
                seen.stop()
                for line in _drain(runners.values()):
                    say(f"   {line}")
                peer = overlay.peers.lookup(rfar.host.ip)
                assert peer is not None
                gateway = node1.config.router.interfaces[0].address.ip
                say(f"   path: {a} → node1 bridge → node1 router (gw {gateway})")
                say(f"         → overlay: {backend} datagrams to {ip_to_str(peer.lease.public_ip)}:{peer.port},"
                    f" the peer holding {peer.lease.subnet}")
                say(f"         → node2 router → node2 bridge → {far}")
                say(f"   seen on the ports: {seen.datagrams} requests left node1 as {backend} datagrams,"
                    f" {seen.arrived} arrived at node2,")
                say(f"   and reached {far} with TTL {seen.ttl_text()} {_TTL_NOTE[backend]}")
                say(f"   {_summary(result)}")
                say()

                # 3. Everyone pings everyone.
                pairs = [(src, dst) for src in names for dst in names if src != dst]
                mesh = [await runners[src].ping(str(runners[dst].host.interface.ip), timeout=1.0) for src, dst in pairs]
                results += mesh
                across += [r for (src, dst), r in zip(pairs, mesh) if node_of[src] is not node_of[dst]]
                _drain(runners.values())
                crossing = sum(1 for src, dst in pairs if node_of[src] is not node_of[dst])
                say(f"3. Every host pings every other: {sum(r.received for r in mesh)}/{len(mesh)} replies"
                    f" ({len(mesh) - crossing} on a bridge, {crossing} across the overlay)")
                say()

                # 4. Bad input is a counted drop; forwarding carries on.
                say("4. Bad input is dropped and counted; forwarding carries on")
                bad = build_ethernet(rb.host.mac, b"\x03\x00\x00\x00\x00\x99", 0x88B5, b"\0" * 46)
                await ra.port.send_batch([bad])
                stranger = underlay.port("stranger", STRANGER, port)
                try:
                    await stranger.send_batch([_stranger_datagram(node1, backend, rfar, ra)])
                    # The bad frame and the datagram are ahead of this ping on their links: judged before it returns.
                    after = await ra.ping(str(rfar.host.interface.ip), count=1, timeout=1.0)
                finally:
                    await stranger.aclose()
                results.append(after)
                across.append(after)
                _drain(runners.values())
                counted = node1.switch.drop_counts()
                say(f"   {a} sends a frame with a multicast source address: node1's bridge drops it"
                    f" ({DropReason.INVALID_SOURCE} = {counted.get(DropReason.INVALID_SOURCE, 0)})")
                say(f"   {STRANGER}, not a peer, sends a well-formed datagram: node1's overlay drops it"
                    f" ({DropReason.UNKNOWN_PEER} = {counted.get(DropReason.UNKNOWN_PEER, 0)})")
                say(f"   then {a} pings {far} again: {_summary(after)}")
                say()
                nursery.cancel_scope.cancel()
    finally:
        if writer is not None:
            writer.close()

    for node in nodes:
        say(f"Peers of {node.config.node.name} (`vswitch show peers`):")
        for line in format_peers(show_peers(node)).splitlines():
            say(f"   {line}")
        say()

    say("Counters:")
    rows = []
    for node in nodes:
        for status in node.switch.port_status():
            dev = status.device
            rows.append([node.config.node.name, status.name, dev.rx_frames, dev.tx_frames])
    _table(say, ["node", "port", "rx-frames", "tx-frames"], rows, right=(2, 3))
    drops: dict[str, dict[str, int]] = {}
    for node in nodes:
        name = node.config.node.name
        stats = node.switch.core.statistics()
        router = node.router.statistics() if node.router is not None else None
        ov = node.overlay.statistics() if node.overlay is not None else None
        dropped = {str(reason): n for reason, n in node.switch.drop_counts().items() if n}
        dropped = dict(sorted(dropped.items()))
        drops[name] = dropped
        parts = [f"bridge {stats.unicast} unicast, {stats.flooded} flooded"]
        if router is not None:
            parts.append(f"router {router.forwarded} forwarded")
        if ov is not None:
            parts.append(f"overlay {ov.encapsulated} out, {ov.decapsulated} in")
        say(f"   {name}: {'; '.join(parts)}")
        say(f"   {name} drops: {', '.join(f'{r}={n}' for r, n in dropped.items()) or 'none'}")

    sent = sum(r.sent for r in results)
    received = sum(r.received for r in results)
    say()
    say(f"{received}/{sent} echo replies received.")
    if writer is not None:
        say(f"Wrote {writer.frames} frames (each frame a host sent) to {pcap}:"
            f" open it with `wireshark {pcap}` or `tshark -r {pcap}`.")
    peers = {node.config.node.name: show_peers(node)["peers"] for node in nodes}
    return {
        "backend": backend,
        "sent": sent,
        "received": received,
        "overlay_pings": {"sent": sum(r.sent for r in across), "received": sum(r.received for r in across)},
        "peers": peers,
        "drops": drops,
        "pcap_frames": writer.frames if writer is not None else 0,
        "invalid_source_drops": node1.switch.drop_counts().get(DropReason.INVALID_SOURCE, 0),
        "unknown_peer_drops": node1.switch.drop_counts().get(DropReason.UNKNOWN_PEER, 0),
        "fdb": {node.config.node.name: len(node.switch.core.fdb) for node in nodes},
    }


class _Seen:
    """What the ports saw of node1's echo requests to node2: datagrams leaving node1's underlay port,
    datagrams arriving at node2's, and the TTL of the requests as node2's bridge hands them to the host.

    A monitor sees both directions of its port; only the requests go node1 → node2, so counting
    echo requests from 10.244.1.0/24 inside the datagrams counts one direction.
    """

    def __init__(self, node1: daemon.Node, node2: daemon.Node, far: str, backend: str) -> None:
        self.datagrams = self.arrived = 0
        self.ttls: list[int] = []
        # Where the inner IPv4 packet starts in a datagram.
        self._inner = ADDRESS_LEN + (VXLAN_HEADER_LEN + 14 if backend == "vxlan" else 0)
        self._monitors = [
            (node1, node1.switch.add_monitor(daemon.UNDERLAY_PORT, self._out)),
            (node2, node2.switch.add_monitor(daemon.UNDERLAY_PORT, self._in)),
            (node2, node2.switch.add_monitor(far, self._arrive)),
        ]

    @staticmethod
    def _request_from_node1(data: bytes, offset: int) -> bool:
        """An IPv4 ICMP echo request from 10.244.1.0/24 at ``data[offset:]``."""
        return (len(data) >= offset + 21 and data[offset + 9] == PROTO_ICMP
                and data[offset + 12:offset + 15] == _NODE1_PREFIX and data[offset + 20] == 8)

    def _out(self, frames: list[bytes]) -> None:
        self.datagrams += sum(1 for f in frames if self._request_from_node1(f, self._inner))

    def _in(self, frames: list[bytes]) -> None:
        self.arrived += sum(1 for f in frames if self._request_from_node1(f, self._inner))

    def _arrive(self, frames: list[bytes]) -> None:
        self.ttls += [f[14 + 8] for f in frames if f[12:14] == b"\x08\x00" and self._request_from_node1(f, 14)]

    def stop(self) -> None:
        for node, monitor in self._monitors:
            node.switch.remove_monitor(monitor)

    def ttl_text(self) -> str:
        ttls = sorted(set(self.ttls))
        return "/".join(map(str, ttls)) if ttls else "(none seen)"


def _stranger_datagram(node1: daemon.Node, backend: str, sender: HostRunner, target: HostRunner) -> bytes:
    """An echo request from a node2 host to a node1 host, well formed for ``backend``, to node1's underlay port."""
    assert node1.config.overlay is not None and node1.overlay is not None
    packet = build_ipv4(sender.host.ip, target.host.ip, PROTO_ICMP, build_echo(0x7777, 1, b"stranger"))
    if backend == "vxlan":
        assert node1.overlay.vtep_mac is not None
        packet = vxlan_header(node1.overlay.vni) + build_ethernet(
            node1.overlay.vtep_mac, mac_from_str(_vtep(2)), 0x0800, packet)
    header = address_header(node1.config.overlay.public_ip.packed, node1.overlay.port)
    assert len(header) == ADDRESS_LEN
    return header + packet


def _learned(node: daemon.Node) -> set[tuple[str, str]]:
    return {(mac_to_str(e.mac), e.port) for e in node.switch.core.fdb if not e.static}


def _table(say: Any, headers: list[str], rows: list[list[Any]], *, right: Iterable[int] = ()) -> None:
    for line in format_table(headers, rows, right=tuple(right)).splitlines():
        say(f"   {line}")


def _drain(runners: Iterable[HostRunner]) -> list[str]:
    events = []
    for r in runners:
        events.extend(r.host.events)
        r.host.events.clear()
    return [text.replace("-host:", ":", 1) for _, text in sorted(events, key=lambda e: e[0])]


def _summary(result: PingResult) -> str:
    text = f"{result.received}/{result.sent} replies"
    if result.rtts:
        ms = [t * 1e3 for t in result.rtts]
        text += f", rtt min/avg/max {min(ms):.3f}/{statistics.mean(ms):.3f}/{max(ms):.3f} ms"
    return text
