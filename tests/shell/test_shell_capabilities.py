"""Ports declare what they can do; the switch goes by that, and wrappers pass it through."""

import os
from collections.abc import Sequence

import trio
from scapy.all import IP, TCP, Dot1Q, Ether, raw
from scapy.utils import rdpcap
from shellkit import eth, mac, recv, start_switch

from vswitch.control.capture import CaptureSession
from vswitch.core.actions import DropReason, Transmit
from vswitch.core.l2.bridge import Bridge
from vswitch.core.wire.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    VNET_HDR,
    SuperFrame,
    segment,
    segment_tcp4,
    super_frame,
)
from vswitch.shell.ports import (
    Capabilities,
    ImpairedPort,
    Impairment,
    Medium,
    MemoryPort,
    PcapPort,
    PcapWriter,
)
from vswitch.shell.ports.fd import FdPort
from vswitch.shell.ports.udp import MemoryUnderlay
from vswitch.shell.switch import Switch

A, B = mac(0xA), mac(0xB)


class FastMemoryPort(MemoryPort):
    """A memory link with a synchronous fast path, as a TAP has: a batch the link has room for goes at once."""

    capabilities = Capabilities(send_nowait=True)

    def send_nowait(self, frames: Sequence[bytes]) -> int:
        try:
            self._send.send_nowait(list(frames))
        except trio.WouldBlock:
            return 0
        self._stats.count_tx(frames)
        return len(frames)


class SmallBatchPort(MemoryPort):
    """A memory link whose device moves at most three frames per call; it remembers the calls."""

    capabilities = Capabilities(max_batch=3)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []
        self.sent: list[int] = []

    async def receive_batch(self, max_frames: int = 64) -> list[bytes]:
        self.asked.append(max_frames)
        return await super().receive_batch(max_frames)

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        self.sent.append(len(frames))
        await super().send_batch(frames)


def test_ports_declare_their_medium():
    memory, _ = MemoryPort.pair("m")
    assert memory.capabilities == Capabilities(medium=Medium.ETHERNET)
    underlay = MemoryUnderlay().port("underlay", "10.99.0.1", 8285)
    assert underlay.capabilities.medium is Medium.UDP and not underlay.capabilities.send_nowait


async def test_a_pcap_keeps_the_fast_path_of_the_port_it_wraps(tmp_path):
    port, peer = FastMemoryPort.pair("p1")
    writer = PcapWriter.open(str(tmp_path / "p1.pcap"))
    recorded = PcapPort(port, writer)
    assert recorded.capabilities is port.capabilities
    switch = Switch(Bridge())
    switch.add_port(recorded)
    frames = [eth(A, B, i) for i in range(3)]
    switch.dispatch([Transmit("p1", frames)])   # as from a receiving task: no await between here and the checks
    (status,) = switch.port_status()
    assert status.tx.queued == 0 and status.tx.sent_batches == 1   # written at once, not queued for the send task
    assert writer.frames == 3 and port.statistics().tx_frames == 3
    assert await recv(peer, 3) == frames
    assert [bytes(p) for p in rdpcap(str(tmp_path / "p1.pcap"))] == frames
    await switch.aclose()


async def test_a_port_without_a_fast_path_is_sent_to_by_its_task(nursery):
    rig = await start_switch(nursery, ["p1"])
    rig.switch.dispatch([Transmit("p1", [eth(A, B)])])
    assert rig.status("p1").tx.queued == 1
    assert await recv(rig.peers["p1"]) == [eth(A, B)]


def test_impairment_passes_capabilities_through():
    port, _ = FastMemoryPort.pair("p1")
    assert ImpairedPort(port, Impairment(loss=0.5)).capabilities is port.capabilities


async def test_the_switch_moves_no_more_frames_per_call_than_a_port_takes(nursery):
    small, small_peer = SmallBatchPort.pair("small")
    rig = await start_switch(nursery, ["p1"], batch_size=8)
    rig.switch.add_port(small)
    rig.bridge.fdb.learn(B, "small", trio.current_time())
    frames = [eth(B, A, i) for i in range(8)]
    await rig.send("p1", *frames)
    assert await recv(small_peer, 8) == frames
    await small_peer.send_batch([eth(A, B, i) for i in range(7)])
    assert len(await recv(rig.peers["p1"], 7)) == 7
    assert set(small.asked) == {3} and max(small.sent) <= 3 and sum(small.sent) == 8


def _super_frame(payload: int = 4000, mss: int = 1448) -> tuple[SuperFrame, list[bytes]]:
    """A TCP super-frame as a container's stack hands one over with TSO, and its segments."""
    packet = (Ether(src=A.hex(":"), dst=B.hex(":")) / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF")
              / TCP(sport=40000, dport=5201, flags="PA") / bytes(i & 0xFF for i in range(payload)))
    frame = super_frame(raw(packet), GSO_TCPV4, mss)
    return frame, segment(frame)


class TsoMemoryPort(FastMemoryPort):
    """A memory link that takes super-frames whole, as a TAP with TSO does."""

    capabilities = Capabilities(send_nowait=True, tso=True)


async def test_a_super_frame_goes_whole_to_a_port_with_tso_and_cut_to_one_without(tmp_path):
    whole, plain = TsoMemoryPort.pair("whole"), FastMemoryPort.pair("plain")
    writer = PcapWriter.open(str(tmp_path / "whole.pcap"))
    switch = Switch(Bridge())
    switch.add_port(PcapPort(whole[0], writer))
    switch.add_port(plain[0])
    frame, segments = _super_frame()
    assert len(segments) == 3
    switch.dispatch([Transmit("whole", [frame]), Transmit("plain", [frame])])
    (got,) = await recv(whole[1], 1)
    assert type(got) is SuperFrame and got == frame    # one frame, not cut
    assert await recv(plain[1], 3) == segments          # the segments, in order
    # the capture of the port that took it whole holds what a wire would carry: the segments
    assert [bytes(p) for p in rdpcap(str(tmp_path / "whole.pcap"))] == segments
    switch.dispatch([Transmit("plain", [super_frame(b"\x02" * 20, frame.gso_type, 1000), frame])])
    assert await recv(plain[1], 3) == segments
    assert switch.drop_counts() == {DropReason.SUPER_FRAME_MALFORMED: 1}
    await switch.aclose()


def test_a_live_capture_keeps_a_super_frame_as_the_segments_it_stands_for():
    session = CaptureSession("p1")
    frame, segments = _super_frame()
    session.push([eth(A, B, 1), frame])
    assert session.summary()["buffered"] == 1 + len(segments) == 4


def test_a_super_frame_the_core_does_not_carry_whole_is_cut_at_the_port():
    """A VLAN-tagged one, say: the port reading it cuts it into its segments, as before offloads."""
    tagged = raw(Ether(src=A.hex(":"), dst=B.hex(":")) / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2")
                 / TCP(sport=1, dport=2, flags="A") / bytes(3000))
    port = FdPort("p", os.open(os.devnull, os.O_RDONLY))
    frames: list[bytes] = []
    port._from_vnet(VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, 58, 1400, 38, 16) + tagged, frames)
    assert frames == segment_tcp4(tagged, 1400) and len(frames) == 3
    assert port.statistics().rx_errors == 0 and port.statistics().rx_super_frames == 0
    os.close(port.fileno())
