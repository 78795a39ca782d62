"""The bridge and the router as one core: frames go round until they leave by a device port."""

import pytest
from l3kit import BCAST, IPS, MAC, REMOTE, arp_reply, arp_request, eth, ip, mac, net
from scapy.all import ARP, ICMP, IP, UDP, Ether, raw

from vswitch import config
from vswitch.core.actions import Drop, DropReason, Transmit
from vswitch.core.datapath import MAX_ROUNDS, Datapath, OnBridge, OnPort
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l3.router import Router
from vswitch.daemon import build_core
from vswitch.errors import ConfigError
from vswitch.testing import drops, transmitted

R = DropReason
CONTAINERS = ["p1", "p2", "p3"]
INTERFACES = ["a", "b", "t"]


def sent(actions) -> dict[str, list[bytes]]:
    """Every frame leaving each port, in order; an interface's port on the bridge never reaches the shell."""
    out = transmitted(actions)
    assert not set(out) & set(INTERFACES), "an interface's port on the bridge never reaches the shell"
    return out


def udp(src, dst, *, ttl=64, payload=b"data"):
    return IP(src=IPS.get(src, src), dst=IPS.get(dst, dst), ttl=ttl) / UDP(sport=1000, dport=2000) / payload


def make_datapath(*, uplink: bool = False, tun: bool = False) -> Datapath:
    """Containers h1 (p1, network a) and h2 (p2, network b) behind two router interfaces on the bridge.

    ``uplink``: interface b sits on device port "up" instead (gw behind it);
    ``tun``: an L3 interface t (100.64.0.1/24) on device port "tun0".
    """
    bridge = Bridge()
    router = Router()
    router.add_interface("a", ip("a"), 24, mac=mac("a"))
    router.add_interface("b", ip("b"), 24, mac=mac("b"))
    router.add_route(net("192.0.2.0/24"), via=ip("gw"))
    if tun:
        router.add_interface("t", ip("100.64.0.1"), 24, mac=None)
    dp = Datapath(bridge, router)
    for port in CONTAINERS:
        dp.add_port(port)
    dp.attach("a", OnBridge())
    if uplink:
        dp.attach("b", OnPort("up"))
        dp.add_port("up")
    else:
        dp.attach("b", OnBridge())
    if tun:
        dp.attach("t", OnPort("tun0"))
        dp.add_port("tun0")
    return dp


def settle_announcements(dp: Datapath) -> list:
    assert dp.poll_at() == float("-inf")
    return dp.handle_timer(0.0)


# -- wiring ------------------------------------------------------------------------------


def test_interface_on_the_bridge_is_a_bridge_port_of_its_name_with_its_mac_pinned():
    dp = make_datapath()
    assert {"a", "b"} <= set(dp.bridge.ports)
    for name in ("a", "b"):
        entry = dp.fdb.get(mac(name))
        assert entry.port == name and entry.static
    assert dp.interface_of("a") is None and dp.interface_of("p1") is None


def test_interface_on_a_port_bypasses_the_bridge():
    dp = make_datapath(uplink=True)
    assert "b" not in dp.bridge.ports and "up" not in dp.bridge.ports
    assert dp.interface_of("up") == "b"
    assert dp.is_port_up("up")


def test_attach_errors():
    dp = make_datapath(tun=True)
    dp.router.add_interface("t2", ip("100.64.9.1"), 24, mac=None)
    with pytest.raises(ValueError):
        dp.attach("t2", OnBridge())               # no MAC: it cannot sit on the bridge
    with pytest.raises(ValueError):
        dp.attach("t2", OnPort("tun0"))           # the port already carries t
    with pytest.raises(KeyError):
        dp.attach("nope", OnBridge())
    with pytest.raises(ValueError):
        dp.add_port("tun0")                       # already there


def test_a_config_whose_interface_on_the_bridge_has_a_ports_name_is_refused_naming_the_key():
    text = """
[[ports]]
name = "gw"
type = "tap"
[[router.interfaces]]
name = "gw"
address = "10.1.0.1/24"
"""
    with pytest.raises(ConfigError, match=r"router.interfaces\[0\].name.*a port's name"):
        build_core(config.loads(text))
    core, *_ = build_core(config.loads(text.replace('name = "gw"\naddress', 'name = "br"\naddress')))
    assert "br" in core.bridge.ports


def test_gratuitous_arps_leave_by_every_port_they_can():
    dp = make_datapath(uplink=True)
    out = sent(settle_announcements(dp))
    assert set(out) == {"p1", "p2", "p3", "up"}
    announced = {Ether(f)[ARP].psrc for frames in out.values() for f in frames}
    assert announced == {IPS["a"], IPS["b"]}
    assert [Ether(f)[ARP].psrc for f in out["up"]] == [IPS["b"]]
    for frames in out.values():
        for f in frames:
            pkt = Ether(f)
            assert pkt.dst == BCAST and pkt[ARP].pdst == pkt[ARP].psrc
    assert dp.poll_at() != float("-inf")


# -- routing between two interfaces on the bridge -----------------------------------------


def test_container_to_container_across_the_router_with_arp_both_ways():
    dp = make_datapath()
    settle_announcements(dp)
    # h1 asks for its gateway: the bridge floods, the router answers
    out = sent(dp.handle_frames("p1", [arp_request("h1", "a")], 1.0))
    assert set(out) == {"p1", "p2", "p3"}
    reply = Ether(out["p1"][0])
    assert reply[ARP].op == 2 and reply[ARP].hwsrc == MAC["a"] and reply.dst == MAC["h1"]
    assert [Ether(f)[ARP].op for f in out["p2"]] == [1]    # the flooded request itself
    # h1 sends to h2 through the gateway: the router asks for h2 on network b
    packet = udp("h1", "h2")
    actions = dp.handle_frames("p1", [eth("h1", "a", packet)], 1.1)
    out = sent(actions)
    assert set(out) == {"p1", "p2", "p3"}
    request = Ether(out["p2"][0])
    assert request[ARP].op == 1 and request[ARP].pdst == IPS["h2"] and request.src == MAC["b"]
    assert drops(actions) == []
    # h2 answers: the held packet reaches it, routed
    actions = dp.handle_frames("p2", [arp_reply("h2", "b", dst="b")], 1.2)
    out = sent(actions)
    assert list(out) == ["p2"]
    delivered = Ether(out["p2"][0])
    assert (delivered.src, delivered.dst) == (MAC["b"], MAC["h2"])
    assert delivered[IP].ttl == 63 and delivered[IP].src == IPS["h1"] and delivered[UDP].load == b"data"
    # and back: h2 to h1, whose MAC the router learned from its request
    out = sent(dp.handle_frames("p2", [eth("h2", "b", udp("h2", "h1", payload=b"back"))], 1.3))
    assert list(out) == ["p1"]
    back = Ether(out["p1"][0])
    assert (back.src, back.dst, back[UDP].load) == (MAC["a"], MAC["h1"], b"back")


def test_ping_the_gateway_through_the_bridge():
    dp = make_datapath()
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    ping = eth("h1", "a", IP(src=IPS["h1"], dst=IPS["a"]) / ICMP(type=8, id=5, seq=1) / b"hi")
    out = sent(dp.handle_frames("p1", [ping], 1.0))
    assert list(out) == ["p1"]
    reply = Ether(out["p1"][0])
    assert reply[ICMP].type == 0 and reply[ICMP].id == 5 and reply[IP].src == IPS["a"]


def test_bridged_frames_do_not_touch_the_router():
    dp = make_datapath()
    dp.handle_frames("p2", [eth("h2", BCAST, udp("h2", "255.255.255.255"))], 0.5)
    frame = eth("h1", "h2", udp("h1", "h2"))
    actions = dp.handle_frames("p1", [frame], 1.0)
    assert actions == [Transmit("p2", [frame])]
    assert actions[0].frames[0] is frame
    assert dp.router.statistics().forwarded == 0


def test_router_drops_come_back_through_the_datapath():
    dp = make_datapath()
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    actions = dp.handle_frames("p1", [eth("h1", "a", udp("h1", "100.64.0.9"))], 1.0)
    assert drops(actions) == [("a", R.NO_ROUTE)]
    error = Ether(sent(actions)["p1"][0])
    assert (error[ICMP].type, error[ICMP].code) == (3, 0)


# -- routing between the bridge and a port of its own --------------------------------------


def test_bridge_interface_to_uplink_port_and_back():
    dp = make_datapath(uplink=True)
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    dp.router.add_neighbour("b", ip("gw"), mac("gw"))
    settle_announcements(dp)
    out = sent(dp.handle_frames("p1", [eth("h1", "a", udp("h1", REMOTE))], 1.0))
    assert list(out) == ["up"]
    pkt = Ether(out["up"][0])
    assert (pkt.src, pkt.dst, pkt[IP].dst, pkt[IP].ttl) == (MAC["b"], MAC["gw"], REMOTE, 63)
    out = sent(dp.handle_frames("up", [eth("gw", "b", udp(REMOTE, "h1", payload=b"in"))], 1.1))
    assert list(out) == ["p1"]
    pkt = Ether(out["p1"][0])
    assert (pkt.src, pkt.dst, pkt[UDP].load) == (MAC["a"], MAC["h1"], b"in")


def test_tun_port_carries_raw_ip():
    dp = make_datapath(tun=True)
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    dp.add_static(mac("h1"), "p1")
    out = sent(dp.handle_frames("tun0", [raw(udp("100.64.0.7", "h1"))], 1.0))
    assert list(out) == ["p1"] and Ether(out["p1"][0])[IP].src == "100.64.0.7"
    out = sent(dp.handle_frames("p1", [eth("h1", "a", udp("h1", "100.64.0.7"))], 1.1))
    assert list(out) == ["tun0"]
    packet = IP(out["tun0"][0])
    assert packet.dst == "100.64.0.7" and packet.ttl == 63


def test_router_port_down_and_up_takes_the_interface_with_it():
    dp = make_datapath(uplink=True)
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    dp.router.add_neighbour("b", ip("gw"), mac("gw"))
    settle_announcements(dp)
    dp.set_port_up("up", False)
    assert not dp.is_port_up("up") and not dp.router.interfaces["b"].up
    actions = dp.handle_frames("p1", [eth("h1", "a", udp("h1", REMOTE))], 1.0)
    assert drops(actions) == [("a", R.NO_ROUTE)]
    assert list(sent(actions)) == ["p1"]          # net unreachable back to h1, nothing to "up"
    assert drops(dp.handle_frames("up", [eth("gw", "b", udp(REMOTE, "h1"))], 1.0)) == [("b", R.PORT_DOWN)]
    dp.set_port_up("up", True)
    assert dp.is_port_up("up") and dp.router.interfaces["b"].up
    out = sent(dp.handle_timer(2.0))              # announces itself again
    assert [Ether(f)[ARP].psrc for f in out["up"]] == [IPS["b"]]
    assert list(sent(dp.handle_frames("p1", [eth("h1", "a", udp("h1", REMOTE))], 2.1))) == ["up"]
    dp.remove_port("up")
    assert not dp.router.interfaces["b"].up
    with pytest.raises(KeyError):
        dp.is_port_up("up")
    dp.add_port("up")
    assert dp.is_port_up("up") and dp.router.interfaces["b"].up


@pytest.mark.parametrize("going", ["down", "removed"])
def test_packets_held_for_an_interface_whose_port_goes_are_drops(going):
    dp = make_datapath(uplink=True)
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    settle_announcements(dp)
    held = [eth("h1", "a", udp("h1", REMOTE, payload=b"%d" % i)) for i in range(2)]
    out = sent(dp.handle_frames("p1", held, 1.0))
    assert [Ether(f)[ARP].pdst for f in out["up"]] == [IPS["gw"]]   # asking for gw; the packets wait
    actions = dp.set_port_up("up", False) if going == "down" else dp.remove_port("up")
    assert drops(actions) == [("b", R.PORT_DOWN)] * 2 and sent(actions) == {}
    assert [raw(IP(a.frame)[UDP].payload) for a in actions] == [b"0", b"1"]
    assert dp.router.drop_counts()[R.PORT_DOWN] == 2


def test_interfaces_and_ports_keep_apart():
    dp = make_datapath()
    with pytest.raises(ValueError, match="router interface on the bridge"):
        dp.add_port("a")                          # a's port on the bridge has that name
    dp.router.add_interface("c", ip("100.64.1.1"), 24, mac=bytes.fromhex("020000000103"))
    with pytest.raises(ValueError, match="is on the bridge"):
        dp.attach("c", OnPort("p1"))              # a container's port
    dp.add_port("c")                              # a container's port named like an interface not yet attached
    with pytest.raises(ValueError, match="already on the bridge"):
        dp.attach("c", OnBridge())
    with pytest.raises(ValueError, match="attached already"):
        dp.attach("a", OnBridge())
    assert dp.add_port("p4") == [] and dp.set_port_up("p4", False) == [] and dp.remove_port("p4") == []


def test_interface_on_a_port_is_down_until_the_port_exists():
    bridge, router = Bridge(), Router()
    router.add_interface("b", ip("b"), 24, mac=mac("b"))
    dp = Datapath(bridge, router)
    dp.attach("b", OnPort("up"))
    assert not router.interfaces["b"].up
    assert dp.poll_at() is None                   # no announcement while down
    dp.add_port("up")
    assert router.interfaces["b"].up and dp.poll_at() == float("-inf")


def test_core_protocol_passes_bridge_ports_through():
    dp = make_datapath()
    dp.add_port("p4")
    assert "p4" in dp.bridge.ports and dp.is_port_up("p4")
    dp.set_port_up("p4", False)
    assert not dp.is_port_up("p4") and not dp.bridge.is_port_up("p4")
    dp.remove_port("p4")
    assert "p4" not in dp.bridge.ports


# -- time ----------------------------------------------------------------------------------


def test_poll_at_is_the_earlier_of_bridge_and_router():
    dp = make_datapath()
    settle_announcements(dp)
    assert dp.poll_at() is None
    dp.handle_frames("p3", [eth("x", BCAST, udp("198.51.100.99", "255.255.255.255"))], 10.0)
    bridge_deadline = dp.bridge.poll_at()
    assert bridge_deadline is not None and dp.poll_at() == bridge_deadline
    dp.handle_frames("p3", [eth("x", "a", udp("198.51.100.99", "h2"))], 11.0)   # router starts resolving h2
    assert dp.router.poll_at() == 12.0
    assert dp.poll_at() == 12.0
    out = sent(dp.handle_timer(12.0))             # the retry goes out through the bridge
    assert [Ether(f)[ARP].pdst for f in out["p2"]] == [IPS["h2"]]


def test_arp_failure_icmp_goes_back_through_the_bridge():
    dp = make_datapath()
    dp.router.add_neighbour("a", ip("h1"), mac("h1"))
    settle_announcements(dp)
    dp.handle_frames("p1", [eth("h1", "a", udp("h1", "h2"))], 0.0)
    actions = []
    now = 0.0
    while (deadline := dp.poll_at()) is not None and deadline <= 10.0:
        assert deadline > now
        now = deadline
        actions = dp.handle_timer(now)
        if drops(actions):
            break
    assert drops(actions) == [("b", R.NEIGHBOUR_UNREACHABLE)]
    error = Ether(sent(actions)["p1"][0])
    assert (error[ICMP].type, error[ICMP].code) == (3, 1) and error[IP].dst == IPS["h1"]


# -- loops ---------------------------------------------------------------------------------


class _Iface:
    def __init__(self, mac_: bytes) -> None:
        self.mac = mac_


class Bouncer:
    """A broken router: whatever arrives on one interface goes out of the other, back to the first."""

    def __init__(self) -> None:
        self.interfaces = {"a": _Iface(mac("a")), "b": _Iface(mac("b"))}
        self.calls = 0

    def handle_frames(self, interface, frames, now):
        self.calls += 1
        other = "b" if interface == "a" else "a"
        back = self.interfaces[interface].mac + self.interfaces[other].mac
        return [Transmit(other, [back + f[12:] for f in frames])]

    def set_interface_up(self, name, up):
        return []

    def poll_at(self):
        return None

    def handle_timer(self, now):
        return []


def test_a_frame_bounced_too_often_is_a_routing_loop():
    bouncer = Bouncer()
    dp = Datapath(Bridge(), bouncer)  # type: ignore[arg-type]
    dp.add_port("p1")
    dp.attach("a", OnBridge())
    dp.attach("b", OnBridge())
    frames = [eth("h1", "a", udp("h1", "h2", payload=b"%d" % i)) for i in range(2)]
    actions = dp.handle_frames("p1", frames, 1.0)
    assert drops(actions) == [("a", R.ROUTING_LOOP)] * 2
    assert sent(actions) == {}
    assert 2 <= bouncer.calls <= MAX_ROUNDS
    assert [raw(Ether(a.frame)[UDP].payload) for a in actions if isinstance(a, Drop)] == [b"0", b"1"]
