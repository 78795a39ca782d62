"""ImpairedPort: seeded loss, duplication, delay and reordering (virtual time)."""

from collections import Counter

import pytest
import trio
import trio.testing
from shellkit import BROADCAST, eth, mac, recv, seq_of, start_switch

from vswitch.core.host import Host
from vswitch.shell.hosts import HostRunner
from vswitch.shell.ports import ImpairedPort, Impairment, MemoryPort

A = mac(0xA)
N = 2000


def numbered(n: int) -> list[bytes]:
    return [eth(BROADCAST, A, i) for i in range(n)]


async def impaired_run(impairment: Impairment, frames: list[bytes]) -> tuple[list[bytes], ImpairedPort]:
    """Everything ``frames`` become after crossing an impaired receive side."""
    lower, peer = MemoryPort.pair("imp")
    port = ImpairedPort(lower, impairment)
    for i in range(0, len(frames), 100):
        await peer.send_batch(frames[i : i + 100])
    got: list[bytes] = []
    with trio.fail_after(60):  # virtual seconds
        while len(got) < len(frames) - port.lost + port.duplicated:
            got += await port.receive_batch()
    return got, port


async def test_loss_drops_about_p_of_the_frames_and_counts_them(autojump_clock):
    frames = numbered(N)
    got, port = await impaired_run(Impairment(loss=0.1, seed=7), frames)
    assert 0.07 * N < port.lost < 0.13 * N
    assert len(got) == N - port.lost
    seqs = [seq_of(f) for f in got]
    assert seqs == sorted(set(seqs))  # survivors unchanged and in order
    assert set(got) <= set(frames)
    stats = port.statistics()
    assert stats.rx_dropped == port.lost
    assert stats.rx_frames == N  # what the device itself received
    assert port.duplicated == port.reordered == 0


async def test_duplication_delivers_some_frames_twice(autojump_clock):
    frames = numbered(N)
    got, port = await impaired_run(Impairment(duplicate=0.25, seed=3), frames)
    assert 0.2 * N < port.duplicated < 0.3 * N
    assert len(got) == N + port.duplicated
    counts = Counter(got)
    assert set(counts) == set(frames)
    assert sorted(Counter(counts.values()).items()) == [(1, N - port.duplicated), (2, port.duplicated)]
    # a duplicate follows its original directly
    deduplicated = [f for i, f in enumerate(got) if i == 0 or got[i - 1] != f]
    assert deduplicated == frames


async def test_delay_holds_frames_back_by_the_delay(autojump_clock):
    lower, peer = MemoryPort.pair("imp")
    port = ImpairedPort(lower, Impairment(delay=0.25))
    start = trio.current_time()
    await peer.send_batch(numbered(3))
    with trio.move_on_after(0.2):
        await port.receive_batch()
        pytest.fail("a frame arrived before its delay")
    got = await recv(port, 3)
    assert got == numbered(3)
    assert trio.current_time() - start == pytest.approx(0.25)


    # delay counts from when a frame reaches the port, with a reader waiting as the switch's is
    arrivals = []

    async def reader():
        for _ in range(2):
            (frame,) = await recv(port)
            arrivals.append((seq_of(frame), trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        start = trio.current_time()
        await peer.send_batch([eth(BROADCAST, A, 10)])
        await trio.sleep(0.1)
        await peer.send_batch([eth(BROADCAST, A, 11)])
    assert arrivals == [(10, pytest.approx(0.25)), (11, pytest.approx(0.35))]


async def test_jitter_spreads_arrivals_within_the_window(autojump_clock):
    lower, peer = MemoryPort.pair("imp")
    port = ImpairedPort(lower, Impairment(delay=0.1, jitter=0.05, seed=11))
    start = trio.current_time()
    await peer.send_batch(numbered(50))
    arrivals = []
    for _ in range(50):
        await recv(port)
        arrivals.append(trio.current_time() - start)
    assert all(0.1 <= t <= 0.15 + 1e-9 for t in arrivals)
    assert len(set(arrivals)) > 10  # not all at once


async def test_reorder_holds_some_frames_behind_later_ones(autojump_clock):
    frames = numbered(200)
    got, port = await impaired_run(Impairment(reorder=0.3, reorder_gap=0.01, seed=5), frames)
    assert 30 < port.reordered < 90
    assert got != frames
    assert sorted(got, key=seq_of) == frames  # same frames, different order
    # sent together, the held-back ones arrive after all the others, each group in order
    kept, held = got[: 200 - port.reordered], got[200 - port.reordered :]
    assert [seq_of(f) for f in kept] == sorted(seq_of(f) for f in kept)
    assert [seq_of(f) for f in held] == sorted(seq_of(f) for f in held)
    assert seq_of(held[0]) < seq_of(kept[-1])


async def test_the_same_seed_replays_the_same_impairment(autojump_clock):
    frames = numbered(500)
    impairment = dict(loss=0.1, duplicate=0.1, reorder=0.2, reorder_gap=0.005, jitter=0.002)
    first, p1 = await impaired_run(Impairment(**impairment, seed=42), frames)
    again, p2 = await impaired_run(Impairment(**impairment, seed=42), frames)
    other, p3 = await impaired_run(Impairment(**impairment, seed=43), frames)
    assert first == again
    assert (p1.lost, p1.duplicated, p1.reordered) == (p2.lost, p2.duplicated, p2.reordered)
    assert first != other


async def test_a_cancelled_receive_loses_no_frame(autojump_clock):
    """Cancellation means the receive did not happen: due frames stay for the next call."""
    lower, peer = MemoryPort.pair("imp")
    port = ImpairedPort(lower, Impairment(delay=0.1))
    frames = numbered(3)
    await peer.send_batch(frames)
    with trio.move_on_after(0.05):  # pulls the frames in and holds them
        await port.receive_batch()
    await trio.sleep(0.1)  # now they are due
    with trio.CancelScope() as scope:
        scope.cancel()
        await port.receive_batch()
    assert await recv(port, 3) == frames


async def test_ping_through_a_delayed_port_takes_the_delay(nursery, autojump_clock):
    """The switch side of h2's link is impaired: frames from h2 reach the switch 0.1 s late."""
    rig = await start_switch(
        nursery, ["p1", "p2"], wrap=lambda p: ImpairedPort(p, Impairment(delay=0.1)) if p.name == "p2" else p
    )
    h1 = await nursery.start(HostRunner(Host("h1", mac(1), "10.0.0.1/24"), rig.peers["p1"]).run)
    await nursery.start(HostRunner(Host("h2", mac(2), "10.0.0.2/24"), rig.peers["p2"]).run)
    first = await h1.ping("10.0.0.2")  # ARP reply and echo reply are both delayed
    assert first.rtts == (pytest.approx(0.2),)
    second = await h1.ping("10.0.0.2", count=3)
    assert second.rtts == (pytest.approx(0.1),) * 3


async def test_loss_on_a_switch_port_shows_in_its_device_statistics(nursery, autojump_clock):
    rig = await start_switch(
        nursery, ["p1", "p2"], wrap=lambda p: ImpairedPort(p, Impairment(loss=0.5, seed=1)) if p.name == "p1" else p
    )
    frames = numbered(400)
    await rig.send("p1", *frames)
    impaired = rig.switch.ports["p1"]
    await trio.testing.wait_all_tasks_blocked()
    got = await recv(rig.peers["p2"], 400 - impaired.lost)
    assert 150 < impaired.lost < 250
    assert set(got) <= set(frames)
    assert rig.status("p1").device.rx_dropped == impaired.lost
    assert rig.bridge.statistics().ports["p1"].rx_frames == 400 - impaired.lost
