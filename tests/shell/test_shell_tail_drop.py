"""A port whose peer never reads: its bounded queue tail-drops, other ports are unaffected."""

import trio
import trio.testing
from shellkit import BROADCAST, eth, mac, recv, seq_of, start_switch

from vswitch.core.actions import DropReason

A, B = mac(0xA), mac(0xB)
TX_QUEUE = 16
BATCH = 4  # the queue holds several batches, so a port that keeps up never drops
TOTAL = 200


async def test_a_stuck_port_tail_drops_and_the_others_get_every_frame(nursery):
    rig = await start_switch(
        nursery, ["fast0", "fast1", "slow"], tx_queue=TX_QUEUE, batch_size=BATCH, capacity={"slow": 1}
    )
    frames = [eth(BROADCAST, A, i) for i in range(TOTAL)]
    for i in range(0, TOTAL, 10):
        await rig.send("fast0", *frames[i : i + 10])
    assert await recv(rig.peers["fast1"], TOTAL) == frames  # every one, in order

    # unicast between the fast ports is not held up either
    to_a = eth(A, B, 1000)
    await rig.send("fast1", to_a)
    assert await recv(rig.peers["fast0"]) == [to_a]

    await trio.testing.wait_all_tasks_blocked()
    slow = rig.status("slow")
    dropped = rig.switch.drop_counts()[DropReason.TX_QUEUE_FULL]
    assert dropped == slow.tx.tail_dropped > 0
    assert slow.tx.queued == TX_QUEUE  # full, and no more than that
    # one batch in the link (capacity 1), one stuck in send_batch, a full queue
    assert dropped == TOTAL - 2 * BATCH - TX_QUEUE
    assert not slow.closed and slow.up
    assert rig.status("fast1").tx.tail_dropped == 0

    # every frame not counted as dropped is delivered, in order, once the peer reads
    accepted = TOTAL - dropped
    got = await recv(rig.peers["slow"], accepted)
    seqs = [seq_of(f) for f in got]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0
    assert set(got) <= set(frames)
    # and the port works normally again: nothing else was queued before a new frame
    assert await rig.barrier("fast0", ["slow"]) == {"slow": []}
    assert rig.status("slow").tx.tail_dropped == dropped
