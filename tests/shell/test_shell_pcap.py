"""PcapPort/PcapWriter: what passes a port, both ways, read back by scapy."""

import struct
import time

import trio.testing
from scapy.utils import PcapReader, rdpcap
from shellkit import BROADCAST, eth, mac, recv, start_switch

from vswitch.shell.ports import MemoryPort, PcapPort, PcapWriter

A, B = mac(0xA), mac(0xB)
PCAP_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
RECORD_HEADER = struct.Struct("<IIII")    # ts_sec, ts_usec, incl_len, orig_len
LINKTYPE_ETHERNET = 1


def global_header(data: bytes) -> tuple:
    magic = data[:4]
    assert magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")  # microsecond pcap
    fmt = PCAP_HEADER if magic == b"\xd4\xc3\xb2\xa1" else struct.Struct(">IHHiIII")
    return fmt.unpack_from(data)


async def test_both_directions_are_recorded_byte_for_byte(nursery, tmp_path):
    path = tmp_path / "p0.pcap"
    file = open(path, "wb")
    writer = PcapWriter(file)
    rig = await start_switch(
        nursery, ["p0", "p1"], wrap=lambda p: PcapPort(p, writer) if p.name == "p0" else p
    )
    before = time.time()
    received = [eth(BROADCAST, A, 1), eth(B, A, 2, size=9014)]  # a jumbo frame: past dpkt's 1500 default
    await rig.send("p0", *received)
    assert await recv(rig.peers["p1"], 2) == received
    sent = eth(A, B, 3, size=1514)
    await rig.send("p1", sent)
    assert await recv(rig.peers["p0"]) == [sent]
    after = time.time()

    # readable while the switch runs: flushed per batch
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == received + [sent]
    assert all(before - 1e-6 <= float(p.time) <= after + 1e-6 for p in packets)
    assert writer.frames == 3
    with PcapReader(str(path)) as reader:
        assert reader.linktype == LINKTYPE_ETHERNET

    data = path.read_bytes()
    _, major, minor, thiszone, sigfigs, snaplen, linktype = global_header(data)
    assert (major, minor, thiszone, sigfigs) == (2, 4, 0, 0)
    assert snaplen == 65535
    assert linktype == LINKTYPE_ETHERNET
    _, usec, incl_len, orig_len = RECORD_HEADER.unpack_from(data, PCAP_HEADER.size)
    assert incl_len == orig_len == 60 and usec < 1_000_000

    await rig.stop()
    assert file.closed  # closed with the port


async def test_directions_can_be_chosen_and_a_writer_shared(nursery, tmp_path):
    path = tmp_path / "shared.pcap"
    writer = PcapWriter.open(str(path))

    def wrap(port):
        # p0 records only what it sends, p1 only what it receives
        rx, tx = (False, True) if port.name == "p0" else (True, False)
        return PcapPort(port, writer, rx=rx, tx=tx, close_writer=False)

    rig = await start_switch(nursery, ["p0", "p1"], wrap=wrap)
    from_p0 = eth(BROADCAST, A, 1)  # not recorded: p0's rx, p1's tx
    await rig.send("p0", from_p0)
    assert await recv(rig.peers["p1"]) == [from_p0]
    from_p1 = eth(A, B, 2)  # recorded twice: p1's rx, then p0's tx
    await rig.send("p1", from_p1)
    assert await recv(rig.peers["p0"]) == [from_p1]
    assert [bytes(p) for p in rdpcap(str(path))] == [from_p1, from_p1]

    await rig.stop()
    writer.write([from_p0])  # the shared writer outlives the ports
    writer.close()
    assert [bytes(p) for p in rdpcap(str(path))] == [from_p1, from_p1, from_p0]


async def test_timestamps_never_carry_a_full_second_in_the_microseconds(tmp_path):
    path = tmp_path / "ts.pcap"
    writer = PcapWriter.open(str(path), clock=lambda: 1_700_000_000.9999997)
    lower, peer = MemoryPort.pair("p0")
    port = PcapPort(lower, writer)
    await port.send_batch([eth(BROADCAST, A, 1)])
    await port.aclose()
    sec, usec, _, _ = RECORD_HEADER.unpack_from(path.read_bytes(), PCAP_HEADER.size)
    assert usec < 1_000_000
    assert (sec, usec) == (1_700_000_001, 0)


async def test_a_frame_is_recorded_when_the_switch_sends_it_even_if_nobody_reads(nursery, tmp_path):
    path = tmp_path / "p1.pcap"
    rig = await start_switch(
        nursery, ["p0", "p1"], wrap=lambda p: PcapPort(p, PcapWriter.open(str(path))) if p.name == "p1" else p
    )
    frames = [eth(BROADCAST, A, i) for i in range(5)]
    await rig.send("p0", *frames)
    await trio.testing.wait_all_tasks_blocked()
    assert [bytes(p) for p in rdpcap(str(path))] == frames
