"""The userspace router and NAT between real kernel stacks.

One topology serves the module; each test makes its own flows, so any one runs alone:

    outside ns        eth0 198.51.100.1/24 ── veth ── <uplink>, no address, in the daemon's namespace
                                                        │ packet port "uplink" = router interface ext 198.51.100.2/24
    c1 ns  10.244.1.2/24 ─ tap ─┐                       │
    c3 ns  10.244.3.2/24 ─ tap ─┤ bridge ─ gw1 10.244.1.1/24, gw3 10.244.3.1/24 (router interfaces on the bridge)
    c2 ns  10.244.2.2/24 ─ tap ──── router interface gw2 10.244.2.1/24 on the tap itself, mtu 1400

The router masquerades 10.244.0.0/16 out of ext and forwards ext's TCP port
8080 to c1:80 and UDP port 5300 to c3:5300. The kernel's own tools are the
oracle: ping's reading of ICMP errors, iperf3's server report of its peer,
tshark on the outside link, the kernel's route cache for the path MTU.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from netkit import (
    Daemon,
    Namespaces,
    ask_peer,
    in_ns,
    link_mac,
    outside_link,
    peer_server,
    ping,
    requires_root,
    sh,
    start_in_ns,
    stop,
    unique,
)

pytestmark = [requires_root, pytest.mark.timeout(120)]

needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (CI installs it)")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (CI installs it)")

OUTSIDE = "198.51.100.1"
EXT = "198.51.100.2"
C1, C2, C3 = "10.244.1.2", "10.244.2.2", "10.244.3.2"
GW1, GW2, GW3 = "10.244.1.1", "10.244.2.1", "10.244.3.1"


@attrs.frozen
class Topology:
    daemon: Daemon
    outside: str
    c1: str
    c2: str
    c3: str
    uplink: str
    taps: dict[str, str]   # namespace → its tap's name
    servers: dict[tuple[str, str, int], subprocess.Popen] = attrs.field(factory=dict)

    def serve(self, ns: str, kind: str, port: int) -> int:
        """A peer server (tcp or udp) on ``port`` in ``ns`` for the rest of the module."""
        if (ns, kind, port) not in self.servers:
            self.servers[ns, kind, port] = peer_server(ns, kind, port)
        return port


def _config(tmp: Path, c1: str, c2: str, c3: str, uplink: str, taps: dict[str, str]) -> Path:
    path = tmp / "router.toml"
    path.write_text(f"""
[node]
name = "rt"
control = "{tmp / 'ctl.sock'}"

[[ports]]
name = "{taps[c1]}"
type = "tap"
netns = "{c1}"
address = "{C1}/24"
gateway = "{GW1}"
[[ports]]
name = "{taps[c3]}"
type = "tap"
netns = "{c3}"
address = "{C3}/24"
gateway = "{GW3}"
[[ports]]
name = "{taps[c2]}"
type = "tap"
netns = "{c2}"
address = "{C2}/24"
gateway = "{GW2}"
mtu = 1400
[[ports]]
name = "uplink"
type = "packet"
device = "{uplink}"

[[router.interfaces]]
name = "gw1"
address = "{GW1}/24"
[[router.interfaces]]
name = "gw3"
address = "{GW3}/24"
[[router.interfaces]]
name = "gw2"
port = "{taps[c2]}"
address = "{GW2}/24"
[[router.interfaces]]
name = "ext"
port = "uplink"
address = "{EXT}/24"

[[router.routes]]
to = "0.0.0.0/0"
via = "{OUTSIDE}"

[[nat.masquerade]]
source = "10.244.0.0/16"
out = "ext"
exclude = ["10.244.0.0/16"]

[[nat.forward]]
protocol = "tcp"
port = 8080
to = "{C1}:80"
interface = "ext"
[[nat.forward]]
protocol = "udp"
port = 5300
to = "{C3}"
""")
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """The topology above, with a running daemon; everything it made is removed afterwards."""
    tmp = tmp_path_factory.mktemp("router")
    spaces = Namespaces()
    uplink = unique("u")
    daemon = topology = None
    try:
        outside, c1, c2, c3 = (spaces.create(prefix) for prefix in ("vo", "vc", "vc", "vc"))
        outside_link(uplink, outside, f"{OUTSIDE}/24")
        taps = {ns: unique("t") for ns in (c1, c2, c3)}
        daemon = Daemon(_config(tmp, c1, c2, c3, uplink, taps)).start()
        topology = Topology(daemon, outside, c1, c2, c3, uplink, taps)
        yield topology
    finally:
        for server in topology.servers.values() if topology else ():
            stop(server)
        if daemon is not None:
            daemon.kill()
        sh("ip", "link", "del", uplink, check=False)  # its peer goes with it
        spaces.cleanup()


def _ping(ns: str, address: str, *options: str, count: int = 1, wait: float = 2) -> tuple[int, str]:
    result = in_ns(ns, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait), *options, address,
                   check=False, timeout=count * (wait + 1) + 5)
    return result.returncode, result.stdout + result.stderr


def test_container_reaches_outside_host_as_the_router(net):
    assert ping(net.c1, OUTSIDE, count=3), net.daemon.log[-3000:]
    # The outside host has no route to 10.244.0.0/16: only a masqueraded source can be answered.
    assert in_ns(net.outside, "ip", "route", "get", C1, check=False).returncode != 0

    local, seen = ask_peer(net.c1, "udp", OUTSIDE, net.serve(net.outside, "udp", 7001))
    assert local.startswith(f"{C1}:")
    assert seen.split(":")[0] == EXT
    local, seen = ask_peer(net.c3, "tcp", OUTSIDE, net.serve(net.outside, "tcp", 7002))
    assert local.startswith(f"{C3}:") and seen.split(":")[0] == EXT


@needs_tshark
def test_outside_link_carries_only_the_router_address(net):
    assert ping(net.c1, OUTSIDE)  # ARP settled, so the capture sees just the pings
    tshark = start_in_ns(net.outside, "tshark", "-n", "-l", "-i", "eth0", "-f", "icmp", "-c", "4",
                         "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type",
                         ready="Capture started", stream="stderr", timeout=30)
    try:
        code, output = _ping(net.c1, OUTSIDE, count=2)
        assert code == 0, output
        out, _ = tshark.communicate(timeout=15)  # -c 4: it stops by itself after two requests and replies
    except subprocess.TimeoutExpired:
        out, _ = stop(tshark)                     # the comparison below shows what it did see
    finally:
        stop(tshark)
    packets = [line.split("\t") for line in out.splitlines()]
    assert packets == [[EXT, OUTSIDE, "8"], [OUTSIDE, EXT, "0"]] * 2


@needs_iperf3
def test_tcp_and_udp_streams_through_nat(net):
    server = start_in_ns(net.outside, "iperf3", "-s", "--forceflush", ready="Server listening")
    try:
        tcp = in_ns(net.c1, "iperf3", "-c", OUTSIDE, "-t", "2", "-J", "--get-server-output",
                    "--connect-timeout", "3000", check=False, timeout=30)
        report = json.loads(tcp.stdout)
        assert tcp.returncode == 0 and "error" not in report, report.get("error")
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
        local_port = report["start"]["connected"][0]["local_port"]
        # the server saw the router's address; the mapping kept the container's port (it was free)
        assert f"connected to {EXT} port {local_port}\n" in report["server_output_text"]

        udp = in_ns(net.c3, "iperf3", "-c", OUTSIDE, "-u", "-b", "20M", "-t", "1", "-J", "--get-server-output",
                    "--connect-timeout", "3000", check=False, timeout=30)
        report = json.loads(udp.stdout)
        assert udp.returncode == 0 and "error" not in report, report.get("error")
        assert f"connected to {EXT} port" in report["server_output_text"]
        received = report["end"]["sum_received"]   # as the server counted them
        assert received["packets"] - received["lost_packets"] > 500, received
        assert received["lost_percent"] < 10, received
    finally:
        stop(server)


def test_ttl_expiring_at_the_router_is_reported_by_the_gateway(net):
    code, output = _ping(net.c1, OUTSIDE, "-t", "1")
    assert code != 0
    assert f"From {GW1} icmp_seq=1 Time to live exceeded" in output, output
    code, output = _ping(net.c1, OUTSIDE, "-t", "2")  # one hop, the router, then the outside host
    assert code == 0, output
    # through two router hops (gw1 → gw2) the same holds for a container behind the router
    code, output = _ping(net.c1, C2, "-t", "1")
    assert f"From {GW1} icmp_seq=1 Time to live exceeded" in output, output
    code, output = _ping(net.c1, C2, "-t", "2")
    assert code == 0, output
    assert net.daemon.show("stats")["router"]["icmp_sent"]["time-exceeded"] >= 2


def test_oversized_df_packet_gets_fragmentation_needed_and_kernel_caches_pmtu(net):
    assert ping(net.c1, C2)
    code, output = _ping(net.c1, C2, "-M", "do", "-s", "1450")
    assert code != 0
    assert f"From {GW1} icmp_seq=1 Frag needed and DF set (mtu = 1400)" in output, output
    assert net.daemon.show("stats")["router"]["icmp_sent"]["fragmentation-needed"] >= 1
    route = in_ns(net.c1, "ip", "route", "get", C2).stdout
    assert "mtu 1400" in route, route   # the kernel believed the router
    code, output = _ping(net.c1, C2, "-M", "do", "-s", str(1400 - 28))
    assert code == 0, output
    # without DF the router fragments, and c2's kernel reassembles and answers
    code, output = _ping(net.c3, C2, "-M", "dont", "-s", "3000")
    assert code == 0, output


def test_port_forward_reaches_a_container_that_sees_the_real_client(net):
    net.serve(net.c1, "tcp", 80)
    local, seen = ask_peer(net.outside, "tcp", EXT, 8080)
    assert local.startswith(f"{OUTSIDE}:")
    assert seen == local  # not masqueraded: the container sees who really connected

    net.serve(net.c3, "udp", 5300)
    local, seen = ask_peer(net.outside, "udp", EXT, 5300)
    assert seen == local

    # a port nobody forwards: the router itself refuses the connection
    refused = in_ns(net.outside, sys.executable, "-c",
                    f"import socket; socket.create_connection(('{EXT}', 8081), timeout=3)", check=False)
    assert "ConnectionRefusedError" in refused.stderr, refused.stderr


def test_containers_on_different_router_interfaces_talk_without_nat(net):
    # c1 and c3: both on the bridge, routed between gw1 and gw3
    local, seen = ask_peer(net.c1, "tcp", C3, net.serve(net.c3, "tcp", 7003))
    assert seen == local and local.startswith(f"{C1}:")
    # c2 sits on a tap that is itself a router interface
    local, seen = ask_peer(net.c2, "udp", C1, net.serve(net.c1, "udp", 7004))
    assert seen == local and local.startswith(f"{C2}:")
    local, seen = ask_peer(net.c3, "tcp", C2, net.serve(net.c2, "tcp", 7005))
    assert seen == local and local.startswith(f"{C3}:")


def test_show_routes_arp_and_nat_over_the_control_socket(net):
    # a fresh flow each way, so the neighbours, counters and connections below exist now
    assert ping(net.c2, OUTSIDE)
    local, seen = ask_peer(net.c1, "udp", OUTSIDE, net.serve(net.outside, "udp", 7010))
    net.serve(net.c1, "tcp", 80)
    forwarded, _ = ask_peer(net.outside, "tcp", EXT, 8080)

    routes = net.daemon.show("routes")
    interfaces = {i["name"]: i for i in routes["interfaces"]}
    assert {name: (i["address"], i["mtu"], i["up"]) for name, i in interfaces.items()} == {
        "gw1": (f"{GW1}/24", 1500, True), "gw3": (f"{GW3}/24", 1500, True),
        "gw2": (f"{GW2}/24", 1400, True), "ext": (f"{EXT}/24", 1500, True),
    }
    assert interfaces["ext"]["rx_packets"] > 0 and interfaces["ext"]["tx_packets"] > 0
    table = {(r["to"], r["via"], r["interface"], r["type"]) for r in routes["routes"]}
    assert table == {
        ("0.0.0.0/0", OUTSIDE, "ext", "static"), ("198.51.100.0/24", None, "ext", "connected"),
        ("10.244.1.0/24", None, "gw1", "connected"), ("10.244.2.0/24", None, "gw2", "connected"),
        ("10.244.3.0/24", None, "gw3", "connected"),
    }
    human = net.daemon.cli("show", "routes").stdout
    assert "0.0.0.0/0" in human and OUTSIDE in human and "1400" in human

    arp = {(e["interface"], e["address"]): e for e in net.daemon.show("arp")}
    neighbours = (("ext", net.outside, OUTSIDE, "eth0"), ("gw1", net.c1, C1, net.taps[net.c1]),
                  ("gw2", net.c2, C2, net.taps[net.c2]))
    for interface, ns, address, device in neighbours:
        entry = arp[interface, address]
        assert entry["mac"] == link_mac(ns, device)
        assert entry["state"] in ("reachable", "stale"), entry
    assert link_mac(net.outside, "eth0") in net.daemon.cli("show", "arp").stdout

    nat = net.daemon.show("nat")
    assert nat["rules"]["masquerade"] == [{"source": "10.244.0.0/16", "out": "ext", "exclude": ["10.244.0.0/16"]}]
    assert {"protocol": "tcp", "port": 8080, "to": C1, "to_port": 80, "interface": "ext"} in nat["rules"]["forward"]

    def endpoints(text: str, other: str, port: int) -> dict:
        ip, sport = text.split(":")
        return {"src": ip, "sport": int(sport), "dst": other, "dport": port}

    connections = [(c["protocol"], c["kind"], c["original"], c["reply"], c["state"]) for c in nat["connections"]]
    # masqueraded: the reply comes from the outside host to the address and port it saw
    snat = ("udp", "snat", endpoints(local, OUTSIDE, 7010), endpoints(f"{OUTSIDE}:7010", EXT, int(seen.split(":")[1])),
            "REPLIED")
    assert snat in connections, connections
    # forwarded: the reply comes from the container's port 80
    ip, port = forwarded.split(":")
    dnat = [c for c in connections if c[:3] == ("tcp", "dnat", endpoints(forwarded, EXT, 8080))]
    assert len(dnat) == 1 and dnat[0][3] == {"src": C1, "sport": 80, "dst": ip, "dport": int(port)}, connections
    assert nat["statistics"]["connections"] == len(nat["connections"]) >= 2
    human = net.daemon.cli("show", "nat").stdout
    assert f"{local} -> {OUTSIDE}:7010" in human, human
