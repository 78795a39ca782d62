"""A super-frame cut by the overlay, as the Linux kernel's vxlan and TCP stack take it: the kernel is the oracle.

Two namespaces joined by a veth: ``ours`` (10.99.0.1) sends from a real
:class:`~vswitch.shell.ports.udp.UdpPort` what :meth:`Overlay.encapsulate`
makes of one 60 KB TCP super-frame, with UDP GSO; ``kernel`` (10.99.0.2) has
flannel's ``flannel.1`` and 10.244.2.2 on its loopback, with no listener on the
segments' port. flannel.1 counts every inner frame it takes; its GRO checks
each segment's checksum before it joins them for TCP, and passes a bad one on
alone, which TCP counts in ``InCsumErrors`` — as a deliberately broken run
shows.
"""

import sys

import pytest
from netkit import Namespaces, in_ns, link_mac, sh

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux namespaces")

SEND = r"""
import socket, sys
from scapy.all import IP, TCP, raw
from vswitch.core.wire.addr import Network
from vswitch.core.wire.offload import GSO_TCPV4, super_frame
from vswitch.overlay.core.gro import datagrams
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.core.tunnel import Overlay
from vswitch.shell.ports.udp import UdpPort

peer_vtep, corrupt = bytes.fromhex(sys.argv[1]), sys.argv[2] == "corrupt"
overlay = Overlay(backend="vxlan", network=Network.parse("10.244.0.0/16"), subnet=Network.parse("10.244.1.0/24"),
                  vtep_mac=bytes.fromhex("020000000101"), mtu=1450)
overlay.set_leases([Lease(Network.parse("10.244.2.0/24"), socket.inet_aton("10.99.0.2"), peer_vtep)])
payload = bytes(i * 13 & 0xFF for i in range(60000))
packet = raw(IP(src="10.244.1.2", dst="10.244.2.2", flags="DF") / TCP(sport=40000, dport=9, seq=1, ack=1,
             flags="A", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload)
(sent,) = overlay.encapsulate([super_frame(packet, GSO_TCPV4, 1448)], 0.0)
frames = sent.frames   # one run of datagrams, sent whole with UDP GSO
count = len(datagrams(frames))
if corrupt:   # the last byte of every segment's payload flipped: checksums no longer match
    frames = [d[:-1] + bytes([d[-1] ^ 0xFF]) for d in datagrams(frames)]
port = UdpPort.open("underlay", "10.99.0.1", 8472, source_ports=True)
start = calls = 0
while start < len(frames):
    start += port._write_some(frames, start)
    calls += 1
print(count, calls, port.offloads)
"""


@pytest.fixture
def kernel_peer():
    spaces = Namespaces()
    try:
        ours, kernel = spaces.create("ours"), spaces.create("kern")
        sh("ip", "-n", ours, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", kernel)
        for ns, address in ((ours, "10.99.0.1"), (kernel, "10.99.0.2")):
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", kernel, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "10.99.0.2",
           "dev", "eth0", "dstport", "8472", "nolearning")
        sh("ip", "-n", kernel, "link", "set", "flannel.1", "mtu", "1450", "up")
        sh("ip", "-n", kernel, "addr", "add", "10.244.2.0/32", "dev", "flannel.1")
        sh("ip", "-n", kernel, "addr", "add", "10.244.2.2/32", "dev", "lo")
        sh("ip", "-n", kernel, "neigh", "replace", "10.244.1.0", "lladdr", "02:00:00:00:01:01", "dev", "flannel.1",
           "nud", "permanent")
        sh("bridge", "-n", kernel, "fdb", "append", "02:00:00:00:01:01", "dev", "flannel.1", "dst", "10.99.0.1")
        sh("ip", "-n", kernel, "route", "replace", "10.244.1.0/24", "via", "10.244.1.0", "dev", "flannel.1", "onlink")
        for key in ("all", "default", "flannel/1"):
            in_ns(kernel, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        yield ours, kernel
    finally:
        spaces.cleanup()


def counters(ns: str) -> dict[str, int]:
    """The kernel's TCP counters and the packets flannel.1 has received."""
    rows = [line.split() for line in in_ns(ns, "cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Tcp:")]
    received = int(in_ns(ns, "cat", "/sys/class/net/flannel.1/statistics/rx_packets").stdout)
    return {**{key: int(value) for key, value in zip(rows[0][1:], rows[1][1:], strict=True)}, "flannel.1": received}


def send(ours: str, kernel: str, how: str) -> tuple[int, int, dict[str, int]]:
    """Send the cut super-frame; (datagrams, sendmsg calls, the changes of the kernel's counters)."""
    vtep = link_mac(kernel, "flannel.1").replace(":", "")
    before = counters(kernel)
    count, calls, _offloads = in_ns(ours, sys.executable, "-c", SEND, vtep, how).stdout.split()
    for _ in range(50):   # the last datagrams may still be on their way through the softirq
        after = counters(kernel)
        if after["flannel.1"] - before["flannel.1"] >= int(count):
            break
    return int(count), int(calls), {key: after[key] - before[key] for key in ("flannel.1", "InSegs", "InCsumErrors")}


def test_the_kernels_vxlan_and_tcp_take_every_segment_of_a_cut_super_frame(kernel_peer):
    count, calls, changes = send(*kernel_peer, "intact")
    assert count == -(-60000 // (1450 - 52)) and calls < count   # whole packets of the MTU, several per sendmsg
    # flannel.1 took every one; its GRO checked each checksum and joined them (a bad one it would have passed
    # on alone, to fail in TCP), and TCP found no bad checksum in what it took.
    assert changes["flannel.1"] == count and changes["InCsumErrors"] == 0 and changes["InSegs"] >= 1


def test_the_oracle_sees_a_bad_checksum(kernel_peer):
    count, _calls, changes = send(*kernel_peer, "corrupt")
    assert changes["flannel.1"] == count and changes["InCsumErrors"] == count
