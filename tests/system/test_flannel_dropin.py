"""Drop-in mode: the daemon in flanneld's place, beside the host kernel's bridge, both backends, real stacks.

One topology serves the module (``Topology``); each backend gets its own cluster of daemons on it:

    ul ns: bridge br0 (the underlay) ── veths ── eth0 of vm1 10.99.0.1, vm2 .2, vm3 .3, vm4 .4 (/24)

    vm1, vm2 (drop-in, as flannel's CNI bridge): cni0 10.244.N.1/24, ip_forward=1, containers cN1 10.244.N.2 and
        cN2 10.244.N.3 on veths into cni0 (MTU 1450); `vswitch run` in the VM owns flannel0 (udp) or flannel.1
        (vxlan) and the UDP socket. vm1 runs with ip_masq = true and has a second veth, ext0 192.0.2.1/24, to
        an "outside" namespace (192.0.2.2/24, no route to the cluster).
    vm3 (router mode): `vswitch run` in the VM with container c31 (10.244.3.2) on a tap of its own bridge and
        the overlay on its own router, the same backend.
    vm4 (vxlan only): the Linux kernel's vxlan device, set up as flanneld's vxlan backend sets up flannel.1,
        with container c41 (10.244.4.2) on cni0.

The kernel's tools are the oracle: ping (and its reading of ICMP errors), iperf3, a server reporting its
peer's address, `ip route`/`ip neigh`/`ip addr`, `iptables -S`. Needs root, iproute2, ping, iptables; iperf3
for one test. Namespaces, daemons and iptables rules (they live in the VM namespaces) go at the end, even
on failure.
"""

import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from netkit import (
    Daemon,
    Namespaces,
    ask_peer,
    in_ns,
    link_exists,
    peer_server,
    requires_root,
    sh,
    start_in_ns,
    stop,
    unique,
    wait_until,
)

pytestmark = [
    requires_root,
    pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables for ip_masq (CI installs it)"),
    pytest.mark.timeout(180),
]

needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (CI installs it)")

NETWORK = "10.244.0.0/16"
CONTAINER_MTU = 1450   # fits both backends' overlay MTU (udp 1472, vxlan 1450), as flannel's CNI would set
OUTSIDE, VM1_EXT = "192.0.2.2", "192.0.2.1"
NO_LEASE = "10.244.9.9"
DEVICE = {"udp": "flannel0", "vxlan": "flannel.1"}
PORT = {"udp": 8285, "vxlan": 8472}
DROPIN, ROUTER, KERNEL = (1, 2), 3, 4


def vtep(n: int) -> str:
    return f"02:00:00:00:0{n}:01"


def public(n: int) -> str:
    return f"10.99.0.{n}"


def run_json(*command: str) -> list[dict]:
    return json.loads(sh(*command).stdout or "[]")


@attrs.define
class Topology:
    spaces: Namespaces
    tmp: Path
    underlay: str
    vms: dict[int, str]                      # node number → VM namespace
    containers: dict[str, str]               # container address → its namespace
    outside: str
    servers: list[subprocess.Popen] = attrs.field(factory=list)

    def container(self, n: int, j: int = 2) -> tuple[str, str]:
        """(namespace, address) of container j of node n."""
        address = f"10.244.{n}.{j}"
        return self.containers[address], address

    def serve(self, ns: str, port: int) -> None:
        self.servers.append(peer_server(ns, "tcp", port))


def _isolated(spaces: Namespaces, prefix: str) -> str:
    ns = spaces.create(prefix)
    in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    return ns


def _container(spaces: Namespaces, vm: str, address: str, gateway: str) -> str:
    ns = _isolated(spaces, "vc")
    host_end = unique("ve")
    sh("ip", "-n", vm, "link", "add", host_end, "mtu", str(CONTAINER_MTU), "type", "veth",
       "peer", "name", "eth0", "netns", ns, "mtu", str(CONTAINER_MTU))
    sh("ip", "-n", vm, "link", "set", host_end, "master", "cni0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
    return ns


def _build(spaces: Namespaces, tmp: Path) -> Topology:
    underlay = _isolated(spaces, "vu")
    sh("ip", "-n", underlay, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", underlay, "link", "set", "br0", "up")
    vms, containers = {}, {}
    for n in (1, 2, 3, 4):
        vm = vms[n] = _isolated(spaces, f"vm{n}")
        sh("ip", "-n", underlay, "link", "add", f"ul{n}", "type", "veth", "peer", "name", "eth0", "netns", vm)
        sh("ip", "-n", underlay, "link", "set", f"ul{n}", "master", "br0", "up")
        sh("ip", "-n", vm, "addr", "add", f"{public(n)}/24", "dev", "eth0")
        sh("ip", "-n", vm, "link", "set", "eth0", "up")
        in_ns(vm, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if n == ROUTER:
            containers["10.244.3.2"] = _isolated(spaces, "vc")   # on the daemon's tap: linked by the daemon
            continue
        sh("ip", "-n", vm, "link", "add", "cni0", "type", "bridge")
        sh("ip", "-n", vm, "addr", "add", f"10.244.{n}.1/24", "dev", "cni0")
        sh("ip", "-n", vm, "link", "set", "cni0", "up")
        for j in ((2, 3) if n in DROPIN else (2,)):
            address = f"10.244.{n}.{j}"
            containers[address] = _container(spaces, vm, address, f"10.244.{n}.1")
    outside = _isolated(spaces, "vo")
    sh("ip", "-n", vms[1], "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", outside)
    sh("ip", "-n", vms[1], "addr", "add", f"{VM1_EXT}/24", "dev", "ext0")
    sh("ip", "-n", vms[1], "link", "set", "ext0", "up")
    sh("ip", "-n", outside, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    sh("ip", "-n", outside, "link", "set", "eth0", "up")
    return Topology(spaces, tmp, underlay, vms, containers, outside)


@pytest.fixture(scope="module")
def topo(tmp_path_factory) -> Iterator[Topology]:
    spaces = Namespaces()
    topology = None
    try:
        topology = _build(spaces, tmp_path_factory.mktemp("dropin"))
        yield topology
    finally:
        for server in topology.servers if topology else ():
            stop(server)
        spaces.cleanup()   # the VMs' iptables rules and devices go with their namespaces


# -- the clusters ------------------------------------------------------------------------------------------


def members(backend: str) -> tuple[int, ...]:
    return (1, 2, 3, 4) if backend == "vxlan" else (1, 2, 3)


def node_config(topo: Topology, backend: str, n: int, peers: tuple[int, ...], *, ip_masq: bool = False) -> str:
    vx = backend == "vxlan"
    lines = ["[node]", f'name = "vm{n}"', f'control = "{topo.tmp / f"{backend}{n}.sock"}"', ""]
    if n == ROUTER:
        c31 = topo.containers["10.244.3.2"]
        lines += ["[[ports]]", f'name = "{unique("t")}"', 'type = "tap"', f'netns = "{c31}"',
                  'address = "10.244.3.2/24"', 'gateway = "10.244.3.1"', f"mtu = {CONTAINER_MTU}", "",
                  "[[router.interfaces]]", 'name = "gw"', 'address = "10.244.3.1/24"', ""]
    lines += ["[overlay]", f'backend = "{backend}"', f'network = "{NETWORK}"', f'subnet = "10.244.{n}.0/24"',
              f'public_ip = "{public(n)}"']
    if vx:
        lines.append(f'vtep_mac = "{vtep(n)}"')
    if n in DROPIN:
        lines += [f'device = "{DEVICE[backend]}"', f'subnet_env = "{topo.tmp / f"{backend}{n}" / "subnet.env"}"']
    if ip_masq:
        lines.append("ip_masq = true")
    for p in peers:
        lines += ["", "[[overlay.peers]]", f'subnet = "10.244.{p}.0/24"', f'public_ip = "{public(p)}"']
        if vx:
            lines.append(f'vtep_mac = "{vtep(p)}"')
    return "\n".join(lines) + "\n"


# `ethtool -K DEVICE tx off` without ethtool: the legacy ETHTOOL_STXCSUM ioctl.
TX_CHECKSUM_OFF = r"""
import array, fcntl, socket, struct, sys
value = array.array("B", struct.pack("II", 0x17, 0))     # ETHTOOL_STXCSUM, off
ifreq = struct.pack("16sP", sys.argv[1].encode(), value.buffer_info()[0]).ljust(40, b"\0")
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s, 0x8946, ifreq)                          # SIOCETHTOOL
"""


def kernel_vxlan(vm: str, n: int, peers: tuple[int, ...]) -> None:
    """flanneld's vxlan backend, done by hand: flannel.1 and, per lease, neighbour, FDB entry, onlink route."""
    # A NIC puts complete checksums on the wire; a veth passes the kernel's unfinished ones (CHECKSUM_PARTIAL)
    # on, and a userspace VTEP's socket would get inner TCP segments with only the pseudo-header sum in their
    # checksum field. Turn the veth's offload off, as a NIC would finish them.
    in_ns(vm, sys.executable, "-c", TX_CHECKSUM_OFF, "eth0")
    sh("ip", "-n", vm, "link", "add", "flannel.1", "address", vtep(n), "mtu", "1450", "type", "vxlan", "id", "1",
       "dstport", "8472", "local", public(n), "dev", "eth0", "nolearning")
    sh("ip", "-n", vm, "addr", "add", f"10.244.{n}.0/32", "dev", "flannel.1")
    sh("ip", "-n", vm, "link", "set", "flannel.1", "up")
    for p in peers:
        gateway = f"10.244.{p}.0"
        sh("ip", "-n", vm, "neigh", "replace", gateway, "lladdr", vtep(p), "dev", "flannel.1", "nud", "permanent")
        sh("bridge", "-n", vm, "fdb", "append", vtep(p), "dev", "flannel.1", "dst", public(p))
        sh("ip", "-n", vm, "route", "replace", f"10.244.{p}.0/24", "via", gateway, "dev", "flannel.1", "onlink")


@attrs.define
class Cluster:
    backend: str
    topo: Topology
    daemons: dict[int, Daemon]
    configs: dict[int, Path]

    @property
    def device(self) -> str:
        return DEVICE[self.backend]

    def logs(self) -> str:
        return "\n".join(f"--- vm{n}\n" + d.log[-2500:] for n, d in self.daemons.items())


@pytest.fixture(scope="module", params=["udp", "vxlan"])
def cluster(request, topo: Topology) -> Iterator[Cluster]:
    backend = request.param
    nodes = members(backend)
    daemons: dict[int, Daemon] = {}
    configs: dict[int, Path] = {}
    try:
        for n in nodes:
            peers = tuple(p for p in nodes if p != n)
            if n == KERNEL:
                kernel_vxlan(topo.vms[n], n, peers)
                continue
            configs[n] = topo.tmp / f"{backend}{n}.toml"
            configs[n].write_text(node_config(topo, backend, n, peers, ip_masq=n == 1))
            daemons[n] = Daemon(configs[n], netns=topo.vms[n])
        with concurrent.futures.ThreadPoolExecutor() as pool:   # side by side: each takes a second to start
            for started in [pool.submit(d.start) for d in daemons.values()]:
                started.result()
        yield Cluster(backend, topo, daemons, configs)
    finally:
        for daemon in daemons.values():
            daemon.kill()
        if KERNEL in nodes:
            sh("ip", "-n", topo.vms[KERNEL], "link", "del", "flannel.1", check=False)
        for n in DROPIN:   # a daemon killed outright leaves flannel's chain behind: ours to remove
            in_ns(topo.vms[n], "iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment",
                  "flanneld masq", "-j", "FLANNEL-POSTRTG", check=False)
            in_ns(topo.vms[n], "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG", check=False)
            in_ns(topo.vms[n], "iptables", "-t", "nat", "-X", "FLANNEL-POSTRTG", check=False)


# -- helpers ------------------------------------------------------------------------------------------------


def _ping(ns: str, address: str, *, count: int = 2, wait: float = 2, interval: float = 0.2) -> tuple[bool, str]:
    result = in_ns(ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), address, check=False,
                   timeout=count * (wait + interval) + 10)
    return result.returncode == 0, result.stdout + result.stderr


def cluster_containers(cluster: Cluster) -> dict[str, str]:
    """Address → namespace of every container of the cluster's members."""
    nodes = members(cluster.backend)
    return {a: ns for a, ns in cluster.topo.containers.items() if int(a.split(".")[2]) in nodes}


# -- tests --------------------------------------------------------------------------------------------------


def test_the_device_is_addressed_and_routed_as_flanneld_does_it(cluster):
    vm = cluster.topo.vms[1]
    device = cluster.device
    [link] = run_json("ip", "-n", vm, "-j", "addr", "show", "dev", device)
    assert "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [("10.244.1.0", 32)]
    routes = sh("ip", "-n", vm, "route", "show", "dev", device).stdout
    if cluster.backend == "udp":
        assert link["mtu"] == 1472 and link["link_type"] == "none"   # a TUN
        assert re.search(r"^10\.244\.0\.0/16 scope link", routes, re.MULTILINE), routes
        return
    assert link["mtu"] == 1450 and link["address"] == vtep(1)      # a TAP with the VTEP MAC
    neighbours = sh("ip", "-n", vm, "neigh", "show", "dev", device).stdout
    for p in members("vxlan")[1:]:
        assert re.search(rf"^10\.244\.{p}\.0/24 via 10\.244\.{p}\.0 onlink", routes, re.MULTILINE), routes
        assert re.search(rf"^10\.244\.{p}\.0 lladdr {vtep(p)} PERMANENT", neighbours, re.MULTILINE), neighbours
    assert "10.244.0.0/16" not in routes   # vxlan: per lease, no network route


def test_subnet_env_is_written_as_flanneld_writes_it(cluster):
    mtu = 1472 if cluster.backend == "udp" else 1450
    for n in DROPIN:
        env = cluster.topo.tmp / f"{cluster.backend}{n}" / "subnet.env"
        assert env.read_text() == (f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=10.244.{n}.1/24\n"
                                   f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={'true' if n == 1 else 'false'}\n")
        assert env.stat().st_mode & 0o777 == 0o644


def test_every_container_pings_every_other(cluster):
    """Within a node (the kernel's cni0), across drop-in nodes, to and from the router-mode node and the kernel's
    vxlan node (vxlan): each pair in its own ping, all at once."""
    containers = cluster_containers(cluster)
    pairs = [(src, dst) for src in containers for dst in containers if src != dst]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(pairs, pool.map(lambda pair: _ping(containers[pair[0]], pair[1], count=3)[0], pairs)))
    failed = [pair for pair, ok in results.items() if not ok]
    assert not failed, f"{len(failed)}/{len(pairs)} pairs failed: {failed}\n{cluster.logs()}"


def test_containers_keep_their_addresses_across_every_kind_of_node(cluster):
    """No NAT between containers, ip_masq on vm1 or not: a TCP server sees its client's own address."""
    topo = cluster.topo
    port = 7000 + len(cluster.backend)
    servers = {n: topo.container(n) for n in members(cluster.backend)}
    for ns, _ in servers.values():
        topo.serve(ns, port)
    c11, c11_address = topo.container(1)
    for n, (ns, address) in servers.items():
        if n == 1:
            continue
        local, seen = ask_peer(c11, "tcp", address, port)
        assert seen.split(":")[0] == c11_address == local.split(":")[0], (n, local, seen)
        local, seen = ask_peer(ns, "tcp", c11_address, port)     # and the other way round
        assert seen.split(":")[0] == address, (n, local, seen)


@needs_iperf3
def test_an_iperf3_tcp_stream_crosses_the_overlay(cluster):
    topo = cluster.topo
    (c11, _), (c21, c21_address) = topo.container(1), topo.container(2)
    server = start_in_ns(c21, "iperf3", "-s", "-1", "--forceflush", ready="Server listening")
    try:
        result = in_ns(c11, "iperf3", "-c", c21_address, "-t", "2", "-J", "--connect-timeout", "3000",
                       check=False, timeout=30)
    finally:
        stop(server)
    report = json.loads(result.stdout)
    assert "error" not in report, report.get("error")
    received = report["end"]["sum_received"]
    assert received["bytes"] > 1_000_000, received
    print(f"{cluster.backend} drop-in iperf3 c11 -> c21: {received['bits_per_second'] / 1e6:.0f} Mbit/s")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (CI installs it)")
def test_a_capture_of_the_flannel_device_is_what_tshark_decodes(cluster):
    """flannel0 (udp) is a TUN: its capture is raw IP (linktype 101), not IP mistaken for Ethernet."""
    topo = cluster.topo
    (c11, _), (_, c21_address) = topo.container(1), topo.container(2)
    pcap = topo.tmp / f"{cluster.backend}-device.pcap"
    capture = subprocess.Popen(
        [sys.executable, "-m", "vswitch", "capture", cluster.device, "--count", "4", "-w", str(pcap),
         "--config", str(cluster.configs[1])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: pcap.exists() and pcap.stat().st_size >= 24, what="the capture's pcap header")
        ok, output = _ping(c11, c21_address, count=4)
        assert ok, output
        assert capture.wait(timeout=20) == 0, capture.stderr.read()
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    decoded = sh("tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.encap_type", "-e", "ip.src", "-e", "ip.dst",
                 "-e", "icmp.type").stdout.splitlines()
    encap = "7" if cluster.backend == "udp" else "1"   # tshark's WTAP_ENCAP_RAW_IP, WTAP_ENCAP_ETHERNET
    assert len(decoded) == 4 and all(line.split("\t")[0] == encap for line in decoded), decoded
    assert {tuple(line.split("\t")[1:]) for line in decoded} <= {
        ("10.244.1.2", c21_address, "8"), (c21_address, "10.244.1.2", "0")}, decoded


def test_ip_masq_installs_flannels_rules(cluster):
    vm = cluster.topo.vms[1]
    rules = in_ns(vm, "iptables", "-t", "nat", "-S").stdout.splitlines()
    masq = "MASQUERADE --random-fully"
    comment = '-m comment --comment "flanneld masq"'
    assert [r for r in rules if "flanneld masq" in r] == [
        f"-A POSTROUTING {comment} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {comment} -j RETURN",
        f"-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d {NETWORK} {comment} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {NETWORK} -d 10.244.1.0/24 {comment} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {NETWORK} -d 10.244.1.0/24 {comment} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {NETWORK} ! -d 224.0.0.0/4 {comment} -j {masq}",
        f"-A FLANNEL-POSTRTG ! -s {NETWORK} -d {NETWORK} {comment} -j {masq}",
    ]
    assert "FLANNEL-POSTRTG" not in in_ns(cluster.topo.vms[2], "iptables", "-t", "nat", "-S").stdout   # ip_masq off


def test_ip_masq_hides_containers_leaving_the_cluster_behind_the_vm(cluster):
    topo = cluster.topo
    port = 7100 + len(cluster.backend)
    topo.serve(topo.outside, port)
    for j in (2, 3):
        ns, address = topo.container(1, j)
        local, seen = ask_peer(ns, "tcp", OUTSIDE, port)
        assert local.split(":")[0] == address and seen.split(":")[0] == VM1_EXT, (local, seen)
    # The outside has no route to the cluster: without the rules nothing could answer at all.
    assert in_ns(topo.outside, "ip", "route", "get", "10.244.1.2", check=False).returncode != 0


def test_a_cluster_address_without_a_lease_is_net_unreachable(cluster):
    """udp: the daemon answers for flannel0 with ICMP net unreachable, from the cluster network's address
    (flannel's own choice, 10.244.1.0, is the host's: the kernel drops it as a martian source). vxlan: only
    leases have routes, so the host kernel answers itself, from cni0's address."""
    c11, _ = cluster.topo.container(1)
    ok, output = _ping(c11, NO_LEASE, count=1)
    assert not ok
    source = "10.244.0.0" if cluster.backend == "udp" else "10.244.1.1"
    assert re.search(rf"From {re.escape(source)} icmp_seq=1 Destination Net Unreachable", output), output
    if cluster.backend == "udp":
        assert cluster.daemons[1].show("stats")["overlay"]["icmp_sent"].get("net-unreachable", 0) >= 1


def test_show_in_drop_in_mode_points_to_the_host_and_never_to_a_router_the_config_refuses(cluster):
    daemon = cluster.daemons[1]
    routes = daemon.cli("show", "routes", check=False)
    assert routes.returncode == 1
    assert routes.stderr == (f"vswitch show: this daemon runs the overlay in drop-in mode on {cluster.device}: the host"
                             " kernel routes, resolves and masquerades for it; ask the host (`ip route`)\n")
    assert "[[router.interfaces]]" not in daemon.cli("show", "nat", check=False).stderr
    assert [p["name"] for p in daemon.show("ports")] == ["underlay", cluster.device]
    assert daemon.show("stats")["bridge"] is None


def test_ip_masq_without_iptables_says_what_to_install(topo, tmp_path):
    """A host without the iptables command: the daemon refuses to start, says so, and leaves no device behind."""
    vm = _isolated(topo.spaces, "vm")
    sh("ip", "-n", vm, "addr", "add", "10.99.0.9/32", "dev", "lo")
    bin_dir = tmp_path / "bin"   # a PATH with ip and nothing else
    bin_dir.mkdir()
    (bin_dir / "ip").symlink_to(shutil.which("ip"))
    config = tmp_path / "masq.toml"
    config.write_text(f"""
[node]
name = "lonely"
[overlay]
backend = "udp"
network = "{NETWORK}"
subnet = "10.244.9.0/24"
public_ip = "10.99.0.9"
device = "flannel0"
ip_masq = true
""")
    result = subprocess.run([shutil.which("ip"), "netns", "exec", vm, "env", f"PATH={bin_dir}", sys.executable, "-m",
                             "vswitch", "run", "-c", str(config)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 1, result.stderr
    assert "needs the `iptables` command: install iptables" in result.stderr, result.stderr
    assert not link_exists(vm, "flannel0")


def test_reload_adds_and_removes_a_peers_neighbour_and_route_while_traffic_to_others_flows(cluster):
    """`vswitch reload -c FILE` on vm1 without one peer, then with it again; vm1 → vm2 never stops meanwhile."""
    topo, vm = cluster.topo, cluster.topo.vms[1]
    gone = KERNEL if cluster.backend == "vxlan" else ROUTER      # the kernel's flannel.1, the router-mode node
    gone_ns, gone_address = topo.container(gone)
    (c11, _), (_, c21_address) = topo.container(1), topo.container(2)
    config, daemon = cluster.configs[1], cluster.daemons[1]
    original = config.read_text()
    steady = subprocess.Popen(["ip", "netns", "exec", c11, "ping", "-n", "-c", "60", "-i", "0.05", "-W", "1",
                               c21_address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.3)
        others = tuple(p for p in members(cluster.backend) if p not in (1, gone))
        config.write_text(node_config(topo, cluster.backend, 1, others, ip_masq=True))
        result = daemon.cli("reload")
        assert "0 peers added, 1 removed, 0 changed, " in result.stdout, result.stdout + result.stderr
        assert f"removed 10.244.{gone}.0/24" in result.stdout
        ok, output = _ping(c11, gone_address, count=1)
        assert not ok
        if cluster.backend == "vxlan":
            assert f"10.244.{gone}.0" not in sh("ip", "-n", vm, "route", "show", "dev", cluster.device).stdout
            assert f"10.244.{gone}.0" not in sh("ip", "-n", vm, "neigh", "show", "dev", cluster.device).stdout
            assert "Destination Net Unreachable" in output, output   # the host itself: no route any more
        else:
            assert re.search(r"From 10\.244\.0\.0 .*Destination Net Unreachable", output), output   # no lease

        config.write_text(original)
        result = daemon.cli("reload")
        assert "1 peers added, 0 removed, 0 changed, " in result.stdout, result.stdout + result.stderr
        if cluster.backend == "vxlan":
            assert f"10.244.{gone}.0/24 via 10.244.{gone}.0 onlink" in sh(
                "ip", "-n", vm, "route", "show", "dev", cluster.device).stdout
            assert re.search(rf"10\.244\.{gone}\.0 lladdr {vtep(gone)} PERMANENT",
                             sh("ip", "-n", vm, "neigh", "show", "dev", cluster.device).stdout)
        assert _ping(c11, gone_address)[0], cluster.logs()
        assert _ping(gone_ns, "10.244.1.2")[0], cluster.logs()
        out, _ = steady.communicate(timeout=30)
    finally:
        config.write_text(original)
        if steady.poll() is None:
            steady.kill()
            steady.wait()
    assert steady.returncode == 0 and " 0% packet loss" in out, out


def test_ip_masq_rules_left_by_a_killed_daemon_are_replaced_not_doubled(cluster):
    vm, daemon = cluster.topo.vms[1], cluster.daemons[1]
    daemon.kill()   # SIGKILL: no clean-up; the kernel deletes the TUN/TAP with the last fd, the rules stay
    wait_until(lambda: not link_exists(vm, cluster.device), what=f"{cluster.device} gone with its daemon")
    assert in_ns(vm, "iptables", "-t", "nat", "-S").stdout.count("flanneld masq") == 7
    cluster.daemons[1] = restarted = Daemon(cluster.configs[1], netns=vm).start()
    assert in_ns(vm, "iptables", "-t", "nat", "-S").stdout.count("flanneld masq") == 7, restarted.log
    c11, _ = cluster.topo.container(1)
    assert _ping(c11, "10.244.2.2")[0], cluster.logs()


def test_stopping_the_daemons_removes_the_device_and_the_rules(cluster):
    """Last for a backend: the devices and everything on them go, and vm1's iptables rules."""
    for n in DROPIN:
        vm, daemon = cluster.topo.vms[n], cluster.daemons[n]
        assert link_exists(vm, cluster.device)
        assert daemon.stop() == 0, daemon.log
        assert not link_exists(vm, cluster.device), daemon.log
        assert f"10.244.{n}.0" not in sh("ip", "-n", vm, "addr").stdout
        assert cluster.device not in sh("ip", "-n", vm, "route").stdout
        assert "flanneld masq" not in in_ns(vm, "iptables", "-t", "nat", "-S").stdout, daemon.log
        assert "FLANNEL-POSTRTG" not in in_ns(vm, "iptables", "-t", "nat", "-S").stdout, daemon.log
    assert "ip-masq: iptables nat chain FLANNEL-POSTRTG removed" in cluster.daemons[1].log
