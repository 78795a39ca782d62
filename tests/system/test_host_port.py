"""The host port: the VM reaches its pods and other nodes' pods, and pods reach the VM, as with flannel's cni0.

    vm1 ns (the "host" of node1)                          vm2 ns (node2's)
      eth0 10.99.0.1/24 ─────────── veth ─────────── eth0 10.99.0.2/24
      host0 10.244.1.254/24 (tap, left in vm1)             host0 10.244.2.254/24
        10.244.0.0/16 via 10.244.1.1                         10.244.0.0/16 via 10.244.2.1
      daemon node1: gw 10.244.1.1, c1 10.244.1.2           daemon node2: gw 10.244.2.1, c2 10.244.2.2
      (live restore)

Each daemon runs inside its VM's namespace, so that namespace is the host's. The host keeps its own default
route: only the cluster network goes via the router. Addresses are not translated on the way: the pods see the
host's address, and the host the pods'.
"""

import json
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netkit import (
    Daemon,
    Namespaces,
    ask_peer,
    in_ns,
    peer_server,
    ping,
    requires_root,
    sh,
    start_in_ns,
    stop,
    underlay,
)

from vswitch.testing.etcd import EtcdServer, etcd_missing

pytestmark = [requires_root, pytest.mark.timeout(120)]

NETWORK = "10.244.0.0/16"
POD = {1: "10.244.1.2", 2: "10.244.2.2"}
HOST = {1: "10.244.1.254", 2: "10.244.2.254"}


def node_config(tmp: Path, n: int, pod_ns: str) -> str:
    return f"""
[node]
name = "node{n}"
control = "{tmp / f"n{n}.sock"}"
state_dir = "{tmp / f"state{n}"}"
live_restore = {"true" if n == 1 else "false"}

[[ports]]
name = "c{n}"
type = "tap"
netns = "{pod_ns}"
address = "{POD[n]}/24"
gateway = "10.244.{n}.1"

[[ports]]
name = "host0"
type = "tap"
address = "{HOST[n]}/24"
gateway = "10.244.{n}.1"
routes = ["{NETWORK}"]

[[router.interfaces]]
name = "gw"
address = "10.244.{n}.1/24"

[overlay]
backend = "vxlan"
network = "{NETWORK}"
subnet = "10.244.{n}.0/24"
public_ip = "10.99.0.{n}"
vtep_mac = "02:00:00:00:0{n}:01"

[[overlay.peers]]
subnet = "10.244.{3 - n}.0/24"
public_ip = "10.99.0.{3 - n}"
vtep_mac = "02:00:00:00:0{3 - n}:01"
"""


class Topology:
    """Two VMs on one underlay, a daemon and a pod on each."""

    def __init__(self, tmp: Path, spaces: Namespaces) -> None:
        self.vm = {1: spaces.create("vm"), 2: spaces.create("vm")}
        self.pod = {1: spaces.create("vp"), 2: spaces.create("vp")}
        underlay(self.vm[1], self.vm[2])
        for n in (1, 2):   # the VM's own default route, which the host port must leave alone
            sh("ip", "-n", self.vm[n], "route", "add", "default", "via", "10.99.0.254")
        self.configs = {n: tmp / f"node{n}.toml" for n in (1, 2)}
        self.daemons: dict[int, Daemon] = {}
        for n in (1, 2):
            self.configs[n].write_text(node_config(tmp, n, self.pod[n]))
            self.start(n)

    def start(self, n: int) -> Daemon:
        self.daemons[n] = Daemon(self.configs[n], netns=self.vm[n]).start()
        return self.daemons[n]

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Iterator[Topology]:
    spaces = Namespaces()
    topology = None
    try:
        topology = Topology(tmp_path_factory.mktemp("hostport"), spaces)
        yield topology
    finally:
        if topology is not None:
            topology.close()
        spaces.cleanup()   # the host ports go with their VMs' namespaces


def routes(ns: str) -> list[dict]:
    return json.loads(sh("ip", "-n", ns, "-j", "route", "show").stdout)


def ifindex(ns: str, device: str) -> int:
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", device).stdout)[0]["ifindex"]


def test_the_host_port_routes_the_cluster_network_and_leaves_the_default_route(net):
    table = {r["dst"]: r for r in routes(net.vm[1])}
    assert table["default"]["gateway"] == "10.99.0.254" and table["default"]["dev"] == "eth0"
    assert (table[NETWORK]["gateway"], table[NETWORK]["dev"]) == ("10.244.1.1", "host0")
    assert table["10.244.1.0/24"]["dev"] == "host0"   # the local pods: on the link, as on cni0


def test_the_host_pings_its_pod_and_a_pod_on_another_node(net):
    for n in (1, 2):
        for target in POD.values():
            assert ping(net.vm[n], target), f"vm{n} -> {target}\n{net.daemons[n].log[-1500:]}"


def test_the_host_reaches_pods_over_tcp_and_they_see_its_address(net):
    for n, port in ((1, 5001), (2, 5002)):
        server = peer_server(net.pod[n], "tcp", port)
        try:
            local, seen = ask_peer(net.vm[1], "tcp", POD[n], port)
            assert local.split(":")[0] == HOST[1] and seen == local   # no translation either way
        finally:
            stop(server)


def test_pods_of_both_nodes_reach_a_server_on_the_hosts_address(net):
    server = peer_server(net.vm[1], "tcp", 5003)
    try:
        for n in (1, 2):
            local, seen = ask_peer(net.pod[n], "tcp", HOST[1], 5003)
            assert local.split(":")[0] == POD[n] and seen == local
    finally:
        stop(server)


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (CI installs it)")
def test_a_tcp_stream_from_the_host_to_a_pod_on_another_node(net):
    server = start_in_ns(net.pod[2], "iperf3", "-s", "-1", "--forceflush", ready="Server listening")
    try:
        result = in_ns(net.vm[1], "iperf3", "-c", POD[2], "-t", "1", "-J", "--connect-timeout", "3000",
                       check=False, timeout=30)
        report = json.loads(result.stdout)
        assert result.returncode == 0 and "error" not in report, report.get("error")
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
    finally:
        stop(server)


def test_with_live_restore_the_host_port_outlives_a_restart(net):
    before = ifindex(net.vm[1], "host0")
    assert net.daemons[1].stop(signal.SIGTERM) == 0
    assert ifindex(net.vm[1], "host0") == before   # persistent: still there while no daemon runs
    restarted = net.start(1)
    restarted.wait_for("took back host0")
    assert ifindex(net.vm[1], "host0") == before
    assert {r["dst"]: r.get("gateway") for r in routes(net.vm[1])}[NETWORK] == "10.244.1.1"
    assert ping(net.vm[1], POD[2]) and ping(net.pod[2], HOST[1])


@pytest.mark.skipif(etcd_missing() is not None, reason=etcd_missing() or "")
def test_on_etcd_leases_the_host_port_takes_an_address_of_the_lease(tmp_path):
    """No address in the config: the host port gets one of the node's lease, as a container does, and the
    lease's gateway for its routes; the address is saved with the containers' and kept across a restart."""
    spaces = Namespaces()
    daemon = None
    try:
        vm, pod = spaces.create("vm"), spaces.create("vp")
        sh("ip", "-n", vm, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")   # an underlay address
        sh("ip", "-n", vm, "link", "set", "eth1", "up")
        sh("ip", "-n", vm, "addr", "add", "10.99.0.1/24", "dev", "eth0")
        sh("ip", "-n", vm, "link", "set", "eth0", "up")
        sh("ip", "-n", vm, "link", "set", "lo", "up")
        with EtcdServer(netns=vm) as etcd:
            init = in_ns(vm, sys.executable, "-m", "vswitch", "network", "init", "--etcd", etcd.endpoint,
                         "--network", NETWORK, "--backend", "vxlan", check=False)
            assert init.returncode == 0, init.stderr
            config = tmp_path / "node.toml"
            config.write_text(
                f'[node]\nname = "node1"\ncontrol = "{tmp_path / "n.sock"}"\nstate_dir = "{tmp_path / "state"}"\n\n'
                f'[[ports]]\nname = "c1"\ntype = "tap"\nnetns = "{pod}"\n\n'
                f'[[ports]]\nname = "host0"\ntype = "tap"\nroutes = ["{NETWORK}"]\n\n'
                f'[overlay]\nleases = "etcd"\npublic_ip = "10.99.0.1"\n\n[etcd]\nendpoints = ["{etcd.endpoint}"]\n')
            for round_ in (1, 2):
                daemon = Daemon(config, netns=vm).start()
                subnet = daemon.show("peers")["lease"]["subnet"]
                prefix = subnet.rsplit(".", 1)[0]
                addresses = {p["name"]: p["address"] for p in daemon.show("ports") if p.get("address")}
                assert addresses == {"c1": f"{prefix}.2/24", "host0": f"{prefix}.3/24"}, (round_, addresses)
                table = {r["dst"]: r for r in routes(vm)}
                assert (table[NETWORK]["gateway"], table[NETWORK]["dev"]) == (f"{prefix}.1", "host0")
                assert "default" not in table
                assert ping(vm, f"{prefix}.2") and ping(pod, f"{prefix}.3")
                assert daemon.stop() == 0
            daemon = None
    finally:
        if daemon is not None:
            daemon.kill()
        spaces.cleanup()
