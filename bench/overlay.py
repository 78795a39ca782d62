"""Container to container across two VMs: one TCP stream through an overlay.

The topology (:func:`two_nodes`) is two "VM" namespaces joined by an underlay
veth (``eth0`` in each, 10.99.0.1/24 and 10.99.0.2/24, MTU 1500) and one
container namespace per VM: c1 on vm1 (10.244.1.2/24, gateway 10.244.1.1) and
c2 on vm2 (10.244.2.2/24, gateway 10.244.2.1). How a container is linked to
its VM is a parameter: the baselines use :func:`cni_bridge` (a veth from the
container's ``eth0`` into a Linux bridge ``cni0`` in the VM that carries the
gateway address, IP forwarding on in the VMs), as flannel's CNI bridge does.

Baselines, each on a fresh topology, one iperf3 TCP stream c1 -> c2 (5 s by
default; ``--duration``, whole seconds) after a ping:

* ``overlay.kernel_vxlan.tcp``: the Linux kernel's VXLAN, set up as flanneld's
  vxlan backend does it (:func:`kernel_vxlan`): ``flannel.1`` (VNI 1, UDP 8472,
  no learning, MTU 1450, 10.244.N.0/32) and, for the other VM's lease, a
  permanent neighbour entry, an FDB entry and an onlink route.
* ``overlay.tinc.tcp``: tinc 1.0 (Debian's ``tinc``) in switch mode with no
  cipher, digest or compression (:func:`tinc`): one tincd per VM, bound to
  its underlay address, run in the foreground (``-D``) from a configuration
  directory of its own with keys made by ``tincd -K``. Its tap device
  ``tinc0`` takes flannel.1's place: not bridged into cni0 but addressed
  10.244.N.0/32 with an onlink route to the other VM's subnet via
  10.244.M.0, so that the containers keep their separate /24s and every path
  has the same hops: container -> cni0 -> VM routes -> overlay device ->
  underlay -> overlay device -> VM routes -> cni0 -> container. Neighbours on
  tinc0 are found by ARP, which tinc's switch carries like any frame; path
  MTU discovery is off (``PMTUDiscovery = no``), as the containers' MTU of
  1450 already keeps every frame within the underlay (1450 + 14 Ethernet +
  4 tinc sequence number + 28 UDP/IP = 1496 bytes), so no frame goes over
  tinc's TCP meta connection while it would still be probing.

Our daemon, on a fresh topology per backend (:func:`vswitch_nodes`): each VM
runs ``vswitch run -c`` whose config links its container with a TAP port, puts
the gateway on the daemon's router and an ``[overlay]`` with the other VM's
lease — router mode, the overlay fully in userspace:

* ``overlay.vswitch_udp.tcp``: flannel's UDP backend (the containers' MTU is
  its 1472);
* ``overlay.vswitch_vxlan.tcp``: VXLAN (MTU 1450);

each with ``ratio_to_kernel_vxlan`` and ``ratio_to_tinc`` from the same run,
and ``meets_target``: the target is at least 3x tinc's figure and 0.30 of the
kernel's vxlan (or of whichever of them ran).

The same two baselines run once more directly between the VMs
(:func:`run_direct_baselines`: ``overlay.kernel_vxlan_direct.tcp`` and
``overlay.tinc_direct.tcp``): iperf3 in vm1 and vm2 themselves, to the other's
overlay device address (10.244.N.0), with no container, veth or bridge on the
path, as an outside measurement takes them; our lines carry
``ratio_to_kernel_vxlan_direct`` and ``ratio_to_tinc_direct`` too.

The lines of tinc and of our daemon say what the run cost them:
``cpu_seconds_per_gbit``, the user and system time both daemons spent
(``/proc/<pid>/stat``, read before and after the iperf3 run) per gigabit
carried: on two cores shared by iperf3, the kernel and both daemons, the cost
per bit matters as much as the ceiling. (The kernel's vxlan has no process
of its own to read; the machine-wide figure would count whatever else runs.)

Both baselines use MTU 1450 in the containers, on cni0 and on the overlay
device. Needs root, iproute2, iperf3, ping and tincd; IPv6 is off in every
namespace so the stacks send nothing of their own over the overlays. Every
namespace, tincd process and temporary directory is removed at the end, even
on failure. :func:`run_baselines` runs the baselines alone.
"""

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from vswitch.testing import (
    Daemon,
    Namespaces,
    in_ns,
    link_exists,
    link_mac,
    ping,
    sh,
    unique,
)

from .common import Options, result
from .devices import iperf_seconds, iperf_tcp
from .devices import unavailable as devices_unavailable

DEVICE_SECONDS = 5
TINC_TARGET, KERNEL_TARGET = 3, 0.30   # the targets: at least 3x tinc and 0.30 of the kernel's vxlan, in the same run
CLUSTER_NETWORK = "10.244.0.0/16"  # flannel's Network; node N leases 10.244.N.0/24
UNDERLAY_MTU = 1500
OVERLAY_MTU = 1450           # underlay - 50, flannel's vxlan MTU; the containers use it on every baseline
UNDERLAY_DEVICE = "eth0"     # in each VM namespace
VXLAN_DEVICE, VXLAN_VNI, VXLAN_PORT = "flannel.1", 1, 8472
TINC_DEVICE, TINC_PORT = "tinc0", 655
VSWITCH_MTU = {"udp": 1472, "vxlan": 1450}   # the overlay's defaults, which the daemon gives its container ports


def unavailable() -> str | None:
    """Why this suite cannot run here (not root, a missing tool), or None."""
    return devices_unavailable("iperf3", "ping", "tincd")


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"bench overlay: {reason}")
    baselines = {}
    for line in (*run_baselines(options), *run_direct_baselines(options)):
        baselines[line["name"]] = line["value"]
        yield line
    yield from run_vswitch(
        options, kernel_vxlan=baselines["overlay.kernel_vxlan.tcp"], tinc=baselines["overlay.tinc.tcp"],
        kernel_vxlan_direct=baselines["overlay.kernel_vxlan_direct.tcp"], tinc_direct=baselines["overlay.tinc_direct.tcp"],
    )


def run_vswitch(
    options: Options = Options(), *, backends: tuple[str, ...] = ("udp", "vxlan"),
    kernel_vxlan: float | None = None, tinc: float | None = None,
    kernel_vxlan_direct: float | None = None, tinc_direct: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Our daemon's figures, with the ratios to the baselines' figures (Gbit/s) when given; the CPU seconds both
    daemons spent per gigabit carried."""
    seconds = iperf_seconds(DEVICE_SECONDS if options.duration is None else options.duration)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for backend in backends:
            pids: list[int] = []
            with two_nodes() as topo, vswitch_nodes(topo, backend, workdir, pids) as log:
                check_reach(topo, f"vswitch {backend}", log=log)
                stream = tcp_stream(topo, seconds, workdir, pids=pids)
            gbits = round(stream.bits_per_second / 1e9, 3)
            ratios: dict[str, Any] = {}
            targets = []
            if kernel_vxlan:
                ratios["ratio_to_kernel_vxlan"] = round(gbits / kernel_vxlan, 4)
                targets.append((f">= {KERNEL_TARGET} of the kernel's vxlan", gbits >= KERNEL_TARGET * kernel_vxlan))
            if tinc:
                ratios["ratio_to_tinc"] = round(gbits / tinc, 3)
                targets.append((f">= {TINC_TARGET}x tinc", gbits >= TINC_TARGET * tinc))
            if targets:
                ratios.update(target=" and ".join(t for t, _ in targets), meets_target=all(met for _, met in targets))
            if kernel_vxlan_direct:
                ratios["ratio_to_kernel_vxlan_direct"] = round(gbits / kernel_vxlan_direct, 4)
            if tinc_direct:
                ratios["ratio_to_tinc_direct"] = round(gbits / tinc_direct, 3)
            yield result(f"overlay.vswitch_{backend}.tcp", gbits, "Gbit/s", seconds=seconds,
                         mtu=VSWITCH_MTU[backend], **stream.extra(), **ratios,
                         path=f"c1 -> tap -> vm1 vswitch (bridge, router, {backend}) -> underlay veth -> vm2 vswitch "
                              "-> tap -> c2")


# -- the topology ---------------------------------------------------------------------------


@attrs.frozen
class Node:
    """One VM namespace and its container namespace; ``index`` N is 1 or 2."""

    index: int
    vm: str          # the VM's namespace
    container: str   # the container's namespace

    @property
    def underlay(self) -> str:
        """The VM's underlay device (in ``vm``)."""
        return UNDERLAY_DEVICE

    @property
    def address(self) -> str:
        """The VM's underlay address, 10.99.0.N (a /24)."""
        return f"10.99.0.{self.index}"

    @property
    def subnet(self) -> str:
        """The VM's container subnet, 10.244.N.0/24 (its flannel lease)."""
        return f"10.244.{self.index}.0/24"

    @property
    def network(self) -> str:
        """The subnet's network address, 10.244.N.0: flannel puts it on the overlay device as a /32."""
        return f"10.244.{self.index}.0"

    @property
    def gateway(self) -> str:
        """The containers' gateway in the VM, 10.244.N.1."""
        return f"10.244.{self.index}.1"

    @property
    def pod(self) -> str:
        """The container's address, 10.244.N.2 (a /24, default route via :attr:`gateway`)."""
        return f"10.244.{self.index}.2"


@attrs.frozen
class TwoNodes:
    """What :func:`two_nodes` made: ``first`` is vm1 with c1, ``second`` vm2 with c2."""

    first: Node
    second: Node

    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.first, self.second)

    def peer(self, node: Node) -> Node:
        """The other node."""
        return self.second if node is self.first else self.first


Link = Callable[[Node], None]  # links node.container to node.vm once both namespaces and the underlay exist


def _quiet(ns: str) -> None:
    """IPv6 off for every device made in ``ns`` from now on (and ``lo``): no DAD or router solicitations."""
    for key in ("all", "default"):
        in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")


@contextlib.contextmanager
def two_nodes(link: Link | None = None) -> Iterator[TwoNodes]:
    """Namespaces vm1 and vm2 joined by the underlay, and containers c1 and c2, all removed on exit.

    Each VM has ``eth0`` on the underlay (10.99.0.N/24, MTU 1500) and IP
    forwarding on. The container namespaces are empty (only ``lo``) unless
    ``link`` is given: it is called for each node to link the container to
    its VM, e.g. :func:`cni_bridge`. Leaving it out suits a daemon in the VM
    that creates a TAP device and moves it into the container. On exit every
    process still running in the four namespaces is killed and the namespaces
    (with every device in them) are deleted.
    """
    spaces = Namespaces()
    try:
        nodes = tuple(Node(i, spaces.create("vm"), spaces.create("c")) for i in (1, 2))
        topo = TwoNodes(*nodes)
        for node in nodes:
            _quiet(node.vm)
            _quiet(node.container)
            in_ns(node.vm, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        first, second = topo.nodes
        sh("ip", "-n", first.vm, "link", "add", UNDERLAY_DEVICE, "mtu", str(UNDERLAY_MTU), "type", "veth",
           "peer", "name", UNDERLAY_DEVICE, "mtu", str(UNDERLAY_MTU), "netns", second.vm)
        for node in nodes:
            sh("ip", "-n", node.vm, "addr", "add", f"{node.address}/24", "dev", node.underlay)
            sh("ip", "-n", node.vm, "link", "set", node.underlay, "up")
        if link is not None:
            for node in nodes:
                link(node)
        yield topo
    finally:
        spaces.cleanup()


def cni_bridge(node: Node, mtu: int = OVERLAY_MTU) -> None:
    """A :data:`Link`: the container's ``eth0`` is a veth into bridge ``cni0`` (gateway/24) in the VM."""
    vm, outer = node.vm, unique("veth")
    if not link_exists(vm, "cni0"):
        sh("ip", "-n", vm, "link", "add", "cni0", "mtu", str(mtu), "type", "bridge")
        sh("ip", "-n", vm, "addr", "add", f"{node.gateway}/24", "dev", "cni0")
        sh("ip", "-n", vm, "link", "set", "cni0", "up")
    sh("ip", "-n", vm, "link", "add", outer, "mtu", str(mtu), "type", "veth",
       "peer", "name", "eth0", "mtu", str(mtu), "netns", node.container)
    sh("ip", "-n", vm, "link", "set", outer, "master", "cni0", "up")
    sh("ip", "-n", node.container, "addr", "add", f"{node.pod}/24", "dev", "eth0")
    sh("ip", "-n", node.container, "link", "set", "eth0", "up")
    sh("ip", "-n", node.container, "route", "add", "default", "via", node.gateway)


def check_reach(topo: TwoNodes, what: str, *, within: float = 15, log: Callable[[], str] | None = None,
                direct: bool = False) -> None:
    """Wait until c1 can ping c2 (``direct``: vm1 the overlay address of vm2; an overlay may need a moment to
    connect), or raise."""
    first, second = topo.nodes
    deadline = time.monotonic() + within
    while not (ping(first.vm, second.network, count=2, wait=1) if direct else
               ping(first.container, second.pod, count=2, wait=1)):
        if time.monotonic() >= deadline:
            detail = f":\n{log()}" if log is not None else ""
            raise RuntimeError(f"{what}: c1 cannot reach c2 ({second.pod}) within {within:g}s{detail}")


def udp_rcvbuf_errors(ns: str) -> int:
    """UDP datagrams dropped in namespace ``ns`` because a socket's receive buffer was full (``/proc/net/snmp``)."""
    rows = [line.split() for line in in_ns(ns, "cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


@attrs.frozen
class Stream:
    """What one TCP stream measured."""

    bits_per_second: float   # as c2 received them
    udp_drops: int           # underlay datagrams the VMs' UDP sockets dropped meanwhile (a userspace overlay's)
    congestion_control: str  # c1's TCP congestion control, the host's default (losses hurt cubic and BBR differently)
    gigabits: float          # carried in the whole run
    daemon_cpu: float | None  # CPU seconds (user and system) the overlay's daemons spent meanwhile, if any

    def extra(self) -> dict[str, Any]:
        """The keys every overlay TCP line carries besides name, value and unit."""
        cost = {}
        if self.daemon_cpu is not None and self.gigabits:
            cost["cpu_seconds_per_gbit"] = round(self.daemon_cpu / self.gigabits, 3)
        return {"udp_rcvbuf_errors": self.udp_drops, "tcp_congestion_control": self.congestion_control, **cost}


def cpu_seconds(pids: Sequence[int]) -> float:
    """The user and system time of processes ``pids`` (all their threads), from ``/proc/<pid>/stat``."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])   # utime and stime, the stat file's 14th and 15th fields
    return ticks / os.sysconf("SC_CLK_TCK")


def tcp_stream(topo: TwoNodes, seconds: int, workdir: Path, *, pids: Sequence[int] = (), direct: bool = False) -> Stream:
    """One iperf3 TCP stream c1 -> c2 for ``seconds`` (``direct``: vm1 -> vm2, between the overlay devices'
    addresses, with no container hops), and the CPU time the daemons ``pids`` spent meanwhile."""
    first, second = topo.nodes
    before = sum(udp_rcvbuf_errors(node.vm) for node in topo.nodes)
    daemon_before = cpu_seconds(pids)
    if direct:
        bits = iperf_tcp(first.vm, second.vm, second.network, seconds, workdir)
    else:
        bits = iperf_tcp(first.container, second.container, second.pod, seconds, workdir)
    daemon_cpu = cpu_seconds(pids) - daemon_before
    drops = sum(udp_rcvbuf_errors(node.vm) for node in topo.nodes) - before
    cc = in_ns(first.vm if direct else first.container, "sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip()
    return Stream(bits, drops, cc, bits * seconds / 1e9, daemon_cpu if pids else None)


# -- kernel vxlan, as flanneld sets it up ----------------------------------------------------------


def kernel_vxlan(topo: TwoNodes) -> None:
    """flannel.1 in each VM as flanneld's vxlan backend makes it, and the other VM's lease programmed."""
    macs = {}
    for node in topo.nodes:
        vm = node.vm
        sh("ip", "-n", vm, "link", "add", VXLAN_DEVICE, "type", "vxlan", "id", str(VXLAN_VNI), "local", node.address,
           "dev", node.underlay, "dstport", str(VXLAN_PORT), "nolearning")
        sh("ip", "-n", vm, "link", "set", VXLAN_DEVICE, "mtu", str(OVERLAY_MTU))
        sh("ip", "-n", vm, "addr", "add", f"{node.network}/32", "dev", VXLAN_DEVICE)
        sh("ip", "-n", vm, "link", "set", VXLAN_DEVICE, "up")
        macs[node.index] = link_mac(vm, VXLAN_DEVICE)  # the VtepMAC flanneld publishes in its lease
    for node in topo.nodes:
        vm, remote = node.vm, topo.peer(node)
        vtep = macs[remote.index]
        # flannel's order for a remote lease: ARP entry, FDB entry, then the route
        sh("ip", "-n", vm, "neigh", "replace", remote.network, "lladdr", vtep, "dev", VXLAN_DEVICE, "nud", "permanent")
        sh("bridge", "-n", vm, "fdb", "append", vtep, "dev", VXLAN_DEVICE, "dst", remote.address)
        sh("ip", "-n", vm, "route", "replace", remote.subnet, "via", remote.network, "dev", VXLAN_DEVICE, "onlink")


# -- tinc 1.0, switch mode, no cipher ---------------------------------------------------------------


def _tinc_name(node: Node) -> str:
    return f"vm{node.index}"


def _tinc_configure(node: Node, confdir: Path, peer: Node | None) -> str:
    """Write tinc.conf and the node's host file (with a fresh key pair); returns the host file's text."""
    name = _tinc_name(node)
    (confdir / "hosts").mkdir(parents=True)
    lines = [
        f"Name = {name}",
        "Mode = switch",
        f"Interface = {TINC_DEVICE}",
        "AddressFamily = ipv4",
        f"BindToAddress = {node.address}",
        f"Port = {TINC_PORT}",
    ]
    if peer is not None:
        lines.append(f"ConnectTo = {_tinc_name(peer)}")
    (confdir / "tinc.conf").write_text("\n".join(lines) + "\n")
    # Host variables: what this node wants to receive. No cipher, digest or compression.
    (confdir / "hosts" / name).write_text(
        f"Address = {node.address}\nPort = {TINC_PORT}\n"
        "Cipher = none\nDigest = none\nCompression = 0\nPMTUDiscovery = no\n"
    )
    # -K appends the public key to hosts/<Name>; with stdin not a terminal it asks nothing.
    subprocess.run(["tincd", "-c", str(confdir), "-K"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                   check=True, timeout=60)
    return (confdir / "hosts" / name).read_text()


def _listening(ns: str, port: int) -> bool:
    out = in_ns(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
    return bool(out.strip())


@contextlib.contextmanager
def tinc(topo: TwoNodes, workdir: Path, pids: list[int] | None = None) -> Iterator[Callable[[], str]]:
    """One tincd per VM (vm1 connects to vm2) and ``tinc0`` routed like flannel.1; stopped on exit.

    Yields a function that returns both daemons' logs (for error messages);
    their process ids go into ``pids`` if given (``ip netns exec`` becomes tincd).
    Configuration, keys, pid files and logs go in ``workdir``.
    """
    first, second = topo.nodes
    hosts = {}
    confdirs = {}
    for node in topo.nodes:
        confdir = workdir / f"tinc-{_tinc_name(node)}"
        hosts[_tinc_name(node)] = _tinc_configure(node, confdir, second if node is first else None)
        confdirs[node.index] = confdir
    for confdir in confdirs.values():  # every node knows every host's address and public key
        for name, text in hosts.items():
            (confdir / "hosts" / name).write_text(text)

    procs: list[subprocess.Popen] = []
    logs = [workdir / f"tinc-{_tinc_name(node)}.log" for node in topo.nodes]

    def log() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text() if path.exists() else ''}" for path in logs)

    try:
        for node in (second, first):  # the listener first: a failed ConnectTo is retried only after seconds
            confdir, logfile = confdirs[node.index], logs[node.index - 1]
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", node.vm, "tincd", "-c", str(confdir), "-D", "-d1",
                 f"--pidfile={workdir / f'tinc-{_tinc_name(node)}.pid'}", f"--logfile={logfile}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            if pids is not None:
                pids.append(procs[-1].pid)
            deadline = time.monotonic() + 10
            while not (link_exists(node.vm, TINC_DEVICE) and _listening(node.vm, TINC_PORT)):
                if procs[-1].poll() is not None or time.monotonic() >= deadline:
                    raise RuntimeError(f"tincd in {node.vm} did not start:\n{log()}")
                time.sleep(0.05)
        for node in topo.nodes:
            vm, remote = node.vm, topo.peer(node)
            sh("ip", "-n", vm, "link", "set", TINC_DEVICE, "mtu", str(OVERLAY_MTU))
            sh("ip", "-n", vm, "addr", "add", f"{node.network}/32", "dev", TINC_DEVICE)
            sh("ip", "-n", vm, "link", "set", TINC_DEVICE, "up")
            sh("ip", "-n", vm, "route", "replace", remote.subnet, "via", remote.network, "dev", TINC_DEVICE, "onlink")
        yield log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- our daemon ----------------------------------------------------------------------------------------


def _vswitch_config(node: Node, peer: Node, backend: str, control: Path) -> str:
    vtep = {n.index: f"02:00:00:00:{n.index:02x}:01" for n in (node, peer)}
    vxlan = backend == "vxlan"
    return "\n".join([
        "[node]", f'name = "node{node.index}"', f'control = "{control}"', "",
        "[[ports]]", f'name = "{unique("vb")}"', 'type = "tap"', f'netns = "{node.container}"',
        f'address = "{node.pod}/24"', f'gateway = "{node.gateway}"', "",
        "[[router.interfaces]]", 'name = "gw"', f'address = "{node.gateway}/24"', "",
        "[overlay]", f'backend = "{backend}"', f'network = "{CLUSTER_NETWORK}"', f'subnet = "{node.subnet}"',
        f'public_ip = "{node.address}"', *([f'vtep_mac = "{vtep[node.index]}"'] if vxlan else []), "",
        "[[overlay.peers]]", f'subnet = "{peer.subnet}"', f'public_ip = "{peer.address}"',
        *([f'vtep_mac = "{vtep[peer.index]}"'] if vxlan else []), "",
    ])


@contextlib.contextmanager
def vswitch_nodes(topo: TwoNodes, backend: str, workdir: Path, pids: list[int] | None = None,
                  ) -> Iterator[Callable[[], str]]:
    """``vswitch run -c`` in each VM, in router mode over ``backend``; yields a function returning their logs.
    Their process ids go into ``pids`` if given."""
    daemons = []
    try:
        for node in topo.nodes:
            path = workdir / f"vswitch-{backend}-{node.index}.toml"
            path.write_text(_vswitch_config(node, topo.peer(node), backend, workdir / f"{backend}{node.index}.sock"))
            daemon = Daemon(path, netns=node.vm)
            daemons.append(daemon)
            daemon.start()
            if pids is not None and daemon.proc is not None:
                pids.append(daemon.proc.pid)
        yield lambda: "\n\n".join(d.log for d in daemons)
    finally:
        for daemon in daemons:
            try:
                daemon.stop()
            except subprocess.TimeoutExpired:
                daemon.kill()


# -- the baselines ----------------------------------------------------------------------------------


def run_baselines(options: Options = Options()) -> Iterator[dict[str, Any]]:
    """The kernel vxlan and tinc figures; needs root and the tools (see :func:`unavailable`)."""
    return _baselines(options, direct=False)


def run_direct_baselines(options: Options = Options()) -> Iterator[dict[str, Any]]:
    """The kernel vxlan and tinc between the two VMs themselves: iperf3 in vm1 and vm2, to the other's overlay
    device address, with no container, veth or bridge hop; the figures an outside measurement takes."""
    return _baselines(options, direct=True)


def _baselines(options: Options, *, direct: bool) -> Iterator[dict[str, Any]]:
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"bench overlay: {reason}")
    seconds = iperf_seconds(DEVICE_SECONDS if options.duration is None else options.duration)
    link, suffix, how = (None, "_direct", ", direct") if direct else (cni_bridge, "", "")
    ends = ("vm1", "vm2") if direct else ("c1 -> cni0 -> vm1", "vm2 -> cni0 -> c2")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with two_nodes(link) as topo:
            kernel_vxlan(topo)
            check_reach(topo, f"kernel vxlan{how}", direct=direct)
            vxlan = tcp_stream(topo, seconds, workdir, direct=direct)
        yield result(f"overlay.kernel_vxlan{suffix}.tcp", round(vxlan.bits_per_second / 1e9, 3), "Gbit/s",
                     seconds=seconds, mtu=OVERLAY_MTU, **vxlan.extra(),
                     path=f"{ends[0]} -> flannel.1 (kernel vxlan) -> underlay veth -> flannel.1 -> {ends[1]}")
        pids: list[int] = []
        with two_nodes(link) as topo, tinc(topo, workdir, pids) as log:
            check_reach(topo, f"tinc{how}", log=log, direct=direct)
            tinc_stream = tcp_stream(topo, seconds, workdir, pids=pids, direct=direct)
        yield result(f"overlay.tinc{suffix}.tcp", round(tinc_stream.bits_per_second / 1e9, 3), "Gbit/s",
                     seconds=seconds, mtu=OVERLAY_MTU, **tinc_stream.extra(),
                     ratio_to_kernel_vxlan=round(tinc_stream.bits_per_second / vxlan.bits_per_second, 4),
                     path=f"{ends[0]} -> tinc0 (tincd, switch mode, no cipher) -> underlay veth -> tinc0 -> {ends[1]}")
