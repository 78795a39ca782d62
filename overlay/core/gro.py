"""A UDP GRO run: a peer's datagrams the kernel joined into one read, taken apart in one pass.

With UDP GRO (:mod:`vswitch.shell.ports.udp`) one read brings up to 64 KB of
one peer's datagrams, back to back, each of one size but the last. When they
carry one TCP flow's segments, as they do for any bulk transfer, the segments
follow one another in the buffer at a fixed stride, and whether they form one
run of that flow (GRO's rules, as :func:`~vswitch.core.wire.offload.coalesce_tcp4`
applies them frame by frame) is a handful of whole-buffer operations:

* every header byte of the full datagrams but the IP identification and the
  two checksums must equal the first's, each sequence number the first's
  plus k MSS: one masked comparison of their headers as one integer;
* the last datagram, which may be shorter (and carry PSH), is checked alone.

So :func:`join_run` makes the super-frame with a few operations per run and
a slice per datagram, where taking the datagrams one by one costs a parse
and a comparison each; anything it does not take, :func:`split_run` gives
back as the datagrams they were.
"""

from collections.abc import Sequence

from vswitch.core.wire import ipv4, tcp
from vswitch.core.wire.ipv4 import PROTO_TCP, decrement_ttl
from vswitch.core.wire.offload import (
    GSO_TCPV4,
    SuperFrame,
    joined_headers,
    super_frame,
    tcp_sum_ok,
)

from .codec import UDP_OVERHEAD, VXLAN_FLAG_I, VXLAN_OVERHEAD

GSO_MAX_SEGMENTS = 64     # the kernel's UDP_MAX_SEGMENTS: datagrams in one UDP GSO send
GSO_MAX_BYTES = 65000     # payload in one UDP GSO send: below the 64 KiB of one IPv4 packet with its headers

_ACK, _ACK_PSH = 0x10, 0x18
# Before a VXLAN datagram's inner IPv4 packet (at 22): what no check reads (the flags but I, the reserved bytes,
# the inner source MAC), and the VNI, inner destination MAC and ethertype, which must be the first's.
_VXLAN_LOOSE = ((0, 4), (7, 8), (14, 20))
_VXLAN_SAME = ((4, 7), (8, 14), (20, 22))
_WITHOUT_I = bytes(0 if value & VXLAN_FLAG_I else 1 for value in range(256))   # translate: 0 where the I flag is set
_MAX_MASKS = 1024   # cached (where, headers, datagrams) shapes: a handful in practice


def segments_per_send(mtu: int) -> int:
    """The most segments a super-frame of packets of at most ``mtu`` bytes may have for the overlay to send it,
    wrapped for either backend, in one UDP GSO send, and for the peer to read it in one GRO read: the
    ``gso_max_segs`` of a container's device on an overlay node. Without it a 64 KB super-frame takes two sends,
    the second of a few datagrams, and so two reads, two joins and two writes at the peer."""
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // (mtu + VXLAN_OVERHEAD - UDP_OVERHEAD)))


class DatagramRun(bytes):
    """Datagrams from one peer that UDP GRO joined into one read, back to back, each ``size`` bytes but the
    last (which may be shorter), and the address ``header`` (:mod:`.codec`) they all arrived with.

    The underlay port hands one over as one frame; the overlay takes it in
    one pass when it can (:func:`join_run`), and otherwise as the datagrams
    :func:`split_run` gives, as if each had been read alone.
    """

    header: bytes
    size: int


def datagram_run(header: bytes, data: bytes, size: int) -> DatagramRun:
    run = DatagramRun(data)
    run.header = header
    run.size = size
    return run


def split_run(run: DatagramRun) -> list[bytes]:
    """The run's datagrams, each behind its address header."""
    header, size = run.header, run.size
    return [header + run[at:at + size] for at in range(0, len(run), size)]


def datagrams(frames: Sequence[bytes]) -> Sequence[bytes]:
    """``frames`` from the underlay with each run split into its datagrams (what a capture records, what an
    underlay without GSO sends); without a run among them, ``frames`` itself."""
    if not any(type(frame) is DatagramRun for frame in frames):
        return frames
    out: list[bytes] = []
    for frame in frames:
        if type(frame) is DatagramRun:
            out += split_run(frame)
        else:
            out.append(frame)
    return out


def join_run(run: DatagramRun, ip_at: int, verify: bool, start: int = 0, hop: bool = False
             ) -> tuple[SuperFrame | None, int]:
    """The longest run of one TCP flow's segments in order (GRO's rules) from datagram ``start`` on, as one
    super-frame (the bare IPv4 packet; each an IPv4 packet at ``ip_at``: after the VXLAN and inner Ethernet
    headers, or 0), and how many datagrams it took (two or more). (None, 1) when the datagram after
    ``start`` does not follow it; (None, 0) when none from ``start`` on could join here (another kind of
    packet, a sequence number about to wrap): take them one by one. With ``verify``, every segment's TCP
    checksum must be right (an inner checksum is all that protects a VXLAN datagram sent with none). With
    ``hop``, the super-frame's TTL is one less than the segments' (flannel's proxy takes a hop; the caller has
    checked the first's is above 1, and the others join only with the same).

    The first datagram's outer and IP headers are the caller's to check (the peer's subnet, the VNI): every
    other one joins only with the same bytes there.
    """
    size, length = run.size, len(run)
    count = -(-length // size)
    first_at = start * size
    tcp_at = ip_at + ipv4.MIN_HEADER_LEN
    if (count - start < 2 or size < tcp_at + tcp.MIN_HEADER_LEN or run[first_at + ip_at] != 0x45
            or run[first_at + ip_at + ipv4.PROTOCOL] != PROTO_TCP or run[first_at + ip_at + ipv4.FLAGS] & 0x3F
            or run[first_at + ip_at + ipv4.FLAGS + 1] or run[first_at + tcp_at + tcp.FLAGS] != _ACK
            or (run[first_at + ip_at + 2] << 8 | run[first_at + ip_at + 3]) != size - ip_at):
        return None, 0
    head = tcp_at + ((run[first_at + tcp_at + tcp.DATA_OFFSET] >> 4) << 2)   # where each datagram's payload starts
    mss = size - head
    last_at = (count - 1) * size
    seq_at = tcp_at + tcp.SEQ_NUM.start
    seq = int.from_bytes(run[first_at + seq_at:first_at + seq_at + 4], "big")
    if head < tcp_at + tcp.MIN_HEADER_LEN or mss <= 0 or length - last_at <= head or seq + (count - start) * mss > 0xFFFFFFFF:
        return None, 0   # a sequence number that may wrap inside the run is left to the datagram-by-datagram way
    first = run[first_at:first_at + head]
    # the full datagrams after the first: their headers as one integer, compared at once, masked, with the first's
    # repeated (each sequence number k MSS on); the first that differs ends the run, or may be its last
    full = count - 1 - start
    following = full
    if full:
        mask_one, mask, repeat, ramp = _masks(ip_at, head, full)
        headers = int.from_bytes(b"".join([run[at:at + head] for at in range(first_at, last_at, size)]), "big")
        differ = (headers & mask) ^ ((int.from_bytes(first, "big") & mask_one) * repeat + mss * ramp)
        if differ:
            following = full - 1 - (differ.bit_length() - 1) // (8 * head)   # the first that differs, from ``start``
        if ip_at:   # and VXLAN's I flag, in each
            without = run[first_at + size:last_at:size].translate(_WITHOUT_I).find(1)
            if without >= 0:
                following = min(following, without + 1)   # datagrams from ``start``: the slice began after it
    # the datagram that ends it: the same headers but for the IP length, identification and checksum, the
    # sequence number (which follows), PSH and the TCP checksum, and no more payload than the others
    end_at = first_at + following * size
    end = run[end_at:end_at + head]
    flags = end[tcp_at + tcp.FLAGS] if len(end) == head else 0
    total = end[ip_at + 2] << 8 | end[ip_at + 3] if len(end) == head else 0
    payload = total - (head - ip_at)
    used = following + 1
    if (len(end) < head or not _same_outer(end, first, ip_at) or end[ip_at:ip_at + 2] != first[ip_at:ip_at + 2]
            or end[ip_at + 6:ip_at + 10] != first[ip_at + 6:ip_at + 10]
            or end[ip_at + 12:seq_at] != first[ip_at + 12:seq_at]
            or end[seq_at + 4:tcp_at + tcp.FLAGS] != first[seq_at + 4:tcp_at + tcp.FLAGS]
            or end[tcp_at + tcp.WINDOW.start:tcp_at + tcp.CHECKSUM.start] != first[tcp_at + tcp.WINDOW.start:tcp_at + tcp.CHECKSUM.start]
            or end[tcp_at + tcp.URGENT.start:head] != first[tcp_at + tcp.URGENT.start:head]
            or flags not in (_ACK, _ACK_PSH) or not 0 < payload <= mss or end_at + ip_at + total > min(length, end_at + size)
            or int.from_bytes(end[seq_at:seq_at + 4], "big") != seq + following * mss):
        used = following   # it does not follow: the run ends before it, with a full one
        payload = mss
        flags = _ACK
        total = size - ip_at
    if used < 2:
        return None, 1
    stop_at = first_at + (used - 1) * size   # the last datagram taken
    if verify:
        addresses = ip_at + ipv4.SRC.start
        for at in range(first_at, stop_at, size):
            if not tcp_sum_ok(run, at + addresses, at + size):
                return None, 0
        if not tcp_sum_ok(run, stop_at + addresses, stop_at + ip_at + total):
            return None, 0
    # one super-frame: the first's headers with the whole length, PSH from the last, the partial checksum
    ip_length = head - ip_at + (used - 1) * mss + payload
    if ip_length > 0xFFFF:
        return None, 0   # more than one IPv4 packet holds
    ip_header = first[ip_at:tcp_at]
    if hop:
        ip_header = decrement_ttl(ip_header)   # its checksum is made again below
    headers = joined_headers(ip_header, first[tcp_at:head], ip_length, flags)
    view = memoryview(run)
    pieces = [view[at + head:at + size] for at in range(first_at, stop_at, size)]
    joined = b"".join((headers, *pieces, view[stop_at + head:stop_at + head + payload]))
    return super_frame(joined, GSO_TCPV4, mss), used


def _same_outer(datagram: bytes, first: bytes, ip_at: int) -> bool:
    """Whether ``datagram`` has the VXLAN header and inner Ethernet header the first has, as far as the checks
    read them (none before flannel's udp packets)."""
    if not ip_at:
        return True
    return bool(datagram[0] & VXLAN_FLAG_I) and all(datagram[a:b] == first[a:b] for a, b in _VXLAN_SAME)


_shapes: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}


def _masks(ip_at: int, head: int, count: int) -> tuple[int, int, int, int]:
    """For ``count`` datagram headers of ``head`` bytes joined as one integer: the mask of one header's bytes
    that must be equal (all but the IP identification and checksum and the TCP checksum), that mask for all
    of them, the multiplier that repeats one header in every place, and the ramp that adds k MSS to the k-th
    sequence number (the first header is the most significant)."""
    shape = (ip_at, head, count)
    found = _shapes.get(shape)
    if found is not None:
        return found
    tcp_at = ip_at + ipv4.MIN_HEADER_LEN
    one = bytearray(b"\xff" * head)
    for start, stop in ((ip_at + ipv4.IDENT.start, ip_at + ipv4.IDENT.stop),
                        (ip_at + ipv4.CHECKSUM.start, ip_at + ipv4.CHECKSUM.stop),
                        (tcp_at + tcp.CHECKSUM.start, tcp_at + tcp.CHECKSUM.stop),
                        *(_VXLAN_LOOSE if ip_at else ())):
        one[start:stop] = bytes(stop - start)
    mask_one = int.from_bytes(one, "big")
    bits = 8 * head
    repeat = sum(1 << (bits * k) for k in range(count))
    seq_shift = 8 * (head - (tcp_at + tcp.SEQ_NUM.stop))   # the sequence number's place in one header
    ramp = sum((count - 1 - k) << (bits * k + seq_shift) for k in range(count))
    if len(_shapes) >= _MAX_MASKS:
        _shapes.clear()
    found = _shapes[shape] = (mask_one, mask_one * repeat, repeat, ramp)
    return found
