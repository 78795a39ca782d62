"""The control socket: a daemon over memory links with simulated hosts,
asked over a real Unix socket what it sees, and recorded live to pcap."""

import io
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from vswitch import config, daemon
from vswitch.cli import format
from vswitch.cli.main import main
from vswitch.control import capture as live_capture
from vswitch.control import client, protocol, reports, server
from vswitch.control.client import PcapRecords
from vswitch.control.server import ControlServer
from vswitch.core.actions import DropReason, Transmit
from vswitch.daemon import Node
from vswitch.errors import ControlError
from vswitch.shell.ports.pcap import PcapWriter
from vswitch.shell.ports.udp import MemoryUnderlay

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
TIMEOUT = 5.0


def node_config(control_path: Path | None) -> config.Config:
    node = f'control = "{control_path}"' if control_path else ""
    return config.loads(f"""
[node]
name = "t1"
{node}
[[ports]]
name = "p1"
type = "memory"
host = {{ address = "10.1.0.1/24", mac = "{MAC1}" }}
[[ports]]
name = "p2"
type = "memory"
host = {{ address = "10.1.0.2/24", mac = "{MAC2}" }}
""")


@attrs.define
class Running:
    node: Node
    path: str
    server: ControlServer | None  # None when serve() started it from the config
    scope: trio.CancelScope

    def host(self, port: str):
        return next(r for r, _, _ in self.node.hosts if r.host.name == f"{port}-host")

    async def ping(self, count: int = 1) -> None:
        result = await self.host("p1").ping("10.1.0.2", count=count, timeout=TIMEOUT)
        assert result.received == count

    async def ask(self, **message) -> object:
        return await client.request(self.path, message)


@asynccontextmanager
async def running(tmp_path: Path, **server_options) -> AsyncIterator[Running]:
    """A node served by daemon.serve(); with ``server_options`` the ControlServer is started here instead."""
    path = tmp_path / "run" / "ctl.sock"  # the parent directory does not exist yet
    node = daemon.build(node_config(None if server_options else path))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        server = None
        if server_options:
            server = ControlServer(node, str(path), **server_options)
            await nursery.start(server.run)
        yield Running(node, str(path), server, nursery.cancel_scope)
        nursery.cancel_scope.cancel()


async def exchange(path: str, data: bytes) -> dict:
    """Send raw bytes, return the daemon's JSON answer."""
    with trio.fail_after(TIMEOUT):
        async with await trio.open_unix_socket(path) as stream:
            await stream.send_all(data)
            line, _ = await protocol.read_line(stream, protocol.MAX_RESPONSE, "response")
    return json.loads(line)


async def wait_until(condition, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` (a state change made by another task) under a deadline."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out waiting for {what}")


# -- show ---------------------------------------------------------------------------


async def test_show_fdb_lists_learned_and_static_entries_with_age(tmp_path):
    async with running(tmp_path) as r:
        await r.ping()
        r.node.switch.core.add_static(bytes.fromhex("020000000063"), "p2", now=trio.current_time())
        result = await r.ask(command="show", what="fdb")
        entries = {e["mac"]: e for e in result}
        assert set(entries) == {MAC1, MAC2, "02:00:00:00:00:63"}
        assert (entries[MAC1]["port"], entries[MAC1]["static"]) == ("p1", False)
        assert (entries[MAC2]["port"], entries[MAC2]["static"]) == ("p2", False)
        assert entries["02:00:00:00:00:63"]["static"] is True
        assert all(0 <= e["age"] < TIMEOUT for e in entries.values())
        assert [e["port"] for e in result] == ["p1", "p2", "p2"]  # sorted by port, then MAC

        text = format.format_fdb(result)
        lines = text.splitlines()
        assert lines[0].split() == ["port", "mac", "type", "age"]
        assert lines[1].split() == ["p1", MAC1, "learned", "0"]
        assert lines[3].split() == ["p2", "02:00:00:00:00:63", "static", "0"]   # its age, as --json gives it
        assert {line.index("02:") for line in lines[1:4]} == {lines[0].index("mac")}  # aligned columns
        assert lines[-1] == "3 entries"


async def test_a_long_listing_comes_whole_while_the_ports_keep_forwarding(tmp_path):
    """Thousands of entries are rendered a slice at a time and encoded off the ports' thread: the answer is
    complete and in order, and a ping answered during it shows that the switch ran meanwhile."""
    async with running(tmp_path) as r:
        await r.ping()   # both hosts learned
        now = trio.current_time()
        macs = [bytes([2, 0, 0, 1]) + i.to_bytes(2, "big") for i in range(5 * reports.LISTING_SLICE)]
        for mac in macs:
            r.node.switch.core.add_static(mac, "p2", now=now)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.ping)
            result = await r.ask(command="show", what="fdb")
        assert [e["mac"] for e in result if e["static"]] == [mac.hex(":") for mac in macs]
        assert len(result) == len(macs) + 2


async def test_fdb_age_is_seconds_since_the_last_frame(tmp_path):
    async with running(tmp_path) as r:
        await r.ping()
        learned = {e.mac.hex(":"): e.updated for e in r.node.switch.core.fdb}
        result = await reports.show_fdb(r.node, now=learned[MAC1] + 42.25)
        ages = {e["mac"]: e["age"] for e in result}
        assert ages[MAC1] == 42.25
        assert ages[MAC2] == round(learned[MAC1] + 42.25 - learned[MAC2], 3)
        assert format.format_fdb(result).splitlines()[1].split()[-1] == "42"


async def test_show_ports_matches_what_the_hosts_sent_and_received(tmp_path):
    async with running(tmp_path) as r:
        await r.ping(3)
        result = await r.ask(command="show", what="ports")
        ports = {p["name"]: p for p in result}
        assert list(ports) == ["p1", "p2"]
        for name in ("p1", "p2"):
            far_end = r.host(name).port.statistics()  # the independent side of the link
            p = ports[name]
            assert (p["type"], p["up"], p["closed"]) == ("memory", True, False)
            assert p["rx"]["frames"] == far_end.tx_frames and p["rx"]["bytes"] == far_end.tx_bytes
            assert p["tx"]["frames"] == far_end.rx_frames and p["tx"]["bytes"] == far_end.rx_bytes
            assert p["rx"]["frames"] >= 4  # an ARP frame and 3 ICMP
            assert p["tx_queue"] == {"depth": 0, "limit": 1024, "tail_dropped": 0,
                                     "sent_batches": p["tx_queue"]["sent_batches"]}
            assert p["bridge"]["rx_frames"] == p["rx"]["frames"]

        text = format.format_ports(result)
        header, row1, row2 = text.splitlines()
        assert header.split()[:4] == ["port", "type", "state", "rx-frames"]
        assert row1.split()[:4] == ["p1", "memory", "up", str(ports["p1"]["rx"]["frames"])]
        assert len(header) == len(row1) == len(row2)  # numbers right-aligned under their headers


async def test_show_stats_counts_forwarding_drops_and_tail_drops(tmp_path):
    async with running(tmp_path) as r:
        await r.ping(3)
        # A multicast source is a counted drop; the bridge keeps forwarding.
        bad = bytes.fromhex("ffffffffffff" "010000000001" "0800") + bytes(46)
        await r.host("p1").port.send_batch([bad])
        await r.ping()
        # The shell's own reason: more frames for p2 than its queue holds, queued in one go.
        frame = bytes.fromhex("020000000002" "020000000001" "88b5") + bytes(46)
        r.node.switch.dispatch([Transmit("p2", [frame] * 1500)])

        result = await r.ask(command="show", what="stats")
        # unicast: the ARP reply, 4 echo requests, 4 replies; flooded: the ARP request
        assert result["bridge"] == {"unicast": 9, "flooded": 1}
        assert result["drops"]["invalid-source"] == 1
        assert result["drops"]["tx-queue-full"] == 1500 - 1024
        assert set(result["drops"]) >= {"truncated", "link-local", "same-port", "port-down", "no-egress"}
        assert result["fdb"]["entries"] == 2 and result["fdb"]["learned"] == 2
        assert result["ports"]["p1"]["rx_dropped"] == 1
        assert result["ports"]["p2"]["tail_dropped"] == 1500 - 1024
        assert result["captures"] == []
        # the control socket's own counters; the client asking is the one active request
        assert result["control"] == {
            "requests": {"limit": server.MAX_REQUESTS, "active": 1, "refused": 0},
            "captures": {"limit": server.MAX_CAPTURES, "active": 0, "refused": 0},
            "timed_out": 0, "stalled": 0, "failed": 0,
        }

        text = format.format_stats(result)
        assert ("control: 1/16 requests, 0/16 captures; refused 0 requests, 0 captures;"
                " 0 timed out, 0 stalled, 0 failed") in text.splitlines()
        assert "bridge: 9 unicast, 1 flooded" in text
        assert any(line.split() == ["invalid-source", "1"] for line in text.splitlines())
        assert any(line.split() == ["tx-queue-full", "476"] for line in text.splitlines())
        assert "fdb: 2 entries, 2 learned" in text
        # the dropped frame itself is visible, with its reason and where it came in
        assert result["recent_drops"] == [
            {"port": "p1", "reason": "invalid-source", "bytes": len(bad), "head": bad[:14].hex()}
        ]
        assert any(line.split() == ["p1", "invalid-source", "60", bad[:14].hex()] for line in text.splitlines())


async def test_show_stats_lists_every_drop_reason_unless_asked_for_those_that_counted(tmp_path):
    async with running(tmp_path) as r:
        bad = bytes.fromhex("ffffffffffff" "010000000001" "0800") + bytes(46)   # a multicast source: dropped
        await r.host("p1").port.send_batch([bad])
        await r.ping()   # after the bad frame on the same link: it has been judged
        every = await r.ask(command="show", what="stats")
        assert list(every["drops"]) == [str(reason) for reason in DropReason]
        counted = await r.ask(command="show", what="stats", nonzero=True)
        assert counted["drops"] == {"invalid-source": 1}
        assert format.format_stats(counted).splitlines()[2:4] == ["drops:", "  reason          frames"]
        assert "drops: none" in format.format_stats({**counted, "drops": {}})
        with pytest.raises(ControlError, match=r"^show: 'nonzero' must be true or false, got 1$"):
            await r.ask(command="show", what="stats", nonzero=1)


async def test_a_static_entry_shows_the_same_age_in_the_table_as_in_json(tmp_path):
    async with running(tmp_path) as r:
        now = trio.current_time()
        r.node.switch.core.add_static(bytes.fromhex("020000000063"), "p2", now=now)
        [entry] = [e for e in await reports.show_fdb(r.node, now=now + 42.5) if e["static"]]
        assert entry["age"] == 42.5
        [row] = [line.split() for line in format.format_fdb([entry]).splitlines() if "static" in line]
        assert row == ["p2", "02:00:00:00:00:63", "static", "42"]


# -- the protocol's refusals -----------------------------------------------------------


async def test_unknown_command_and_target_are_clear_errors(tmp_path):
    async with running(tmp_path) as r:
        with pytest.raises(ControlError, match=r"unknown command 'frobnicate' \(available: attach, capture"):
            await r.ask(command="frobnicate")
        with pytest.raises(ControlError, match=r"cannot show 'lease' \(available: ports, fdb, arp, routes, nat, peers, leases, stats\)"):
            await r.ask(command="show", what="lease")
        with pytest.raises(ControlError, match=r"this daemon has no overlay: add \[overlay\]"):
            await r.ask(command="show", what="peers")
        with pytest.raises(ControlError, match=r"show: 'what' is required"):
            await r.ask(command="show")
        assert len(await r.ask(command="show", what="ports")) == 2  # still serving


@pytest.mark.parametrize("data, message", [
    (b"show fdb\n", "malformed request: not a JSON line"),
    (b'["show", "fdb"]\n', "malformed request: expected a JSON object"),
    (b'{"what": "fdb"}\n', "malformed request: \"command\" (a string) is required"),
    (b'{"command": "show", "what": 7}\n', "show: 'what' must be a string, got 7"),
])
async def test_malformed_request_is_refused(tmp_path, data, message):
    async with running(tmp_path) as r:
        response = await exchange(r.path, data)
        assert response["ok"] is False
        assert response["error"].startswith(message)


async def test_oversized_request_is_refused(tmp_path):
    async with running(tmp_path) as r:
        response = await exchange(r.path, b'{"command": "show", "what": "' + b"x" * 20000)
        assert response == {"ok": False, "error": f"request too long (more than {protocol.MAX_REQUEST} bytes)"}


async def test_silent_client_times_out(tmp_path):
    async with running(tmp_path, timeout=0.2) as r:
        response = await exchange(r.path, b"")  # connect, send nothing, wait
        assert response == {"ok": False, "error": "timed out after 0.2 s"}


async def test_clients_beyond_the_cap_are_refused(tmp_path):
    async with running(tmp_path, max_requests=1) as r:
        async with await trio.open_unix_socket(r.path) as idle:
            response = await exchange(r.path, b'{"command": "show", "what": "ports"}\n')
            assert response == {"ok": False, "error": "too many requests at once (at most 1)"}
            for _ in range(3):  # refused clients that hang up at once do not upset the server
                async with await trio.open_unix_socket(r.path):
                    pass
            await idle.send_all(b'{"command": "show", "what": "ports"}\n')
            line, _ = await protocol.read_line(idle, protocol.MAX_RESPONSE, "response")
            assert json.loads(line)["ok"] is True
        assert r.server.statistics().requests.refused == 4


# -- attach / detach -----------------------------------------------------------------------


async def test_attach_and_detach_reach_the_node(tmp_path):
    async with running(tmp_path) as r:
        with pytest.raises(ControlError, match=r"^attach: port 'p1' already exists$"):
            await r.ask(command="attach", netns="c1", name="p1", address="10.1.0.9/24")
        with pytest.raises(ControlError, match=r"^detach: no port named 'zz'$"):
            await r.ask(command="detach", name="zz")
        assert await r.ask(command="detach", name="p2") == {"name": "p2"}
        assert [p["name"] for p in await r.ask(command="show", what="ports")] == ["p1"]


async def test_attach_on_a_node_without_it_is_a_clear_error(tmp_path):
    @attrs.define
    class OldNode:  # a node from before attach/detach existed
        switch: object
        config: object

    real = daemon.build(node_config(None))
    path = str(tmp_path / "ctl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(OldNode(real.switch, real.config), path).run)
        with pytest.raises(ControlError, match="attach is not available"):
            await client.request(path, {"command": "attach", "netns": "c1", "name": "c1", "address": "10.0.0.2/24"})
        with pytest.raises(ControlError, match="detach is not available"):
            await client.request(path, {"command": "detach", "name": "c1"})
        nursery.cancel_scope.cancel()


async def test_attach_fields_are_checked_as_the_config_checks_a_port(tmp_path):
    async with running(tmp_path) as r:
        with pytest.raises(ControlError, match=r"^attach: address: '10.1.0.9' needs a prefix length, like 10.0.0.1/24$"):
            await r.ask(command="attach", netns="c1", name="c9", address="10.1.0.9")
        with pytest.raises(ControlError, match=r"^attach: gateway: '10.1.0' is not an IPv4 address$"):
            await r.ask(command="attach", netns="c1", name="c9", address="10.1.0.9/24", gateway="10.1.0")
        with pytest.raises(ControlError, match=r"^attach: netns: '\.\.' is not a network namespace name"):
            await r.ask(command="attach", netns="..", name="c9", address="10.1.0.9/24")
        with pytest.raises(ControlError, match=r"^attach: mtu: must be between 68 and 65535, got 9$"):
            await r.ask(command="attach", netns="c1", name="c9", address="10.1.0.9/24", mtu=9)
        assert [p["name"] for p in await r.ask(command="show", what="ports")] == ["p1", "p2"]   # none reached it


def test_attach_check_names_the_field():
    port = protocol.attach_port({"netns": "c1", "name": "c9", "address": "10.0.0.9/24", "gateway": None, "mtu": None},
                                default_mtu=1450)
    assert (port.name, port.netns, str(port.address), port.gateway, port.mtu) == ("c9", "c1", "10.0.0.9/24", None, 1450)
    with pytest.raises(config.ConfigError) as refused:
        protocol.attach_port({"netns": "c1", "name": "a-name-too-long-for-linux", "address": "10.0.0.9/24"})
    assert refused.value.key == "name"


DROP_IN = """
[node]
control = "{control}"
[overlay]
backend = "udp"
network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
public_ip = "10.99.0.1"
device = "flannel0"
"""


async def test_drop_in_mode_asks_the_host_for_what_it_has_no_table_of(tmp_path):
    """Drop-in mode has no bridge and no router, and its config may not have them (the validator refuses a
    [router] there): `show` says where to look instead, never to add what would be refused."""
    with pytest.raises(config.ConfigError, match=r"drop-in mode hands containers and routing to the host kernel"):
        config.loads(DROP_IN.format(control=tmp_path / "x.sock") + '[[router.interfaces]]\nname = "gw"\n'
                     'address = "10.244.1.1/24"\n')
    node = daemon.build(config.loads(DROP_IN.format(control=tmp_path / "ctl.sock")), underlay=MemoryUnderlay())
    path = str(tmp_path / "ctl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(node, path).run)   # its devices stay closed: nothing here needs root
        for what, ask in (("routes", "ip route"), ("arp", "ip neigh"), ("nat", "iptables -t nat -L -n")):
            with pytest.raises(ControlError) as refused:
                await client.request(path, {"command": "show", "what": what})
            assert str(refused.value) == ("this daemon runs the overlay in drop-in mode on flannel0: the host kernel"
                                          f" routes, resolves and masquerades for it; ask the host (`{ask}`)")
        with pytest.raises(ControlError, match=r"drop-in mode on flannel0: it has no bridge, .*`show peers`"):
            await client.request(path, {"command": "show", "what": "fdb"})
        [underlay] = await client.request(path, {"command": "show", "what": "ports"})
        assert (underlay["name"], underlay["bridge"], underlay["router_interface"]) == ("underlay", None, None)
        stats = await client.request(path, {"command": "show", "what": "stats"})
        assert (stats["bridge"], stats["router"], stats["ports"]) == (None, None, {})
        assert format.format_stats(stats).startswith("bridge: none (drop-in mode)")
        nursery.cancel_scope.cancel()


# -- the socket file ------------------------------------------------------------------------


async def test_socket_is_private_and_removed_on_shutdown(tmp_path):
    async with running(tmp_path) as r:
        info = os.stat(r.path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
    assert not os.path.exists(r.path)
    with pytest.raises(ControlError, match="no daemon is listening on"):
        await client.request(r.path, {"command": "show", "what": "ports"})


async def test_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "run" / "ctl.sock"
    path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a socket file nobody listens on, as a killed daemon leaves it
    dead.close()
    with pytest.raises(ControlError, match=r"no daemon is listening on .*\(is `vswitch run` running\? "
                                           r"is \[node\] control set\?\)"):
        await client.request(str(path), {"command": "show", "what": "ports"})
    async with running(tmp_path) as r:
        assert await r.ask(command="show", what="fdb") == []


async def test_a_second_server_on_a_live_socket_is_refused(tmp_path):
    async with running(tmp_path) as r:
        with pytest.raises(ControlError, match="another daemon is already listening on"):
            with trio.fail_after(TIMEOUT):
                await ControlServer(r.node, r.path).run()
        assert len(await r.ask(command="show", what="ports")) == 2  # the first one still answers


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "ctl.sock"
    path.write_text("precious")
    node = daemon.build(node_config(None))
    with pytest.raises(ControlError, match="exists and is not a socket"):
        with trio.fail_after(TIMEOUT):
            await ControlServer(node, str(path)).run()
    assert path.read_text() == "precious"


async def test_client_errors_name_the_cause(tmp_path, monkeypatch):
    with pytest.raises(ControlError, match=r"no daemon is listening on .*missing\.sock"):
        await client.request(str(tmp_path / "missing.sock"), {"command": "show", "what": "fdb"})

    async def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trio, "open_unix_socket", denied)
    with pytest.raises(ControlError, match=r"permission denied on .*run this as root"):
        await client.request(str(tmp_path / "root.sock"), {"command": "show", "what": "fdb"})


# -- capture --------------------------------------------------------------------------------


class Sink(io.BytesIO):
    """A pcap destination that says when the capture has started (the global header arrived)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = trio.Event()

    def write(self, data) -> int:
        self.started.set()
        return super().write(data)


def records_in(pcap: bytes) -> int:
    records = PcapRecords()
    records.feed(pcap)
    return records.records


async def test_capture_streams_a_pcap_of_the_ping(tmp_path):
    async with running(tmp_path) as r:
        sink = Sink()
        done = trio.Event()
        written = []

        async def capture():
            written.append(await client.capture(r.path, "p1", sink, count=6))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture)
            with trio.fail_after(TIMEOUT):
                await sink.started.wait()
            await r.ping(2)
            with trio.fail_after(TIMEOUT):
                await done.wait()

    assert written == [6]
    packets = rdpcap(io.BytesIO(sink.getvalue()))
    assert len(packets) == 6
    arp = [p for p in packets if ARP in p]
    icmp = [p for p in packets if ICMP in p]
    assert [(p[ARP].op, p[ARP].psrc, p[ARP].pdst) for p in arp] == [(1, "10.1.0.1", "10.1.0.2"),
                                                                    (2, "10.1.0.2", "10.1.0.1")]
    assert sorted((p[ICMP].type, p[IP].src, p[IP].dst) for p in icmp) == [
        (0, "10.1.0.2", "10.1.0.1"), (0, "10.1.0.2", "10.1.0.1"),
        (8, "10.1.0.1", "10.1.0.2"), (8, "10.1.0.1", "10.1.0.2"),
    ]
    assert all(p[Ether].src in (MAC1, MAC2) for p in packets)
    assert all(abs(float(p.time) - time.time()) < 60 for p in packets)  # real capture times


async def test_capture_count_cuts_a_batch(tmp_path):
    async with running(tmp_path) as r:
        sink = Sink()
        written = []
        async with trio.open_nursery() as nursery:
            async def capture():
                written.append(await client.capture(r.path, "p1", sink, count=3))

            nursery.start_soon(capture)
            with trio.fail_after(TIMEOUT):
                await sink.started.wait()
            frames = [bytes.fromhex("020000000002" "020000000001" "88b5") + bytes([i]) * 46 for i in range(10)]
            await r.host("p1").port.send_batch(frames)  # one rx batch of ten
        assert written == [3]
        assert [bytes(p) for p in rdpcap(io.BytesIO(sink.getvalue()))] == frames[:3]


async def test_slow_capture_reader_loses_counted_frames_and_never_blocks_the_switch(tmp_path):
    async with running(tmp_path, capture_frames=64, capture_bytes=1 << 20) as r:
        async with await trio.open_unix_socket(r.path) as reader:  # asks, then never reads
            await reader.send_all(b'{"command": "capture", "port": "p1"}\n')
            line, _ = await protocol.read_line(reader, 1000, "response")  # the monitor is in place
            assert json.loads(line)["ok"] is True
            # 64 batches of 64 frames of 1400 bytes: far more than the socket and the capture buffer hold.
            burst = bytes.fromhex("020000000002" "020000000001" "88b5") + bytes(1386)
            h1 = r.host("p1").port
            for _ in range(64):
                await h1.send_batch([burst] * 64)
            await r.ping()  # after the burst on the same link: the switch kept forwarding

            stats = await r.ask(command="show", what="stats")
            [summary] = stats["captures"]
            assert summary["port"] == "p1"
            assert summary["dropped"] > 2000
            assert summary["buffered"] <= 64
            assert stats["ports"]["p2"]["tx_frames"] >= 64 * 64  # every burst frame was switched
        # The reader hung up: the capture ends and its monitor is removed.
        await wait_until(lambda: not r.server.captures, "the capture to end")
        assert r.node.switch._runners["p1"].monitors == []


async def test_capture_ends_when_its_port_is_detached(tmp_path):
    async with running(tmp_path) as r:
        sink = Sink()
        written = []
        async with trio.open_nursery() as nursery:
            async def capture():
                written.append(await client.capture(r.path, "p2", sink))

            nursery.start_soon(capture)
            with trio.fail_after(TIMEOUT):
                await sink.started.wait()
            await r.ask(command="detach", name="p2")
        assert written == [0]
        assert len(rdpcap(io.BytesIO(sink.getvalue()))) == 0  # a valid, empty pcap


async def test_capture_of_an_unknown_port_is_refused(tmp_path):
    async with running(tmp_path) as r:
        with pytest.raises(ControlError, match=r"no port named 'p9' \(ports: p1, p2\)"):
            await client.capture(r.path, "p9", io.BytesIO())
        with pytest.raises(ControlError, match="count must be at least 1"):
            await client.capture(r.path, "p1", io.BytesIO(), count=0)


async def test_capture_ends_at_daemon_shutdown(tmp_path):
    sink = Sink()
    written = []
    async with trio.open_nursery() as outer:
        async with running(tmp_path) as r:
            async def capture():
                written.append(await client.capture(r.path, "p1", sink))

            outer.start_soon(capture)
            with trio.fail_after(TIMEOUT):
                await sink.started.wait()
            await r.ping()  # ARP request and reply, echo request and reply
            await wait_until(lambda: records_in(sink.getvalue()) == 4, "the four frames to reach the client")
        # leaving `running` cancels the daemon; the client sees the stream end
    assert written == [4]
    assert len(rdpcap(io.BytesIO(sink.getvalue()))) == 4


# -- limits: two pools, timeouts, stalls; one client's failure is its own -------------------------

CAPTURE_P1 = b'{"command": "capture", "port": "p1"}\n'
BURST = bytes.fromhex("020000000002" "020000000001" "88b5") + bytes(1386)


async def idle_clients(path: str, n: int, request: bytes, stack: AsyncExitStack) -> list[trio.SocketStream]:
    """``n`` connections, one after the other, that send ``request`` (or nothing) and then never read."""
    clients = []
    for _ in range(n):
        client = await stack.enter_async_context(await trio.open_unix_socket(path))
        await client.send_all(request)
        await trio.testing.wait_all_tasks_blocked()  # the server has done what it will with it
        clients.append(client)
    return clients


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything the daemon sent, up to its end of the connection."""
    data = bytearray()
    while chunk := await stream.receive_some(1 << 20):
        data += chunk
    return bytes(data)


async def pinging(r: Running, interval: float) -> None:
    """Steady traffic: p1's host pings p2's every ``interval`` seconds."""
    while True:
        await r.ping()
        await trio.sleep(interval)


async def test_idle_captures_never_lock_out_show_and_are_ended_when_they_stall(tmp_path, autojump_clock):
    stall = 10.0
    async with running(tmp_path, stall_timeout=stall, capture_frames=64) as r, AsyncExitStack() as stack:
        reader = Sink()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.capture, r.path, "p1", reader)  # takes everything it is sent
            await reader.started.wait()
            idle = await idle_clients(r.path, 19, CAPTURE_P1, stack)
            started = trio.current_time()
            nursery.start_soon(pinging, r, 1.0)
            for _ in range(64):  # far more than the idle clients' sockets hold
                await r.host("p1").port.send_batch([BURST] * 64)

            with trio.fail_after(1):  # at once, not after some timeout (virtual seconds)
                stats = await r.ask(command="show", what="stats")
            control_stats = stats["control"]
            assert control_stats["captures"] == {"limit": 16, "active": 16, "refused": 4}  # 20 asked
            assert control_stats["requests"] == {"limit": 16, "active": 1, "refused": 0}
            assert control_stats["stalled"] == 0
            assert sum(c["dropped"] for c in stats["captures"]) > 15 * 2000  # the idle ones' buffers are full

            before = records_in(reader.getvalue())
            await wait_until(lambda: r.server.statistics().stalled == 15, "the idle captures to stall", 2 * stall)
            assert stall <= trio.current_time() - started < stall + 1
            assert [c.port for c in r.server.captures] == ["p1"]  # the reader's capture goes on ...
            assert records_in(reader.getvalue()) >= before + 2 * 9  # ... and got the pings meanwhile (2 frames each)
            assert (await r.ask(command="show", what="stats"))["control"]["captures"]["active"] == 1
            nursery.cancel_scope.cancel()

        # Every idle client's connection has ended (read_all returned). The 15 taken got their answer,
        # then pcap up to where they stopped reading; the other 4 were told why not.
        answers = [(await read_all(client)).split(b"\n", 1) for client in idle]
        taken = [pcap for line, pcap in answers if json.loads(line)["ok"]]
        assert len(taken) == 15 and all(pcap.startswith(b"\xd4\xc3\xb2\xa1") for pcap in taken)
        assert [json.loads(line) for line, _ in answers[15:]] == [
            {"ok": False, "error": "too many captures at once (at most 16)"}] * 4


async def test_silent_clients_time_out_while_captures_carry_on(tmp_path, autojump_clock):
    async with running(tmp_path, timeout=10.0) as r, AsyncExitStack() as stack:
        reader = Sink()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.capture, r.path, "p1", reader)
            await reader.started.wait()  # a capture: no longer a request
            started = trio.current_time()
            silent = await idle_clients(r.path, 20, b"", stack)
            stats = r.server.statistics()
            assert (stats.requests.active, stats.requests.refused, stats.captures.active) == (16, 4, 1)

            await r.ping()  # the capture pool carries on while the request pool is full
            await wait_until(lambda: records_in(reader.getvalue()) == 4, "the ping to reach the capture")

            answers = [json.loads(await read_all(client)) for client in silent]
            assert 10.0 <= trio.current_time() - started < 11.0
            assert answers == ([{"ok": False, "error": "timed out after 10 s"}] * 16
                               + [{"ok": False, "error": "too many requests at once (at most 16)"}] * 4)
            stats = (await r.ask(command="show", what="stats"))["control"]  # answered again
            assert (stats["timed_out"], stats["requests"]["refused"], stats["captures"]["active"]) == (16, 4, 1)
            nursery.cancel_scope.cancel()


async def test_a_quiet_ports_capture_is_not_a_stalled_one(tmp_path, autojump_clock):
    async with running(tmp_path, stall_timeout=10.0) as r:
        reader = Sink()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.capture, r.path, "p1", reader)
            await reader.started.wait()
            await trio.sleep(60)  # six stall timeouts (virtual) without a frame on p1
            assert records_in(reader.getvalue()) == 0
            assert len(r.server.captures) == 1 and r.server.statistics().stalled == 0
            await r.ping()
            await wait_until(lambda: records_in(reader.getvalue()) == 4, "the ping to reach the capture")
            nursery.cancel_scope.cancel()


def tracebacks(caplog, message: str) -> list:
    return [rec for rec in caplog.records if rec.exc_info and message in repr(rec.exc_info[1])]


async def test_a_failing_handler_costs_its_client_only(tmp_path, monkeypatch, caplog):
    async def boom(server, request):
        raise RuntimeError("handler on purpose")

    monkeypatch.setitem(server.COMMANDS, "boom", boom)
    async with running(tmp_path) as r:
        for _ in range(3):
            with pytest.raises(ControlError, match=r"^internal error in boom: RuntimeError\('handler on purpose'\)$"):
                await r.ask(command="boom")
        stats = await r.ask(command="show", what="stats")  # the server carries on
        assert stats["control"]["failed"] == 3
        assert "0 timed out, 0 stalled, 3 failed" in format.format_stats(stats)
    [record] = tracebacks(caplog, "handler on purpose")  # logged once for its place, with its traceback
    assert record.getMessage().startswith("control command 'boom' failed")


async def test_a_failing_capture_costs_its_client_only(tmp_path, monkeypatch, caplog):
    # the node has no control socket in its config, so it keeps the frames of its faults in the temporary directory
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    async with running(tmp_path, timeout=TIMEOUT) as r:
        # 1. The monitor callback a capture installed raises, inside p1's tasks.
        broken, good = Sink(), Sink()
        written = {}

        async def capture(name, sink):
            written[name] = await client.capture(r.path, "p1", sink)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, "broken", broken)
            with trio.fail_after(TIMEOUT):
                await broken.started.wait()
            [session] = r.server.captures

            def convert(frames):
                raise RuntimeError("monitor on purpose")

            monkeypatch.setattr(session, "_convert", convert)
            nursery.start_soon(capture, "good", good)
            with trio.fail_after(TIMEOUT):
                await good.started.wait()
            await r.ping(3)  # p1's tasks survived the callback's exception
            await wait_until(lambda: "broken" in written, "the broken capture to end")
            await wait_until(lambda: records_in(good.getvalue()) == 8, "the good capture to get the pings")
            assert written == {"broken": 0}
            assert [c.port for c in r.server.captures] == ["p1"]  # the good one goes on
            nursery.cancel_scope.cancel()
        assert r.node.switch.port_failures == 0

        # 2. Writing the stream raises.
        class BrokenWriter(PcapWriter):
            def write(self, frames):
                raise RuntimeError("stream on purpose")

        monkeypatch.setattr(live_capture, "PcapWriter", BrokenWriter)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture, "stream", Sink())
            await wait_until(lambda: r.server.captures, "the capture to start")
            await r.ping()
            await wait_until(lambda: "stream" in written, "the broken stream to end")
        assert written["stream"] == 0

        stats = await r.ask(command="show", what="stats")
        # the stream's bug is the control socket's; the callback's, run in p1's task, the switch's (site monitor)
        assert (stats["control"]["failed"], stats["control"]["captures"]["active"]) == (1, 0)
        assert stats["faults"]["by_site"] == [{"site": "monitor", "port": "p1", "faults": 1}]
        assert stats["drops"]["internal-error"] == 0   # the frames themselves went on
    assert len(tracebacks(caplog, "monitor on purpose")) == 1
    assert len(tracebacks(caplog, "stream on purpose")) == 1


def test_pcap_records_only_releases_whole_records():
    out = io.BytesIO()
    writer = PcapWriter(out, clock=lambda: 1.5)
    writer.write([b"\x01" * 60, b"\x02" * 1500])
    data = out.getvalue()
    records = PcapRecords()
    cut = len(data) - 10  # the stream stops ten bytes before the end of the second record
    released = b"".join(records.feed(data[i:min(i + 7, cut)]) for i in range(0, cut, 7))
    assert records.records == 1
    assert released == data[: 24 + 16 + 60]  # header and the first record; the cut second one is held back
    released += records.feed(data[cut:])
    assert released == data and records.records == 2
    with pytest.raises(ControlError, match="not a pcap stream"):
        PcapRecords().feed(b"HTTP/1.1 200 OK\r\n" + bytes(10))


# -- the command line (no daemon needed) --------------------------------------------------------


def test_cli_without_a_daemon_says_so(tmp_path, capsys):
    path = tmp_path / "none.sock"
    assert main(["show", "fdb", "--control", str(path)]) == 1
    assert f"vswitch show: no daemon is listening on {path}" in capsys.readouterr().err
    pcap = tmp_path / "never.pcap"
    assert main(["capture", "p1", "-w", str(pcap), "--control", str(path)]) == 1
    assert f"vswitch capture: no daemon is listening on {path}" in capsys.readouterr().err
    assert not pcap.exists()  # no empty file left behind


def test_a_capture_that_never_began_leaves_a_file_it_did_not_make(tmp_path, capsys):
    # `-w /dev/null` once removed /dev/null: the capture took a file it found for one of its own
    path = tmp_path / "none.sock"
    mine = tmp_path / "mine.pcap"
    mine.write_bytes(b"")
    assert main(["capture", "p1", "-w", str(mine), "--control", str(path)]) == 1
    assert mine.exists()
    fifo = tmp_path / "fifo"      # a file that is not a regular one, as /dev/null is not (and cannot tell())
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert main(["capture", "p1", "-w", str(fifo), "--control", str(path)]) == 1
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert capsys.readouterr().err.count(f"no daemon is listening on {path}") == 2


def test_cli_needs_to_know_which_daemon(tmp_path, capsys):
    assert main(["show", "ports"]) == 1
    assert "-c FILE" in capsys.readouterr().err
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nname = "x"\n')
    assert main(["show", "ports", "-c", str(cfg)]) == 1
    assert "sets no control socket" in capsys.readouterr().err
    assert main(["capture", "p1", "-w", str(tmp_path / "x.pcap"), "--config", str(cfg)]) == 1
    assert "sets no control socket" in capsys.readouterr().err
