"""The test kit's Cluster delivers between cores by itself, and says when it cannot."""

import pytest
from scapy.all import ICMP, IP, Ether, raw

from vswitch import config
from vswitch.core.actions import DropReason
from vswitch.core.l2.bridge import Bridge
from vswitch.daemon import build_core
from vswitch.testing import Cluster

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def bridge(*ports: str) -> Bridge:
    b = Bridge()
    for port in ports:
        b.add_port(port)
    return b


def test_a_wire_carries_frames_both_ways_between_two_bridges():
    cluster = Cluster()
    cluster.add("left", bridge("a", "trunk"))
    cluster.add("right", bridge("b", "trunk"))
    cluster.wire(("left", "trunk"), ("right", "trunk"))
    hello = raw(Ether(src=A, dst=B) / b"hello")
    out = cluster.send("left", "a", [hello], 0.0)
    assert out.transmits == {("right", "b"): [hello]}      # flooded across, never back out of the trunk
    answer = raw(Ether(src=B, dst=A) / b"answer")
    out = cluster.send("right", "b", [answer], 0.1)
    assert out.transmits == {("left", "a"): [answer]}      # both bridges learned A behind the wire
    assert out.drops == []


def test_drops_name_the_node():
    cluster = Cluster()
    cluster.add("left", bridge("a", "trunk"))
    out = cluster.send("left", "a", [b"\x01" * 9], 0.0)
    assert out.drops == [("left", "a", DropReason.TRUNCATED)]


def test_a_loop_is_reported_rather_than_run_forever():
    cluster = Cluster()
    cluster.add("left", bridge("a", "x", "y"))
    cluster.add("right", bridge("x", "y"))
    cluster.wire(("left", "x"), ("right", "x"))
    cluster.wire(("left", "y"), ("right", "y"))
    with pytest.raises(AssertionError, match="loop"):
        cluster.send("left", "a", [raw(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / b"storm")], 0.0)


def test_a_wire_end_is_wired_once():
    cluster = Cluster()
    cluster.add("left", bridge("a"))
    cluster.wire(("left", "a"), ("right", "a"))
    with pytest.raises(ValueError, match="wired already"):
        cluster.wire(("left", "a"), ("other", "a"))


NODE = """
[node]
name = "node{n}"

[[ports]]
name = "c{n}"
type = "tap"

[[router.interfaces]]
name = "cni0"
address = "10.244.{n}.1/24"
mac = "02:00:00:00:0{n}:01"

[[router.neighbours]]
interface = "cni0"
address = "10.244.{n}.2"
mac = "02:00:00:00:0{n}:02"

[overlay]
backend = "{backend}"
network = "10.244.0.0/16"
subnet = "10.244.{n}.0/24"
public_ip = "10.99.0.{n}"
{own_vtep}

[[overlay.peers]]
subnet = "10.244.{other}.0/24"
public_ip = "10.99.0.{other}"
{peer_vtep}
"""


def overlay_cluster(backend: str, *, peers: tuple[int, ...] = (1, 2)) -> Cluster:
    cluster = Cluster()
    for n in peers:
        other = 3 - n
        vtep = (lambda m: f'vtep_mac = "02:00:00:00:0{m}:ff"') if backend == "vxlan" else (lambda m: "")
        text = NODE.format(n=n, other=other, backend=backend, own_vtep=vtep(n), peer_vtep=vtep(other))
        core, _router, overlay, _vtep = build_core(config.loads(text))
        for port in (f"c{n}", "underlay"):
            core.add_port(port)
        cluster.add(f"node{n}", core, underlay=("underlay", f"10.99.0.{n}", overlay.port))
    return cluster


def echo(n: int, dst: str, *, seq: int = 1) -> bytes:
    return raw(Ether(src=f"02:00:00:00:0{n}:02", dst=f"02:00:00:00:0{n}:01")
               / IP(src=f"10.244.{n}.2", dst=dst) / ICMP(type=8, id=7, seq=seq))


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_the_underlay_delivers_by_address_across_the_overlay(backend):
    cluster = overlay_cluster(backend)
    cluster.timer(0.0)                                  # gratuitous ARPs, delivered nowhere that matters
    out = cluster.send("node1", "c1", [echo(1, "10.244.2.2")], 1.0)
    (frame,) = out.to("node2", "c2")
    assert IP(raw(Ether(frame)[IP]))[ICMP].seq == 1
    assert Ether(frame)[IP].ttl == 64 - 2 - (2 if backend == "udp" else 0)   # two routers; flannel's proxy twice
    assert out.lost == [] and out.drops == []


def test_a_datagram_for_an_address_no_node_holds_is_lost():
    cluster = overlay_cluster("udp", peers=(1,))       # node1's peer 10.99.0.2 is not in the cluster
    out = cluster.send("node1", "c1", [echo(1, "10.244.2.2")], 1.0)
    (datagram,) = out.lost
    assert datagram[:4] == bytes([10, 99, 0, 2])
