"""The shell is a bulkhead: a core or a port that raises costs one batch, never a task or the daemon.

Each test makes one part raise on purpose when it meets a poison frame,
then checks that the switch survived, that the other ports (and the same
port) keep forwarding, that the lost frames are counted as internal-error
drops by site and port, that the first fault at a code site is logged with
its traceback and later ones only counted, and that the offending frames
are kept: among the recent drops and in the faults pcap.
"""

import logging
import socket
from collections.abc import Sequence

import dpkt
import pytest
import trio
import trio.testing
from shellkit import BROADCAST, eth, mac, recv, start_switch

import vswitch.shell.ports.fd
from vswitch.core.actions import DropReason
from vswitch.core.l2.bridge import Bridge
from vswitch.shell.faults import Faults
from vswitch.shell.ports.base import PortWrapper
from vswitch.shell.ports.fd import READ_SIZE, FdPort

A, B, C = mac(0xA), mac(0xB), mac(0xC)
POISON = b"\xde\xad\xbe\xef"


def poison(dst: bytes = BROADCAST, src: bytes = A) -> bytes:
    return eth(dst, src, int.from_bytes(POISON, "big"))


def poisoned(frames: Sequence[bytes]) -> bool:
    return any(POISON in frame for frame in frames)


class FragileBridge(Bridge):
    """A bridge with a bug: any batch holding a poison frame raises, as a broken parser would."""

    def handle_frames(self, port, frames, now):
        if poisoned(frames):
            raise IndexError("index out of range (on purpose)")
        return super().handle_frames(port, frames, now)


class FragileTimerBridge(Bridge):
    """A bridge with a timer due at once, which raises the first ``failures`` times it runs."""

    def __init__(self, failures: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.runs = 0
        self.done = False

    def poll_at(self):
        return super().poll_at() if self.done else 0.0

    def handle_timer(self, now):
        self.runs += 1
        if self.failures:
            self.failures -= 1
            raise KeyError("timer bug (on purpose)")
        self.done = True
        return super().handle_timer(now)


class SocketPort(FdPort):
    """A datagram socket as a device: the shell's FdPort loops on a real fd, with a decoder and an encoder
    that break on poison (the decoder through the real ``FdPort._from_vnet`` path)."""

    kind = "socket"

    def __init__(self, name: str, sock: socket.socket) -> None:
        super().__init__(name, sock.fileno())
        self._sock = sock

    def _read_one(self, frames: list[bytes]) -> None:
        packet = self._sock.recv(READ_SIZE)
        if packet.startswith(b"VNET"):
            self._from_vnet(packet[4:], frames)
        else:
            frames.append(packet)

    def _write_some(self, frames: Sequence[bytes], start: int) -> int:
        if POISON in frames[start]:
            raise IndexError("encoder bug (on purpose)")
        self._sock.send(frames[start])
        return 1

    def _close_device(self) -> None:
        self._sock.close()


def socket_port(name: str) -> tuple[SocketPort, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    return SocketPort(name, ours), theirs


async def socket_recv(sock: socket.socket, *, timeout: float = 2.0) -> bytes:
    with trio.fail_after(timeout):
        while True:
            try:
                return sock.recv(READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)


def pcap_frames(path) -> list[bytes]:
    with open(path, "rb") as f:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]


def internal_errors(rig) -> int:
    return rig.switch.drop_counts().get(DropReason.INTERNAL_ERROR, 0)


async def test_a_core_that_raises_costs_one_batch_and_forwarding_carries_on(nursery, tmp_path, caplog):
    faults = Faults(str(tmp_path / "faults.pcap"))
    rig = await start_switch(nursery, ["p0", "p1", "p2"], bridge=FragileBridge(), faults=faults)
    bad = poison()

    with caplog.at_level(logging.ERROR, logger="vswitch.shell.faults"):
        await rig.send("p0", bad)
        await trio.testing.wait_all_tasks_blocked()   # alone in its batch: a batch is what a fault costs
        # the same port and the others forward as before
        hello = eth(BROADCAST, A, 1)
        await rig.send("p0", hello)
        assert await recv(rig.peers["p1"]) == [hello]
        assert await recv(rig.peers["p2"]) == [hello]
        reply = eth(A, B, 2)
        await rig.send("p1", reply)
        assert await recv(rig.peers["p0"]) == [reply]
        await rig.send("p2", poison(src=C))   # a second fault at the same site: counted, not logged again
        await trio.testing.wait_all_tasks_blocked()
        await rig.send("p2", eth(A, C, 3))
        assert len(await recv(rig.peers["p0"])) == 1

    assert internal_errors(rig) == 2
    assert faults.counts == {("core", "p0"): 1, ("core", "p2"): 1}
    logged = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is IndexError
    assert "core, port p0" in logged[0].getMessage()
    recent = [(d.port, d.reason, d.frame) for d in rig.switch.recent_drops]
    assert ("p0", DropReason.INTERNAL_ERROR, bad) in recent
    assert [f.site for f in faults.recent] == ["core", "core"]
    assert faults.recent[0].where.startswith("test_shell_containment.py:")
    assert faults.recent[0].head == bad[:64]
    assert pcap_frames(tmp_path / "faults.pcap") == [bad, poison(src=C)]
    assert all(s.up for s in rig.switch.port_status())


async def test_a_port_whose_encoder_raises_loses_those_frames_and_keeps_its_task(nursery, tmp_path):
    faults = Faults(str(tmp_path / "faults.pcap"))
    fragile, far = socket_port("s0")
    rig = await start_switch(nursery, ["p0", "p1"], faults=faults)
    rig.switch.add_port(fragile)
    await trio.testing.wait_all_tasks_blocked()

    bad = poison(src=B)
    await rig.send("p1", bad)                      # flooded: p0 gets it, the socket port's encoder breaks
    assert await recv(rig.peers["p0"]) == [bad]
    await trio.testing.wait_all_tasks_blocked()
    good = eth(BROADCAST, B, 5)
    await rig.send("p1", good)
    assert await socket_recv(far) == good          # the same port writes the next batch
    assert await recv(rig.peers["p0"]) == [good]

    assert faults.counts == {("send", "s0"): 1}
    assert internal_errors(rig) == 1
    assert pcap_frames(tmp_path / "faults.pcap") == [bad]
    status = {s.name: s for s in rig.switch.port_status()}
    assert status["s0"].up and not status["s0"].closed
    assert status["s0"].device.tx_frames == 1


async def test_a_port_whose_decoder_raises_loses_that_batch_and_keeps_receiving(nursery, monkeypatch):
    def broken_read_vnet(packet: bytes, ip_at: int) -> bytes:
        assert POISON in packet, "only the poisoned packet asks for virtio-net work"
        raise ValueError("decoder bug (on purpose)")

    monkeypatch.setattr(vswitch.shell.ports.fd, "read_vnet", broken_read_vnet)
    fragile, far = socket_port("s0")
    rig = await start_switch(nursery, ["p0"])
    rig.switch.add_port(fragile)
    await trio.testing.wait_all_tasks_blocked()

    raw = b"VNET" + b"\x01" + bytes(9) + poison(src=B)
    far.send(raw)
    await trio.testing.wait_all_tasks_blocked()
    good = eth(BROADCAST, B, 6)
    far.send(good)
    assert await recv(rig.peers["p0"]) == [good]
    faults = rig.switch.faults
    assert faults.counts == {("receive", "s0"): 1}
    assert internal_errors(rig) == 1
    (fault,) = faults.recent
    assert "decoder bug" in fault.error and fault.frames == 1
    assert fault.head == raw[4:68]   # the device's bytes, virtio-net header first


async def test_a_timer_that_raises_is_retried_and_forwarding_carries_on(nursery, autojump_clock):
    bridge = FragileTimerBridge(failures=3)
    rig = await start_switch(nursery, ["p0", "p1"], bridge=bridge)
    await trio.sleep(1.0)
    assert bridge.runs == 4          # three faults, each followed by a pause, then a good run
    assert rig.switch.faults.counts == {("timer", ""): 3}
    frame = eth(BROADCAST, A, 7)
    await rig.send("p0", frame)
    assert await recv(rig.peers["p1"]) == [frame]


async def test_a_monitor_that_raises_is_ended_and_the_port_keeps_forwarding(nursery):
    rig = await start_switch(nursery, ["p0", "p1"])

    def broken(frames: list[bytes]) -> None:
        raise RuntimeError("capture bug (on purpose)")

    monitor = rig.switch.add_monitor("p0", broken)
    first, second = eth(BROADCAST, A, 8), eth(BROADCAST, A, 9)
    await rig.send("p0", first)
    assert await recv(rig.peers["p1"]) == [first]
    await rig.send("p0", second)
    assert await recv(rig.peers["p1"]) == [second]
    assert monitor.ended.is_set()
    assert rig.switch.faults.counts == {("monitor", "p0"): 1}


class BrokenSend(PortWrapper):
    async def send_batch(self, frames):
        if poisoned(frames):
            raise OverflowError("send bug (on purpose)")
        await self.lower.send_batch(frames)


async def test_a_queued_send_that_raises_costs_that_batch(nursery):
    rig = await start_switch(nursery, ["p0", "p1"], wrap=lambda port: BrokenSend(port) if port.name == "p1" else port)
    await rig.send("p0", poison())
    await trio.testing.wait_all_tasks_blocked()
    after = eth(BROADCAST, A, 10)
    await rig.send("p0", after)
    assert await recv(rig.peers["p1"]) == [after]
    assert rig.switch.faults.counts == {("send", "p1"): 1}


@pytest.mark.parametrize("writable", [True, False])
async def test_the_faults_pcap_is_made_at_the_first_fault_and_bounded(tmp_path, writable):
    import vswitch.shell.faults as faults_module

    target = tmp_path / ("faults.pcap" if writable else "missing-dir/faults.pcap")
    faults = Faults(str(target))
    assert not target.exists()       # a daemon without faults leaves no file
    frames = [i.to_bytes(2, "big") * 30 for i in range(faults_module.MAX_PCAP_FRAMES + 10)]
    try:
        raise IndexError("on purpose")
    except IndexError as exc:
        lost = faults.record("core", "p0", exc, frames)
    assert lost == frames
    faults.close()
    if writable:
        assert pcap_frames(target) == frames[:faults_module.MAX_PCAP_FRAMES]
        assert faults.describe()["pcap"] == str(target)
    else:
        assert faults.pcap_error and "cannot write" in faults.pcap_error
        assert faults.describe()["pcap"] is None
    assert faults.describe()["total"] == 1


async def test_a_daemon_reports_its_contained_faults_and_where_their_frames_are(tmp_path):
    from vswitch import config, daemon
    from vswitch.cli import format
    from vswitch.control import client

    path = tmp_path / "ctl.sock"
    node = daemon.build(config.loads(f"""
[node]
name = "t1"
control = "{path}"
[[ports]]
name = "p1"
type = "memory"
host = {{ address = "10.1.0.1/24" }}
[[ports]]
name = "p2"
type = "memory"
host = {{ address = "10.1.0.2/24" }}
"""))
    real = node.switch.core.handle_frames

    def fragile(port, frames, now):
        if poisoned(frames):
            raise IndexError("on purpose")
        return real(port, frames, now)

    node.switch.core.handle_frames = fragile
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        p1 = next(runner for runner, _, _ in node.hosts if runner.host.name == "p1-host")
        bad = poison(src=p1.host.mac)
        await p1.port.send_batch([bad])
        await trio.testing.wait_all_tasks_blocked()
        assert (await p1.ping("10.1.0.2", timeout=2.0)).received == 1   # the daemon forwards on

        stats = await client.request(str(path), {"command": "show", "what": "stats"})
        assert stats["drops"]["internal-error"] == 1
        faults = stats["faults"]
        assert faults["by_site"] == [{"site": "core", "port": "p1", "faults": 1}]
        assert faults["pcap"] == str(tmp_path / "t1.internal-errors.pcap") and faults["pcap_frames"] == 1
        assert faults["recent"][0]["error"] == "IndexError('on purpose')"
        assert {"port": "p1", "reason": "internal-error", "bytes": len(bad), "head": bad[:14].hex()} \
            in stats["recent_drops"]
        text = format.format_stats(stats)
        assert f"internal errors: 1 batches lost to bugs, contained; their frames are in {faults['pcap']}" in text
        nursery.cancel_scope.cancel()
    assert pcap_frames(tmp_path / "t1.internal-errors.pcap") == [bad]
