"""Ports coming and going while the switch runs, and shutting the switch down."""

import pytest
import trio
import trio.testing
from shellkit import BROADCAST, eth, mac, recv, start_switch

from vswitch.core.actions import DropReason
from vswitch.core.l2.bridge import Bridge
from vswitch.shell.ports import Capabilities, MemoryPort, PortClosed, PortStatistics
from vswitch.shell.switch import SHUTDOWN_TIMEOUT, Switch

A, B, C = mac(0xA), mac(0xB), mac(0xC)


async def learn_three(rig) -> None:
    """A on p0, B on p1, C on p2; every flood read so the links are empty."""
    for src, port in ((A, "p0"), (B, "p1"), (C, "p2")):
        frame = eth(BROADCAST, src)
        await rig.send(port, frame)
        for other in rig.peers:
            if other != port:
                assert await recv(rig.peers[other]) == [frame]
    assert rig.fdb() == {A: "p0", B: "p1", C: "p2"}


async def test_port_down_flushes_and_stops_forwarding_then_up_again_works(nursery):
    rig = await start_switch(nursery, ["p0", "p1", "p2"])
    await learn_three(rig)

    rig.switch.set_port_up("p1", False)
    assert rig.fdb() == {A: "p0", C: "p2"}
    assert rig.bridge.fdb.statistics().flushed == 1
    assert rig.status("p1").up is False and rig.status("p1").closed is False

    to_b = eth(B, A, 1)  # B is unknown now: flooded, but not to the down port
    await rig.send("p0", to_b)
    assert await recv(rig.peers["p2"]) == [to_b]
    from_b = eth(A, B, 2)  # nothing from a down port is switched or learned
    await rig.send("p1", from_b)
    assert await rig.barrier("p2", ["p0"]) == {"p0": []}
    assert rig.switch.drop_counts()[DropReason.PORT_DOWN] == 1
    assert B not in rig.fdb()

    rig.switch.set_port_up("p1", True)
    assert rig.status("p1").up is True
    hello = eth(A, B, 3)
    await rig.send("p1", hello)
    assert await recv(rig.peers["p0"]) == [hello]
    assert rig.fdb()[B] == "p1"
    to_b = eth(B, A, 4)
    await rig.send("p0", to_b)
    # p1's first frame since it went down: nothing leaked to it meanwhile
    assert await recv(rig.peers["p1"]) == [to_b]


async def test_set_port_up_on_an_unknown_port_raises(nursery):
    rig = await start_switch(nursery, ["p0"])
    with pytest.raises(KeyError):
        rig.switch.set_port_up("nope", False)


async def test_a_port_whose_link_closes_goes_down_and_the_rest_keep_forwarding(nursery):
    rig = await start_switch(nursery, ["p0", "p1", "p2"])
    await learn_three(rig)

    await rig.peers["p1"].aclose()
    await trio.testing.wait_all_tasks_blocked()
    status = rig.status("p1")
    assert (status.up, status.closed) == (False, True)
    assert rig.status("p0").up and not rig.status("p0").closed
    assert rig.fdb() == {A: "p0", C: "p2"}

    to_b = eth(B, A, 1)
    await rig.send("p0", to_b)
    assert await recv(rig.peers["p2"]) == [to_b]
    to_c = eth(C, A, 2)
    await rig.send("p0", to_c)
    assert await recv(rig.peers["p2"]) == [to_c]
    assert rig.bridge.ports["p1"].up is False
    assert DropReason.TX_QUEUE_FULL not in rig.switch.drop_counts()


async def test_remove_port_at_run_time_flushes_its_entries_and_closes_it(nursery):
    rig = await start_switch(nursery, ["p0", "p1", "p2"])
    await learn_three(rig)

    port = await rig.switch.remove_port("p1")
    assert port.name == "p1"
    assert rig.fdb() == {A: "p0", C: "p2"}
    assert "p1" not in rig.switch.ports and "p1" not in rig.bridge.ports
    assert [s.name for s in rig.switch.port_status()] == ["p0", "p2"]
    with trio.fail_after(1), pytest.raises(PortClosed):
        await rig.peers["p1"].receive_batch()
    with pytest.raises(PortClosed):
        await rig.peers["p1"].send_batch([eth(A, B)])

    to_b = eth(B, A, 1)
    await rig.send("p0", to_b)
    assert await recv(rig.peers["p2"]) == [to_b]
    with pytest.raises(KeyError):
        await rig.switch.remove_port("p1")


async def test_add_port_while_running_starts_its_tasks(nursery):
    rig = await start_switch(nursery, ["p0", "p1"])
    port, peer = MemoryPort.pair("p2")
    rig.switch.add_port(port)
    rig.peers["p2"] = peer

    hello = eth(BROADCAST, A, 1)
    await rig.send("p0", hello)
    assert await recv(peer) == [hello]  # its tx task runs
    to_a = eth(A, C, 2)
    await peer.send_batch([to_a])
    assert await recv(rig.peers["p0"]) == [to_a]  # its rx task runs
    assert rig.fdb() == {A: "p0", C: "p2"}
    with pytest.raises(ValueError):
        rig.switch.add_port(MemoryPort.pair("p2")[0])


async def test_cancelling_run_closes_every_port(nursery):
    rig = await start_switch(nursery, ["p0", "p1", "p2"])
    await learn_three(rig)
    took = await rig.stop()
    assert took < SHUTDOWN_TIMEOUT
    for name, peer in rig.peers.items():
        with trio.fail_after(1), pytest.raises(PortClosed):
            await peer.receive_batch()
        with pytest.raises(PortClosed):
            await peer.send_batch([eth(A, B)])
        assert rig.status(name).closed


async def test_run_twice_at_once_is_refused(nursery):
    rig = await start_switch(nursery, ["p0"])
    with pytest.raises(RuntimeError):
        await rig.switch.run()


class HangingPort:
    """A device whose close never finishes (a wedged driver)."""

    kind = "hanging"
    capabilities = Capabilities()

    def __init__(self, name: str) -> None:
        self.name, self.mtu = name, 1500
        self.close_started = False

    async def receive_batch(self, max_frames: int = 64) -> list[bytes]:
        await trio.sleep_forever()

    async def send_batch(self, frames) -> None:
        await trio.sleep_forever()

    def statistics(self) -> PortStatistics:
        return PortStatistics()

    async def aclose(self) -> None:
        self.close_started = True
        await trio.sleep_forever()


async def test_shutdown_is_bounded_and_a_wedged_port_does_not_keep_others_open(nursery, autojump_clock):
    switch = Switch(Bridge())
    wedged = HangingPort("wedged")
    switch.add_port(wedged)  # first: closed first
    port, peer = MemoryPort.pair("p0")
    switch.add_port(port)
    stop, done = trio.CancelScope(), trio.Event()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with stop:
            await switch.run(task_status=task_status)
        done.set()

    await nursery.start(run)
    start = trio.current_time()
    stop.cancel()
    with trio.fail_after(SHUTDOWN_TIMEOUT + 1):
        await done.wait()
    assert wedged.close_started
    assert trio.current_time() - start == pytest.approx(SHUTDOWN_TIMEOUT, abs=0.01)
    with trio.fail_after(1), pytest.raises(PortClosed):
        await peer.receive_batch()
    with pytest.raises(PortClosed):
        await peer.send_batch([eth(A, B)])


def test_tx_queue_must_hold_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        Switch(Bridge(), batch_size=64, tx_queue=32)


async def test_failed_port_cannot_be_set_up_again():
    switch = Switch(Bridge())
    a, a_peer = MemoryPort.pair("a")
    b, _b_peer = MemoryPort.pair("b")
    switch.add_port(a)
    switch.add_port(b)
    async with trio.open_nursery() as nursery:
        await nursery.start(switch.run)
        await a_peer.aclose()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="remove it and add it again"):
            switch.set_port_up("a", True)
        assert {s.name: s.up for s in switch.port_status()} == {"a": False, "b": True}
        nursery.cancel_scope.cancel()
