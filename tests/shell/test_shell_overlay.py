"""The overlay in running daemons: nodes over a simulated UDP network (MemoryUnderlay), simulated hosts
on their bridges, both backends; strangers, addresses without a lease, reload, and the control socket."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from scapy.layers.inet import ICMP, IP, IPerror
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from shellkit import host, watch

from vswitch import config, daemon
from vswitch.cli import demo, format
from vswitch.control import client, reports
from vswitch.core.actions import DropReason
from vswitch.core.wire.addr import ip_from_str
from vswitch.errors import ControlError
from vswitch.overlay.core.codec import address_header
from vswitch.shell.ports.udp import MemoryUnderlay

TIMEOUT = 5.0
BACKENDS = ["udp", "vxlan"]
PING_IP_BYTES = 84                       # an echo request of 56 bytes of data, IPv4 header included
INNER_OVERHEAD = {"udp": 0, "vxlan": 8 + 14}   # what a datagram's payload carries beyond the IPv4 packet
ARRIVING_TTL = {"udp": 60, "vxlan": 62}  # 64, less: router, (flannel's proxy out, in,) router


def vtep(n: int) -> str:
    return f"02:00:00:00:{n:02x}:01"


def node_toml(n: int, backend: str, peers: list[int], *, control_path: Path | None = None, extra: str = "",
              overlay_extra: str = "") -> str:
    """Node ``n``: hosts c1 (10.244.n.2) and c2 (.3) on its bridge, its gateway .1 on the router, peers' leases."""
    vx = backend == "vxlan"
    text = f"""
[node]
name = "node{n}"
{f'control = "{control_path}"' if control_path else ""}
{extra}
[[ports]]
name = "c1"
type = "memory"
host = {{ address = "10.244.{n}.2/24", gateway = "10.244.{n}.1" }}
[[ports]]
name = "c2"
type = "memory"
host = {{ address = "10.244.{n}.3/24", gateway = "10.244.{n}.1" }}
[[router.interfaces]]
name = "gw"
address = "10.244.{n}.1/24"
[overlay]
backend = "{backend}"
network = "10.244.0.0/16"
subnet = "10.244.{n}.0/24"
public_ip = "10.99.0.{n}"
{f'vtep_mac = "{vtep(n)}"' if vx else ""}
{overlay_extra}
"""
    for p in peers:
        text += f"""
[[overlay.peers]]
subnet = "10.244.{p}.0/24"
public_ip = "10.99.0.{p}"
{f'vtep_mac = "{vtep(p)}"' if vx else ""}
"""
    return text


@asynccontextmanager
async def cluster(
    backend: str, peers: dict[int, list[int]], *, tmp_path: Path | None = None,
) -> AsyncIterator[tuple[dict[int, daemon.Node], MemoryUnderlay]]:
    """Nodes on one MemoryUnderlay, served; with ``tmp_path`` each reads its config from a file and has a
    control socket."""
    underlay = MemoryUnderlay()
    nodes = {}
    for n, theirs in peers.items():
        if tmp_path is None:
            nodes[n] = daemon.build(config.loads(node_toml(n, backend, theirs)), underlay=underlay)
            continue
        path = tmp_path / f"node{n}.toml"
        path.write_text(node_toml(n, backend, theirs, control_path=tmp_path / f"node{n}.sock"))
        nodes[n] = daemon.build(config.load(path), underlay=underlay, config_path=str(path))
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(daemon.serve, node)
        yield nodes, underlay
        nursery.cancel_scope.cancel()


async def ping(node: daemon.Node, port: str, dst: str, count: int = 1) -> None:
    result = await host(node, port).ping(dst, count=count, timeout=TIMEOUT)
    assert result.received == count, f"node{node.config.node.name}/{port} -> {dst}: {result}"


async def expect_net_unreachable(node: daemon.Node, port: str, dst: str) -> IP:
    """Ping ``dst`` from ``port``'s host; return the ICMP net unreachable it is sent (fails if none comes)."""
    arrived = trio.Event()
    errors: list[IP] = []
    me = str(host(node, port).host.interface.ip)

    def record(frames: list[bytes]) -> None:
        for frame in frames:
            packet = Ether(frame)
            if IP in packet and packet[IP].dst == me and ICMP in packet and packet[ICMP].type == 3:
                errors.append(packet[IP])
                arrived.set()

    monitor = node.switch.add_monitor(port, record)
    try:
        async with trio.open_nursery() as nursery:
            results = []

            async def pinger() -> None:
                results.append(await host(node, port).ping(dst, timeout=TIMEOUT))

            nursery.start_soon(pinger)
            with trio.fail_after(TIMEOUT):
                await arrived.wait()
            nursery.cancel_scope.cancel()
    finally:
        node.switch.remove_monitor(monitor)
    assert not results or results[0].received == 0
    (error,) = errors
    return error


def peer(node: daemon.Node, subnet: str):
    return next(p for p in node.overlay.peers if str(p.lease.subnet) == subnet)


# -- forwarding ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_host_pings_every_other_across_the_bridge_and_the_overlay(backend):
    async with cluster(backend, {1: [2], 2: [1]}) as (nodes, _):
        addresses = {(n, port): f"10.244.{n}.{2 if port == 'c1' else 3}" for n in nodes for port in ("c1", "c2")}
        arriving = watch(nodes[2], "c1")
        for (n, port), src in addresses.items():
            for dst in addresses.values():
                if dst != src:
                    await ping(nodes[n], port, dst)

        requests = [p for p in arriving if ICMP in p and p[ICMP].type == 8 and p.dst == "10.244.2.2"]
        assert {p.src: p.ttl for p in requests} == {
            "10.244.2.3": 64,                     # bridged: never routed
            "10.244.1.2": ARRIVING_TTL[backend],  # routed on both nodes, across the overlay
            "10.244.1.3": ARRIVING_TTL[backend],
        }
        # Per node: 4 echo requests to the other node's hosts and 4 replies to its pings; ARP never crosses.
        for n, other in ((1, "10.244.2.0/24"), (2, "10.244.1.0/24")):
            shown = reports.show_peers(nodes[n])
            (p,) = shown["peers"]
            size = PING_IP_BYTES + INNER_OVERHEAD[backend]
            assert p["subnet"] == other
            assert (p["tx_packets"], p["rx_packets"], p["rx_dropped"]) == (8, 8, 0)
            assert (p["tx_bytes"], p["rx_bytes"]) == (8 * size, 8 * size)
            assert shown["statistics"]["encapsulated"] == shown["statistics"]["decapsulated"] == 8
            assert shown["drops"] == {}

        before = reports.show_peers(nodes[1])["peers"][0]
        await ping(nodes[1], "c2", "10.244.2.3", count=3)
        after = reports.show_peers(nodes[1])["peers"][0]
        assert after["tx_packets"] == before["tx_packets"] + 3
        assert after["rx_packets"] == before["rx_packets"] + 3


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_stranger_is_dropped_and_counted_while_traffic_continues(backend):
    async with cluster(backend, {1: [2], 2: [1]}) as (nodes, underlay):
        node1 = nodes[1]
        await ping(node1, "c1", "10.244.2.2")   # ARP settled: an echo request for c1 would be answered at once
        # A well-formed datagram: an echo request from node2's subnet to node1's c1, in the backend's format.
        inner = bytes(IP(src="10.244.2.2", dst="10.244.1.2", ttl=30) / ICMP(type=8, id=0x77, seq=1) / (b"x" * 56))
        if backend == "vxlan":
            inner = bytes(VXLAN(flags=0x08, vni=1) / Ether(dst=vtep(1), src=vtep(2), type=0x0800)) + inner
        datagram = address_header(ip_from_str("10.99.0.1"), node1.overlay.port) + inner
        c1 = host(node1, "c1").host
        answered = c1.stats.echo_requests

        stranger = underlay.port("stranger", "10.99.0.66", node1.overlay.port)
        try:
            await stranger.send_batch([datagram])
            # The underlay delivers in order: once this ping is back, the stranger's datagram has been judged.
            await ping(node1, "c1", "10.244.2.2", count=2)
            assert c1.stats.echo_requests == answered      # never reached the host
            assert node1.overlay.drop_counts() == {DropReason.UNKNOWN_PEER: 1}
            assert node1.switch.drop_counts()[DropReason.UNKNOWN_PEER] == 1
            shown = reports.show_peers(node1)
            assert shown["drops"] == {"overlay-unknown-peer": 1}
            assert shown["peers"][0]["rx_dropped"] == 0      # not charged to a peer it did not come from
            assert [(d.port, d.reason) for d in node1.switch.recent_drops] == [("underlay", DropReason.UNKNOWN_PEER)]
        finally:
            await stranger.aclose()

        # The control: the same bytes from the peer's address (any source port, as VXLAN hashes them) get in.
        impostor = underlay.port("from-node2", "10.99.0.2", 40000)
        try:
            await impostor.send_batch([datagram])
            await ping(node1, "c1", "10.244.2.2")
            assert c1.stats.echo_requests == answered + 1
        finally:
            await impostor.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cluster_address_without_a_lease_gets_net_unreachable(backend):
    async with cluster(backend, {1: [2], 2: [1]}) as (nodes, _):
        node1 = nodes[1]
        error = await expect_net_unreachable(node1, "c1", "10.244.9.9")
        assert (error.src, error[ICMP].type, error[ICMP].code) == ("10.244.1.1", 3, 0)
        assert (error[IPerror].src, error[IPerror].dst) == ("10.244.1.2", "10.244.9.9")   # it quotes the ping
        assert node1.overlay.drop_counts() == {DropReason.NO_LEASE: 1}
        assert node1.router.statistics().icmp_sent["net-unreachable"] == 1
        assert reports.show_peers(node1)["peers"][0]["tx_packets"] == 0   # nothing went to a peer
        await ping(node1, "c1", "10.244.2.2")                                # and the overlay still works


# -- reload ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_reload_adds_a_peer_keeping_the_others_and_removes_one(backend):
    async with cluster(backend, {1: [2], 2: [1], 3: [1]}) as (nodes, _):
        node1 = nodes[1]
        await ping(node1, "c1", "10.244.2.2", count=2)
        await expect_net_unreachable(node1, "c1", "10.244.3.2")   # node3 has no lease at node1 yet
        to_node2 = peer(node1, "10.244.2.0/24")
        counted = (to_node2.counters.tx_packets, to_node2.counters.rx_packets)
        assert counted == (2, 2)

        changes = await node1.reload(config.loads(node_toml(1, backend, [2, 3])))
        assert [str(lease.subnet) for lease in changes.added] == ["10.244.3.0/24"]
        assert (changes.removed, changes.changed, changes.kept) == ((), (), 1)
        assert peer(node1, "10.244.2.0/24") is to_node2          # the same Peer: its counters carry on
        assert (to_node2.counters.tx_packets, to_node2.counters.rx_packets) == counted
        await ping(node1, "c1", "10.244.3.2")
        await ping(node1, "c2", "10.244.2.3")
        assert (to_node2.counters.tx_packets, to_node2.counters.rx_packets) == (3, 3)
        to_node3 = peer(node1, "10.244.3.0/24")
        assert (to_node3.counters.tx_packets, to_node3.counters.rx_packets) == (1, 1)

        changes = await node1.reload(config.loads(node_toml(1, backend, [3])))
        assert [str(lease.subnet) for lease in changes.removed] == ["10.244.2.0/24"]
        assert changes.kept == 1 and peer(node1, "10.244.3.0/24") is to_node3
        await expect_net_unreachable(node1, "c1", "10.244.2.2")
        assert [str(p.lease.subnet) for p in node1.overlay.peers] == ["10.244.3.0/24"]
        # node2 still knows node1, but node1 no longer knows node2: its datagrams are a stranger's.
        from_node2 = trio.Event()
        node1.switch.add_monitor(
            "underlay", lambda frames: any(f[0:4] == ip_from_str("10.99.0.2") for f in frames) and from_node2.set())
        results = []
        async with trio.open_nursery() as nursery:
            async def pinger() -> None:
                results.append(await host(nodes[2], "c1").ping("10.244.1.2", timeout=TIMEOUT))

            nursery.start_soon(pinger)
            with trio.fail_after(TIMEOUT):
                await from_node2.wait()   # the monitor runs just before the core judges the batch
            nursery.cancel_scope.cancel()
        assert results == []
        assert node1.overlay.drop_counts()[DropReason.UNKNOWN_PEER] == 1
        assert host(node1, "c1").host.stats.echo_requests == 0


# -- the control socket ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_show_peers_and_stats_over_the_control_socket(backend, tmp_path):
    async with cluster(backend, {1: [2], 2: [1]}, tmp_path=tmp_path) as (nodes, _):
        node1 = nodes[1]
        await ping(node1, "c1", "10.244.2.2", count=3)
        await expect_net_unreachable(node1, "c1", "10.244.7.1")
        path = node1.config.node.control

        shown = await client.request(path, {"command": "show", "what": "peers"})
        lease = shown["lease"]
        assert (lease["backend"], lease["subnet"], lease["network"], lease["public_ip"], lease["mode"]) == (
            backend, "10.244.1.0/24", "10.244.0.0/16", "10.99.0.1", "router")
        assert lease["port"] == {"udp": 8285, "vxlan": 8472}[backend]
        assert lease["mtu"] == {"udp": 1472, "vxlan": 1450}[backend]
        (p,) = shown["peers"]
        assert (p["subnet"], p["public_ip"], p["port"]) == ("10.244.2.0/24", "10.99.0.2", lease["port"])
        assert p["vtep_mac"] == (vtep(2) if backend == "vxlan" else None)
        assert (p["tx_packets"], p["rx_packets"]) == (3, 3) and p["tx_bytes"] > 0 and p["rx_bytes"] > 0
        assert shown["drops"] == {"overlay-no-lease": 1}

        lines = format.format_peers(shown).splitlines()
        assert lines[0].startswith(f"this node: 10.244.1.0/24 of 10.244.0.0/16 at 10.99.0.1:{lease['port']} ({backend}")
        assert lines[1].split() == ["subnet", "endpoint", "vtep-mac", "tx-packets", "tx-bytes", "rx-packets",
                                    "rx-bytes", "rx-refused"]
        assert lines[2].split() == ["10.244.2.0/24", f"10.99.0.2:{lease['port']}", p["vtep_mac"] or "-", "3",
                                    str(p["tx_bytes"]), "3", str(p["rx_bytes"]), "0"]
        assert lines[3:] == ["1 peer", "leases: static (the config's [[overlay.peers]])", "refused: 1 overlay-no-lease"]
        assert shown["source"] == {"source": "static"}

        stats = await client.request(path, {"command": "show", "what": "stats"})
        assert stats["overlay"] == {"encapsulated": 3, "decapsulated": 3, "icmp_sent": {}, "icmp_rate_limited": 0}
        assert stats["drops"]["overlay-no-lease"] == 1 and stats["drops"]["overlay-unknown-peer"] == 0
        assert stats["router"]["icmp_sent"]["net-unreachable"] == 1
        assert "overlay: 3 encapsulated, 3 decapsulated; icmp sent: none" in format.format_stats(stats)


async def test_reload_over_the_control_socket(tmp_path):
    async with cluster("udp", {1: [2], 2: [1], 3: [1]}, tmp_path=tmp_path) as (nodes, _):
        node1 = nodes[1]
        path, config_file = node1.config.node.control, Path(node1.config_path)
        await ping(node1, "c1", "10.244.2.2")
        to_node2 = peer(node1, "10.244.2.0/24")

        unchanged = await client.request(path, {"command": "reload"})
        assert unchanged == {"config": str(config_file), "added": [], "removed": [], "changed": [], "unchanged": 1}

        config_file.write_text(node_toml(1, "udp", [2, 3], control_path=Path(path)))
        result = await client.request(path, {"command": "reload"})
        assert result == {"config": str(config_file), "added": ["10.244.3.0/24 at 10.99.0.3"], "removed": [],
                          "changed": [], "unchanged": 1}
        assert peer(node1, "10.244.2.0/24") is to_node2 and to_node2.counters.tx_packets == 1
        await ping(node1, "c1", "10.244.3.2")

        running = node1.config
        refusals = [
            (node_toml(1, "udp", [2], control_path=Path(path), overlay_extra="port = 8300"), r"overlay\.port"),
            (node_toml(1, "udp", [2], control_path=Path(path), overlay_extra="mtu = 1400"), r"overlay\.mtu"),
            (node_toml(1, "udp", [2], control_path=Path(path), extra="[bridge]\nageing = 60"), r"bridge\.ageing"),
            (node_toml(1, "udp", [2]), r"node\.control"),
        ]
        for text, key in refusals:
            config_file.write_text(text)    # each also drops node3's lease: none of it may happen
            with pytest.raises(ControlError, match=rf"^reload: .*{key}.* changed: a restart takes"):
                await client.request(path, {"command": "reload"})
            assert node1.config is running
            assert [str(p.lease.subnet) for p in node1.overlay.peers] == ["10.244.2.0/24", "10.244.3.0/24"]

        config_file.write_text("[overlay]\nbackend = 'udp'\n")
        with pytest.raises(ControlError, match=r"^reload: .*node1\.toml: overlay\.network: is required$"):
            await client.request(path, {"command": "reload"})
        config_file.unlink()
        with pytest.raises(ControlError, match=r"^reload: config: file not found: .*node1\.toml$"):
            await client.request(path, {"command": "reload"})
        assert node1.config is running
        await ping(node1, "c1", "10.244.3.2")   # the running leases stayed


async def test_reload_without_a_config_file_or_an_overlay_is_refused(tmp_path):
    text = node_toml(1, "udp", [2], control_path=tmp_path / "a.sock")
    node = daemon.build(config.loads(text), underlay=MemoryUnderlay())   # built from a string: no config_path
    bare = daemon.build(config.loads(f'[node]\ncontrol = "{tmp_path / "b.sock"}"\n'),
                        config_path=str(tmp_path / "b.toml"))
    (tmp_path / "b.toml").write_text(f'[node]\ncontrol = "{tmp_path / "b.sock"}"\n')
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        await nursery.start(daemon.serve, bare)
        with pytest.raises(ControlError, match=r"^reload: this daemon was not started from a config file$"):
            await client.request(str(tmp_path / "a.sock"), {"command": "reload"})
        with pytest.raises(ControlError, match=r"^reload: this daemon has no overlay: nothing to reload$"):
            await client.request(str(tmp_path / "b.sock"), {"command": "reload"})
        nursery.cancel_scope.cancel()


# -- the example configs: the demo's topology, runnable with `vswitch run` -------------------------

EXAMPLES = Path(__file__).parents[2] / "config"


def _topology(cfg: config.Config) -> config.Config:
    """``cfg`` without what differs between the demo and the runnable examples: underlay addresses,
    control socket, the hosts' periodic pings."""
    peers = tuple(attrs.evolve(p, public_ip="") for p in cfg.overlay.peers)
    overlay = attrs.evolve(cfg.overlay, public_ip="", peers=peers)
    ports = tuple(attrs.evolve(p, host=attrs.evolve(p.host, ping=())) for p in cfg.ports)
    return attrs.evolve(cfg, node=attrs.evolve(cfg.node, control=None), ports=ports, overlay=overlay)


@pytest.mark.parametrize("n", [1, 2])
def test_the_example_overlay_configs_are_the_demo_topology(n):
    example = config.load(EXAMPLES / f"overlay-node{n}.toml")
    assert _topology(example) == _topology(config.loads(demo.node_config(n)))


async def test_the_example_overlay_configs_ping_each_other_on_a_memory_underlay():
    underlay = MemoryUnderlay()
    nodes = []
    for n in (1, 2):
        cfg = config.load(EXAMPLES / f"overlay-node{n}.toml")
        cfg = attrs.evolve(cfg, node=attrs.evolve(cfg.node, control=None))   # no socket files in /tmp from tests
        nodes.append(daemon.build(cfg, underlay=underlay))
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(daemon.serve, node)
        await ping(nodes[0], "c2", "10.244.2.3")
        await ping(nodes[1], "c4", "10.244.1.3")
        nursery.cancel_scope.cancel()
