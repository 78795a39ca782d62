"""The learning bridge: scapy frames in, actions out, time passed in."""

import pytest
from scapy.all import ARP, ICMP, IP, UDP, Ether, raw

from vswitch.core.actions import DropReason
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l2.fdb import REFRESH_INTERVAL
from vswitch.core.wire import mac_from_str
from vswitch.testing import dropped, transmits

MAC = {name: f"02:00:00:00:00:{i:02x}" for i, name in enumerate(["a", "b", "c", "d", "e"], start=1)}
BCAST = "ff:ff:ff:ff:ff:ff"
PORTS = ["p1", "p2", "p3", "p4"]


def frame(src: str, dst: str, payload: bytes = b"", *, seq: int = 0) -> bytes:
    src_mac = MAC.get(src, src)
    dst_mac = MAC.get(dst, dst)
    return raw(Ether(src=src_mac, dst=dst_mac) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(seq=seq) / payload)


def make_bridge(ports=PORTS, **kwargs) -> Bridge:
    bridge = Bridge(**kwargs)
    for name in ports:
        bridge.add_port(name)
    return bridge


def test_broadcast_floods_to_every_other_port_unchanged():
    bridge = make_bridge()
    f = raw(Ether(src=MAC["a"], dst=BCAST) / ARP(hwsrc=MAC["a"], psrc="10.0.0.1", pdst="10.0.0.2"))
    actions = bridge.handle_frames("p1", [f], 0.0)
    out = transmits(actions)
    assert set(out) == {"p2", "p3", "p4"}
    for frames in out.values():
        assert len(frames) == 1 and frames[0] is f
        assert Ether(frames[0])[ARP].pdst == "10.0.0.2"
    assert dropped(actions) == []


@pytest.mark.parametrize("dst", ["01:00:5e:00:00:01", "33:33:00:00:00:01", "01:80:c2:00:00:10", "01:80:c2:00:00:21"])
def test_multicast_floods(dst):
    bridge = make_bridge()
    f = frame("a", dst)
    assert set(transmits(bridge.handle_frames("p2", [f], 0.0))) == {"p1", "p3", "p4"}


def test_unknown_unicast_floods_then_known_goes_to_one_port():
    bridge = make_bridge()
    first = frame("a", "b")
    assert set(transmits(bridge.handle_frames("p1", [first], 0.0))) == {"p2", "p3", "p4"}
    reply = frame("b", "a")
    actions = bridge.handle_frames("p3", [reply], 0.5)
    assert transmits(actions) == {"p1": [reply]}
    assert transmits(actions)["p1"][0] is reply
    again = frame("a", "b", b"x")
    actions = bridge.handle_frames("p1", [again], 1.0)
    assert transmits(actions) == {"p3": [again]}
    assert Ether(transmits(actions)["p3"][0]).dst == MAC["b"]
    stats = bridge.statistics()
    assert stats.unicast == 2 and stats.flooded == 1


def test_order_preserved_per_egress_port_in_a_batch():
    bridge = make_bridge()
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    bridge.handle_frames("p3", [frame("c", BCAST)], 0.0)
    batch = [
        frame("a", "b", seq=1), frame("a", BCAST, seq=2), frame("a", "c", seq=3),
        frame("a", "b", seq=4), frame("a", "d", seq=5), frame("a", "c", seq=6), frame("a", "b", seq=7),
    ]
    out = transmits(bridge.handle_frames("p1", batch, 1.0))
    seqs = {port: [Ether(f)[ICMP].seq for f in frames] for port, frames in out.items()}
    assert seqs == {"p2": [1, 2, 4, 5, 7], "p3": [2, 3, 5, 6], "p4": [2, 5]}
    assert all(any(f is g for g in batch) for frames in out.values() for f in frames)


@pytest.mark.parametrize("last", range(0x10))
def test_link_local_dropped(last):
    bridge = make_bridge()
    dst = f"01:80:c2:00:00:{last:02x}"
    f = frame("a", dst)
    actions = bridge.handle_frames("p1", [f], 0.0)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p1", DropReason.LINK_LOCAL, f)]
    assert bridge.statistics().drops == {DropReason.LINK_LOCAL: 1}


def test_link_local_boundary_10_is_flooded():
    bridge = make_bridge()
    f = frame("a", "01:80:c2:00:00:10")
    actions = bridge.handle_frames("p1", [f], 0.0)
    assert dropped(actions) == []
    assert set(transmits(actions)) == {"p2", "p3", "p4"}


@pytest.mark.parametrize("src", ["01:00:5e:00:00:01", BCAST, "00:00:00:00:00:00", "03:00:00:00:00:01"])
def test_invalid_source_dropped_and_not_learned(src):
    bridge = make_bridge()
    f = frame(src, BCAST)
    actions = bridge.handle_frames("p1", [f], 0.0)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p1", DropReason.INVALID_SOURCE, f)]
    assert len(bridge.fdb) == 0
    assert bridge.fdb.get(mac_from_str(src)) is None
    assert bridge.statistics().ports["p1"].rx_dropped == 1


def test_zero_source_is_not_learned_so_frames_to_it_flood():
    bridge = make_bridge()
    bridge.handle_frames("p1", [frame("00:00:00:00:00:00", "b")], 0.0)
    assert set(transmits(bridge.handle_frames("p2", [frame("b", "00:00:00:00:00:00")], 0.1))) == {"p1", "p3", "p4"}


@pytest.mark.parametrize("length", [0, 1, 6, 12, 13])
def test_short_frames_truncated(length):
    bridge = make_bridge()
    f = frame("a", BCAST)[:length]
    actions = bridge.handle_frames("p1", [f], 0.0)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p1", DropReason.TRUNCATED, f)]
    assert len(bridge.fdb) == 0


def test_header_only_frame_is_switched():
    bridge = make_bridge()
    f = raw(Ether(src=MAC["a"], dst=BCAST, type=0x88B5))
    assert len(f) == 14
    assert set(transmits(bridge.handle_frames("p1", [f], 0.0))) == {"p2", "p3", "p4"}


def test_destination_on_ingress_port_dropped_same_port():
    bridge = make_bridge()
    bridge.handle_frames("p1", [frame("b", BCAST)], 0.0)
    f = frame("a", "b")
    actions = bridge.handle_frames("p1", [f], 0.5)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p1", DropReason.SAME_PORT, f)]


def test_station_move():
    bridge = make_bridge()
    bridge.handle_frames("p1", [frame("b", BCAST)], 0.0)
    assert transmits(bridge.handle_frames("p3", [frame("a", "b")], 1.0)).keys() == {"p1"}
    bridge.handle_frames("p2", [frame("b", BCAST)], 2.0)  # b moved to p2
    f = frame("a", "b")
    assert transmits(bridge.handle_frames("p3", [f], 3.0)) == {"p2": [f]}
    assert bridge.statistics().fdb.moved == 1


def test_learning_is_visible_to_later_frames_of_the_same_batch():
    bridge = make_bridge()
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    bridge.handle_frames("p3", [frame("d", BCAST)], 0.0)
    # b moves to p1; then c, also on p1, talks to b; then a talks to d on p3
    batch = [frame("b", BCAST, seq=1), frame("c", "b", seq=2), frame("a", "d", seq=3)]
    actions = bridge.handle_frames("p1", batch, 1.0)
    assert dropped(actions) == [("p1", DropReason.SAME_PORT, batch[1])]
    assert transmits(actions) == {"p2": [batch[0]], "p3": [batch[0], batch[2]], "p4": [batch[0]]}
    assert bridge.fdb.get(mac_from_str(MAC["b"])).port == "p1"
    assert bridge.statistics().fdb.moved == 1


def test_ageing_via_handle_timer():
    bridge = make_bridge(ageing=10)
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    assert bridge.poll_at() == 10.0
    assert transmits(bridge.handle_frames("p1", [frame("a", "b")], 9.0)).keys() == {"p2"}
    assert bridge.handle_timer(10.0) == []
    assert bridge.fdb.get(mac_from_str(MAC["b"])) is None
    assert bridge.statistics().fdb.aged == 1
    assert set(transmits(bridge.handle_frames("p1", [frame("a", "b")], 10.5))) == {"p2", "p3", "p4"}


def test_ageing_lazily_without_handle_timer():
    bridge = make_bridge(ageing=10)
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    assert transmits(bridge.handle_frames("p1", [frame("a", "b")], 9.999)).keys() == {"p2"}
    assert set(transmits(bridge.handle_frames("p1", [frame("a", "b")], 10.0))) == {"p2", "p3", "p4"}
    # b speaks again from elsewhere: the stale entry is taken over by the new port
    bridge.handle_frames("p3", [frame("b", BCAST)], 11.0)
    f = frame("a", "b")
    assert transmits(bridge.handle_frames("p1", [f], 12.0)) == {"p3": [f]}


def test_refresh_interval_limits_fdb_updates():
    bridge = make_bridge(ageing=10)
    b = mac_from_str(MAC["b"])
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    bridge.handle_frames("p2", [frame("b", BCAST)], REFRESH_INTERVAL / 2)
    assert bridge.fdb.get(b).updated == 0.0
    bridge.handle_frames("p2", [frame("b", BCAST)], REFRESH_INTERVAL)
    assert bridge.fdb.get(b).updated == REFRESH_INTERVAL
    # traffic keeps the entry alive past the original ageing time
    for t in range(2, 25, 2):
        bridge.handle_frames("p2", [frame("b", BCAST)], float(t))
        bridge.handle_timer(float(t))
    f = frame("a", "b")
    assert transmits(bridge.handle_frames("p1", [f], 25.0)) == {"p2": [f]}


def test_port_down_flushes_and_drops_and_is_not_flooded():
    bridge = make_bridge()
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    bridge.handle_frames("p3", [frame("c", BCAST)], 0.0)
    bridge.set_port_up("p2", False)
    assert bridge.fdb.get(mac_from_str(MAC["b"])) is None
    assert bridge.fdb.get(mac_from_str(MAC["c"])) is not None
    assert not bridge.ports["p2"].up

    f = frame("a", "b")  # b is unknown now: flooded, but not to the down port
    assert set(transmits(bridge.handle_frames("p1", [f], 1.0))) == {"p3", "p4"}

    ingress = [frame("b", "c"), frame("b", BCAST)]
    actions = bridge.handle_frames("p2", ingress, 1.0)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p2", DropReason.PORT_DOWN, ingress[0]), ("p2", DropReason.PORT_DOWN, ingress[1])]
    assert bridge.fdb.get(mac_from_str(MAC["b"])) is None  # nothing learned from a down port

    bridge.set_port_up("p2", True)
    bridge.handle_frames("p2", [frame("b", BCAST)], 2.0)
    g = frame("a", "b")
    assert transmits(bridge.handle_frames("p1", [g], 2.0)) == {"p2": [g]}
    stats = bridge.statistics()
    assert stats.drops[DropReason.PORT_DOWN] == 2
    assert stats.ports["p2"].rx_dropped == 2


def test_unicast_to_static_entry_on_down_port_dropped():
    bridge = make_bridge()
    bridge.fdb.add_static(mac_from_str(MAC["b"]), "p2")
    bridge.set_port_up("p2", False)
    assert bridge.fdb.get(mac_from_str(MAC["b"])) is not None  # statics survive a port going down
    batch = [frame("a", "b", seq=1), frame("a", "b", seq=2)]
    actions = bridge.handle_frames("p1", batch, 0.0)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p1", DropReason.PORT_DOWN, batch[0]), ("p1", DropReason.PORT_DOWN, batch[1])]
    bridge.set_port_up("p2", True)
    f = frame("a", "b")
    assert transmits(bridge.handle_frames("p1", [f], 1.0)) == {"p2": [f]}


def test_set_port_up_is_idempotent():
    bridge = make_bridge()
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    bridge.set_port_up("p2", True)  # already up: must not flush
    assert bridge.fdb.get(mac_from_str(MAC["b"])) is not None


def test_port_added_down_receives_nothing():
    bridge = make_bridge(["p1", "p2"])
    bridge.add_port("p3", up=False)
    assert set(transmits(bridge.handle_frames("p1", [frame("a", BCAST)], 0.0))) == {"p2"}


def test_flood_with_no_other_up_port_is_no_egress():
    bridge = make_bridge(["p1", "p2"])
    bridge.set_port_up("p2", False)
    f = frame("a", BCAST)
    actions = bridge.handle_frames("p1", [f], 0.0)
    assert transmits(actions) == {}
    assert dropped(actions) == [("p1", DropReason.NO_EGRESS, f)]
    lonely = make_bridge(["only"])
    g = frame("a", "b")
    assert dropped(lonely.handle_frames("only", [g], 0.0)) == [("only", DropReason.NO_EGRESS, g)]
    assert lonely.statistics().flooded == 0


def test_port_and_drop_counters():
    bridge = make_bridge(["p1", "p2", "p3"])
    bcast = frame("a", BCAST, b"x" * 10)
    to_a = frame("b", "a", b"y" * 3)
    short = b"\x01" * 5
    link_local = frame("b", "01:80:c2:00:00:0e")
    bridge.handle_frames("p1", [bcast], 0.0)                      # flood to p2, p3
    bridge.handle_frames("p2", [to_a, short, link_local], 0.1)    # unicast to p1, two drops
    stats = bridge.statistics()
    p1, p2, p3 = stats.ports["p1"], stats.ports["p2"], stats.ports["p3"]
    assert (p1.rx_frames, p1.rx_bytes, p1.tx_frames, p1.tx_bytes, p1.rx_dropped) == (1, len(bcast), 1, len(to_a), 0)
    assert (p2.rx_frames, p2.rx_bytes, p2.tx_frames, p2.tx_bytes, p2.rx_dropped) == (
        3, len(to_a) + len(short) + len(link_local), 1, len(bcast), 2,
    )
    assert (p3.rx_frames, p3.rx_bytes, p3.tx_frames, p3.tx_bytes, p3.rx_dropped) == (0, 0, 1, len(bcast), 0)
    assert stats.drops == {DropReason.TRUNCATED: 1, DropReason.LINK_LOCAL: 1}
    assert stats.unicast == 1 and stats.flooded == 1
    assert stats.fdb.entries == 2
    # statistics() is a snapshot, not a live view
    p1.rx_frames = 999
    assert bridge.statistics().ports["p1"].rx_frames == 1


def test_remove_port_flushes_static_entries_too():
    bridge = make_bridge()
    bridge.fdb.add_static(mac_from_str(MAC["c"]), "p2")
    bridge.handle_frames("p2", [frame("b", BCAST)], 0.0)
    bridge.handle_frames("p3", [frame("d", BCAST)], 0.0)
    bridge.remove_port("p2")
    assert "p2" not in bridge.ports
    assert bridge.fdb.get(mac_from_str(MAC["c"])) is None
    assert bridge.fdb.get(mac_from_str(MAC["b"])) is None
    assert bridge.fdb.get(mac_from_str(MAC["d"])) is not None
    f = frame("a", "c")
    assert set(transmits(bridge.handle_frames("p1", [f], 1.0))) == {"p3", "p4"}


def test_misuse_raises():
    bridge = make_bridge(["p1"])
    with pytest.raises(KeyError):
        bridge.handle_frames("nope", [frame("a", BCAST)], 0.0)
    with pytest.raises(KeyError):
        bridge.set_port_up("nope", False)
    with pytest.raises(KeyError):
        bridge.remove_port("nope")
    with pytest.raises(ValueError):
        bridge.add_port("p1")
    with pytest.raises(ValueError):
        Bridge(ageing=0)
    with pytest.raises(ValueError):
        Bridge(max_entries=0)


def test_max_entries_passed_to_fdb():
    bridge = make_bridge(["p1", "p2"], max_entries=2)
    bridge.handle_frames("p1", [frame("a", BCAST), frame("b", BCAST), frame("c", BCAST)], 0.0)
    assert len(bridge.fdb) == 2
    assert bridge.statistics().fdb.evicted == 1


def test_empty_batch():
    bridge = make_bridge()
    assert bridge.handle_frames("p1", [], 0.0) == []
    assert bridge.statistics().ports["p1"].rx_frames == 0


def test_udp_frame_bytes_survive_switching():
    bridge = make_bridge(["p1", "p2"])
    f = raw(Ether(src=MAC["a"], dst=MAC["b"]) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"hi")
    out = transmits(bridge.handle_frames("p1", [f], 0.0))
    pkt = Ether(out["p2"][0])
    assert out["p2"][0] is f
    stored = pkt[UDP].chksum
    del pkt[UDP].chksum
    assert Ether(raw(pkt))[UDP].chksum == stored


def test_add_static_checks_port_and_address():
    bridge = Bridge()
    bridge.add_port("a")
    with pytest.raises(KeyError):
        bridge.add_static(bytes.fromhex("020000000001"), "nowhere")
    with pytest.raises(ValueError):
        bridge.add_static(bytes.fromhex("010000000001"), "a")
    bridge.add_static(bytes.fromhex("020000000001"), "a")
    assert bridge.fdb.lookup(bytes.fromhex("020000000001"), 1e9).static


def test_oversized_builds_raise_value_error():
    from vswitch.core.wire import build_ipv4, build_udp

    with pytest.raises(ValueError, match="too large"):
        build_ipv4(b"\x0a\0\0\1", b"\x0a\0\0\2", 17, bytes(65536))
    with pytest.raises(ValueError, match="too large"):
        build_udp(b"\x0a\0\0\1", b"\x0a\0\0\2", 1, 2, bytes(65530))
