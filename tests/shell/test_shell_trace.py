"""`vswitch trace` against running daemons: the control command answers what a copy of the core does with one
packet, and the live tables are the same afterwards."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from shellkit import host
from test_shell_overlay import node_toml, vtep
from test_shell_router import running

from vswitch import config, daemon
from vswitch.cli import format
from vswitch.cli.main import main
from vswitch.control import client
from vswitch.core.trace import parse_flow
from vswitch.errors import ControlError
from vswitch.overlay.core.trace import MAX_COPIED
from vswitch.overlay.core.trace import trace as overlay_trace
from vswitch.shell.ports.udp import MemoryUnderlay

TIMEOUT = 5.0


def live_state(node: daemon.Node) -> object:
    """Everything a trace could change if it touched the live core: tables, their entries' fields, counters."""
    core = node.switch.core
    state: dict[str, object] = {}
    bridge = getattr(core, "bridge", core if hasattr(core, "fdb") else None)
    if bridge is not None:
        state["fdb"] = sorted((e.mac, e.port, e.static, e.updated) for e in bridge.fdb)
        state["bridge"] = repr(bridge.statistics())
    if node.router is not None:
        state["router"] = repr(node.router.statistics()), repr(node.router.drop_counts())
        state["neighbours"] = {name: sorted((n.ip, n.mac, n.confirmed, n.used, n.probes, len(n.queue))
                                            for n in iface.neighbours)
                               for name, iface in node.router.interfaces.items() if iface.neighbours is not None}
        state["interfaces"] = {name: attrs.asdict(iface.stats) for name, iface in node.router.interfaces.items()}
        if node.router.nat is not None:
            nat = node.router.nat
            state["nat"] = sorted((c.orig, c.reply, c.state, c.last, tuple(c.packets)) for c in nat.connections())
            state["nat_stats"] = repr(nat.statistics())
    if node.overlay is not None:
        state["peers"] = [(str(p.lease), attrs.asdict(p.counters)) for p in node.overlay.peers]
        state["overlay"] = repr(node.overlay._stats)
    return state


async def trace(node: daemon.Node, port: str, flow: str) -> dict:
    before = live_state(node)
    result = await client.request(node.config.node.control, {"command": "trace", "in_port": port, "flow": flow})
    assert live_state(node) == before
    return result


def texts(result: dict) -> list[str]:
    return [f"{s['part']}: {s['text']}" for s in result["steps"]]


def transmitted(result: dict) -> dict[str, list[dict]]:
    return {a["port"]: a["frames"] for a in result["actions"] if a["action"] == "transmit"}


def drops(result: dict) -> list[tuple[str, str]]:
    return [(a["port"], a["reason"]) for a in result["actions"] if a["action"] == "drop"]


async def test_a_routed_flow_to_a_known_neighbour_leaves_by_its_port_and_nothing_changes(tmp_path):
    async with running(tmp_path) as node:
        assert (await host(node, "c1").ping("10.244.2.2", count=1, timeout=TIMEOUT)).received == 1
        c2 = host(node, "c2").host
        result = await trace(node, "c1", "tcp 10.244.1.2:40000 > 10.244.2.2:80")
        gw1 = node.router.interfaces["gw1"].mac.hex(":")
        assert result["frame"]["eth_dst"] == gw1                       # off-subnet: the gateway's MAC
        assert result["frame"]["eth_src"] == host(node, "c1").host.mac.hex(":")   # the MAC the router's ARP knows
        steps = texts(result)
        assert any(s.startswith("bridge:") and "router interface gw1" in s for s in steps)
        assert any(s.startswith("router: route 10.244.2.0/24 dev gw2") for s in steps)
        assert any(s.startswith("neighbour: 10.244.2.2 is at " + c2.mac.hex(":")) for s in steps)
        assert any(s.startswith("nat: no masquerade rule") for s in steps)
        out = transmitted(result)
        assert list(out) == ["c2"]
        [frame] = out["c2"]
        assert (frame["eth_dst"], frame["src"], frame["dst"], frame["sport"], frame["dport"], frame["ttl"]) == (
            c2.mac.hex(":"), "10.244.1.2", "10.244.2.2", 40000, 80, 63)
        assert drops(result) == []
        text = format.format_trace(result)
        assert "transmit c2: " in text and "tcp 10.244.1.2:40000 > 10.244.2.2:80 ttl 63" in text


async def test_bridged_frames_are_forwarded_or_flooded_as_the_fdb_says(tmp_path):
    async with running(tmp_path) as node:
        result = await trace(node, "c1", "udp 10.244.1.2:5000 > 10.244.1.9:53")   # on-subnet, unknown: broadcast
        assert result["frame"]["eth_dst"] == "ff:ff:ff:ff:ff:ff"
        assert any("group address: flooded to" in s for s in texts(result))
        assert set(transmitted(result)) == {"c2"}   # c2 is on the bridge; the router answers nothing for .9
        await host(node, "c2").ping("10.244.2.1", count=1, timeout=TIMEOUT)   # c2's MAC is now in the FDB
        c2 = host(node, "c2").host
        node.router.add_neighbour("gw1", b"\x0a\xf4\x01\x09", c2.mac)   # a wrong but static ARP entry: bridged to c2
        result = await trace(node, "c1", "udp 10.244.1.2:5000 > 10.244.1.9:53")
        assert result["frame"]["eth_dst"] == c2.mac.hex(":")
        assert any("is on port c2 (learned FDB entry)" in s for s in texts(result))
        assert list(transmitted(result)) == ["c2"]


async def test_masquerade_is_decided_and_the_translation_shown(tmp_path):
    async with running(tmp_path) as node:
        await host(node, "uplink").ping("198.51.100.2", count=1, timeout=TIMEOUT)   # the router learns the uplink host
        await host(node, "c1").ping("10.244.1.1", count=1, timeout=TIMEOUT)
        connections = len(node.router.nat)
        result = await trace(node, "c1", "udp 10.244.1.2:5000 > 198.51.100.1:53")
        steps = texts(result)
        assert any(s.startswith("nat: masquerade 10.244.0.0/16 out ext: a new connection, its source becomes 198.51.100.2")
                   for s in steps)
        assert any(s.startswith("nat: translated: 10.244.1.2:5000 > 198.51.100.1:53 became 198.51.100.2:") for s in steps)
        [frame] = transmitted(result)["uplink"]
        assert frame["src"] == "198.51.100.2" and frame["dst"] == "198.51.100.1"
        assert len(node.router.nat) == connections   # the copy's connection only


async def test_no_route_is_a_drop_with_its_reason(tmp_path):
    async with running(tmp_path) as node:
        await host(node, "c1").ping("10.244.1.1", count=1, timeout=TIMEOUT)
        result = await trace(node, "c1", "icmp 10.244.1.2 > 8.8.8.8")
        assert any(s.startswith("router: no route to 8.8.8.8") for s in texts(result))
        assert ("gw1", "no-route") in drops(result)
        [error] = [f for f in transmitted(result)["c1"] if f.get("protocol") == "icmp"]
        assert (error["icmp_type"], error["icmp_code"], error["dst"]) == (3, 0, "10.244.1.2")   # net unreachable


@asynccontextmanager
async def overlay_node(tmp_path: Path, backend: str) -> AsyncIterator[daemon.Node]:
    underlay = MemoryUnderlay()
    text = node_toml(1, backend, [2], control_path=tmp_path / "n1.sock")
    node = daemon.build(config.loads(text), underlay=underlay)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        yield node
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
async def test_a_flow_to_a_peer_leaves_encapsulated_for_its_public_address(tmp_path, backend):
    async with overlay_node(tmp_path, backend) as node:
        result = await trace(node, "c1", "tcp 10.244.1.2:40000 > 10.244.2.3:80")
        overlay_steps = [s for s in texts(result) if s.startswith("overlay:")]
        assert overlay_steps and "peer 10.244.2.0/24 at 10.99.0.2:" in overlay_steps[0]
        [datagram] = transmitted(result)["underlay"]
        assert (datagram["encapsulation"], datagram["outer_dst"], datagram["src"], datagram["dst"]) == (
            backend, "10.99.0.2", "10.244.1.2", "10.244.2.3")
        if backend == "vxlan":
            assert (datagram["outer_dport"], datagram["vni"]) == (8472, 1)
            assert (datagram["inner_eth_src"], datagram["inner_eth_dst"]) == (vtep(1), vtep(2))
            assert f"VXLAN VNI 1, outer UDP {datagram['outer_sport']} > 8472" in overlay_steps[0]
        else:
            assert datagram["outer_dport"] == 8285 and datagram["ttl"] == 62   # router, then flannel's proxy


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
async def test_from_a_peer_and_to_no_lease(tmp_path, backend):
    async with overlay_node(tmp_path, backend) as node:
        result = await trace(node, "c1", "icmp 10.244.1.2 > 10.244.7.1")
        assert any("no lease holds 10.244.7.1" in s for s in texts(result))
        assert ("underlay", "overlay-no-lease") in drops(result) or ("overlay", "overlay-no-lease") in drops(result)
        result = await trace(node, "underlay", "udp 10.244.2.3:53 > 10.244.1.2:5000")
        assert result["medium"] == "underlay"
        assert any(s.startswith("overlay: a ") and "from peer 10.244.2.0/24" in s for s in texts(result))
        assert any(s.startswith("neighbour: 10.244.1.2") for s in texts(result))
        with pytest.raises(ControlError, match="no peer's lease holds 10.244.9.9"):
            await trace(node, "underlay", "udp 10.244.9.9:53 > 10.244.1.2:5000")


async def test_bad_requests_are_refused_clearly(tmp_path, capsys):
    async with running(tmp_path) as node:
        path = node.config.node.control
        with pytest.raises(ControlError, match="no port named 'nope'"):
            await trace(node, "nope", "icmp 10.0.0.1 > 10.0.0.2")
        with pytest.raises(ControlError, match="port '99999' is not a number"):
            await trace(node, "c1", "tcp 10.0.0.1:1 > 10.0.0.2:99999")
        with pytest.raises(ControlError, match="'in_port'"):
            await client.request(path, {"command": "trace", "flow": "icmp 10.0.0.1 > 10.0.0.2"})
        assert await trio.to_thread.run_sync(main, ["trace", "c1", "tcp 10.0.0.1 > 10.0.0.2", "--control", path]) == 2
        assert "tcp needs ADDRESS:PORT" in capsys.readouterr().err
        status = await trio.to_thread.run_sync(main, ["trace", "c1", "icmp 10.244.1.2 > 8.8.8.8", "--control", path])
        out = capsys.readouterr().out
        assert status == 0 and "router     no route to 8.8.8.8" in out and "drop at gw1: no-route" in out


async def test_a_trace_runs_in_a_snapshot_however_large_the_tables(tmp_path):
    """Beyond what a copy in the daemon could take (MAX_COPIED), the forked snapshot traces as before, and the
    daemon's own tables do not change."""
    async with running(tmp_path) as node:
        fdb = node.switch.core.bridge.fdb
        for i in range(4 * MAX_COPIED):
            fdb.learn(b"\x02\x00\x00" + i.to_bytes(3, "big"), "c2", trio.current_time())
        before = live_state(node)
        result = await trace(node, "c1", "icmp 10.244.1.2 > 10.244.2.2")
        assert any(a["action"] == "transmit" for a in result["actions"]), result
        assert live_state(node) == before
        with pytest.raises(ValueError, match=f"hold {4 * MAX_COPIED + 2} entries"):   # in process: refused
            overlay_trace(node.switch.core, "c1", parse_flow("icmp 10.244.1.2 > 10.244.2.2"), trio.current_time())
