"""The router and NAT inside a running daemon: simulated hosts on memory ports, the control socket's views."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio
from scapy.layers.inet import ICMP, UDP
from scapy.layers.l2 import ARP, Ether
from shellkit import host, watch

from vswitch import config, daemon
from vswitch.cli import format
from vswitch.control import client
from vswitch.errors import ControlError

TIMEOUT = 5.0

TOPOLOGY = """
[node]
name = "r1"
control = "{control}"
[[ports]]
name = "c1"
type = "memory"
host = {{ address = "10.244.1.2/24", gateway = "10.244.1.1" }}
[[ports]]
name = "c2"
type = "memory"
host = {{ address = "10.244.2.2/24", gateway = "10.244.2.1" }}
[[ports]]
name = "uplink"
type = "memory"
host = {{ address = "198.51.100.1/24" }}
[[router.interfaces]]
name = "gw1"
address = "10.244.1.1/24"
[[router.interfaces]]
name = "gw2"
address = "10.244.2.1/24"
[[router.interfaces]]
name = "ext"
port = "uplink"
address = "198.51.100.2/24"
{nat}
"""

MASQUERADE = """
[[nat.masquerade]]
source = "10.244.0.0/16"
out = "ext"
exclude = ["10.244.0.0/16"]
"""


@asynccontextmanager
async def running(tmp_path: Path, *, nat: str = MASQUERADE) -> AsyncIterator[daemon.Node]:
    path = tmp_path / "ctl.sock"
    node = daemon.build(config.loads(TOPOLOGY.format(control=path, nat=nat)))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        yield node
        nursery.cancel_scope.cancel()


async def ask(node: daemon.Node, what: str) -> object:
    return await client.request(node.config.node.control, {"command": "show", "what": what})


async def test_containers_on_two_router_interfaces_reach_each_other_without_nat(tmp_path):
    async with running(tmp_path) as node:
        seen = watch(node, "c2")
        result = await host(node, "c1").ping("10.244.2.2", count=3, timeout=TIMEOUT)
        assert result.received == 3
        requests = [p for p in seen if ICMP in p and p[ICMP].type == 8]
        assert {p.src for p in requests} == {"10.244.1.2"}   # not translated
        assert {p.ttl for p in requests} == {63}             # one router hop
        assert len(node.router.nat) == 0


async def test_masquerade_shows_the_uplink_address_outside_and_lists_the_translation(tmp_path):
    async with running(tmp_path) as node:
        seen = watch(node, "uplink")
        result = await host(node, "c1").ping("198.51.100.1", count=2, timeout=TIMEOUT)
        assert result.received == 2
        requests = [p for p in seen if ICMP in p and p[ICMP].type == 8]
        assert requests and {p.src for p in requests} == {"198.51.100.2"}

        nat = await ask(node, "nat")
        (conn,) = nat["connections"]
        assert (conn["protocol"], conn["kind"], conn["state"]) == ("icmp", "snat", "REPLIED")
        assert conn["original"]["src"] == "10.244.1.2" and conn["original"]["dst"] == "198.51.100.1"
        assert conn["reply"]["dst"] == "198.51.100.2"
        assert conn["packets"] == [2, 2]
        assert 0 < conn["expires"] <= 30
        assert nat["rules"]["masquerade"] == [{"source": "10.244.0.0/16", "out": "ext", "exclude": ["10.244.0.0/16"]}]
        text = format.format_nat(nat)
        assert "10.244.1.2:" in text and "198.51.100.2:" in text
        assert text.splitlines()[-1].startswith("1 of 65536 connections from 1 source (at most 16384 per source), 1 mappings")
        assert "0 refused at the source limit" in text


async def test_a_source_at_its_limit_is_refused_and_counted_while_others_go_on(tmp_path):
    async with running(tmp_path, nat=MASQUERADE + "[nat]\nmax_per_source = 1\n") as node:
        c1, c2 = host(node, "c1"), host(node, "c2")
        assert (await c1.ping("198.51.100.1", timeout=TIMEOUT)).received == 1   # its one connection
        assert (await c1.ping("198.51.100.1", timeout=0.5)).received == 0       # a new identifier: refused
        assert (await c2.ping("198.51.100.1", timeout=TIMEOUT)).received == 1   # another source is not
        nat = await ask(node, "nat")
        assert nat["max_per_source"] == 1
        assert (nat["statistics"]["source_limited"], nat["statistics"]["sources"]) == (1, 2)
        assert "1 refused at the source limit" in format.format_nat(nat)
        stats = await ask(node, "stats")
        assert stats["drops"]["nat-source-limit"] == 1
        assert stats["router"]["nat"]["source_limited"] == 1


async def test_show_nat_lists_a_bounded_number_of_connections_and_counts_them_all(tmp_path):
    async with running(tmp_path) as node:
        c1, c2 = host(node, "c1"), host(node, "c2")
        for runner in (c1, c1, c2):   # three identifiers: three connections
            assert (await runner.ping("198.51.100.1", timeout=TIMEOUT)).received == 1
        path = node.config.node.control
        listed = await client.request(path, {"command": "show", "what": "nat", "limit": 2})
        assert len(listed["connections"]) == 2 and listed["unlisted"] == 1
        assert listed["statistics"]["connections"] == 3
        assert "... and 1 more (--limit N lists more)" in format.format_nat(listed)
        everything = await ask(node, "nat")
        assert len(everything["connections"]) == 3 and everything["unlisted"] == 0
        with pytest.raises(ControlError, match="'limit' must be at least 1"):
            await client.request(path, {"command": "show", "what": "nat", "limit": 0})


async def test_show_arp_and_routes(tmp_path):
    async with running(tmp_path) as node:
        assert (await host(node, "c1").ping("198.51.100.1", timeout=TIMEOUT)).received == 1
        arp = await ask(node, "arp")
        found = {(e["interface"], e["address"]): e for e in arp}
        assert found["gw1", "10.244.1.2"]["mac"] == host(node, "c1").host.mac.hex(":")
        uplink = found["ext", "198.51.100.1"]
        assert uplink["state"] == "reachable" and uplink["queued"] == 0   # it answered our request
        assert ("gw2", "10.244.2.2") not in found                          # never talked to
        assert "198.51.100.1" in format.format_arp(arp)

        routes = await ask(node, "routes")
        assert [(r["to"], r["interface"], r["type"]) for r in routes["routes"]] == [
            ("10.244.1.0/24", "gw1", "connected"), ("10.244.2.0/24", "gw2", "connected"),
            ("198.51.100.0/24", "ext", "connected"),
        ]
        ext = next(i for i in routes["interfaces"] if i["name"] == "ext")
        assert ext["up"] and ext["address"] == "198.51.100.2/24" and ext["tx_packets"] > 0
        assert "198.51.100.0/24" in format.format_routes(routes)

        ports = {p["name"]: p for p in await ask(node, "ports")}
        assert ports["uplink"]["router_interface"] == "ext" and ports["uplink"]["bridge"] is None
        assert ports["c1"]["router_interface"] is None and ports["c1"]["bridge"]["rx_frames"] > 0

        stats = await ask(node, "stats")
        assert stats["router"]["forwarded"] >= 2
        assert stats["router"]["nat"]["created"] == 1
        assert "router:" in format.format_stats(stats)


async def test_packets_held_for_an_interface_whose_port_goes_down_are_counted_drops(tmp_path):
    async with running(tmp_path, nat="") as node:
        asked = trio.Event()

        def on_uplink(frames: list[bytes]) -> None:
            if any(ARP in Ether(f) and Ether(f)[ARP].pdst == "198.51.100.9" for f in frames):
                asked.set()   # the router asks for a neighbour no one is, holding the echo request meanwhile

        node.switch.add_monitor("uplink", on_uplink)
        async with trio.open_nursery() as pinging:
            pinging.start_soon(partial(host(node, "c1").ping, "198.51.100.9", timeout=TIMEOUT))
            with trio.fail_after(TIMEOUT):
                await asked.wait()
            node.switch.set_port_up("uplink", False)
            pinging.cancel_scope.cancel()
        stats = await ask(node, "stats")
        assert stats["drops"]["port-down"] == 1
        (drop,) = [d for d in stats["recent_drops"] if d["reason"] == "port-down"]
        assert drop["port"] == "ext" and drop["bytes"] == 84   # the echo request: its IPv4 packet, as held


async def test_the_router_answers_pings_to_each_of_its_addresses(tmp_path):
    async with running(tmp_path) as node:
        c1 = host(node, "c1")
        for address in ("10.244.1.1", "10.244.2.1", "198.51.100.2"):
            assert (await c1.ping(address, timeout=TIMEOUT)).received == 1, address
        stats = await ask(node, "stats")
        assert stats["router"]["icmp_sent"]["echo-reply"] == 3
        assert stats["router"]["delivered"] == 3


async def test_show_nat_without_nat_and_show_arp_without_router_say_what_to_add(tmp_path):
    async with running(tmp_path, nat="") as node:
        with pytest.raises(ControlError, match=r"does no NAT: add \[\[nat.masquerade\]\]"):
            await ask(node, "nat")
    bridge_only = tmp_path / "bridge"
    bridge_only.mkdir()
    node = daemon.build(config.loads(f'[node]\ncontrol = "{bridge_only / "ctl.sock"}"\n'))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        with pytest.raises(ControlError, match=r"has no router: add \[\[router.interfaces\]\]"):
            await ask(node, "arp")
        nursery.cancel_scope.cancel()


# -- port forwards at run time (`forward`, `unforward`: what the CNI plugin asks for a runtime's portMappings) --


async def send_udp(node: daemon.Node, port: str, dst: str, dport: int, payload: bytes) -> None:
    runner = host(node, port)
    datagram = bytes(UDP(sport=40000, dport=dport, chksum=0) / payload)   # no checksum: UDP allows it
    frames = runner.host.send_ip(IPv4Address(dst).packed, 17, datagram, trio.current_time())
    assert frames, "the host knows the router's MAC (it pinged it)"
    await runner.port.send_batch(frames)


async def test_a_forward_added_at_run_time_reaches_the_container_and_goes_with_its_owner(tmp_path):
    """No [nat] at all: the first `forward` gives the router its NAT; `unforward` and `detach` remove forwards."""
    async with running(tmp_path, nat="") as node:
        path = node.config.node.control
        assert node.router.nat is None
        added = await client.request(path, {"command": "forward", "protocol": "udp", "port": 5353,
                                            "to": "10.244.1.2:53", "owner": "c1"})
        row = {"protocol": "udp", "port": 5353, "to": "10.244.1.2", "to_port": 53, "interface": None, "owner": "c1"}
        assert added == {"added": [row]}
        assert (await ask(node, "nat"))["rules"]["forward"] == [row]
        assert "forward udp port 5353 to 10.244.1.2:53 (c1)" in format.format_nat(await ask(node, "nat"))

        seen = watch(node, "c1")
        assert (await host(node, "uplink").ping("198.51.100.2", timeout=TIMEOUT)).received == 1
        await send_udp(node, "uplink", "198.51.100.2", 5353, b"published")
        await watch_for(seen, lambda p: UDP in p and bytes(p[UDP].payload) == b"published")
        arrived = next(p for p in seen if UDP in p)
        assert (arrived.src, arrived.dst, arrived[UDP].dport) == ("198.51.100.1", "10.244.1.2", 53)

        with pytest.raises(ControlError, match=r"^forward: udp port 5353 is forwarded already: udp port 5353 to "
                                               r"10.244.1.2:53 \(by c1\)$"):
            await client.request(path, {"command": "forward", "protocol": "udp", "port": 5353, "to": "10.244.2.2"})
        assert await client.request(path, {"command": "unforward", "owner": "c1"}) == {"removed": [row]}
        assert await client.request(path, {"command": "unforward", "owner": "c1"}) == {"removed": []}   # idempotent

        await client.request(path, {"command": "forward", "port": 8080, "to": "10.244.2.2:80", "owner": "c2",
                                    "interface": "ext"})
        await client.request(path, {"command": "detach", "name": "c2"})   # an attachment's forwards go with it
        assert (await ask(node, "nat"))["rules"]["forward"] == []
        assert format.format_nat(await ask(node, "nat")).startswith("no rules\n")


@pytest.mark.parametrize(("request_", "message"), [
    ({"port": 80}, r"^forward: 'to' is required$"),
    ({"port": 80, "to": "10.244.1.2:http"}, r"needs a port between 1 and 65535 after the colon"),
    ({"port": 80, "to": "10.244.1.2:99999999"}, r"needs a port between 1 and 65535 after the colon"),
    ({"port": 80, "to": "10.244.1:80"}, r"is not address:port"),
    ({"port": 0, "to": "10.244.1.2"}, r"^forward: ports must be between 1 and 65535"),
    ({"port": 80, "to": "10.244.1.2", "protocol": "icmp"}, r"^protocol: 'icmp' is not one of tcp, udp$"),
    ({"port": 80, "to": "10.244.1.2", "interface": "eth9"}, r"^forward: no router interface named 'eth9'"),
    ({"port": 80, "to": "10.244.1.2", "owner": "x" * 65}, r"^owner: must be 1 to 64 printable bytes$"),
    ({"port": "80", "to": "10.244.1.2"}, r"'port' must be an integer"),
])
async def test_forward_requests_are_checked(tmp_path, request_, message):
    async with running(tmp_path) as node:
        with pytest.raises(ControlError, match=message):
            await client.request(node.config.node.control, {"command": "forward", **request_})
        assert (await ask(node, "nat"))["rules"]["forward"] == []


async def test_unforward_by_port_or_owner_and_on_a_router_without_nat(tmp_path):
    async with running(tmp_path, nat="") as node:
        path = node.config.node.control
        assert await client.request(path, {"command": "unforward", "owner": "nobody"}) == {"removed": []}
        with pytest.raises(ControlError, match="by owner, or by protocol and port, not both"):
            await client.request(path, {"command": "unforward", "owner": "c1", "port": 80})
        await client.request(path, {"command": "forward", "port": 80, "to": "10.244.1.2"})
        removed = await client.request(path, {"command": "unforward", "protocol": "tcp", "port": 80})
        assert [(r["port"], r["to"], r["to_port"]) for r in removed["removed"]] == [(80, "10.244.1.2", 80)]
        assert "owner" not in removed["removed"][0]   # added without one, as the config's forwards


async def watch_for(seen: list, condition, timeout: float = TIMEOUT) -> None:
    with trio.fail_after(timeout):
        while not any(condition(p) for p in seen):
            await trio.sleep(0.005)
