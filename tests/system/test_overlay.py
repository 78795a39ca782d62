"""The overlay in router mode between real kernel stacks, and against the Linux kernel's own VXLAN.

Per backend (udp, vxlan), one topology serves the module:

    vm1 ns  eth0 10.99.0.1/24 ──── veth ──── eth0 10.99.0.2/24 (and 10.99.0.9, a stranger)  vm2 ns
      daemon "node1" (vswitch run -c, in vm1)           daemon "node2" (in vm2)
        gw 10.244.1.1/24 on the bridge                    gw 10.244.2.1/24 on the bridge
        c1a 10.244.1.2 ─ tap, c1b 10.244.1.3 ─ tap         c2a 10.244.2.2 ─ tap, c2b 10.244.2.3 ─ tap
        (c1b's MTU is 1500, above the overlay's)
        [overlay] 10.244.1.0/24, peer 10.244.2.0/24        [overlay] 10.244.2.0/24, peer 10.244.1.0/24

A second module topology puts a vswitch node (vxlan) next to a node whose
overlay is the kernel's ``flannel.1``, set up exactly as flanneld does, with
its container on a Linux bridge ``cni0``.

The kernel's tools are the oracle: ping's reading of ICMP errors, iperf3,
tshark's VXLAN dissector on the underlay.
"""

import json
import os
import re
import shutil
import signal
import stat
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
    ping,
    requires_root,
    sh,
    start_in_ns,
    stop,
    underlay,
    unique,
    wait_until,
)

from vswitch.overlay.core.gro import segments_per_send

pytestmark = [requires_root, pytest.mark.timeout(120)]

needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (CI installs it)")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (CI installs it)")

NETWORK = "10.244.0.0/16"
PUBLIC = {1: "10.99.0.1", 2: "10.99.0.2"}
STRANGER = "10.99.0.9"                       # on vm2's eth0 too, but no node's public address
VTEP = {n: f"02:00:00:00:0{n}:01" for n in range(1, 10)}
PORT = {"udp": 8285, "vxlan": 8472}
OVERLAY_MTU = {"udp": 1472, "vxlan": 1450}
C1A, C1B, C2A, C2B = "10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3"
GW1 = "10.244.1.1"


def _gateway(n: int) -> str:
    return f"10.244.{n}.1"


def _peer(n: int, backend: str) -> str:
    """A ``[[overlay.peers]]`` table for node ``n`` (10.244.n.0/24 at 10.99.0.n)."""
    mac = f'vtep_mac = "{VTEP[n]}"\n' if backend == "vxlan" else ""
    return f'[[overlay.peers]]\nsubnet = "10.244.{n}.0/24"\npublic_ip = "10.99.0.{n}"\n{mac}'


def node_config(tmp: Path, n: int, backend: str, containers: list[tuple[str, str, str, int | None]],
                peers: list[int]) -> str:
    """Node ``n``'s config: ``containers`` are (tap, netns, address, mtu or None for the overlay's)."""
    text = f'[node]\nname = "node{n}"\ncontrol = "{tmp / f"n{n}.sock"}"\n\n'
    for tap, ns, address, mtu in containers:
        text += (f'[[ports]]\nname = "{tap}"\ntype = "tap"\nnetns = "{ns}"\naddress = "{address}/24"\n'
                 f'gateway = "{_gateway(n)}"\n' + (f"mtu = {mtu}\n" if mtu else "") + "\n")
    text += f'[[router.interfaces]]\nname = "gw"\naddress = "{_gateway(n)}/24"\n\n'
    text += (f'[overlay]\nbackend = "{backend}"\nnetwork = "{NETWORK}"\nsubnet = "10.244.{n}.0/24"\n'
             f'public_ip = "10.99.0.{n}"\nsubnet_env = "{tmp / f"n{n}" / "subnet.env"}"\n')
    if backend == "vxlan":
        text += f'vtep_mac = "{VTEP[n]}"\n'
    return text + "\n" + "\n".join(_peer(p, backend) for p in peers)


class Topology:
    """Two VMs, two daemons, four containers; what tests change (a restarted daemon, a config) they put back."""

    def __init__(self, backend: str, tmp: Path, spaces: Namespaces) -> None:
        self.backend = backend
        self.tmp = tmp
        self.vm = {1: spaces.create("vm"), 2: spaces.create("vm")}
        underlay(self.vm[1], self.vm[2])
        sh("ip", "-n", self.vm[2], "addr", "add", f"{STRANGER}/24", "dev", "eth0")
        self.c1a, self.c1b, self.c2a, self.c2b = (spaces.create("vc") for _ in range(4))
        self.containers = {
            1: [(unique("t"), self.c1a, C1A, None), (unique("t"), self.c1b, C1B, 1500)],
            2: [(unique("t"), self.c2a, C2A, None), (unique("t"), self.c2b, C2B, None)],
        }
        self.configs = {n: tmp / f"node{n}.toml" for n in (1, 2)}
        self.daemons: dict[int, Daemon] = {}
        for n in (1, 2):
            self.write_config(n)
        for n in (1, 2):
            self.start(n)

    def write_config(self, n: int, extra_peers: tuple[int, ...] = ()) -> None:
        peers = [3 - n, *extra_peers]
        self.configs[n].write_text(node_config(self.tmp, n, self.backend, self.containers[n], peers))

    def start(self, n: int) -> Daemon:
        self.daemons[n] = Daemon(self.configs[n], netns=self.vm[n]).start()
        return self.daemons[n]

    def logs(self) -> str:
        """Both daemons' last lines, and whether they still run: for failure messages."""
        return "\n".join(
            f"--- node{n} ({'running' if d.proc.poll() is None else f'exited {d.proc.returncode}'}):\n{d.log[-1500:]}"
            for n, d in self.daemons.items())

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()


@pytest.fixture(scope="module", params=["udp", "vxlan"])
def net(request, tmp_path_factory) -> Iterator[Topology]:
    """The per-backend topology above; everything it made goes afterwards, even when it fails half-built."""
    spaces = Namespaces()
    topology = None
    try:
        topology = Topology(request.param, tmp_path_factory.mktemp(request.param), spaces)
        yield topology
    finally:
        if topology is not None:
            topology.close()
        spaces.cleanup()   # the veths go with their namespaces, the TAPs with their daemons


def _ping(ns: str, address: str, *options: str, count: int = 1, wait: float = 2, interval: float = 0.2
          ) -> tuple[int, str]:
    result = in_ns(ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), *options, address,
                   check=False, timeout=count * (wait + interval) + 10)
    return result.returncode, result.stdout + result.stderr


def _drops(daemon: Daemon) -> dict[str, int]:
    return daemon.show("peers")["drops"]  # type: ignore[index]


def _peer_subnets(daemon: Daemon) -> list[str]:
    return [p["subnet"] for p in daemon.show("peers")["peers"]]  # type: ignore[index]


# -- 1. reachability ------------------------------------------------------------------------


def test_every_container_reaches_every_other(net):
    everyone = [(net.c1a, C1A), (net.c1b, C1B), (net.c2a, C2A), (net.c2b, C2B)]
    failed = []
    for ns, own in everyone:
        for _, address in everyone:
            if address != own:
                code, output = _ping(ns, address, wait=3)
                if code != 0:
                    failed.append(f"{own} -> {address}: {output.strip()[-200:]}")
    assert not failed, "\n".join(failed) + "\n" + net.logs()
    peers = net.daemons[1].show("peers")["peers"]
    assert [p["subnet"] for p in peers] == ["10.244.2.0/24"]
    assert peers[0]["tx_packets"] > 0 and peers[0]["rx_packets"] > 0 and peers[0]["rx_dropped"] == 0


def _rx_frames(daemon: Daemon, port: str) -> tuple[int, int]:
    """A port's frames and super-frames received so far."""
    rx = next(p for p in daemon.show("ports") if p["name"] == port)["rx"]  # type: ignore[union-attr]
    return rx["frames"], rx["super_frames"]


@needs_iperf3
def test_tcp_stream_across_nodes(net):
    """A container's stream crosses; its device's super-frames are no bigger than one UDP GSO send takes, so
    each one reaches the peer as one GRO read (at its default 64 KB, each would take two sends and reads)."""
    tap = net.containers[1][0][0]
    (link,) = [link for link in json.loads(in_ns(net.c1a, "ip", "-d", "-j", "link", "show").stdout)
               if link["ifname"] != "lo"]
    assert link["gso_max_segs"] == segments_per_send(OVERLAY_MTU[net.backend])
    sent_before, reads_before = _rx_frames(net.daemons[1], tap), _rx_frames(net.daemons[2], "underlay")[0]
    server = start_in_ns(net.c2a, "iperf3", "-s", "-1", "--forceflush", ready="Server listening")
    try:
        result = in_ns(net.c1a, "iperf3", "-c", C2A, "-t", "1", "-J", "--connect-timeout", "3000",
                       check=False, timeout=30)
        report = json.loads(result.stdout)
        assert result.returncode == 0 and "error" not in report, report.get("error")
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
    finally:
        stop(server)
    frames, super_frames = (after - before for after, before in zip(_rx_frames(net.daemons[1], tap), sent_before,
                                                                      strict=True))
    reads = _rx_frames(net.daemons[2], "underlay")[0] - reads_before
    assert super_frames > 10, f"the container's stack handed over {super_frames} super-frames"
    assert reads <= 1.2 * frames + 20, f"{frames} frames from the container, {reads} reads at the peer"


@needs_tshark
def test_a_tcp_stream_leaves_as_whole_packets_with_valid_checksums_on_the_underlay(net, tmp_path):
    """The containers' stacks hand over TSO super-frames; what the overlay puts on the underlay is whole
    packets of the overlay's MTU at most, every IP and TCP checksum valid, as tshark reads them (flannel's
    udp decoded as IP in UDP, VXLAN as VXLAN)."""
    port = 8285 if net.backend == "udp" else 8472
    pcap = tmp_path / "underlay.pcap"
    # What the daemon hands the kernel, datagram by datagram (a veth passes a UDP GSO buffer on whole, so a
    # capture on it would show the buffers): `vswitch capture` of the underlay port.
    capture = subprocess.Popen([sys.executable, "-m", "vswitch", "capture", "underlay", "-w", str(pcap),
                                "--count", "2000", "-c", str(net.configs[1])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = start_in_ns(net.c2a, "iperf3", "-s", "-1", "--forceflush", ready="Server listening")
    try:   # paced, so the capture stays small for tshark; `python -m bench overlay` measures speed
        time.sleep(0.5)
        result = in_ns(net.c1a, "iperf3", "-c", C2A, "-t", "1", "-b", "200M", "-J", "--connect-timeout", "3000",
                       check=False, timeout=30)
        assert result.returncode == 0, result.stdout[-2000:]
    finally:
        stop(server)
        capture.send_signal(signal.SIGINT)   # between records: the file stays whole
        capture.wait(timeout=10)
    sender = {p["name"]: p for p in net.daemons[1].show("ports")}[net.containers[1][0][0]]
    assert sender["rx"]["super_frames"] > 0   # the stream did come as super-frames
    inner = "ip" if net.backend == "udp" else "vxlan"
    checked = ("-d", f"udp.port=={port},{inner}", "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE")
    fields = sh("tshark", "-n", "-r", str(pcap), *checked, "-Y", "tcp.port == 5201", "-T", "fields", "-E", "separator=/t",
                "-e", "frame.len", "-e", "ip.len", "-e", "ip.checksum.status", "-e", "tcp.checksum.status", timeout=120).stdout
    rows = [line.split("\t") for line in fields.splitlines()]
    assert len(rows) > 100, fields[-2000:]
    mtu = OVERLAY_MTU[net.backend]
    for frame_len, ip_lens, ip_status, tcp_status in rows:
        inner_len = int(ip_lens.split(",")[-1])
        assert int(frame_len) <= 1514 and inner_len <= mtu
        assert set(ip_status.split(",")) == {"1"} and tcp_status == "1", (frame_len, ip_lens, ip_status, tcp_status)


# -- 2. strangers and forgeries --------------------------------------------------------------

# Sends crafted overlay datagrams to node1, in order. argv: backend, node1's address, its port, the inner frame's
# destination and source MACs (VXLAN: node1's and node2's VTEP MACs), then JSON
# [[outer source address, inner source, inner destination, UDP port, payload], ...].
CRAFT = r"""
import json, socket, struct, sys, time
backend, target, port, dst_mac, src_mac = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
sends = json.loads(sys.argv[6])

def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

for outer_src, inner_src, inner_dst, dport, payload in sends:
    udp = struct.pack("!HHHH", 5555, dport, 8 + len(payload), 0) + payload.encode()
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0,
                     socket.inet_aton(inner_src), socket.inet_aton(inner_dst))
    packet = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + udp
    if backend == "vxlan":
        packet = (bytes((8, 0, 0, 0, 0, 0, 1, 0)) + bytes.fromhex(dst_mac.replace(":", ""))
                  + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + packet)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((outer_src, 0))          # any port but the daemon's own: only the address names a peer
    s.sendto(packet, (target, port))
    s.close()
    time.sleep(0.05)
"""

# In a container: print every datagram to the port as "payload source", until "valid" comes (or 5 s pass).
RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(5)
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2000)
        print(data.decode(errors="replace"), peer[0], flush=True)
        if data == b"valid":
            break
except socket.timeout:
    pass
"""


def test_strangers_and_forged_sources_are_refused_and_counted(net):
    daemon = net.daemons[1]
    drops_before, stats_before = _drops(daemon), daemon.show("stats")["drops"]
    refused_before = daemon.show("peers")["peers"][0]["rx_dropped"]
    receiver = start_in_ns(net.c1a, sys.executable, "-c", RECEIVER, "9999", ready="ready")
    try:
        sends = [
            [STRANGER, C2A, C1A, 9999, "stranger"],       # a well-formed datagram from no peer's address
            [PUBLIC[2], "10.244.7.7", C1A, 9999, "forged"],  # the peer's address, a source outside its subnet
            [PUBLIC[2], C2A, C1A, 9999, "valid"],          # the control: the same datagram, honest, gets in
        ]
        in_ns(net.vm[2], sys.executable, "-c", CRAFT, net.backend, PUBLIC[1], str(PORT[net.backend]), VTEP[1],
              VTEP[2], json.dumps(sends))
        out, err = receiver.communicate(timeout=10)
    finally:
        stop(receiver)
    assert out.split() == ["valid", C2A], (out, err, net.logs())

    drops = _drops(daemon)
    assert drops.get("overlay-unknown-peer", 0) - drops_before.get("overlay-unknown-peer", 0) == 1, drops
    assert drops.get("overlay-forged-source", 0) - drops_before.get("overlay-forged-source", 0) == 1, drops
    stats = daemon.show("stats")["drops"]
    assert stats["overlay-unknown-peer"] - stats_before["overlay-unknown-peer"] == 1, stats
    assert stats["overlay-forged-source"] - stats_before["overlay-forged-source"] == 1, stats
    # a forgery is held against the peer it claims to come from; a stranger is no peer's
    assert daemon.show("peers")["peers"][0]["rx_dropped"] - refused_before == 1


# -- 3. restart ---------------------------------------------------------------------------------


def test_restarted_node_is_reached_again(net):
    assert ping(net.c1a, C2A, count=1), net.logs()
    assert net.daemons[2].stop() == 0, net.logs()
    code, output = _ping(net.c1a, C2A, wait=1)
    assert code != 0, output      # its containers' TAPs went with it
    started = time.monotonic()
    daemon = net.start(2)
    wait_until(lambda: ping(net.c1a, C2A, count=1, wait=1), timeout=15, what="ping after the restart")
    assert time.monotonic() - started < 15, daemon.log
    assert ping(net.c2b, C1B, count=1), net.logs()


# -- 4. reload -------------------------------------------------------------------------------------


def test_reload_and_sighup_keep_traffic_to_unchanged_peers(net):
    daemon = net.daemons[1]
    assert ping(net.c1a, C2A, count=1), net.logs()
    pinger = subprocess.Popen(["ip", "netns", "exec", net.c1a, "ping", "-n", "-i", "0.05", "-c", "60", "-W", "1", C2A],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        net.write_config(1, extra_peers=(3,))
        result = daemon.cli("reload")
        assert "1 peers added" in result.stdout, result.stdout + result.stderr
        time.sleep(0.5)
        net.write_config(1, extra_peers=(3, 4))
        os.kill(daemon.proc.pid, signal.SIGHUP)   # `ip netns exec` execs: the pid is the daemon's
        wait_until(lambda: "10.244.4.0/24" in _peer_subnets(daemon), timeout=5, what="SIGHUP took the new peer")
        assert _peer_subnets(daemon) == ["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]
        out, _ = pinger.communicate(timeout=20)
    finally:
        stop(pinger)
        net.write_config(1)
        daemon.cli("reload", check=False)
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent == 60 and sent - received <= 1, out + net.logs()
    daemon.wait_for("reloaded leases: 1 added, 0 removed, 0 changed, 1 unchanged")


def test_a_removed_peer_is_net_unreachable(net):
    daemon = net.daemons[1]
    try:
        net.write_config(1, extra_peers=(3,))
        daemon.cli("reload")
        assert _peer_subnets(daemon) == ["10.244.2.0/24", "10.244.3.0/24"]
        code, output = _ping(net.c1a, "10.244.3.5", wait=1)   # a lease, but nobody at 10.99.0.3: silence
        assert code != 0 and "Unreachable" not in output, output
        net.write_config(1)
        result = daemon.cli("reload")
        assert "1 removed" in result.stdout, result.stdout
        assert _peer_subnets(daemon) == ["10.244.2.0/24"]
        code, output = _ping(net.c1a, "10.244.3.5")
        assert f"From {GW1} icmp_seq=1 Destination Net Unreachable" in output, output
        assert ping(net.c1a, C2A, count=1), net.logs()
    finally:
        net.write_config(1)
        daemon.cli("reload", check=False)


# -- 6. ICMP across the overlay ---------------------------------------------------------------------


# Who reports an expiring TTL, by the TTL a container sends with: each router takes one (node1's gateway, then
# node2's overlay interface, 10.244.2.0); flannel's UDP proxy also takes one as it sends and one as it receives.
TTL_EXCEEDED_FROM = {"udp": [GW1, GW1, "10.244.2.0", "10.244.2.0"], "vxlan": [GW1, "10.244.2.0"]}


def test_ttl_exceeded_across_the_overlay(net):
    reporters = TTL_EXCEEDED_FROM[net.backend]
    for ttl, reporter in enumerate(reporters, start=1):
        code, output = _ping(net.c1a, C2A, "-t", str(ttl))
        assert code != 0 and f"From {reporter} icmp_seq=1 Time to live exceeded" in output, (ttl, output, net.logs())
    code, output = _ping(net.c1a, C2A, "-t", str(len(reporters) + 1))
    assert code == 0 and f"ttl={64 - len(reporters)}" in output, output   # the reply came back by as many hops
    assert net.daemons[1].show("stats")["router"]["icmp_sent"]["time-exceeded"] >= 1


def test_no_lease_is_net_unreachable_from_the_gateway(net):
    code, output = _ping(net.c1a, "10.244.9.9")
    assert code != 0
    assert f"From {GW1} icmp_seq=1 Destination Net Unreachable" in output, output
    assert _drops(net.daemons[1]).get("overlay-no-lease", 0) >= 1


def test_oversized_df_packet_gets_fragmentation_needed_with_the_overlay_mtu(net):
    mtu = OVERLAY_MTU[net.backend]
    assert "mtu 1500" in in_ns(net.c1b, "ip", "link", "show", "dev", net.containers[1][1][0]).stdout
    assert ping(net.c1b, C2A, count=1), net.logs()
    code, output = _ping(net.c1b, C2A, "-M", "do", "-s", "1450")
    assert code != 0
    assert f"From {GW1} icmp_seq=1 Frag needed and DF set (mtu = {mtu})" in output, output
    code, output = _ping(net.c1b, C2A, "-M", "do", "-s", str(mtu - 28))   # the kernel believed us
    assert code == 0, output


# -- 7. subnet.env ------------------------------------------------------------------------------------


def test_subnet_env_is_flanneld_s(net):
    mtu = OVERLAY_MTU[net.backend]
    for n in (1, 2):
        path = net.tmp / f"n{n}" / "subnet.env"
        assert path.read_text() == (
            f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{n}.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n"
        )
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]   # no temporary left behind


# -- 5. the kernel's flannel.1 as a peer ---------------------------------------------------------------

KERNEL_VTEP = VTEP[2]


class KernelTopology:
    """vm1: a vswitch node (vxlan, router mode) with container c1; vmk: flannel.1 + cni0 with container ck."""

    def __init__(self, tmp: Path, spaces: Namespaces) -> None:
        self.tmp = tmp
        self.vm1, self.vmk = spaces.create("vm"), spaces.create("vk")
        underlay(self.vm1, self.vmk)
        self.c1, self.ck = spaces.create("vc"), spaces.create("vc")
        config = tmp / "node1.toml"
        config.write_text(node_config(tmp, 1, "vxlan", [(unique("t"), self.c1, C1A, None)], [2]))
        kernel_flannel_node(self.vmk, self.ck, public=PUBLIC[2], subnet="10.244.2.0/24", vtep=KERNEL_VTEP, address=C2A)
        flannel_route(self.vmk, subnet="10.244.1.0/24", vtep=VTEP[1], public=PUBLIC[1])
        self.daemon = Daemon(config, netns=self.vm1).start()


@pytest.fixture(scope="module")
def kernel_net(tmp_path_factory) -> Iterator[KernelTopology]:
    spaces = Namespaces()
    topology = None
    try:
        topology = KernelTopology(tmp_path_factory.mktemp("kernel"), spaces)
        yield topology
    finally:
        if topology is not None:
            topology.daemon.kill()
        spaces.cleanup()


def test_kernel_vxlan_node_pings_both_ways(kernel_net):
    code, output = _ping(kernel_net.c1, C2A, count=2, wait=3)
    assert code == 0, output + kernel_net.daemon.log[-2000:]
    code, output = _ping(kernel_net.ck, C1A, count=2, wait=3)
    assert code == 0, output
    code, output = _ping(kernel_net.ck, GW1, count=1)   # the vswitch node's gateway, from the kernel's side
    assert code == 0, output
    peer = kernel_net.daemon.show("peers")["peers"][0]
    assert peer["vtep_mac"] == KERNEL_VTEP and peer["rx_packets"] > 0 and peer["rx_dropped"] == 0


@needs_iperf3
@pytest.mark.parametrize("reverse", [False, True], ids=["to-kernel", "from-kernel"])
def test_kernel_vxlan_node_tcp_stream(kernel_net, reverse):
    server = start_in_ns(kernel_net.ck, "iperf3", "-s", "-1", "--forceflush", ready="Server listening")
    try:
        result = in_ns(kernel_net.c1, "iperf3", "-c", C2A, "-t", "1", "-J", "--connect-timeout", "3000",
                       *(["-R"] if reverse else []), check=False, timeout=30)
        report = json.loads(result.stdout)
        assert result.returncode == 0 and "error" not in report, report.get("error")
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
    finally:
        stop(server)


# From a container: three datagrams on each of several UDP flows (source ports 41000, 41001, ...) to port 7000.
FLOWS = r"""
import socket, sys, time
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 41000 + i))
    for _ in range(3):
        s.sendto(b"flow %d" % i, (sys.argv[1], 7000))
        time.sleep(0.01)
    s.close()
"""


@needs_tshark
def test_tshark_decodes_our_datagrams_as_vxlan_vni_1_with_per_flow_source_ports(kernel_net):
    assert ping(kernel_net.c1, C2A, count=1)
    pcap = kernel_net.tmp / "underlay.pcap"
    tshark = start_in_ns(kernel_net.vm1, "tshark", "-n", "-i", "eth0", "-f", "udp port 8472", "-w", str(pcap),
                         ready="Capture started", stream="stderr", timeout=30)
    try:
        flows = 4
        in_ns(kernel_net.c1, sys.executable, "-c", FLOWS, C2A, str(flows))
        assert ping(kernel_net.c1, C2A, count=3)
        time.sleep(0.3)
    finally:
        stop(tshark)
    fields = sh("tshark", "-n", "-r", str(pcap), "-d", "udp.port==8472,vxlan", "-T", "fields", "-E", "separator=/t",
                "-e", "ip.src", "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "vxlan.vni",
                "-e", "icmp.type", "-e", "frame.protocols").stdout
    ours = [line.split("\t") for line in fields.splitlines() if line.startswith(f"{PUBLIC[1]},")]
    assert ours, fields
    ports_by_flow: dict[str, set[str]] = {}
    for src, dst, sport, dport, vni, icmp_type, protocols in ours:
        assert dst.startswith(f"{PUBLIC[2]},") and vni == "1" and ":vxlan:eth:ethertype:ip:" in protocols, fields
        outer_sport, *inner_sport = sport.split(",")
        assert dport.split(",")[0] == "8472"
        if inner_sport:   # an inner UDP flow, by its source port
            ports_by_flow.setdefault(inner_sport[0], set()).add(outer_sport)
        elif icmp_type == "8":   # the echo requests of one ping: one flow (by identifier, not checksum)
            ports_by_flow.setdefault("ping", set()).add(outer_sport)
    assert sorted(ports_by_flow) == sorted([str(41000 + i) for i in range(flows)] + ["ping"]), fields
    assert all(len(ports) == 1 for ports in ports_by_flow.values()), ports_by_flow   # a flow keeps its port
    assert len({ports.pop() for ports in ports_by_flow.values()}) >= 3, fields          # flows spread
    # the kernel's replies decode the same way
    theirs = [line.split("\t") for line in fields.splitlines() if line.startswith(f"{PUBLIC[2]},")]
    assert theirs and all(line[4] == "1" for line in theirs), fields
