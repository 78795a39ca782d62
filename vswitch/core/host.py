"""Simulated hosts for the demo and tests: a MAC and an IPv4 address that
answer ARP and ping, and can ping others.

:class:`Host` is pure (frames in, frames out, time passed in);
:class:`vswitch.shell.hosts.HostRunner` attaches one to a port with Trio.
"""

import ipaddress
from collections import deque

import attrs

from .wire import arp, ethernet, icmp, ipv4
from .wire.addr import BROADCAST_MAC, ZERO_MAC, ip_to_str, mac_to_str
from .wire.errors import WireError

PENDING_PER_ADDRESS = 16
ARP_RETRY = 1.0
MAX_EVENTS = 256


@attrs.frozen
class EchoReply:
    src: bytes
    ident: int
    seq: int
    at: float


@attrs.define
class HostStatistics:
    rx_frames: int = 0
    tx_frames: int = 0
    malformed: int = 0
    ignored: int = 0            # not for us, or a protocol we do not speak
    arp_requests: int = 0       # sent
    arp_replies: int = 0        # sent
    echo_requests: int = 0      # answered
    echo_replies: int = 0       # received
    unreachable: int = 0        # no route (off-link and no gateway)
    pending_dropped: int = 0


class Host:
    def __init__(
        self, name: str, mac: bytes, address: str | ipaddress.IPv4Interface, *,
        gateway: str | ipaddress.IPv4Address | None = None,
    ) -> None:
        """``address`` with its prefix length and ``gateway`` as written ("10.0.0.2/24") or as the config parses them."""
        self.name = name
        self.mac = mac
        self.interface = ipaddress.IPv4Interface(address)
        self.ip = self.interface.ip.packed
        self.gateway = ipaddress.IPv4Address(gateway).packed if gateway else None
        self.neighbours: dict[bytes, bytes] = {}
        self.events: deque[tuple[float, str]] = deque(maxlen=MAX_EVENTS)  # (time, text)
        self.stats = HostStatistics()
        self._pending: dict[bytes, deque[bytes]] = {}
        self._arp_sent: dict[bytes, float] = {}
        self._replies: list[EchoReply] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {mac_to_str(self.mac)} {self.interface}>"

    # -- receiving ------------------------------------------------------------

    def handle_frames(self, frames: list[bytes], now: float) -> list[bytes]:
        out: list[bytes] = []
        for frame in frames:
            self.stats.rx_frames += 1
            try:
                out += self._handle(frame, now)
            except WireError:
                self.stats.malformed += 1
        self.stats.tx_frames += len(out)
        return out

    def _handle(self, frame: bytes, now: float) -> list[bytes]:
        eth = ethernet.Ethernet.parse(frame)
        if eth.dst not in (self.mac, BROADCAST_MAC):
            self.stats.ignored += 1
            return []
        if eth.ethertype == ethernet.ETH_P_ARP:
            return self._handle_arp(arp.Arp.parse(frame, eth.payload_offset), now)
        if eth.ethertype == ethernet.ETH_P_IP:
            return self._handle_ip(frame, eth.payload_offset, now)
        self.stats.ignored += 1
        return []

    def _handle_arp(self, packet: arp.Arp, now: float) -> list[bytes]:
        for_us = packet.target_ip == self.ip
        if for_us or packet.sender_ip in self.neighbours:
            self._learn(packet.sender_ip, packet.sender_mac, now)
        out = self._flush_pending(packet.sender_ip) if packet.sender_ip in self.neighbours else []
        if packet.op == arp.OP_REQUEST and for_us:
            reply = arp.Arp(arp.OP_REPLY, self.mac, self.ip, packet.sender_mac, packet.sender_ip)
            self.stats.arp_replies += 1
            out.append(ethernet.build_ethernet(packet.sender_mac, self.mac, ethernet.ETH_P_ARP, reply.build()))
        elif not for_us:
            self.stats.ignored += 1
        return out

    def _handle_ip(self, frame: bytes, offset: int, now: float) -> list[bytes]:
        header = ipv4.Ipv4.parse(frame, offset)
        if header.dst != self.ip or header.proto != ipv4.PROTO_ICMP:
            self.stats.ignored += 1
            return []
        message = icmp.Icmp.parse(header.payload(frame))
        if message.type == icmp.ECHO_REQUEST:
            self.stats.echo_requests += 1
            reply = icmp.build_echo(message.ident, message.seq, message.body, reply=True)
            return self.send_ip(header.src, ipv4.PROTO_ICMP, reply, now)
        if message.type == icmp.ECHO_REPLY:
            self.stats.echo_replies += 1
            self._replies.append(EchoReply(header.src, message.ident, message.seq, now))
            return []
        self.stats.ignored += 1
        return []

    def take_replies(self) -> list[EchoReply]:
        """Echo replies received since the last call."""
        replies, self._replies = self._replies, []
        return replies

    # -- sending ------------------------------------------------------------

    def ping(self, dst: bytes, ident: int, seq: int, now: float, *, size: int = 56) -> list[bytes]:
        payload = bytes(i & 0xFF for i in range(size))
        return self.send_ip(dst, ipv4.PROTO_ICMP, icmp.build_echo(ident, seq, payload), now)

    def send_ip(self, dst: bytes, proto: int, payload: bytes, now: float) -> list[bytes]:
        packet = ipv4.build_ipv4(self.ip, dst, proto, payload)
        if ipaddress.IPv4Address(dst) in self.interface.network:
            next_hop = dst
        elif self.gateway is not None:
            next_hop = self.gateway
        else:
            self.stats.unreachable += 1
            self.events.append((now, f"{self.name}: no route to {ip_to_str(dst)}"))
            return []
        mac = self.neighbours.get(next_hop)
        if mac is not None:
            return [ethernet.build_ethernet(mac, self.mac, ethernet.ETH_P_IP, packet)]
        queue = self._pending.setdefault(next_hop, deque())
        if len(queue) >= PENDING_PER_ADDRESS:
            queue.popleft()
            self.stats.pending_dropped += 1
        queue.append(packet)
        last = self._arp_sent.get(next_hop)
        if last is not None and now - last < ARP_RETRY:
            return []
        self._arp_sent[next_hop] = now
        self.stats.arp_requests += 1
        self.events.append((now, f"{self.name}: who has {ip_to_str(next_hop)}? tell {ip_to_str(self.ip)}"))
        request = arp.Arp(arp.OP_REQUEST, self.mac, self.ip, ZERO_MAC, next_hop)
        return [ethernet.build_ethernet(BROADCAST_MAC, self.mac, ethernet.ETH_P_ARP, request.build())]

    def _learn(self, ip: bytes, mac: bytes, now: float) -> None:
        if self.neighbours.get(ip) != mac:
            self.neighbours[ip] = mac
            self.events.append((now, f"{self.name}: {ip_to_str(ip)} is at {mac_to_str(mac)}"))

    def _flush_pending(self, ip: bytes) -> list[bytes]:
        self._arp_sent.pop(ip, None)
        mac = self.neighbours[ip]
        queued = self._pending.pop(ip, ())
        return [ethernet.build_ethernet(mac, self.mac, ethernet.ETH_P_IP, p) for p in queued]
