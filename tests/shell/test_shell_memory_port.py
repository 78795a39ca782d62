"""MemoryPort, the in-memory link every other shell test stands on."""

import pytest
import trio
from shellkit import BROADCAST, eth, mac, recv

from vswitch.shell.ports import MemoryPort, Port, PortClosed

A = mac(0xA)


async def test_pair_carries_batches_both_ways_and_counts_them():
    a, b = MemoryPort.pair("a")
    assert (a.name, b.name) == ("a", "a-peer")
    assert isinstance(a, Port)
    frames = [eth(BROADCAST, A, i) for i in range(5)]
    await a.send_batch(frames[:2])
    await a.send_batch(frames[2:])
    await a.send_batch([])  # nothing to send is not a batch
    assert await b.receive_batch(3) == frames[:3]  # batches coalesce up to max_frames
    assert await b.receive_batch() == frames[3:]  # the rest of a split batch
    await b.send_batch(frames[:1])
    assert await recv(a) == frames[:1]
    assert (a.statistics().tx_frames, a.statistics().tx_bytes) == (5, 300)
    assert (b.statistics().rx_frames, b.statistics().rx_bytes) == (5, 300)
    assert a.statistics().rx_frames == 1
    stats = a.statistics()
    stats.tx_frames = 99  # a snapshot, not the live counters
    assert a.statistics().tx_frames == 5


async def test_a_full_link_makes_the_sender_wait(autojump_clock):
    a, b = MemoryPort.pair("a", capacity=1)
    await a.send_batch([eth(BROADCAST, A, 1)])
    with trio.move_on_after(0.05) as scope:
        await a.send_batch([eth(BROADCAST, A, 2)])
    assert scope.cancelled_caught
    assert a.statistics().tx_frames == 1  # the blocked batch was not counted as sent
    assert [f for f in await b.receive_batch()] == [eth(BROADCAST, A, 1)]


async def test_closing_one_end_ends_both_directions():
    a, b = MemoryPort.pair("a")
    await a.send_batch([eth(BROADCAST, A, 1)])
    await a.aclose()
    await a.aclose()  # idempotent
    assert await b.receive_batch() == [eth(BROADCAST, A, 1)]  # what was in flight still arrives
    with trio.fail_after(1), pytest.raises(PortClosed):
        await b.receive_batch()
    with pytest.raises(PortClosed):
        await b.send_batch([eth(BROADCAST, A, 2)])
    with pytest.raises(PortClosed):
        await a.send_batch([eth(BROADCAST, A, 3)])
    with pytest.raises(PortClosed):
        await a.receive_batch()


async def test_a_cancelled_aclose_still_closes_both_directions():
    """Trio's rule for aclose: even when cancelled, the resource ends up closed."""
    a, b = MemoryPort.pair("a")
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.aclose()
    with pytest.raises(PortClosed):
        await b.send_batch([eth(BROADCAST, A, 1)])
    with trio.fail_after(1), pytest.raises(PortClosed):
        await b.receive_batch()
