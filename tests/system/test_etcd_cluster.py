"""A cluster on etcd leases: vswitch nodes in namespaces, a real etcd, and a node set up as flanneld sets one up.

One module topology, on the vxlan backend so that a kernel node can join:

    lan ns  br0 10.99.0.254/24, etcd listening on it
      ├── vm1..vm5  eth0 10.99.0.N   daemon "nodeN" (leases = "etcd"), one container cN on a TAP with no address:
      │                              the daemon gives it the next address of its lease
      └── vmk       eth0 10.99.0.20  the kernel's flannel.1 and cni0, container ck, its lease put with etcdctl
                                     exactly as flanneld puts it

Nodes 6 and 7 join later (one after etcd comes back, one to have its own lease deleted under it).
The kernel's ping is the oracle; etcdctl writes and deletes as an operator (or flanneld) would.
"""

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netkit import (
    Daemon,
    Namespaces,
    flannel_route,
    in_ns,
    kernel_flannel_node,
    requires_root,
    sh,
    unique,
    wait_until,
)

from vswitch.testing.etcd import EtcdServer, etcd_missing

pytestmark = [requires_root, pytest.mark.timeout(240),
              pytest.mark.skipif(etcd_missing() is not None, reason=etcd_missing() or "")]

PREFIX = "/coreos.com/network"
NETWORK = "10.244.0.0/16"
LAN = "10.99.0.254"
KERNEL_PUBLIC = "10.99.0.20"
KERNEL_SUBNET = "10.244.200.0/24"
KERNEL_VTEP = "0e:00:00:00:00:20"
KERNEL_CONTAINER = "10.244.200.2"
# What flanneld's vxlan backend puts (Go's json.Marshal of LeaseAttrs).
KERNEL_LEASE = ('{"PublicIP":"10.99.0.20","PublicIPv6":null,"BackendType":"vxlan",'
                f'"BackendData":{{"VNI":1,"VtepMAC":"{KERNEL_VTEP}"}}}}')

def lease_key(subnet: str) -> str:
    return f"{PREFIX}/subnets/{subnet.replace('/', '-')}"


class Cluster:
    def __init__(self, tmp: Path, spaces: Namespaces) -> None:
        self.tmp, self.spaces = tmp, spaces
        self.lan = spaces.create("vl")
        sh("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.lan, "addr", "add", f"{LAN}/24", "dev", "br0")
        sh("ip", "-n", self.lan, "link", "set", "br0", "up")
        self.etcd = EtcdServer(netns=self.lan, host=LAN)
        self.etcd.start()
        init = in_ns(self.lan, sys.executable, "-m", "vswitch", "network", "init", "--etcd", self.etcd.endpoint,
                     "--network", NETWORK, "--backend", "vxlan", check=False)
        assert init.returncode == 0, init.stderr
        self.vms: dict[int, str] = {}
        self.containers: dict[int, str] = {}
        self.daemons: dict[int, Daemon] = {}
        self.configs: dict[int, Path] = {}

    def vm(self, n: int, public: str) -> str:
        """A VM namespace on the lan, its eth0 at ``public``."""
        vm = self.spaces.create("vm")
        side = unique("vb")
        sh("ip", "-n", vm, "link", "add", "eth0", "type", "veth", "peer", "name", side, "netns", self.lan)
        sh("ip", "-n", self.lan, "link", "set", side, "master", "br0", "up")
        in_ns(vm, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
        sh("ip", "-n", vm, "addr", "add", f"{public}/24", "dev", "eth0")
        sh("ip", "-n", vm, "link", "set", "eth0", "up")
        self.vms[n] = vm
        return vm

    def add_node(self, n: int, *, start: bool = True) -> Daemon:
        self.vm(n, f"10.99.0.{n}")
        self.containers[n] = self.spaces.create("vc")
        config = self.tmp / f"node{n}.toml"
        config.write_text(
            f'[node]\nname = "node{n}"\ncontrol = "{self.tmp / f"n{n}.sock"}"\nstate_dir = "{self.tmp / f"state{n}"}"\n\n'
            f'[[ports]]\nname = "{unique("t")}"\ntype = "tap"\nnetns = "{self.containers[n]}"\n\n'
            f'[overlay]\nleases = "etcd"\npublic_ip = "10.99.0.{n}"\nsubnet_env = "{self.tmp / f"n{n}" / "subnet.env"}"\n\n'
            f'[etcd]\nendpoints = ["{self.etcd.endpoint}"]\n')
        self.configs[n] = config
        daemon = Daemon(config, netns=self.vms[n])
        self.daemons[n] = daemon
        return daemon.start() if start else daemon

    def restart(self, n: int) -> Daemon:
        assert self.daemons[n].stop() == 0, self.daemons[n].log[-2000:]
        self.daemons[n] = Daemon(self.configs[n], netns=self.vms[n]).start()
        return self.daemons[n]

    def address(self, n: int) -> str:
        """Container n's address, as the daemon reports the port it gave it to."""
        port = next(p for p in self.daemons[n].show("ports") if p["netns"] == self.containers[n])
        return port["address"].split("/")[0]

    def subnet(self, n: int) -> str:
        return self.daemons[n].show("peers")["lease"]["subnet"]

    def peers(self, n: int) -> set[str]:
        return {p["subnet"] for p in self.daemons[n].show("peers")["peers"]}

    def kernel_node(self) -> None:
        """flanneld's vxlan node: its lease put with etcdctl, flannel.1 and cni0 set up as flanneld and the flannel
        CNI plugin do, with the vswitch nodes' leases (as flanneld would learn them) in its FDB and routes."""
        k = self.vm(0, KERNEL_PUBLIC)
        self.kernel, self.kernel_container = k, self.spaces.create("vc")
        lease = self.etcd.etcdctl("lease", "grant", "600").stdout.split()[1]
        self.etcd.etcdctl("put", "--lease", lease, lease_key(KERNEL_SUBNET), KERNEL_LEASE)
        kernel_flannel_node(k, self.kernel_container, public=KERNEL_PUBLIC, subnet=KERNEL_SUBNET, vtep=KERNEL_VTEP,
                            address=KERNEL_CONTAINER)
        for lease in self.etcd_leases():
            if lease["PublicIP"] != KERNEL_PUBLIC:
                flannel_route(k, subnet=lease["subnet"], vtep=lease["BackendData"]["VtepMAC"], public=lease["PublicIP"])

    def etcd_leases(self) -> list[dict]:
        """Every lease under subnets/, as etcdctl reads it: the value's JSON with the subnet added."""
        lines = self.etcd.etcdctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
        return [{**json.loads(value), "subnet": key.rsplit("/", 1)[1].replace("-", "/")}
                for key, value in zip(lines[::2], lines[1::2])]

    def logs(self) -> str:
        return "\n".join(f"--- node{n} ({'running' if d.proc.poll() is None else f'exited {d.proc.returncode}'}):\n"
                         f"{d.log[-1500:]}" for n, d in self.daemons.items() if d.proc is not None)

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        self.etcd.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    spaces = Namespaces()
    cluster = None
    try:
        cluster = Cluster(tmp_path_factory.mktemp("etcd-cluster"), spaces)
        for n in range(1, 6):
            cluster.add_node(n)
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        spaces.cleanup()


def ping(ns: str, address: str, *, count: int = 1, wait: float = 3, interval: float = 0.2) -> tuple[int, str]:
    result = in_ns(ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), address, check=False,
                   timeout=count * (wait + interval) + 10)
    return result.returncode, result.stdout + result.stderr


def test_five_nodes_take_five_subnets_and_every_container_reaches_every_other(cluster):
    subnets = {n: cluster.subnet(n) for n in range(1, 6)}
    assert len(set(subnets.values())) == 5, subnets
    addresses = {n: cluster.address(n) for n in range(1, 6)}
    for n, address in addresses.items():   # the first free address after the gateway of the node's lease
        assert address.rsplit(".", 1)[0] == subnets[n].rsplit(".", 1)[0] and address.endswith(".2"), (n, address)
    failed = [f"{a} -> {b}: {out.strip()[-200:]}" for a in addresses for b in addresses if a != b
              for code, out in [ping(cluster.containers[a], addresses[b])] if code != 0]
    assert not failed, "\n".join(failed) + cluster.logs()
    leases = cluster.daemons[1].show("leases")
    assert sorted(lease["subnet"] for lease in leases) == sorted(subnets.values())
    assert [lease["subnet"] for lease in leases if lease["ours"]] == [subnets[1]]
    assert all(0 < lease["expires_in"] <= 86400 and lease["backend"] == "vxlan" for lease in leases)
    env = (cluster.tmp / "n1" / "subnet.env").read_text()
    assert f"FLANNEL_NETWORK={NETWORK}\n" in env and f"FLANNEL_SUBNET={subnets[1].replace('.0/', '.1/')}\n" in env


def test_a_lease_put_as_flanneld_puts_it_is_learned_and_its_node_reached(cluster):
    cluster.kernel_node()
    for n in range(1, 6):
        wait_until(lambda: KERNEL_SUBNET in cluster.peers(n), timeout=3, what=f"node{n} learns the kernel's lease")
    peer = next(p for p in cluster.daemons[1].show("peers")["peers"] if p["subnet"] == KERNEL_SUBNET)
    assert peer["vtep_mac"] == KERNEL_VTEP and peer["public_ip"] == KERNEL_PUBLIC
    for n in (1, 4):
        code, output = ping(cluster.containers[n], KERNEL_CONTAINER, count=2)
        assert code == 0, output + cluster.logs()
        code, output = ping(cluster.kernel_container, cluster.address(n), count=2)
        assert code == 0, output


def test_leases_of_another_backend_are_ignored_and_counted(cluster):
    cluster.etcd.etcdctl("put", lease_key("10.244.201.0/24"), '{"PublicIP":"10.99.0.21","PublicIPv6":null}')
    try:
        wait_until(lambda: cluster.daemons[2].show("peers")["source"]["ignored"], timeout=3, what="counted")
        source = cluster.daemons[2].show("peers")["source"]
        assert sum(source["ignored"].values()) == 1 and "udp" in next(iter(source["ignored"])), source
        assert "10.244.201.0/24" not in cluster.peers(2)
        assert any(lease["subnet"] == "10.244.201.0/24" and lease["backend"] == "udp"
                   for lease in cluster.daemons[2].show("leases"))
    finally:
        cluster.etcd.etcdctl("del", lease_key("10.244.201.0/24"))


def test_a_deleted_lease_leaves_every_node_within_a_second(cluster):
    cluster.etcd.etcdctl("put", lease_key("10.244.202.0/24"),
                         '{"PublicIP":"10.99.0.22","PublicIPv6":null,"BackendType":"vxlan",'
                         '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:22"}}')
    for n in range(1, 6):
        wait_until(lambda: "10.244.202.0/24" in cluster.peers(n), timeout=3, what=f"node{n} learns it")
    cluster.etcd.etcdctl("del", lease_key("10.244.202.0/24"))
    deleted = time.monotonic()
    for n in range(1, 6):
        wait_until(lambda: "10.244.202.0/24" not in cluster.peers(n), timeout=1.0 - (time.monotonic() - deleted),
                   interval=0.02, what=f"node{n} forgets it")


def test_a_restart_keeps_the_subnet_and_the_containers_address(cluster):
    subnet, address = cluster.subnet(3), cluster.address(3)
    daemon = cluster.restart(3)
    assert cluster.subnet(3) == subnet and cluster.address(3) == address
    assert "reusing the lease" in daemon.log
    code, output = ping(cluster.containers[1], address, count=2)
    assert code == 0, output + cluster.logs()


def test_a_reservation_is_honoured(cluster):
    reserved = "10.244.77.0/24"
    cluster.etcd.etcdctl("put", lease_key(reserved), '{"PublicIP":"10.99.0.6","PublicIPv6":null}')
    daemon = cluster.add_node(6)
    assert cluster.subnet(6) == reserved, daemon.log[-2000:]
    lease = next(lease for lease in daemon.show("leases") if lease["ours"])
    assert lease["reservation"] and lease["expires_in"] is None
    code, output = ping(cluster.containers[6], cluster.address(2), count=2)
    assert code == 0, output + cluster.logs()
    # the reservation stays one: put again without an etcd lease, as flannel does
    assert json.loads(cluster.etcd.etcdctl("get", lease_key(reserved), "-w", "json").stdout)["kvs"][0].get("lease") is None


def test_etcd_away_for_30_seconds_loses_no_ping_and_a_node_joins_after(cluster):
    a, b = cluster.containers[1], cluster.address(5)
    # a count, not a deadline (-w), which would cut the last reply off: 170 pings at 0.2 s span the outage
    pinger = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-n", "-i", "0.2", "-c", "170", "-W", "2", b],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        cluster.etcd.stop()
        stopped = time.monotonic()
        for n in (1, 5):
            wait_until(lambda: cluster.daemons[n].show("peers")["source"]["state"] == "disconnected", timeout=20,
                       what=f"node{n} sees etcd gone")
        # a node restarted meanwhile starts from its state dir and forwards with the peers it saved
        daemon = cluster.restart(4)
        assert cluster.daemons[4].show("peers")["source"]["state"] in ("cached", "disconnected")
        code, output = ping(cluster.containers[4], cluster.address(2), count=2)
        assert code == 0, output + daemon.log[-2000:]
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        cluster.etcd.start()
        output, _ = pinger.communicate(timeout=60)
    finally:
        pinger.kill()
    sent, received = (int(x) for x in re.search(r"(\d+) packets transmitted, (\d+) received", output).groups())
    assert sent == 170 and received == sent, output[-500:] + cluster.logs()
    for n in (1, 4, 5):
        wait_until(lambda: cluster.daemons[n].show("peers")["source"]["state"] == "connected", timeout=15,
                   what=f"node{n} reconnects")
    joined = time.monotonic()
    cluster.add_node(7)
    wait_until(lambda: cluster.subnet(7) in cluster.peers(1), timeout=5, what="node1 learns node7")
    code, output = ping(cluster.containers[1], cluster.address(7), count=1, wait=5)
    assert code == 0, output + cluster.logs()
    print(f"node7 reachable from node1 {time.monotonic() - joined:.2f} s after its daemon was started")


def test_a_compacted_watch_lists_again_and_misses_nothing(cluster):
    vm = cluster.vms[2]
    block = ["iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "REJECT", "--reject-with", "tcp-reset"]
    in_ns(vm, *block)
    try:
        wait_until(lambda: cluster.daemons[2].show("peers")["source"]["state"] == "disconnected", timeout=30,
                   what="node2 loses etcd")
        relists = cluster.daemons[2].show("peers")["source"]["relists"]
        cluster.etcd.etcdctl("put", lease_key("10.244.203.0/24"),
                             '{"PublicIP":"10.99.0.23","PublicIPv6":null,"BackendType":"vxlan",'
                             '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:23"}}')
        cluster.etcd.etcdctl("del", lease_key(KERNEL_SUBNET))
        cluster.etcd.compact()
    finally:
        in_ns(vm, "iptables", "-D", *block[2:])
    wait_until(lambda: cluster.daemons[2].show("peers")["source"]["relists"] > relists, timeout=15,
               what="node2 lists again")
    peers = cluster.peers(2)
    assert "10.244.203.0/24" in peers and KERNEL_SUBNET not in peers
    assert peers | {cluster.subnet(2)} == cluster.peers(1) | {cluster.subnet(1)}
    cluster.etcd.etcdctl("del", lease_key("10.244.203.0/24"))


def test_attach_without_an_address_gives_the_next_one_of_the_lease(cluster):
    container = cluster.spaces.create("vc")
    name = unique("t")
    attached = cluster.daemons[2].cli("attach", container, "--name", name)
    subnet = cluster.subnet(2)
    match = re.fullmatch(rf"attached {name} in netns {container} as ({subnet.rsplit('.', 1)[0]}\.\d+)/24\n",
                         attached.stdout)
    assert match, attached.stdout + attached.stderr
    address = match.group(1)
    assert address != cluster.address(2)
    port = next(p for p in cluster.daemons[2].show("ports") if p["name"] == name)
    assert (port["netns"], port["address"]) == (container, f"{address}/24")
    code, output = ping(cluster.containers[5], address, count=2)   # from another node: the default route is set
    assert code == 0, output + cluster.logs()
    saved = json.loads((cluster.tmp / "state2" / "addresses.json").read_text())
    assert saved["addresses"][name] == address
    cluster.daemons[2].cli("detach", name)
    saved = json.loads((cluster.tmp / "state2" / "addresses.json").read_text())
    assert name not in saved["addresses"]


def test_deleting_a_nodes_own_lease_stops_it_with_a_clear_message(cluster):
    daemon = cluster.daemons[7]
    cluster.etcd.etcdctl("del", lease_key(cluster.subnet(7)))
    assert daemon.proc.wait(timeout=10) == 1
    assert "was deleted from etcd" in daemon.log and "Traceback" not in daemon.log, daemon.log[-2000:]
