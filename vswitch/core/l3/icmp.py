"""ICMP errors: when one may be sent, how many, what it is called, and the packet itself. Pure, time passed in.

One policy for every sender of errors, the router and the overlay in front
of a flannel device. RFC 1812 (4.3.2.7) and Linux: never an error about an
ICMP error, about a fragment after the first, about a packet from a
multicast, broadcast or unspecified source, or about one to a multicast or
broadcast address. Then Linux's rate limits: a global token bucket
(``icmp_msgs_per_sec``, ``icmp_msgs_burst``), and where the sender keeps one
(the router does) a bucket per destination (``icmp_ratelimit``, after a
burst of ``XRLIM_BURST_FACTOR``). Fragmentation needed is exempt from both,
as Linux exempts it, so path MTU discovery is never starved.
"""

from collections import OrderedDict

from vswitch.core.wire import icmp, ipv4

ICMP_RATE = 1000.0           # ICMP errors per second, overall (Linux icmp_msgs_per_sec) ...
ICMP_BURST = 50.0            # ... with this burst (icmp_msgs_burst)
ICMP_PEER_INTERVAL = 1.0     # and one per second per destination (icmp_ratelimit) ...
ICMP_PEER_BURST = 6.0        # ... after a burst of six (XRLIM_BURST_FACTOR)
ICMP_PEERS = 1024            # destinations remembered by the per-destination limit
ERROR_TTL = 64
_ZERO_IP = b"\0\0\0\0"

_NAMES = {
    (icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE): "net-unreachable",
    (icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE): "host-unreachable",
    (icmp.DEST_UNREACHABLE, 2): "protocol-unreachable",
    (icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE): "port-unreachable",
    (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED): "fragmentation-needed",
    (icmp.TIME_EXCEEDED, 0): "time-exceeded",
}


def error_name(type_: int, code: int) -> str:
    """The name an error is counted under in ``icmp_sent``."""
    return _NAMES.get((type_, code), f"icmp-{type_}-{code}")


def may_report(packet: bytes) -> bool:
    """Whether RFC 1812 allows an ICMP error about the IPv4 ``packet`` (a sound header of 20 bytes or more)."""
    if int.from_bytes(packet[ipv4.FRAGMENT], "big") & ipv4.OFFSET_MASK:
        return False   # a fragment after the first
    src = packet[ipv4.SRC]
    if src[0] >= 224 or src == _ZERO_IP or packet[ipv4.DST][0] >= 224:
        return False   # from or to a multicast or broadcast address (class D and E), or from nobody
    ihl = (packet[ipv4.VER_IHL] & 0x0F) * 4
    return not (packet[ipv4.PROTOCOL] == ipv4.PROTO_ICMP and len(packet) > ihl
                and packet[ihl + icmp.TYPE] in icmp.ERROR_TYPES)


def error_packet(
    source: bytes, packet: bytes, type_: int, code: int, *, mtu: int = 0, ident: int = 0, tos: int = 0,
) -> bytes:
    """The ICMP error about ``packet`` from ``source`` to ``packet``'s sender, quoting its header and 8 bytes."""
    body = icmp.build_error(type_, code, packet, mtu=mtu)
    return ipv4.build_ipv4(
        source, packet[ipv4.SRC], ipv4.PROTO_ICMP, body, ttl=ERROR_TTL, ident=ident, tos=tos, flags_offset=0,
    )


class TokenBucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ErrorPolicy:
    """Whether an error may go now: :func:`may_report`, then the rate limits, per destination if asked.

    ``rate_limited`` counts the errors the limits held back (not those RFC 1812 forbids).
    """

    def __init__(self, *, per_destination: bool) -> None:
        self.rate_limited = 0
        self._bucket = TokenBucket(ICMP_BURST, float("-inf"))
        self._per_destination = per_destination
        self._peers: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def permits(self, packet: bytes, type_: int, code: int, now: float) -> bool:
        if not may_report(packet):
            return False
        if type_ == icmp.DEST_UNREACHABLE and code == icmp.FRAGMENTATION_NEEDED:
            return True
        if self._allowed(packet[ipv4.SRC], now):
            return True
        self.rate_limited += 1
        return False

    def _allowed(self, dst: bytes, now: float) -> bool:
        """Linux's order: the global bucket first, then the destination's."""
        if not self._bucket.take(now, ICMP_RATE, ICMP_BURST):
            return False
        if not self._per_destination:
            return True
        peers = self._peers
        bucket = peers.get(dst)
        if bucket is None:
            bucket = peers[dst] = TokenBucket(ICMP_PEER_BURST, now)
            if len(peers) > ICMP_PEERS:
                peers.popitem(last=False)
        else:
            peers.move_to_end(dst)
        return bucket.take(now, 1.0 / ICMP_PEER_INTERVAL, ICMP_PEER_BURST)
