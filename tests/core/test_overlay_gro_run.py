"""A UDP GRO run taken in one pass gives exactly what its datagrams taken one by one give.

The oracle is the datagram-by-datagram path (each datagram checked, then
GRO's rules frame by frame): for runs of one TCP flow's segments, whole or
with any header byte of any datagram changed, the run path must give the
same packets (bytes, super-frame or not, segment size), the same drops and
the same counters.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from overlaykit import from_peer, make_overlay, vxlan_payload
from scapy.all import IP, TCP, raw

from vswitch.core.actions import Drop, Transmit
from vswitch.core.wire.offload import SuperFrame
from vswitch.overlay.core.codec import UDP_OVERHEAD, VXLAN_OVERHEAD
from vswitch.overlay.core.gro import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    DatagramRun,
    datagram_run,
    datagrams,
    join_run,
    segments_per_send,
    split_run,
)

OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]


def _segments(count: int, size: int, seq: int, last: int, psh: bool) -> list[bytes]:
    out = []
    for i in range(count):
        length = size if i < count - 1 else last
        flags = "PA" if psh and i == count - 1 else "A"
        out.append(raw(IP(src="10.244.2.2", dst="10.244.1.2", id=100 + i, ttl=64, flags="DF")
                       / TCP(sport=5201, dport=40000, seq=(seq + i * size) & 0xFFFFFFFF, ack=9, flags=flags,
                             options=OPTIONS) / bytes((i * 7 + j) & 0xFF for j in range(length))))
    return out


def _run(backend: str, inner: list[bytes]) -> DatagramRun:
    wrapped = [vxlan_payload(IP(p)) for p in inner] if backend == "vxlan" else inner
    header = from_peer(2, b"", backend)
    return datagram_run(header, b"".join(wrapped), len(wrapped[0]))


def _outcome(backend: str, frames: list[bytes]):
    overlay = make_overlay(backend, coalesce=True)
    actions = overlay.decapsulate(frames, 0.0)
    sent = [(bytes(f), type(f) is SuperFrame, getattr(f, "gso_size", None))
            for a in actions if type(a) is Transmit for f in a.frames]
    drops = [(a.reason, bytes(a.frame)) for a in actions if type(a) is Drop]
    counters = {str(p.lease.subnet): (p.counters.rx_packets, p.counters.rx_bytes) for p in overlay.peers}
    return sent, drops, counters, overlay.statistics().decapsulated


def _same_as_one_by_one(backend: str, run: DatagramRun) -> list:
    whole = _outcome(backend, [run])
    assert whole == _outcome(backend, split_run(run))
    return whole[0]


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_a_run_of_one_flow_joins_whole_in_one_pass_as_its_datagrams_would(backend):
    run = _run(backend, _segments(40, 1398, 5000, 700, psh=True))
    sent = _same_as_one_by_one(backend, run)
    assert len(sent) == 1 and sent[0][1] and sent[0][2] == 1398
    joined = IP(sent[0][0])
    assert joined.len == 20 + 32 + 39 * 1398 + 700 and joined[TCP].flags == "PA"
    joined, used = join_run(run, 0 if backend == "udp" else 22, verify=backend == "vxlan")
    assert used == 40 and bytes(joined) == sent[0][0] if backend == "vxlan" else used == 40


@settings(max_examples=300, deadline=None)
@given(backend=st.sampled_from(["udp", "vxlan"]), count=st.integers(2, 44), size=st.sampled_from([200, 1398]),
       seq=st.sampled_from([5000, 0xFFFFFFFF - 3000]), last=st.integers(1, 200), psh=st.booleans(),
       edits=st.lists(st.tuples(st.integers(0, 43), st.integers(0, 95), st.integers(0, 255)), max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 300)))
def test_any_run_gives_what_its_datagrams_give_one_by_one(backend, count, size, seq, last, psh, edits, cut):
    inner = _segments(count, size, seq, min(last, size), psh)
    wrapped = [bytearray(vxlan_payload(IP(p))) if backend == "vxlan" else bytearray(p) for p in inner]
    for index, at, value in edits:   # any header byte of any datagram, the outer ones included
        datagram = wrapped[index % count]
        datagram[at % len(datagram)] = value
    data = b"".join(wrapped)
    if cut is not None:
        data = data[:max(1, len(data) - cut)]   # a shorter last datagram, or fewer
    stride = len(wrapped[0])
    if stride >= len(data):
        return
    _same_as_one_by_one(backend, datagram_run(from_peer(2, b"", backend), data, stride))


def test_a_capture_of_the_underlay_sees_the_datagrams_of_a_run():
    run = _run("udp", _segments(3, 500, 1, 100, psh=False))
    assert datagrams([b"alone", run]) == [b"alone", *split_run(run)]
    assert [len(d) - 8 for d in split_run(run)] == [552, 552, 152]


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
@pytest.mark.parametrize("which", [1, 5, 9])   # a middle datagram, and the last
def test_every_header_byte_of_a_later_datagram_counts_as_its_datagrams_would(backend, which):
    inner = _segments(10, 600, 5000, 300, psh=False)
    wrapped = [vxlan_payload(IP(p)) if backend == "vxlan" else p for p in inner]
    headers = len(wrapped[0]) - 600
    for at in range(headers):
        for value in (0x00, 0x01, 0x19, 0x45, 0xFF):   # 0x19: FIN, PSH and ACK
            changed = bytearray(wrapped[which])
            if changed[at] == value:
                continue
            changed[at] = value
            data = b"".join([*wrapped[:which], bytes(changed), *wrapped[which + 1:]])
            _same_as_one_by_one(backend, datagram_run(from_peer(2, b"", backend), data, len(wrapped[0])))


@given(st.integers(68, 9000))
def test_a_super_frame_of_segments_per_send_leaves_in_one_udp_gso_send(mtu):
    count = segments_per_send(mtu)
    wrapped = mtu + VXLAN_OVERHEAD - UDP_OVERHEAD   # the largest datagram either backend makes of a packet
    assert 1 <= count <= GSO_MAX_SEGMENTS
    assert count * wrapped <= GSO_MAX_BYTES or count == 1
    assert count == GSO_MAX_SEGMENTS or (count + 1) * wrapped > GSO_MAX_BYTES   # and no fewer than fit
