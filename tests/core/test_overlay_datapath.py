"""Router mode end to end, no I/O: two nodes' datapaths built by the daemon's build_core, joined by hand.

Node N (1 or 2) has a container cN (10.244.N.2, MAC 02:00:00:00:0N:10) on
its bridge, the gateway cni0 (10.244.N.1/24, MAC 02:00:00:00:0N:01) on its
router, the overlay interface (10.244.N.0/32) with the route for the whole
cluster network, and the underlay port. With ``uplink``, a router interface
``wan`` (192.0.2.N/24) on a packet port ``uplink`` leads outside, where the
host 192.0.2.20 lives.
"""

import pytest
from overlaykit import drops, ip_checksum_ok, to_wire, transmitted
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPerror, UDPerror, raw

from vswitch import config
from vswitch.core.actions import DropReason
from vswitch.core.datapath import Datapath, OnOverlay
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l3.router import Router
from vswitch.core.wire.addr import Network
from vswitch.daemon import build_core
from vswitch.overlay.core.tunnel import Overlay

R = DropReason
OUTSIDE, OUTSIDE_MAC, WAN_MAC = "192.0.2.20", "02:00:00:00:00:20", "02:00:00:00:01:0e"
MTU = {"udp": 1472, "vxlan": 1450}
PORTS = {"udp": 8285, "vxlan": 8472}


def container_mac(n: int) -> str:
    return f"02:00:00:00:0{n}:10"


def gateway_mac(n: int) -> str:
    return f"02:00:00:00:0{n}:01"


def node_config(n: int, backend: str, *, ip_masq: bool = False, uplink: bool = False, static: bool = True) -> str:
    other = 3 - n
    text = f"""
[node]
name = "node{n}"

[[ports]]
name = "c{n}"
type = "tap"
"""
    if uplink:
        text += """
[[ports]]
name = "uplink"
type = "packet"
device = "eth1"
"""
    text += f"""
[[router.interfaces]]
name = "cni0"
address = "10.244.{n}.1/24"
mac = "{gateway_mac(n)}"
"""
    if uplink:
        text += f"""
[[router.interfaces]]
name = "wan"
address = "192.0.2.{n}/24"
port = "uplink"
mac = "{WAN_MAC}"

[[router.neighbours]]
interface = "wan"
address = "{OUTSIDE}"
mac = "{OUTSIDE_MAC}"
"""
    if static:
        text += f"""
[[router.neighbours]]
interface = "cni0"
address = "10.244.{n}.2"
mac = "{container_mac(n)}"
"""
    text += f"""
[overlay]
backend = "{backend}"
network = "10.244.0.0/16"
subnet = "10.244.{n}.0/24"
public_ip = "10.99.0.{n}"
ip_masq = {'true' if ip_masq else 'false'}
{f'vtep_mac = "02:00:00:00:0{n}:ff"' if backend == "vxlan" else ""}

[[overlay.peers]]
subnet = "10.244.{other}.0/24"
public_ip = "10.99.0.{other}"
{f'vtep_mac = "02:00:00:00:0{other}:ff"' if backend == "vxlan" else ""}
"""
    return text


class Node:
    def __init__(self, n: int, backend: str = "udp", **options) -> None:
        self.n = n
        self.backend = backend
        cfg = config.loads(node_config(n, backend, **options))
        self.core, self.router, self.overlay, self.vtep_mac = build_core(cfg)
        for port in (f"c{n}", "underlay", *(["uplink"] if options.get("uplink") else [])):
            self.core.add_port(port)
        self.core.handle_timer(0.0)    # the gratuitous ARPs
        self.now = 1.0

    @property
    def public_ip(self) -> str:
        return f"10.99.0.{self.n}"

    def from_container(self, pkt) -> dict[str, list[bytes]]:
        return self.send(f"c{self.n}", raw(Ether(src=container_mac(self.n), dst=gateway_mac(self.n)) / pkt))

    def send(self, port: str, *frames: bytes):
        self.actions = self.core.handle_frames(port, list(frames), self.now)
        return transmitted(self.actions)

    def receive(self, datagrams: list[bytes], sender: "Node") -> dict[str, list[bytes]]:
        """Datagrams ``sender`` sent, arriving here from its public address."""
        for d in datagrams:
            assert d[:4] == bytes(int(x) for x in self.public_ip.split("."))
        return self.send("underlay", *[to_wire(d, sender.public_ip, PORTS[self.backend]) for d in datagrams])


def inner_of(datagram: bytes, backend: str) -> IP:
    return IP(datagram[8:] if backend == "udp" else datagram[8 + 8 + 14:])


def pair(backend: str, **options) -> tuple[Node, Node]:
    return Node(1, backend, **options), Node(2, backend, **options)


def ping(src: str = "10.244.1.2", dst: str = "10.244.2.2", *, ttl: int = 64, **kw):
    return IP(src=src, dst=dst, ttl=ttl, **kw) / ICMP(type=8, id=77, seq=1) / b"ping over the overlay"


# -- container to container ---------------------------------------------------------------------


@pytest.mark.parametrize("backend, hops", [("udp", 4), ("vxlan", 2)])
def test_container_to_remote_container(backend, hops):
    one, two = pair(backend)
    sent = one.from_container(ping())
    assert list(sent) == ["underlay"] and not drops(one.actions)
    (datagram,) = sent["underlay"]
    inner = inner_of(datagram, backend)
    assert (inner.src, inner.dst) == ("10.244.1.2", "10.244.2.2")
    assert inner.ttl == 64 - hops // 2 and ip_checksum_ok(raw(inner))
    got = two.receive([datagram], one)
    assert list(got) == ["c2"] and not drops(two.actions)
    (frame,) = got["c2"]
    eth = Ether(frame)
    assert (eth.src, eth.dst, eth.type) == (gateway_mac(2), container_mac(2), 0x0800)
    assert eth[IP].ttl == 64 - hops and ip_checksum_ok(raw(eth[IP]))
    assert (eth[IP].src, eth[IP].dst) == ("10.244.1.2", "10.244.2.2")
    assert raw(eth[ICMP]) == raw(ping()[ICMP])
    # and the answer comes back the same way
    (back,) = two.from_container(ping(src="10.244.2.2", dst="10.244.1.2"))["underlay"]
    (frame,) = one.receive([back], two)["c1"]
    assert Ether(frame).dst == container_mac(1) and Ether(frame)[IP].ttl == 64 - hops


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_remote_container_found_by_arp(backend):
    one, two = Node(1, backend), Node(2, backend, static=False)
    (datagram,) = one.from_container(ping())["underlay"]
    got = two.receive([datagram], one)
    (request,) = got["c2"]
    assert ARP in Ether(request) and Ether(request)[ARP].pdst == "10.244.2.2"
    assert Ether(request)[ARP].psrc == "10.244.2.1"
    reply = raw(Ether(src=container_mac(2), dst=gateway_mac(2)) / ARP(
        op=2, hwsrc=container_mac(2), psrc="10.244.2.2", hwdst=gateway_mac(2), pdst="10.244.2.1"))
    (frame,) = two.send("c2", reply)["c2"]
    assert Ether(frame).dst == container_mac(2) and Ether(frame)[ICMP].id == 77


def test_vxlan_frames_on_the_underlay_are_what_flannel_sends():
    one, _ = pair("vxlan")
    (datagram,) = one.from_container(ping())["underlay"]
    assert datagram[:6] == bytes((10, 99, 0, 2)) + (8472).to_bytes(2, "big")
    assert 32768 <= int.from_bytes(datagram[6:8], "big") <= 60999
    inner = Ether(datagram[16:])
    assert (inner.src, inner.dst) == ("02:00:00:00:01:ff", "02:00:00:00:02:ff")


def test_vxlan_inner_frame_padding_is_stripped():
    # a VTEP that pads the inner frame to Ethernet's minimum: the router goes by the IP total length
    one, two = pair("vxlan")
    small = IP(src="10.244.1.2", dst="10.244.2.2") / UDP(sport=1, dport=2) / b"x"
    (datagram,) = one.from_container(small)["underlay"]
    assert len(datagram) - 16 == 14 + 29
    padded = datagram + bytes(60 - 43)
    (frame,) = two.receive([padded], one)["c2"]
    assert len(frame) == 14 + 29 and Ether(frame)[UDP].load == b"x"


# -- TTL across the overlay ---------------------------------------------------------------------


def test_udp_ttl_runs_out_on_arrival_and_the_error_comes_back():
    one, two = pair("udp")
    sent = one.from_container(ping(ttl=3))           # router 2, encapsulation 1, arrival: 0
    got = two.receive(sent["underlay"], one)
    assert drops(two.actions) == [("underlay", R.TTL_EXCEEDED)]
    (answer,) = got["underlay"]                      # node 2 answers through the overlay
    (frame,) = one.receive([answer], two)["c1"]
    error = Ether(frame)
    assert (error[IP].src, error[IP].dst) == ("10.244.2.0", "10.244.1.2")    # from node 2's overlay address
    assert (error[ICMP].type, error[ICMP].code) == (11, 0)
    assert error[IPerror].dst == "10.244.2.2" and error[IPerror].ttl == 1


def test_udp_ttl_runs_out_at_encapsulation():
    one, _ = pair("udp")
    sent = one.from_container(ping(ttl=2))           # the router leaves 1, flannel's decrement would leave 0
    assert list(sent) == ["c1"]
    assert drops(one.actions) == [("overlay", R.TTL_EXCEEDED)]
    error = Ether(sent["c1"][0])
    assert (error[IP].src, error[ICMP].type, error[IPerror].dst) == ("10.244.1.1", 11, "10.244.2.2")


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_ttl_one_is_the_routers_to_answer(backend):
    one, _ = pair(backend)
    sent = one.from_container(ping(ttl=1))
    assert list(sent) == ["c1"] and Ether(sent["c1"][0])[ICMP].type == 11
    assert drops(one.actions) == [("cni0", R.TTL_EXCEEDED)]


def test_vxlan_ttl_runs_out_in_the_remote_router():
    one, two = pair("vxlan")
    got = two.receive(one.from_container(ping(ttl=2))["underlay"], one)   # router 1 leaves 1; VXLAN keeps it
    assert drops(two.actions) == [("overlay", R.TTL_EXCEEDED)]
    (frame,) = one.receive(got["underlay"], two)["c1"]
    error = Ether(frame)
    assert (error[IP].src, error[ICMP].type, error[IPerror].ttl) == ("10.244.2.0", 11, 1)
    (frame,) = two.receive(one.from_container(ping(ttl=3))["underlay"], one)["c2"]
    assert Ether(frame)[IP].ttl == 1


# -- ICMP from the gateway ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_cluster_address_without_a_lease_is_net_unreachable(backend):
    one, _ = pair(backend)
    probe = IP(src="10.244.1.2", dst="10.244.9.9") / UDP(sport=5353, dport=53) / b"query"
    sent = one.from_container(probe)
    assert list(sent) == ["c1"]
    assert drops(one.actions) == [("overlay", R.NO_LEASE)]
    error = Ether(sent["c1"][0])
    assert (error.src, error.dst) == (gateway_mac(1), container_mac(1))
    assert (error[IP].src, error[IP].dst) == ("10.244.1.1", "10.244.1.2")     # from its gateway
    assert (error[ICMP].type, error[ICMP].code) == (3, 0)
    assert ip_checksum_ok(raw(error[IP]))
    assert (error[IPerror].dst, error[UDPerror].dport) == ("10.244.9.9", 53)
    assert one.overlay.drop_counts() == {R.NO_LEASE: 1}


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_large_df_packet_gets_the_overlay_mtu(backend):
    one, _ = pair(backend)
    big = IP(src="10.244.1.2", dst="10.244.2.2", flags="DF") / TCP(sport=40000, dport=80, flags="A") / (b"x" * 1460)
    sent = one.from_container(big)
    assert list(sent) == ["c1"]
    error = Ether(sent["c1"][0])
    assert (error[ICMP].type, error[ICMP].code, error[ICMP].nexthopmtu) == (3, 4, MTU[backend])
    assert error[IP].src == "10.244.1.1"
    # exactly the overlay MTU passes, and its datagram fits the 1500-byte underlay
    fits = IP(src="10.244.1.2", dst="10.244.2.2", flags="DF") / TCP(flags="A") / (b"x" * (MTU[backend] - 40))
    (datagram,) = one.from_container(fits)["underlay"]
    assert len(datagram) - 8 + 28 == 1500


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_large_packet_without_df_is_fragmented_to_fit(backend):
    one, two = pair(backend)
    big = IP(src="10.244.1.2", dst="10.244.2.2") / UDP(sport=1, dport=2) / (b"y" * 3000)
    datagrams = one.from_container(big)["underlay"]
    assert len(datagrams) == 3
    assert all(len(d) - 8 + 28 <= 1500 for d in datagrams)
    frames = two.receive(datagrams, one)["c2"]
    assert sum(len(Ether(f)[IP].payload) for f in frames) == 3008


# -- who may send, at the datapath ------------------------------------------------------------------


def test_datagram_from_a_stranger_is_dropped():
    one, two = pair("udp")
    (datagram,) = one.from_container(ping())["underlay"]
    stranger = to_wire(datagram, "10.99.0.77", 8285)
    assert two.send("underlay", stranger) == {}
    assert drops(two.actions) == [("underlay", R.UNKNOWN_PEER)]


def test_underlay_down_means_net_unreachable():
    one, _ = pair("udp")
    one.core.set_port_up("underlay", False)
    assert not one.core.is_port_up("underlay") and not one.router.interfaces["overlay"].up
    sent = one.from_container(ping())
    assert list(sent) == ["c1"] and Ether(sent["c1"][0])[ICMP].type == 3
    one.core.set_port_up("underlay", True)
    assert list(one.from_container(ping())) == ["underlay"]


def test_attach_overlay_wants_an_l3_interface_and_one_overlay():
    router = Router()
    router.add_interface("eth", bytes((10, 244, 1, 1)), 24, mac=bytes.fromhex("020000000001"))
    router.add_interface("ov", bytes((10, 244, 1, 0)), 32, mac=None)
    router.add_interface("ov2", bytes((10, 244, 1, 3)), 32, mac=None)
    datapath = Datapath(Bridge(), router)
    overlay = Overlay(backend="udp", network=Network.parse("10.244.0.0/16"), subnet=Network.parse("10.244.1.0/24"))
    with pytest.raises(ValueError, match="L3"):
        datapath.attach("eth", OnOverlay(overlay, "underlay"))
    datapath.attach("ov", OnOverlay(overlay, "underlay"))
    assert datapath.interface_of("underlay") == "ov" and not router.interfaces["ov"].up
    with pytest.raises(ValueError, match="already"):
        datapath.attach("ov2", OnOverlay(overlay, "underlay2"))


# -- ip_masq: flannel's FLANNEL-POSTRTG rules on the daemon's router ----------------------------------


def from_outside(node: Node, pkt) -> dict[str, list[bytes]]:
    return node.send("uplink", raw(Ether(src=OUTSIDE_MAC, dst=WAN_MAC) / pkt))


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_container_to_outside_is_masqueraded(backend):
    one = Node(1, backend, ip_masq=True, uplink=True)
    sent = one.from_container(IP(src="10.244.1.2", dst=OUTSIDE) / UDP(sport=3333, dport=53) / b"q")
    (frame,) = sent["uplink"]
    eth = Ether(frame)
    assert (eth.src, eth.dst) == (WAN_MAC, OUTSIDE_MAC)
    assert (eth[IP].src, eth[IP].dst) == ("192.0.2.1", OUTSIDE) and ip_checksum_ok(raw(eth[IP]))
    # the answer finds the container
    answer = IP(src=OUTSIDE, dst="192.0.2.1") / UDP(sport=53, dport=eth[UDP].sport) / b"a"
    (frame,) = from_outside(one, answer)["c1"]
    assert (Ether(frame)[IP].dst, Ether(frame)[UDP].dport) == ("10.244.1.2", 3333)


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_container_to_multicast_is_not_masqueraded(backend):
    one = Node(1, backend, ip_masq=True, uplink=True)
    one.router.add_route(Network.parse("224.0.0.0/4"), via=bytes((192, 0, 2, 20)))
    # multicast is never routed; what matters is that NAT, which decides first, made no mapping for it
    one.from_container(IP(src="10.244.1.2", dst="239.1.1.1") / UDP(sport=3333, dport=53))
    assert len(one.router.nat) == 0


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_container_to_remote_container_is_not_masqueraded(backend):
    one, two = pair(backend, ip_masq=True, uplink=True)
    (datagram,) = one.from_container(ping())["underlay"]
    assert inner_of(datagram, backend).src == "10.244.1.2"
    (frame,) = two.receive([datagram], one)["c2"]
    assert Ether(frame)[IP].src == "10.244.1.2"
    (back,) = two.from_container(ping(src="10.244.2.2", dst="10.244.1.2"))["underlay"]
    assert inner_of(back, backend).src == "10.244.2.2"
    assert len(one.router.nat) == 0
    assert [c.kind for c in two.router.nat.connections()] == ["none"]   # only remembered, so its answer stays as is


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_outside_to_remote_container_is_masqueraded_to_the_overlay_address(backend):
    one, two = pair(backend, ip_masq=True, uplink=True)
    request = IP(src=OUTSIDE, dst="10.244.2.2") / TCP(sport=50000, dport=80, flags="S", seq=1)
    (datagram,) = from_outside(one, request)["underlay"]
    inner = inner_of(datagram, backend)
    assert inner.src == "10.244.1.0" and inner.dst == "10.244.2.2"     # node 2 takes it as node 1's
    (frame,) = two.receive([datagram], one)["c2"]
    seen = Ether(frame)[IP]
    assert (seen.src, seen.dst, seen[TCP].dport) == ("10.244.1.0", "10.244.2.2", 80)
    answer = IP(src="10.244.2.2", dst=seen.src) / TCP(sport=80, dport=seen[TCP].sport, flags="SA", ack=2)
    (back,) = two.from_container(answer)["underlay"]
    (frame,) = one.receive([back], two)["uplink"]
    out = Ether(frame)
    assert (out.dst, out[IP].src, out[IP].dst, out[TCP].dport) == (OUTSIDE_MAC, "10.244.2.2", OUTSIDE, 50000)
    assert out[TCP].flags == "SA"


def test_outside_to_remote_container_without_ip_masq_is_refused_as_forged():
    # why flannel masquerades it: the other node would not take a source outside our subnet from us
    one, two = pair("udp", ip_masq=False, uplink=True)
    (datagram,) = from_outside(one, IP(src=OUTSIDE, dst="10.244.2.2") / TCP(dport=80, flags="S"))["underlay"]
    assert inner_of(datagram, "udp").src == OUTSIDE
    assert two.receive([datagram], one) == {}
    assert drops(two.actions) == [("underlay", R.FORGED_SOURCE)]


def test_outside_to_own_container_is_not_masqueraded():
    one = Node(1, "udp", ip_masq=True, uplink=True)
    (frame,) = from_outside(one, IP(src=OUTSIDE, dst="10.244.1.2") / TCP(dport=80, flags="S"))["c1"]
    assert Ether(frame)[IP].src == OUTSIDE
