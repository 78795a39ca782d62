"""Flooding, learning, station moves, malformed input: raw frames through the running switch."""

from scapy.layers.l2 import Ether
from shellkit import BROADCAST, eth, mac, recv, start_switch

from vswitch.core.actions import DropReason

PORTS = ["p0", "p1", "p2", "p3"]
A, B, C = mac(0xA), mac(0xB), mac(0xC)


async def test_unknown_unicast_floods_then_follows_the_learned_port(nursery):
    rig = await start_switch(nursery, PORTS)

    first = eth(B, A, 1)
    await rig.send("p0", first)
    for name in ("p1", "p2", "p3"):
        assert await recv(rig.peers[name]) == [first], name
    assert rig.fdb() == {A: "p0"}

    reply = eth(A, B, 2)
    await rig.send("p1", reply)
    assert await recv(rig.peers["p0"]) == [reply]
    assert rig.fdb() == {A: "p0", B: "p1"}

    second = eth(B, A, 3)
    await rig.send("p0", second)
    assert await recv(rig.peers["p1"]) == [second]
    # the reply and the second frame were switched to one port each: the others
    # got nothing before a later marker from the same ingress
    before = await rig.barrier("p1", ["p2", "p3"])
    assert before == {"p2": [], "p3": []}
    before = await rig.barrier("p0", ["p2", "p3"])
    assert before == {"p2": [], "p3": []}

    stats = rig.bridge.statistics()
    assert stats.unicast == 2
    assert stats.flooded == 1 + 2  # the first frame and the two markers
    assert stats.ports["p1"].tx_frames == 3  # first (flooded), second, marker from p0


async def test_frames_are_forwarded_byte_for_byte_and_never_back_to_the_ingress(nursery):
    rig = await start_switch(nursery, PORTS[:3])
    jumbo = eth(BROADCAST, A, 7, size=1514)
    await rig.send("p0", jumbo)
    (got,) = await recv(rig.peers["p1"])
    assert got == jumbo and len(got) == 1514
    assert Ether(got).src == "02:00:00:00:00:0a"
    assert await recv(rig.peers["p2"]) == [jumbo]
    # the sender's own end: the first thing it gets is a marker from another port
    assert await rig.barrier("p1", ["p0"]) == {"p0": []}


async def test_frames_keep_their_order_on_each_egress_port(nursery):
    rig = await start_switch(nursery, PORTS[:3])
    await rig.send("p1", eth(BROADCAST, B))  # learn B on p1
    await recv(rig.peers["p0"])
    await recv(rig.peers["p2"])

    frames = [eth(B if i % 3 else BROADCAST, A, i) for i in range(300)]
    for i in range(0, 300, 7):  # batches of different sizes, some above the switch's batch size
        await rig.send("p0", *frames[i : i + 7])
    assert await recv(rig.peers["p1"], 300) == frames
    assert await recv(rig.peers["p2"], 100) == frames[::3]


async def test_station_move_makes_traffic_follow_the_mac(nursery):
    rig = await start_switch(nursery, PORTS[:3])
    await rig.send("p0", eth(BROADCAST, A, 1))
    await recv(rig.peers["p1"])
    await recv(rig.peers["p2"])
    assert rig.fdb()[A] == "p0"

    to_a = eth(A, C, 2)
    await rig.send("p2", to_a)
    assert await recv(rig.peers["p0"]) == [to_a]

    moved = eth(BROADCAST, A, 3)  # A now speaks from p1
    await rig.send("p1", moved)
    assert await recv(rig.peers["p0"]) == [moved]
    assert await recv(rig.peers["p2"]) == [moved]
    assert rig.fdb()[A] == "p1"
    assert rig.bridge.fdb.statistics().moved == 1

    after = eth(A, C, 4)
    await rig.send("p2", after)
    assert await recv(rig.peers["p1"]) == [after]
    # the old port no longer gets A's traffic
    assert await rig.barrier("p2", ["p0"]) == {"p0": []}
    assert rig.bridge.fdb.statistics().moved == 1
    assert rig.bridge.fdb.statistics().learned == 3  # A, C, the marker


async def test_malformed_frames_are_counted_drops_and_forwarding_goes_on(nursery):
    rig = await start_switch(nursery, PORTS[:3])
    good = eth(B, A, 1)
    batch = [
        b"",
        b"\x02\x00\x00\x00\x00\x0b\x02",           # 7 bytes
        good[:13],                                  # one byte short of a header
        eth(B, b"\x01\x00\x5e\x00\x00\x01", 2),  # multicast source
        eth(B, BROADCAST, 3),                       # broadcast source
        eth(B, b"\x00" * 6, 4),                     # all-zero source
        eth(b"\x01\x80\xc2\x00\x00\x00", A, 5),     # STP: link-local, never forwarded
        good,
    ]
    await rig.send("p0", *batch)
    assert await recv(rig.peers["p1"]) == [good]
    assert await recv(rig.peers["p2"]) == [good]
    assert rig.switch.drop_counts() == {
        DropReason.TRUNCATED: 3,
        DropReason.INVALID_SOURCE: 3,
        DropReason.LINK_LOCAL: 1,
    }
    assert [d.reason for d in rig.switch.recent_drops] == [DropReason.TRUNCATED] * 3 + [
        DropReason.INVALID_SOURCE
    ] * 3 + [DropReason.LINK_LOCAL]
    assert rig.switch.recent_drops[0].port == "p0"
    assert rig.bridge.statistics().ports["p0"].rx_dropped == 7
    assert rig.fdb() == {A: "p0"}  # no group or zero source learned

    # the switch is still switching
    back = eth(A, B, 6)
    await rig.send("p1", back)
    assert await recv(rig.peers["p0"]) == [back]
