"""The FDB as the running switch drives it: ageing by the timer task, the table limit."""

import trio
import trio.testing
from shellkit import BROADCAST, eth, mac, recv, start_switch

from vswitch.core.l2.bridge import Bridge

A, B = mac(0xA), mac(0xB)
AGEING = 10.0


async def test_timer_task_ages_entries_out_at_the_ageing_time_and_not_before(nursery, autojump_clock):
    rig = await start_switch(nursery, ["p0", "p1", "p2"], bridge=Bridge(ageing=AGEING))
    start = trio.current_time()
    await rig.send("p0", eth(BROADCAST, A, 1))
    await recv(rig.peers["p1"])
    await recv(rig.peers["p2"])
    assert rig.fdb() == {A: "p0"}

    await trio.sleep(AGEING - 0.5)
    await trio.testing.wait_all_tasks_blocked()
    assert rig.fdb() == {A: "p0"}
    assert rig.bridge.fdb.statistics().aged == 0
    to_a = eth(A, B, 2)  # still known: unicast to p0 only
    await rig.send("p1", to_a)
    assert await recv(rig.peers["p0"]) == [to_a]

    await trio.sleep(start + AGEING + 0.25 - trio.current_time())
    await trio.testing.wait_all_tasks_blocked()
    # the timer removed A without any traffic arriving; B (learned 9.5 s later) stays
    assert rig.fdb() == {B: "p1"}
    assert rig.bridge.fdb.statistics().aged == 1

    # and traffic for A floods again; p2 had nothing queued before it
    flooded = eth(A, B, 3)
    await rig.send("p1", flooded)
    assert await recv(rig.peers["p0"]) == [flooded]
    assert await recv(rig.peers["p2"]) == [flooded]

    # B goes too, once its own ageing time has passed
    await trio.sleep(AGEING)
    await trio.testing.wait_all_tasks_blocked()
    assert rig.fdb() == {}
    assert rig.bridge.fdb.statistics().aged == 2


async def test_traffic_from_a_mac_keeps_its_entry_alive(nursery, autojump_clock):
    rig = await start_switch(nursery, ["p0", "p1"], bridge=Bridge(ageing=AGEING))
    for i in range(4):  # A speaks every 6 s: 0, 6, 12, 18
        await rig.send("p0", eth(BROADCAST, A, i))
        await recv(rig.peers["p1"])
        await trio.sleep(6)
        await trio.testing.wait_all_tasks_blocked()
        assert A in rig.fdb(), i
    # silent since 18: gone by 28, present at 27.5
    await trio.sleep(3.5)
    await trio.testing.wait_all_tasks_blocked()
    assert A in rig.fdb()
    await trio.sleep(1)
    await trio.testing.wait_all_tasks_blocked()
    assert A not in rig.fdb()
    assert rig.bridge.fdb.statistics().aged == 1


async def test_table_limit_keeps_the_newest_and_evicts_the_oldest(nursery):
    rig = await start_switch(nursery, ["p0", "p1", "p2"], bridge=Bridge(max_entries=3))
    learned = [(mac(1), "p0"), (mac(2), "p1"), (mac(3), "p2"), (mac(4), "p0"), (mac(5), "p1")]
    for i, (src, port) in enumerate(learned):
        frame = eth(BROADCAST, src, i)
        await rig.send(port, frame)
        for other in rig.peers:
            if other != port:
                assert await recv(rig.peers[other]) == [frame]

    assert rig.fdb() == {mac(3): "p2", mac(4): "p0", mac(5): "p1"}
    stats = rig.bridge.fdb.statistics()
    assert (stats.entries, stats.learned, stats.evicted) == (3, 5, 2)

    # an evicted address is unknown again: flooded
    to_evicted = eth(mac(1), mac(5), 10)
    await rig.send("p1", to_evicted)
    assert await recv(rig.peers["p0"]) == [to_evicted]
    assert await recv(rig.peers["p2"]) == [to_evicted]
    # a kept one is switched to its port alone: p0's next frame is the one after
    to_kept = eth(mac(3), mac(5), 11)
    then = eth(mac(4), mac(5), 12)
    await rig.send("p1", to_kept, then)
    assert await recv(rig.peers["p2"]) == [to_kept]
    assert await recv(rig.peers["p0"]) == [then]
    assert rig.bridge.fdb.statistics().evicted == 2  # known sources evict nothing
