"""The NAT core: scapy builds the packets and checks what comes out, a fake router answers routing
questions, and the clock is a number passed in."""

import random
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPerror,
    IPOption_Router_Alert,
    Raw,
    TCPerror,
    UDPerror,
    checksum,
    defragment,
    fragment,
    in4_chksum,
    raw,
)

from vswitch.core import nat as nat_module
from vswitch.core.actions import DropReason
from vswitch.core.nat import (
    Forward,
    Masquerade,
    Nat,
    State,
    Timeouts,
    describe,
    invert,
    make_key,
)
from vswitch.core.nat import mapping as nat_mapping
from vswitch.core.wire import ip_from_str, ip_to_str
from vswitch.core.wire.addr import Network

LAN_ADDR, A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"   # inside
WAN_ADDR, UPSTREAM = "192.0.2.1", "192.0.2.254"                      # the masquerading side
DMZ_ADDR, DMZ_HOST = "172.16.0.1", "172.16.0.5"                      # routed, never masqueraded
POD_ELSEWHERE = "10.244.1.5"                                         # cluster: out through wan, excluded
S, T, X = "198.51.100.7", "198.51.100.8", "203.0.113.9"              # outside: two servers, a stranger

MASQ = Masquerade(Network.parse("10.0.0.0/24"), "wan", exclude=(Network.parse("10.244.0.0/16"),))
TIMEOUTS = Timeouts()


class FakeRouting:
    """Three interfaces, the cluster network and a default route through wan."""

    def __init__(self) -> None:
        self.addresses = {"lan": ip_from_str(LAN_ADDR), "wan": ip_from_str(WAN_ADDR), "dmz": ip_from_str(DMZ_ADDR)}
        self.routes = [
            (Network.parse("10.0.0.0/24"), "lan"),
            (Network.parse("192.0.2.0/24"), "wan"),
            (Network.parse("172.16.0.0/24"), "dmz"),
            (Network.parse("10.244.0.0/16"), "wan"),
            (Network.parse("0.0.0.0/0"), "wan"),
        ]

    def route_interface(self, dst: bytes) -> str | None:
        matches = [(net.prefix_len, name) for net, name in self.routes if dst in net]
        return max(matches)[1] if matches else None

    def local_interface(self, ip: bytes) -> str | None:
        return next((name for name, address in self.addresses.items() if address == ip), None)

    def interface_address(self, name: str) -> bytes | None:
        return self.addresses.get(name)


def make_nat(**kwargs) -> Nat:
    kwargs.setdefault("masquerade", (MASQ,))
    kwargs.setdefault("rng", random.Random(7))
    return Nat(FakeRouting(), **kwargs)


# -- packets ------------------------------------------------------------------------


def tcp(src: str, sport: int, dst: str, dport: int, flags: str = "S", payload: bytes = b"", *, df: bool = False) -> bytes:
    ip = IP(src=src, dst=dst, flags="DF" if df else 0)
    return raw(ip / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0) / payload)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"query", *, zero_checksum: bool = False) -> bytes:
    packet = IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload
    if zero_checksum:
        packet[UDP].chksum = 0
    return raw(packet)


def ping(src: str, dst: str, ident: int, *, reply: bool = False, seq: int = 1) -> bytes:
    return raw(IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=ident, seq=seq) / b"abcdefgh")


def icmp_error(src: str, dst: str, about: bytes, *, type_: int = 3, code: int = 3, mtu: int = 0) -> bytes:
    message = ICMP(type=type_, code=code, nexthopmtu=mtu) if mtu else ICMP(type=type_, code=code)
    return raw(IP(src=src, dst=dst) / message / about)


def checked(packet: bytes) -> IP:
    """Parse with scapy and verify every checksum with scapy's own arithmetic.

    The sums are taken over the bytes (scapy's dissection of a payload is never
    rebuilt). A TCP or ICMP checksum of 0xFFFF verifies but is never what a
    sender computes, so it counts as wrong; a zero UDP checksum means none.
    """
    pkt = IP(packet)
    ihl = pkt.ihl * 4
    assert pkt.len == len(packet)
    assert checksum(packet[:ihl]) == 0, "IP checksum"
    if pkt.frag or pkt.flags.MF:
        return pkt   # the transport checksum covers the whole datagram: check it reassembled
    body = packet[ihl:]
    if pkt.proto in (nat_module.TCP, nat_module.UDP):
        field = int.from_bytes(body[16:18] if pkt.proto == nat_module.TCP else body[6:8], "big")
        if pkt.proto == nat_module.TCP or field:
            assert in4_chksum(pkt.proto, pkt, body) == 0, "transport checksum"
        assert pkt.proto == nat_module.UDP or field != 0xFFFF, "TCP checksum -0"
    elif pkt.proto == nat_module.ICMP:
        assert checksum(body) == 0 and body[2:4] != b"\xff\xff", "ICMP checksum"
        if pkt[ICMP].type in (3, 4, 5, 11, 12):
            inner_ihl = (body[8] & 0x0F) * 4
            assert checksum(body[8:8 + inner_ihl]) == 0, "quoted IP checksum"
    return pkt


def data(pkt: IP) -> bytes:
    """What follows the transport header, as bytes (scapy may dissect it as DNS, HTTP ...)."""
    l4 = pkt.ihl * 4
    return pkt.original[l4 + (pkt[TCP].dataofs * 4 if pkt.proto == nat_module.TCP else 8):]


def run(nat: Nat, packet: bytes, iface: str, now: float) -> IP:
    verdict = nat.process(packet, iface, now)
    assert verdict.drop is None and verdict.packet is not None
    return checked(verdict.packet)


def only_connection(nat: Nat):
    (conn,) = list(nat.connections())
    return conn


# -- masquerade --------------------------------------------------------------------------


def test_masquerades_tcp_and_translates_the_answer_back():
    nat = make_nat()
    out = run(nat, tcp(A, 40000, S, 80, "S", b"hello"), "lan", 0.0)
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (WAN_ADDR, 40000, S, 80)
    assert data(out) == b"hello"
    back = run(nat, tcp(S, 80, WAN_ADDR, 40000, "SA"), "wan", 1.0)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (S, 80, A, 40000)
    conn = only_connection(nat)
    assert conn.kind == "snat" and conn.packets == [1, 1]
    assert describe(conn.orig) == {"protocol": "tcp", "src": A, "sport": 40000, "dst": S, "dport": 80}
    assert describe(conn.reply) == {"protocol": "tcp", "src": S, "sport": 80, "dst": WAN_ADDR, "dport": 40000}


@pytest.mark.parametrize("zero", [False, True], ids=["checksum", "no-checksum"])
def test_masquerades_udp_and_keeps_a_zero_checksum_zero(zero):
    nat = make_nat()
    out = run(nat, udp(A, 5353, S, 53, zero_checksum=zero), "lan", 0.0)
    assert (out.src, out[UDP].sport, out.dst, out[UDP].dport) == (WAN_ADDR, 5353, S, 53)
    assert (out[UDP].chksum == 0) == zero
    back = run(nat, udp(S, 53, WAN_ADDR, 5353, b"answer", zero_checksum=zero), "wan", 1.0)
    assert (back.src, back.dst, back[UDP].dport, data(back)) == (S, A, 5353, b"answer")
    assert (back[UDP].chksum == 0) == zero


def test_a_udp_checksum_that_comes_out_zero_is_sent_as_all_ones():
    # choose two payload bytes so that the translated datagram's checksum computes to zero
    translated = IP(src=WAN_ADDR, dst=S) / UDP(sport=5353, dport=53)
    word = IP(raw(translated / b"\0\0"))[UDP].chksum
    assert IP(raw(translated / word.to_bytes(2, "big")))[UDP].chksum == 0xFFFF   # scapy does the same
    nat = make_nat()
    out = run(nat, udp(A, 5353, S, 53, word.to_bytes(2, "big")), "lan", 0.0)
    assert out[UDP].chksum == 0xFFFF


def test_masquerades_icmp_echo_by_identifier():
    nat = make_nat()
    out = run(nat, ping(A, S, 0x4242), "lan", 0.0)
    assert (out.src, out.dst, out[ICMP].type, out[ICMP].id) == (WAN_ADDR, S, 8, 0x4242)
    back = run(nat, ping(S, WAN_ADDR, 0x4242, reply=True), "wan", 1.0)
    assert (back.src, back.dst, back[ICMP].type, back[ICMP].id, back[ICMP].seq) == (S, A, 0, 0x4242, 1)


def test_no_translation_towards_excluded_networks():
    nat = make_nat()
    packet = tcp(A, 40000, POD_ELSEWHERE, 80)
    assert nat.process(packet, "lan", 0.0).packet == packet
    assert len(nat) == 0


def test_no_translation_out_of_another_interface():
    nat = make_nat()
    packet = udp(A, 5353, DMZ_HOST, 53)
    assert nat.process(packet, "lan", 0.0).packet == packet
    assert len(nat) == 0


def test_traffic_for_the_router_itself_is_left_alone():
    nat = make_nat()
    for packet in (tcp(A, 40000, WAN_ADDR, 22), ping(A, WAN_ADDR, 9), tcp(X, 40000, WAN_ADDR, 22)):
        assert nat.process(packet, "wan" if packet[12:16] == ip_from_str(X) else "lan", 0.0).packet == packet
    assert len(nat) == 0


def test_sources_outside_the_rule_are_not_masqueraded():
    nat = make_nat()
    packet = udp(DMZ_HOST, 5353, S, 53)
    assert nat.process(packet, "dmz", 0.0).packet == packet


# -- mappings ---------------------------------------------------------------------


def test_headers_with_ip_options_are_translated_at_the_right_offsets():
    nat = make_nat()
    run(nat, udp(B, 5353, T, 53), "lan", 0.0)
    sent = raw(IP(src=A, dst=S, options=[IPOption_Router_Alert()]) / UDP(sport=5353, dport=53) / b"with options")
    out = run(nat, sent, "lan", 1.0)
    assert out.ihl == 6 and out.src == WAN_ADDR and out[UDP].sport not in (5353, 0)
    assert data(out) == b"with options"
    answer = raw(IP(src=S, dst=WAN_ADDR, options=[IPOption_Router_Alert()]) / UDP(sport=53, dport=out[UDP].sport))
    back = run(nat, answer, "wan", 2.0)
    assert (back.dst, back[UDP].dport) == (A, 5353)
    error = run(nat, raw(IP(src=S, dst=WAN_ADDR, options=[IPOption_Router_Alert()]) / ICMP(type=3, code=3) / out.original),
                "wan", 3.0)
    assert error.dst == A and quoted(error) == sent


def test_port_is_preserved_when_free_and_a_second_host_gets_a_random_one():
    nat = make_nat(rng=random.Random(1))
    first = run(nat, udp(A, 5000, S, 53), "lan", 0.0)
    second = run(nat, udp(B, 5000, S, 53), "lan", 0.0)
    assert first[UDP].sport == 5000
    port = second[UDP].sport
    assert port != 5000 and 1024 <= port <= 65535
    # answers reach the right host
    assert run(nat, udp(S, 53, WAN_ADDR, 5000), "wan", 1.0).dst == A
    back = run(nat, udp(S, 53, WAN_ADDR, port), "wan", 1.0)
    assert (back.dst, back[UDP].dport) == (B, 5000)
    # the choice is the seeded generator's
    again = make_nat(rng=random.Random(1))
    run(again, udp(A, 5000, S, 53), "lan", 0.0)
    assert run(again, udp(B, 5000, S, 53), "lan", 0.0)[UDP].sport == port


def test_a_second_host_with_the_same_echo_identifier_gets_another():
    nat = make_nat()
    run(nat, ping(A, S, 7), "lan", 0.0)
    other = run(nat, ping(B, S, 7), "lan", 0.0)[ICMP].id
    assert other != 7
    back = run(nat, ping(S, WAN_ADDR, other, reply=True), "wan", 1.0)
    assert (back.dst, back[ICMP].id) == (B, 7)
    assert run(nat, ping(S, WAN_ADDR, 7, reply=True), "wan", 1.0).dst == A


def test_mapping_is_endpoint_independent():
    nat = make_nat()
    run(nat, udp(B, 5000, S, 53), "lan", 0.0)                  # B takes 5000
    first = run(nat, udp(A, 5000, S, 53), "lan", 0.0)[UDP].sport
    second = run(nat, udp(A, 5000, T, 123), "lan", 0.0)[UDP].sport
    assert first == second != 5000
    assert nat.statistics().mappings == 2
    assert run(nat, udp(T, 123, WAN_ADDR, first), "wan", 1.0).dst == A


def test_mapping_ends_with_its_last_connection():
    nat = make_nat()
    run(nat, udp(A, 5000, S, 53), "lan", 0.0)
    run(nat, udp(A, 5000, T, 53), "lan", 20.0)
    nat.handle_timer(30.0)
    assert len(nat) == 1 and nat.statistics().mappings == 1
    nat.handle_timer(50.0)
    assert len(nat) == 0 and nat.statistics().mappings == 0
    # the port is free again: B now keeps it
    assert run(nat, udp(B, 5000, S, 53), "lan", 51.0)[UDP].sport == 5000


def test_filtering_lets_only_answers_in():
    nat = make_nat()
    run(nat, udp(A, 5000, S, 53), "lan", 0.0)
    for stranger in (udp(X, 53, WAN_ADDR, 5000), udp(S, 54, WAN_ADDR, 5000), tcp(S, 53, WAN_ADDR, 5000)):
        verdict = nat.process(stranger, "wan", 1.0)
        assert verdict.packet == stranger   # still addressed to the router, which refuses it
    assert len(nat) == 1 and nat.statistics().hairpinned == 0


def test_forwarded_ports_are_never_handed_out():
    nat = make_nat(forwards=(Forward(nat_module.TCP, 8080, ip_from_str(B), 80),))
    assert run(nat, tcp(A, 8080, S, 80), "lan", 0.0)[TCP].sport != 8080
    assert run(nat, udp(A, 8080, S, 53), "lan", 0.0)[UDP].sport == 8080   # another protocol


def test_port_exhaustion(monkeypatch):
    monkeypatch.setattr(nat_mapping, "PORT_RANGE", (2000, 2003))
    nat = make_nat()
    hosts = [f"10.0.0.{i}" for i in range(2, 7)]
    ports = [run(nat, udp(h, 2000, S, 53), "lan", 0.0)[UDP].sport for h in hosts[:4]]
    assert ports[0] == 2000 and sorted(ports) == [2000, 2001, 2002, 2003]
    assert nat.process(udp(hosts[4], 2000, S, 53), "lan", 1.0) == nat_module.Verdict(None, DropReason.NAT_NO_PORT)
    assert len(nat) == 4
    nat.handle_timer(30.0)
    assert run(nat, udp(hosts[4], 2000, S, 53), "lan", 30.0)[UDP].sport == 2000


class CountingRandom(random.Random):
    """A seeded generator that counts the numbers it is asked for."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def randrange(self, *args, **kwargs):
        self.draws += 1
        return super().randrange(*args, **kwargs)

    def randint(self, *args, **kwargs):
        self.draws += 1
        return super().randint(*args, **kwargs)


def test_a_taken_port_costs_one_random_draw_and_an_exhausted_address_none(monkeypatch):
    """However full the address: one draw when the port is taken, none when none is left (no probing, no scan)."""
    monkeypatch.setattr(nat_mapping, "PORT_RANGE", (2000, 2063))
    rng = CountingRandom(3)
    nat = make_nat(rng=rng)
    hosts = [f"10.0.{i // 250}.{2 + i % 250}" for i in range(65)]
    nat.masquerade = (Masquerade(Network.parse("10.0.0.0/16"), "wan"),)
    ports = []
    for i, host in enumerate(hosts[:64]):
        before = rng.draws
        ports.append(run(nat, udp(host, 2000, S, 53), "lan", 0.0)[UDP].sport)
        assert rng.draws - before == (0 if i == 0 else 1)
    assert sorted(ports) == list(range(2000, 2064))
    before = rng.draws
    refused = nat.process(udp(hosts[64], 2000, S, 53), "lan", 1.0)
    assert (refused.drop, rng.draws) == (DropReason.NAT_NO_PORT, before)


def test_random_ports_are_uniform_over_the_free_ones(monkeypatch):
    monkeypatch.setattr(nat_mapping, "PORT_RANGE", (2000, 2007))
    kept = [udp(A, port, S, 53) for port in (2000, 2002, 2004)]   # A keeps three ports
    contended = udp(B, 2000, S, 53)
    chosen = []
    for seed in range(400):
        nat = make_nat(rng=random.Random(seed))
        for packet in kept:
            nat.process(packet, "lan", 0.0)
        chosen.append(int.from_bytes(nat.process(contended, "lan", 0.0).packet[20:22], "big"))
    counts = {port: chosen.count(port) for port in set(chosen)}
    assert set(counts) == {2001, 2003, 2005, 2006, 2007}       # only free ports, every one of them
    assert all(50 <= n <= 110 for n in counts.values()), counts   # 80 each expected; 50..110 is > 3 sigma


def test_forwarded_ports_are_never_chosen_at_random(monkeypatch):
    monkeypatch.setattr(nat_mapping, "PORT_RANGE", (2000, 2003))
    nat = make_nat(forwards=(Forward(nat_module.UDP, 2001, ip_from_str(B), 53),))
    hosts = [f"10.0.0.{i}" for i in range(10, 14)]
    ports = [run(nat, udp(h, 2001, S, 53), "lan", 0.0)[UDP].sport for h in hosts[:3]]   # never preserved
    assert sorted(ports) == [2000, 2002, 2003]
    assert nat.process(udp(hosts[3], 2001, S, 53), "lan", 0.0).drop is DropReason.NAT_NO_PORT


def test_ports_chosen_at_random_come_back_when_their_mappings_expire(monkeypatch):
    monkeypatch.setattr(nat_mapping, "PORT_RANGE", (2000, 2001))
    nat = make_nat()
    run(nat, udp(A, 2000, S, 53), "lan", 0.0)
    assert run(nat, udp(B, 2000, S, 53), "lan", 0.0)[UDP].sport == 2001   # the one left
    assert nat.process(udp(C, 2000, S, 53), "lan", 1.0).drop is DropReason.NAT_NO_PORT
    nat.handle_timer(30.0)
    ports = [run(nat, udp(h, 2000, S, 53), "lan", 31.0)[UDP].sport for h in (C, "10.0.0.9")]
    assert sorted(ports) == [2000, 2001]


def test_port_pool_hands_out_every_port_of_the_range_once():
    pool = nat_mapping.PortPool(*nat_mapping.PORT_RANGE, reserved=frozenset({80, 8080}))
    rng = random.Random(5)
    ports = [pool.take_random(rng) for _ in range(64_511)]
    assert sorted(ports) == [p for p in range(1024, 65536) if p != 8080]
    assert len(pool) == 0 and pool.take_random(rng) is None
    assert not pool.take(80) and pool.take(22) and not pool.take(22)   # below the range: only preserved
    pool.give_back(40000)
    assert pool.take_random(rng) == 40000
    with pytest.raises(ValueError):
        pool.give_back(8080)                                   # reserved: never taken
    with pytest.raises(ValueError):
        pool.give_back(23)                                     # free


@given(
    low=st.integers(0, 40), span=st.integers(1, 12), reserved=st.frozensets(st.integers(0, 60), max_size=6),
    ops=st.lists(st.tuples(st.sampled_from(["take", "random", "give"]), st.integers(0, 60)), max_size=80),
    seed=st.integers(0, 2**16),
)
def test_port_pool_against_a_model(low, span, reserved, ops, seed):
    """A set of taken ports is the model: the pool never hands out a taken or reserved port and never loses one."""
    high = low + span - 1
    pool = nat_mapping.PortPool(low, high, reserved)
    rng = random.Random(seed)
    taken: set[int] = set()

    def free(port: int) -> bool:
        return port not in taken and port not in reserved

    for op, port in ops:
        if op == "take":
            expected = free(port)
            assert pool.take(port) == expected
            if expected:
                taken.add(port)
        elif op == "random":
            got = pool.take_random(rng)
            if not any(free(p) for p in range(low, high + 1)):
                assert got is None
            else:
                assert got is not None and low <= got <= high and free(got)
                taken.add(got)
        elif taken:
            back = sorted(taken)[port % len(taken)]
            pool.give_back(back)
            taken.discard(back)
        assert len(pool) == sum(free(p) for p in range(low, high + 1))
        assert all(pool.is_free(p) == free(p) for p in range(0, 61))


_OPENINGS = {(host, sport, proto): (udp if proto == "udp" else tcp)(f"10.0.0.{10 + host}", sport, S, 53)
             for host in range(6) for sport in (2000, 2001, 2002, 5000) for proto in ("udp", "tcp")}


@given(
    steps=st.lists(st.tuples(st.integers(0, 5), st.sampled_from([2000, 2001, 2002, 5000]), st.sampled_from(["udp", "tcp"]),
                             st.sampled_from([0.0, 0.0, 10.0, 40.0])), max_size=40),
    seed=st.integers(0, 2**16),
)
def test_mappings_never_share_a_port_and_none_is_lost(steps, seed):
    """Connections come and go at random on a four-port range with one port forwarded; each live mapping holds
    its own port, never the forwarded one, and once everything expires all three others can be taken again."""
    with patch.object(nat_mapping, "PORT_RANGE", (2000, 2003)):
        nat = make_nat(rng=random.Random(seed), forwards=(Forward(nat_module.UDP, 2002, ip_from_str(B), 53),
                                                           Forward(nat_module.TCP, 2002, ip_from_str(B), 53)))
        now = 0.0
        for host, sport, proto, wait in steps:
            now += wait
            nat.handle_timer(now)
            verdict = nat.process(_OPENINGS[host, sport, proto], "lan", now)
            assert verdict.drop in (None, DropReason.NAT_NO_PORT)
            mappings = {id(c.mapping): c.mapping for c in nat.connections()}.values()
            external = [(m.protocol, m.external) for m in mappings]
            assert len(external) == len(set(external)) == nat.statistics().mappings
            assert all(int.from_bytes(e[4:6], "big") != 2002 for _, e in external)
        nat.handle_timer(now + TIMEOUTS.tcp_syn_sent)
        assert len(nat) == 0 and nat.statistics().mappings == 0
        for proto in (udp, tcp):
            ports = [checked(nat.process(proto(f"10.0.0.{20 + i}", 2002, S, 53), "lan", now + 200).packet).sport
                     for i in range(3)]
            assert sorted(ports) == [2000, 2001, 2003]


# -- hairpinning -----------------------------------------------------------------------


def test_hairpin_to_another_inside_hosts_mapping():
    nat = make_nat()
    run(nat, udp(A, 5000, S, 53), "lan", 0.0)                  # A's mapping: WAN_ADDR:5000
    run(nat, udp(B, 6000, T, 53), "lan", 0.0)                  # B's mapping: WAN_ADDR:6000
    there = run(nat, udp(B, 6000, WAN_ADDR, 5000, b"hi A"), "lan", 1.0)
    assert (there.src, there[UDP].sport, there.dst, there[UDP].dport) == (WAN_ADDR, 6000, A, 5000)
    assert data(there) == b"hi A"
    back = run(nat, udp(A, 5000, WAN_ADDR, 6000, b"hi B"), "lan", 2.0)
    assert (back.src, back[UDP].sport, back.dst, back[UDP].dport) == (WAN_ADDR, 5000, B, 6000)
    stats = nat.statistics()
    assert stats.hairpinned == 1 and stats.connections == 3 and stats.mappings == 2
    hairpin = next(c for c in nat.connections() if c.kind == "dnat+snat")
    assert hairpin.state is State.REPLIED


def test_hairpin_tcp_gets_the_source_its_own_mapping():
    nat = make_nat()
    run(nat, tcp(A, 443, S, 443, "S"), "lan", 0.0)
    there = run(nat, tcp(B, 50000, WAN_ADDR, 443, "S"), "lan", 1.0)
    assert (there.src, there[TCP].sport, there.dst, there[TCP].dport) == (WAN_ADDR, 50000, A, 443)
    back = run(nat, tcp(A, 443, WAN_ADDR, 50000, "SA"), "lan", 1.0)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (WAN_ADDR, 443, B, 50000)


# -- port forwarding ------------------------------------------------------------------------

WEB = Forward(nat_module.TCP, 8080, ip_from_str(B), 80)
DNS = Forward(nat_module.UDP, 5353, ip_from_str(C), 53)
SSH_WAN_ONLY = Forward(nat_module.TCP, 2222, ip_from_str(B), 22, interface="wan")


@pytest.mark.parametrize(("build", "rule"), [(tcp, WEB), (udp, DNS)], ids=["tcp", "udp"])
def test_forward_rewrites_the_destination_and_the_answer_source(build, rule):
    nat = make_nat(forwards=(WEB, DNS))
    layer = TCP if build is tcp else UDP
    inside = ip_to_str(rule.to)
    there = run(nat, build(X, 40000, WAN_ADDR, rule.port), "wan", 0.0)
    assert (there.src, there[layer].sport, there.dst, there[layer].dport) == (X, 40000, inside, rule.to_port)
    back = run(nat, build(inside, rule.to_port, X, 40000, **({"flags": "SA"} if build is tcp else {})), "lan", 1.0)
    assert (back.src, back[layer].sport, back.dst, back[layer].dport) == (WAN_ADDR, rule.port, X, 40000)
    assert only_connection(nat).kind == "dnat"


def test_forward_limited_to_an_interface():
    nat = make_nat(forwards=(SSH_WAN_ONLY,))
    assert run(nat, tcp(X, 40000, WAN_ADDR, 2222), "wan", 0.0).dst == B
    to_lan_address = tcp(A, 40000, LAN_ADDR, 2222)
    assert nat.process(to_lan_address, "lan", 0.0).packet == to_lan_address
    assert len(nat) == 1


def test_forward_hairpin_from_inside_is_masqueraded_to_the_inside_address():
    nat = make_nat(forwards=(WEB,))
    there = run(nat, tcp(A, 7000, WAN_ADDR, 8080, "S"), "lan", 0.0)
    # B must answer through the router, so the source becomes the router's lan address
    assert (there.src, there[TCP].sport, there.dst, there[TCP].dport) == (LAN_ADDR, 7000, B, 80)
    back = run(nat, tcp(B, 80, LAN_ADDR, 7000, "SA"), "lan", 1.0)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (WAN_ADDR, 8080, A, 7000)
    assert only_connection(nat).kind == "dnat+snat"


def test_forward_rst_without_a_connection_is_invalid():
    nat = make_nat(forwards=(WEB,))
    assert nat.process(tcp(X, 40000, WAN_ADDR, 8080, "R"), "wan", 0.0).drop is DropReason.NAT_INVALID


# -- ICMP errors -----------------------------------------------------------------------------


def quoted(pkt: IP) -> bytes:
    """The packet an ICMP error quotes, as bytes."""
    return pkt.original[pkt.ihl * 4 + 8:]


def test_port_unreachable_from_outside_reaches_the_inside_sender_quoting_what_it_sent():
    nat = make_nat()
    sent = udp(A, 5353, S, 53, b"who is there")
    out = nat.process(sent, "lan", 0.0).packet
    error = run(nat, icmp_error(S, WAN_ADDR, out), "wan", 1.0)
    assert (error.src, error.dst, error[ICMP].type, error[ICMP].code) == (S, A, 3, 3)
    assert quoted(error) == sent
    assert nat.statistics().icmp_translated == 1


def test_fragmentation_needed_from_a_router_on_the_path_keeps_its_source_and_mtu():
    nat = make_nat(rng=random.Random(3))
    run(nat, tcp(B, 40000, T, 80), "lan", 0.0)                 # A's port is taken: A gets a new one
    sent = tcp(A, 40000, S, 80, "PA", b"x" * 100, df=True)
    out = nat.process(sent, "lan", 0.0).packet
    assert out[20:22] != sent[20:22]
    error = run(nat, icmp_error(UPSTREAM, WAN_ADDR, out[:28], code=4, mtu=1400), "wan", 1.0)
    assert (error.src, error.dst, error[ICMP].nexthopmtu) == (UPSTREAM, A, 1400)
    assert quoted(error) == sent[:28]
    assert (error[TCPerror].sport, error[TCPerror].dport) == (40000, 80)


def tcp_with_zero_checksum(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A segment whose correct TCP checksum is 0x0000 (two payload bytes chosen to make it so)."""
    base = IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA", seq=1, ack=1)
    first = IP(raw(base / b"\0\0"))[TCP].chksum
    word = first  # adding the checksum's value to the sum brings the sum to 0xFFFF
    packet = raw(base / word.to_bytes(2, "big"))
    assert IP(packet)[TCP].chksum == 0
    return packet


@pytest.mark.parametrize("kind", ["tcp-full", "tcp-zero-checksum", "udp-no-checksum", "echo"])
def test_error_quotes_are_restored_byte_for_byte(kind):
    nat = make_nat()
    run(nat, udp(B, 40000, T, 80), "lan", 0.0)
    run(nat, tcp(B, 40000, T, 80), "lan", 0.0)
    run(nat, ping(B, T, 40000), "lan", 0.0)                    # the port or identifier of A's flow changes
    sent = {
        "tcp-full": lambda: tcp(A, 40000, S, 80, "PA", b"data" * 10),
        "tcp-zero-checksum": lambda: tcp_with_zero_checksum(A, 40000, S, 80),
        "udp-no-checksum": lambda: udp(A, 40000, S, 80, zero_checksum=True),
        "echo": lambda: ping(A, S, 40000),
    }[kind]()
    out = nat.process(sent, "lan", 0.0).packet
    error = run(nat, icmp_error(UPSTREAM, WAN_ADDR, out, type_=11, code=0), "wan", 1.0)
    assert (error.src, error.dst) == (UPSTREAM, A)
    assert quoted(error) == sent


def test_error_from_the_inside_host_about_an_answer():
    nat = make_nat()
    run(nat, udp(B, 5353, T, 53), "lan", 0.0)
    run(nat, udp(A, 5353, S, 53), "lan", 0.0)
    ext = next(c for c in nat.connections() if describe(c.orig)["src"] == A).reply[11:13]
    answer = udp(S, 53, WAN_ADDR, int.from_bytes(ext, "big"), b"late answer")
    delivered = nat.process(answer, "wan", 1.0).packet
    error = run(nat, icmp_error(A, S, delivered), "lan", 2.0)
    # A's own address must not leak: the error comes from the mapping's address
    assert (error.src, error.dst) == (WAN_ADDR, S)
    assert quoted(error) == answer


def test_port_unreachable_from_a_forward_target_reaches_the_outside_sender():
    nat = make_nat(forwards=(DNS,))
    sent = udp(X, 40000, WAN_ADDR, 5353)
    delivered = nat.process(sent, "wan", 0.0).packet
    error = run(nat, icmp_error(C, X, delivered), "lan", 1.0)
    assert (error.src, error.dst) == (WAN_ADDR, X)
    assert quoted(error) == sent
    assert (error[UDPerror].dport, error[IPerror].dst) == (5353, WAN_ADDR)


def test_error_from_outside_about_a_forwarded_flows_answer():
    nat = make_nat(forwards=(WEB,))
    nat.process(tcp(X, 40000, WAN_ADDR, 8080, "S"), "wan", 0.0)
    answer = tcp(B, 80, X, 40000, "SA")
    out = nat.process(answer, "lan", 0.0).packet
    error = run(nat, icmp_error(UPSTREAM, WAN_ADDR, out[:28], type_=11, code=0), "wan", 1.0)
    assert (error.src, error.dst) == (UPSTREAM, B)
    assert quoted(error) == answer[:28]


def test_error_about_a_hairpinned_packet_reaches_the_inside_sender():
    nat = make_nat()
    run(nat, udp(A, 5000, S, 53), "lan", 0.0)
    sent = udp(B, 6000, WAN_ADDR, 5000, b"hi A")
    delivered = nat.process(sent, "lan", 1.0).packet
    error = run(nat, icmp_error(A, WAN_ADDR, delivered), "lan", 2.0)
    assert (error.src, error.dst) == (WAN_ADDR, B)
    assert quoted(error) == sent


def test_errors_about_untranslated_connections_pass_untouched():
    nat = make_nat()
    inbound = tcp(X, 40000, A, 22, "S")
    nat.process(inbound, "wan", 0.0)
    error = icmp_error(A, X, inbound)
    assert nat.process(error, "lan", 1.0).packet == error


def test_errors_about_unknown_flows_pass_untouched():
    nat = make_nat()
    run(nat, udp(A, 5353, S, 53), "lan", 0.0)
    stray = icmp_error(S, WAN_ADDR, udp(WAN_ADDR, 5354, S, 53))
    assert nat.process(stray, "wan", 1.0).packet == stray
    short = icmp_error(S, WAN_ADDR, udp(WAN_ADDR, 5353, S, 53)[:24])   # quote too short for ports
    assert nat.process(short, "wan", 1.0).packet == short
    assert nat.statistics().icmp_translated == 0


# -- TCP states and timeouts ------------------------------------------------------------------

OUT, IN = "out", "in"
HANDSHAKE_AND_CLOSE = [
    (OUT, "S", State.SYN_SENT, TIMEOUTS.tcp_syn_sent),
    (IN, "SA", State.SYN_RECV, TIMEOUTS.tcp_syn_recv),
    (OUT, "A", State.ESTABLISHED, TIMEOUTS.tcp_established),
    (OUT, "FA", State.FIN_WAIT, TIMEOUTS.tcp_fin_wait),
    (IN, "A", State.FIN_WAIT, TIMEOUTS.tcp_fin_wait),
    (IN, "FA", State.LAST_ACK, TIMEOUTS.tcp_last_ack),
    (OUT, "A", State.TIME_WAIT, TIMEOUTS.tcp_time_wait),
]


def segment(direction: str, flags: str) -> tuple[bytes, str]:
    if direction == OUT:
        return tcp(A, 40000, S, 80, flags), "lan"
    return tcp(S, 80, WAN_ADDR, 40000, flags), "wan"


def drive(nat: Nat, steps, start: float = 0.0) -> float:
    now = start
    for direction, flags, _, _ in steps:
        now += 1.0
        packet, iface = segment(direction, flags)
        run(nat, packet, iface, now)
    return now


def test_tcp_walks_linux_states_with_their_timeouts():
    nat = make_nat()
    now = 0.0
    for i, (direction, flags, state, timeout) in enumerate(HANDSHAKE_AND_CLOSE):
        now += 1.0
        packet, iface = segment(direction, flags)
        run(nat, packet, iface, now)
        conn = only_connection(nat)
        assert (conn.state, conn.timeout) == (state, timeout), f"after step {i}: {direction} {flags}"
        assert conn.assured == (i >= 2)
    assert conn.expires() == now + TIMEOUTS.tcp_time_wait


@pytest.mark.parametrize("length", range(1, len(HANDSHAKE_AND_CLOSE) + 1))
def test_each_tcp_state_expires_after_its_timeout(length):
    nat = make_nat()
    steps = HANDSHAKE_AND_CLOSE[:length]
    now = drive(nat, steps)
    timeout = steps[-1][3]
    assert nat.poll_at() == now + timeout
    nat.handle_timer(now + timeout - 0.5)
    assert len(nat) == 1
    nat.handle_timer(now + timeout)
    assert len(nat) == 0 and nat.statistics().mappings == 0 and nat.statistics().expired == 1
    assert nat.poll_at() is None
    # an answer now finds nothing and stays addressed to the router
    late, iface = segment(IN, "A")
    assert nat.process(late, iface, now + timeout).packet == late


def test_rst_closes_and_close_expires_after_ten_seconds():
    nat = make_nat()
    now = drive(nat, HANDSHAKE_AND_CLOSE[:3])
    back = run(nat, *segment(IN, "R"), now + 1)
    assert back.dst == A
    conn = only_connection(nat)
    assert (conn.state, conn.timeout) == (State.CLOSE, 10.0)
    nat.handle_timer(now + 1 + 9.9)
    assert len(nat) == 1
    nat.handle_timer(now + 1 + 10)
    assert len(nat) == 0


@pytest.mark.parametrize("closing", [HANDSHAKE_AND_CLOSE, HANDSHAKE_AND_CLOSE[:3] + [(IN, "R", State.CLOSE, 10.0)]],
                         ids=["time-wait", "close"])
def test_a_new_syn_reuses_a_closed_connection(closing):
    nat = make_nat()
    now = drive(nat, closing)
    out = run(nat, *segment(OUT, "S"), now + 1)
    assert (out.src, out[TCP].sport) == (WAN_ADDR, 40000)
    conn = only_connection(nat)
    assert (conn.state, conn.timeout, conn.fins) == (State.SYN_SENT, TIMEOUTS.tcp_syn_sent, 0)
    assert not conn.assured   # a new connection: unanswered until its handshake completes
    drive(nat, HANDSHAKE_AND_CLOSE[1:3], now + 1)
    assert (conn.state, conn.assured) == (State.ESTABLISHED, True)


def test_tcp_passive_close():
    nat = make_nat()
    now = drive(nat, HANDSHAKE_AND_CLOSE[:3])
    now = drive(nat, [(IN, "FA", State.FIN_WAIT, 0), (OUT, "A", State.FIN_WAIT, 0)], now)
    conn = only_connection(nat)
    assert (conn.state, conn.fins) == (State.FIN_WAIT, 2)
    drive(nat, [(OUT, "FA", State.LAST_ACK, 0)], now)
    assert conn.state is State.LAST_ACK
    drive(nat, [(IN, "A", State.TIME_WAIT, 0)], now + 1)
    assert (conn.state, conn.timeout) == (State.TIME_WAIT, TIMEOUTS.tcp_time_wait)


def test_mid_stream_tcp_is_picked_up_unanswered_and_established_by_its_answer():
    nat = make_nat()
    out = run(nat, tcp(A, 40000, S, 80, "PA", b"more"), "lan", 0.0)
    assert out.src == WAN_ADDR
    conn = only_connection(nat)
    assert (conn.state, conn.timeout, conn.assured) == (State.UNREPLIED, TIMEOUTS.tcp_unreplied, False)
    run(nat, tcp(A, 40000, S, 80, "A"), "lan", 0.5)                 # more from the same side: still unanswered
    assert conn.state is State.UNREPLIED
    assert run(nat, tcp(S, 80, WAN_ADDR, 40000, "A"), "wan", 1.0).dst == A
    assert (conn.state, conn.timeout, conn.assured) == (State.ESTABLISHED, TIMEOUTS.tcp_established, True)


def test_an_unanswered_mid_stream_pickup_expires_soon():
    nat = make_nat()
    run(nat, tcp(A, 40000, S, 80, "A"), "lan", 0.0)
    assert nat.poll_at() == TIMEOUTS.tcp_unreplied
    nat.handle_timer(TIMEOUTS.tcp_unreplied)
    assert len(nat) == 0


def test_a_flood_of_bare_acks_cannot_fill_the_table_for_good():
    """Mid-stream pickups that nobody answers are early-dropped like SYNs; answered connections stay."""
    nat = make_nat(max_connections=8, max_per_source=8)
    run(nat, tcp(B, 5000, S, 80), "lan", 0.0)
    run(nat, tcp(S, 80, WAN_ADDR, 5000, "SA"), "wan", 0.1)
    run(nat, tcp(B, 5000, S, 80, "A"), "lan", 0.2)                   # B's connection: assured, established
    for i in range(50):                                              # then A's bare ACKs to ever new ports
        run(nat, tcp(A, 10000 + i, S, 80, "A"), "lan", 1.0 + i)
    states = sorted(str(c.state) for c in nat.connections())
    assert states == ["ESTABLISHED"] + ["UNREPLIED"] * 7
    assert nat.statistics().early_dropped == 43
    assert run(nat, tcp(C, 6000, S, 80), "lan", 60.0).src == WAN_ADDR   # a new connection still gets in


def test_rst_and_echo_reply_cannot_start_a_translated_connection():
    nat = make_nat()
    assert nat.process(tcp(A, 40000, S, 80, "R"), "lan", 0.0).drop is DropReason.NAT_INVALID
    assert nat.process(tcp(A, 40000, S, 80, "RA"), "lan", 0.0).drop is DropReason.NAT_INVALID
    assert nat.process(ping(A, S, 5, reply=True), "lan", 0.0).drop is DropReason.NAT_INVALID
    assert len(nat) == 0


def test_protocols_without_ports_are_refused_where_masquerade_applies():
    nat = make_nat()
    gre = raw(IP(src=A, dst=S, proto=47) / b"\x00\x00\x08\x00payload")
    assert nat.process(gre, "lan", 0.0).drop is DropReason.NAT_UNSUPPORTED
    for packet, iface in ((raw(IP(src=A, dst=POD_ELSEWHERE, proto=47) / b"gre"), "lan"),
                          (raw(IP(src=A, dst=DMZ_HOST, proto=47) / b"gre"), "lan"),
                          (raw(IP(src=S, dst=A, proto=47) / b"gre"), "wan")):
        assert nat.process(packet, iface, 0.0).packet == packet


# -- UDP and ICMP timeouts ---------------------------------------------------------------------


def test_udp_unreplied_lives_30_seconds():
    nat = make_nat()
    run(nat, udp(A, 5353, S, 53), "lan", 100.0)
    conn = only_connection(nat)
    assert (conn.state, conn.assured, nat.poll_at()) == (State.UNREPLIED, False, 130.0)
    nat.handle_timer(129.9)
    assert len(nat) == 1
    nat.handle_timer(130.0)
    assert len(nat) == 0


def test_udp_replied_lives_120_seconds_and_is_assured():
    nat = make_nat()
    run(nat, udp(A, 5353, S, 53), "lan", 100.0)
    run(nat, udp(S, 53, WAN_ADDR, 5353), "wan", 105.0)
    conn = only_connection(nat)
    assert (conn.state, conn.assured, nat.poll_at()) == (State.REPLIED, True, 225.0)
    nat.handle_timer(224.9)
    assert len(nat) == 1
    nat.handle_timer(225.0)
    assert len(nat) == 0


def test_packets_keep_a_connection_alive():
    nat = make_nat()
    run(nat, udp(A, 5353, S, 53), "lan", 0.0)
    run(nat, udp(A, 5353, S, 53), "lan", 20.0)
    assert nat.poll_at() == 50.0
    nat.handle_timer(40.0)
    assert len(nat) == 1


def test_icmp_echo_lives_30_seconds_even_when_answered():
    nat = make_nat()
    run(nat, ping(A, S, 1), "lan", 0.0)
    run(nat, ping(S, WAN_ADDR, 1, reply=True), "wan", 1.0)
    conn = only_connection(nat)
    assert (conn.state, conn.timeout, conn.assured) == (State.REPLIED, 30.0, False)
    nat.handle_timer(30.9)
    assert len(nat) == 1
    nat.handle_timer(31.0)
    assert len(nat) == 0


def test_an_expired_connection_is_not_used_before_the_timer_runs():
    nat = make_nat()
    run(nat, udp(A, 5353, S, 53), "lan", 0.0)
    late = udp(S, 53, WAN_ADDR, 5353)
    assert nat.process(late, "wan", 30.0).packet == late
    assert len(nat) == 0 and nat.statistics().expired == 1


def test_poll_at_is_the_earliest_expiry():
    nat = make_nat()
    assert nat.poll_at() is None
    run(nat, tcp(A, 40000, S, 80, "S"), "lan", 0.0)           # expires at 120
    run(nat, udp(A, 5353, S, 53), "lan", 5.0)                  # expires at 35
    assert nat.poll_at() == 35.0
    run(nat, udp(S, 53, WAN_ADDR, 5353), "wan", 10.0)          # replied: expires at 130
    assert nat.poll_at() == 120.0
    nat.handle_timer(120.0)
    assert nat.poll_at() == 130.0 and len(nat) == 1


# -- the table limit --------------------------------------------------------------------------------


def test_full_table_drops_the_oldest_unanswered_then_refuses():
    nat = make_nat(max_connections=3)                          # one connection per source by default
    hosts = [f"10.0.0.{i}" for i in range(11, 16)]
    for i, host in enumerate(hosts[:3]):
        run(nat, udp(host, 1001 + i, S, 53), "lan", float(i))
    run(nat, udp(hosts[1], 1002, S, 53), "lan", 3.0)          # seen again: now the first is the oldest
    assert run(nat, udp(hosts[3], 1004, S, 53), "lan", 4.0)[UDP].sport == 1004
    ports = sorted(describe(c.orig)["sport"] for c in nat.connections())
    assert ports == [1002, 1003, 1004] and nat.statistics().early_dropped == 1
    gone = udp(S, 53, WAN_ADDR, 1001)
    assert nat.process(gone, "wan", 5.0).packet == gone
    for port in (1002, 1003, 1004):
        run(nat, udp(S, 53, WAN_ADDR, port), "wan", 5.0)       # answered: assured, never dropped early
    refused = nat.process(udp(hosts[4], 1005, S, 53), "lan", 6.0)
    assert refused == nat_module.Verdict(None, DropReason.NAT_TABLE_FULL)
    assert len(nat) == 3 and nat.statistics().early_dropped == 1


def test_full_table_drops_an_unanswered_syn():
    nat = make_nat(max_connections=2)
    run(nat, tcp(B, 1001, S, 80, "S"), "lan", 0.0)
    drive(nat, HANDSHAKE_AND_CLOSE[:3])                        # A:40000 established and assured
    run(nat, tcp(C, 1003, S, 80, "S"), "lan", 10.0)
    ports = sorted(describe(c.orig)["sport"] for c in nat.connections())
    assert ports == [1003, 40000]


def test_full_table_reclaims_expired_connections_first():
    nat = make_nat(max_connections=1)
    run(nat, udp(A, 1001, S, 53), "lan", 0.0)
    run(nat, udp(A, 1002, S, 53), "lan", 30.0)
    stats = nat.statistics()
    assert (stats.expired, stats.early_dropped, stats.connections) == (1, 0, 1)


def test_early_drop_finds_the_oldest_unanswered_behind_answered_connections_of_the_same_timeout():
    """Answered connections that share the unanswered ones' timeouts (120 s: UDP replied, TCP TIME_WAIT, like
    SYN_SENT; 30 s: ICMP echo answered, like UDP unreplied) are never taken, however many are older."""
    nat = make_nat(max_connections=206, max_per_source=206)
    hosts = [f"10.0.{1 + i // 200}.{1 + i % 200}" for i in range(220)]
    nat.masquerade = (Masquerade(Network.parse("10.0.0.0/16"), "wan"),)
    now = 0.0
    for i in range(100):                                        # UDP, answered: 120 s
        out = run(nat, udp(hosts[i], 5000, S, 53), "lan", now)
        run(nat, udp(S, 53, WAN_ADDR, out[UDP].sport), "wan", now)
    for i in range(100, 200):                                   # ICMP echo, answered: 30 s
        out = run(nat, ping(hosts[i], S, 7), "lan", now)
        run(nat, ping(S, WAN_ADDR, out[ICMP].id, reply=True), "wan", now)
    now = 5.0
    run(nat, tcp(A, 1001, S, 80, "S"), "lan", now)             # SYN_SENT, 120 s: the oldest unanswered
    run(nat, udp(A, 1002, S, 53), "lan", now + 1)              # unanswered, 30 s
    run(nat, ping(A, S, 1003), "lan", now + 2)                 # unanswered, 30 s
    for i in range(200, 203):                                   # the table is full now: 203 + 3
        run(nat, udp(hosts[i], 5000, S, 53), "lan", now + 3)
    states = sorted(str(c.state) for c in nat.connections() if describe(c.orig)["src"] == A)
    assert states == ["SYN_SENT", "UNREPLIED", "UNREPLIED"] and len(nat) == 206
    dropped = []
    for i in range(203, 206):
        before = {describe(c.orig)["sport"] for c in nat.connections() if describe(c.orig)["src"] == A}
        run(nat, udp(hosts[i], 5000, T, 53), "lan", now + 10)
        after = {describe(c.orig)["sport"] for c in nat.connections() if describe(c.orig)["src"] == A}
        (gone,) = before - after
        dropped.append(gone)
    # A's three, least recently seen first whatever their timeouts; never an answered connection
    assert dropped == [1001, 1002, 1003]
    assert nat.statistics().early_dropped == 3
    for i in range(200, 203):
        run(nat, udp(hosts[i], 5000, S, 53), "lan", now + 11)  # seen again: now hosts[203] is the oldest
    assert nat.process(udp(hosts[206], 5000, S, 53), "lan", now + 12).drop is None
    sources = {describe(c.orig)["src"] for c in nat.connections()}
    assert hosts[203] not in sources and {hosts[204], hosts[205], hosts[206]} <= sources
    assert nat.statistics().early_dropped == 4 and len(nat) == 206


def test_a_source_at_its_limit_is_refused_while_others_are_not():
    nat = make_nat(max_connections=8, max_per_source=2)
    run(nat, udp(A, 1001, S, 53), "lan", 0.0)
    run(nat, tcp(A, 1002, S, 80, "S"), "lan", 1.0)
    refused = nat.process(udp(A, 1003, S, 53), "lan", 2.0)
    assert refused == nat_module.Verdict(None, DropReason.NAT_SOURCE_LIMIT)
    assert nat.process(ping(A, S, 9), "lan", 2.0).drop is DropReason.NAT_SOURCE_LIMIT
    # its own connections still pass, and its unanswered ones are not dropped early to make room for it
    assert run(nat, udp(A, 1001, S, 53), "lan", 3.0)[UDP].sport == 1001
    for host in (B, C):
        run(nat, udp(host, 1001, S, 53), "lan", 3.0)
        run(nat, udp(host, 1002, S, 53), "lan", 3.0)
    stats = nat.statistics()
    assert (stats.connections, stats.sources, stats.source_limited, stats.early_dropped) == (6, 3, 2, 0)
    assert nat.process(udp(B, 1003, S, 53), "lan", 4.0).drop is DropReason.NAT_SOURCE_LIMIT


def test_a_source_gets_room_again_as_its_connections_expire():
    nat = make_nat(max_connections=8, max_per_source=2)
    run(nat, udp(A, 1001, S, 53), "lan", 0.0)                  # expires at 30
    run(nat, udp(A, 1002, S, 53), "lan", 10.0)                 # expires at 40
    assert nat.process(udp(A, 1003, S, 53), "lan", 29.0).drop is DropReason.NAT_SOURCE_LIMIT
    # the timer has not run: the source's expired connection is reclaimed when it asks
    assert run(nat, udp(A, 1003, S, 53), "lan", 30.0)[UDP].sport == 1003
    assert nat.statistics().expired == 1
    nat.handle_timer(100.0)
    assert nat.statistics().sources == 0                        # no count is kept at zero
    for port in (1004, 1005):
        run(nat, udp(A, port, S, 53), "lan", 100.0)
    assert nat.process(udp(A, 1006, S, 53), "lan", 100.0).drop is DropReason.NAT_SOURCE_LIMIT


def test_the_limit_counts_outside_sources_too():
    """Forwarded and untranslated inbound connections count for their outside source, refused alike."""
    nat = make_nat(max_connections=8, max_per_source=2, forwards=(WEB,))
    run(nat, tcp(X, 40000, WAN_ADDR, 8080, "S"), "wan", 0.0)   # forwarded to B
    inbound = tcp(X, 40001, A, 22, "S")                          # routed straight in, tracked untranslated
    assert nat.process(inbound, "wan", 0.0).packet == inbound
    assert len(nat) == 2
    for refused in (tcp(X, 40002, WAN_ADDR, 8080, "S"), tcp(X, 40003, A, 22, "S")):
        assert nat.process(refused, "wan", 1.0).drop is DropReason.NAT_SOURCE_LIMIT
    assert nat.statistics().source_limited == 2


_REQUESTS = {(host, sport): udp(f"10.0.0.{20 + host}", sport, S, 53) for host in range(4) for sport in range(1000, 1008)}


@given(
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(1000, 1007), st.booleans(), st.sampled_from([0.0, 5.0, 31.0])),
                   max_size=40),
    limit=st.integers(1, 4),
)
def test_source_limit_against_the_connections_held(steps, limit):
    """A new connection is refused for its source exactly when that source holds ``limit`` live connections."""
    nat = make_nat(max_connections=64, max_per_source=limit)
    now = 0.0
    for host, sport, answer, wait in steps:
        now += wait
        packet = _REQUESTS[host, sport]
        live = [c.orig for c in nat.connections() if c.expires() > now]
        held = sum(1 for orig in live if orig[1:5] == packet[12:16])
        verdict = nat.process(packet, "lan", now)
        refused = packet[9:10] + packet[12:24] not in live and held >= limit
        assert (verdict.drop is DropReason.NAT_SOURCE_LIMIT) == refused
        if answer and not refused:
            out = verdict.packet
            nat.process(udp(S, 53, WAN_ADDR, int.from_bytes(out[20:22], "big")), "wan", now)
        live = [describe(c.orig)["src"] for c in nat.connections()]
        assert nat.statistics().sources == len(set(live)) and max(map(live.count, live), default=0) <= limit


def test_max_connections_must_be_positive():
    with pytest.raises(ValueError):
        make_nat(max_connections=0)


@pytest.mark.parametrize(("connections", "per_source"), [(nat_module.MAX_CONNECTIONS + 1, None), (10, 0), (10, 11)])
def test_limits_out_of_bounds_are_refused(connections, per_source):
    with pytest.raises(ValueError):
        make_nat(max_connections=connections, max_per_source=per_source)


def test_a_source_may_hold_a_quarter_of_the_table_by_default():
    assert make_nat().max_per_source == 16384
    assert make_nat(max_connections=3).max_per_source == 1


# -- untranslated traffic through the masquerading interface --------------------------------------


def test_traffic_routed_in_untranslated_is_answered_untranslated():
    nat = make_nat()
    inbound = tcp(X, 40000, A, 22, "S")
    assert nat.process(inbound, "wan", 0.0).packet == inbound
    answer = tcp(A, 22, X, 40000, "SA")
    assert nat.process(answer, "lan", 1.0).packet == answer   # not masqueraded
    conn = only_connection(nat)
    assert (conn.kind, conn.state) == ("none", State.SYN_RECV)
    assert nat.statistics().translated == 0


def test_untranslated_packet_cannot_take_over_a_masqueraded_connection():
    nat = make_nat()
    run(nat, udp(A, 5353, S, 53), "lan", 0.0)
    spoofed = udp(S, 53, A, 5353)                              # routed in straight to A's inside address
    nat.process(spoofed, "wan", 1.0)
    out = run(nat, udp(A, 5353, S, 53), "lan", 2.0)
    assert out.src == WAN_ADDR                                 # A's address must not leak
    assert run(nat, udp(S, 53, WAN_ADDR, 5353), "wan", 3.0).dst == A


# -- fragments ----------------------------------------------------------------------------------------


def reassembled(packets: list[bytes]) -> IP:
    """scapy's reassembly, its checksums verified (the UDP one now covers the whole datagram)."""
    (whole,) = defragment([IP(p) for p in packets])
    return checked(raw(whole))


def test_later_fragments_follow_the_first():
    nat = make_nat()
    run(nat, udp(B, 40000, T, 53), "lan", 0.0)                 # A's port will change too
    datagram = IP(src=A, dst=S, id=777) / UDP(sport=40000, dport=53) / (bytes(range(256)) * 12)
    pieces = [raw(p) for p in fragment(datagram, fragsize=1000)]
    assert len(pieces) == 4
    out = [nat.process(p, "lan", 1.0).packet for p in pieces]
    for piece in out:
        assert checked(piece).src == WAN_ADDR
    whole = reassembled(out)
    port = whole[UDP].sport
    assert port != 40000 and data(whole) == bytes(range(256)) * 12

    answer = IP(src=S, dst=WAN_ADDR, id=999) / UDP(sport=53, dport=port) / (b"r" * 2500)
    back = [nat.process(raw(p), "wan", 2.0).packet for p in fragment(answer, fragsize=1000)]
    for piece in back:
        assert checked(piece).dst == A
    whole = reassembled(back)
    assert (whole[UDP].dport, data(whole)) == (40000, b"r" * 2500)


def test_later_fragments_whose_first_was_not_seen_are_never_leaked_untranslated():
    nat = make_nat()
    datagram = IP(src=A, dst=S, id=5) / UDP(sport=40000, dport=53) / (b"z" * 2000)
    for piece in [raw(p) for p in fragment(datagram, fragsize=1000)][1:]:
        verdict = nat.process(piece, "lan", 0.0)
        assert (verdict.packet, verdict.drop) == (None, DropReason.NAT_UNSUPPORTED)
    # where no masquerade applies (pod to pod), they pass untouched
    datagram = IP(src=A, dst=POD_ELSEWHERE, id=6) / UDP(sport=40000, dport=53) / (b"z" * 2000)
    for piece in [raw(p) for p in fragment(datagram, fragsize=1000)][1:]:
        assert nat.process(piece, "lan", 0.0).packet == piece
    assert len(nat) == 0


def test_untrackable_icmp_and_short_segments_are_not_masqueraded():
    nat = make_nat()
    timestamp = raw(IP(src=A, dst=S) / ICMP(type=13))
    short_udp = raw(IP(src=A, dst=S, proto=17) / b"\x01\x02")
    for packet in (timestamp, short_udp):
        verdict = nat.process(packet, "lan", 0.0)
        assert (verdict.packet, verdict.drop) == (None, DropReason.NAT_UNSUPPORTED)


# -- statistics ---------------------------------------------------------------------------------------


def test_statistics_count_what_happened():
    nat = make_nat()
    out = nat.process(udp(A, 5353, S, 53), "lan", 0.0).packet
    run(nat, udp(S, 53, WAN_ADDR, 5353), "wan", 1.0)
    run(nat, udp(B, 6000, WAN_ADDR, 5353), "lan", 1.0)         # hairpin
    run(nat, icmp_error(S, WAN_ADDR, out), "wan", 2.0)
    nat.process(udp(C, 7000, S, 53), "lan", 2.0)
    nat.handle_timer(32.0)                                     # C's unanswered flow and the hairpin expire
    stats = nat.statistics()
    assert (stats.created, stats.translated, stats.hairpinned, stats.icmp_translated) == (3, 4, 1, 1)
    assert (stats.expired, stats.early_dropped, stats.connections, stats.mappings) == (2, 0, 1, 1)


def test_keys_invert_and_describe():
    key = make_key(nat_module.UDP, ip_from_str(A), 5353, ip_from_str(S), 53)
    assert invert(key) == make_key(nat_module.UDP, ip_from_str(S), 53, ip_from_str(A), 5353)
    assert invert(invert(key)) == key
    assert describe(key) == {"protocol": "udp", "src": A, "sport": 5353, "dst": S, "dport": 53}


# -- properties -----------------------------------------------------------------------------------------

outside_addresses = st.integers(0x01000000, 0xDFFFFFFF).filter(
    lambda v: v >> 24 not in (10, 127) and v >> 8 != 0xAC1000 and v >> 8 != 0xC00002,
).map(lambda v: ip_to_str(v.to_bytes(4, "big")))


@given(
    proto=st.sampled_from(["tcp", "udp"]),
    host=st.integers(2, 254),
    sport=st.integers(1, 65535),
    dst=outside_addresses,
    dport=st.integers(1, 65535),
    flags=st.sampled_from(["S", "A", "PA", "FA"]),
    payload=st.binary(max_size=40),
    zero=st.booleans(),
    contended=st.booleans(),
    seed=st.integers(0, 2**32),
    cut=st.integers(0, 200),
)
def test_round_trip(proto, host, sport, dst, dport, flags, payload, zero, contended, seed, cut):
    """Masquerade any TCP or UDP packet; its answer and an error about it come back as the sender wrote it."""
    nat = make_nat(rng=random.Random(seed))
    inside = f"10.0.0.{host}"
    other = "10.0.0.250" if host != 250 else "10.0.0.251"
    if contended:   # another host holds the port already
        run(nat, udp(other, sport, dst, dport) if proto == "udp" else tcp(other, sport, dst, dport), "lan", 0.0)
    if proto == "tcp":
        sent = tcp(inside, sport, dst, dport, flags, payload)
    else:
        sent = udp(inside, sport, dst, dport, payload, zero_checksum=zero)
    layer = TCP if proto == "tcp" else UDP
    out = run(nat, sent, "lan", 1.0)
    port = out[layer].sport
    assert (out.src, out.dst, out[layer].dport) == (WAN_ADDR, dst, dport)
    assert port == sport if not contended else (port != sport and 1024 <= port <= 65535)
    header = 40 if proto == "tcp" else 28
    assert out.original[header:] == payload
    if proto == "tcp":
        answer = tcp(dst, dport, WAN_ADDR, port, "A", payload[::-1])
    else:
        answer = udp(dst, dport, WAN_ADDR, port, payload[::-1], zero_checksum=zero)
    back = run(nat, answer, "wan", 2.0)
    assert (back.src, back[layer].sport, back.dst, back[layer].dport) == (dst, dport, inside, sport)
    if proto == "udp":   # a checksum stays absent, and is never lost
        assert (out[UDP].chksum == 0, back[UDP].chksum == 0) == (zero, zero)
    assert back.original[header:] == payload[::-1]
    # errors quote 8 bytes of the transport header, or more; a quote that splits the checksum field
    # leaves half a checksum nobody can update
    lengths = [28, *range(38 if proto == "tcp" else 28, len(sent) + 1)]
    length = lengths[cut % len(lengths)]
    error = run(nat, icmp_error(dst, WAN_ADDR, out.original[:length]), "wan", 3.0)
    assert (error.src, error.dst) == (dst, inside)
    assert quoted(error) == sent[:length]


@given(ident=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFF), contended=st.booleans(), seed=st.integers(0, 2**32))
def test_echo_round_trip(ident, seq, contended, seed):
    nat = make_nat(rng=random.Random(seed))
    if contended:
        run(nat, ping(B, S, ident), "lan", 0.0)
    out = run(nat, ping(A, S, ident, seq=seq), "lan", 1.0)
    assert (out[ICMP].id == ident) != contended
    back = run(nat, ping(S, WAN_ADDR, out[ICMP].id, reply=True, seq=seq), "wan", 2.0)
    assert (back.dst, back[ICMP].id, back[ICMP].seq) == (A, ident, seq)


def flipped(packet: bytes, at: int) -> bytes:
    broken = bytearray(packet)
    broken[at] ^= 0x01
    return bytes(broken)


@pytest.mark.parametrize(("good", "bad"), [
    (tcp(A, 1, S, 2, "S", b"data"), flipped(tcp(A, 1, S, 2, "S", b"data"), 10)),    # IP header
    (tcp(A, 1, S, 2, "S", b"data"), flipped(tcp(A, 1, S, 2, "S", b"data"), 36)),    # TCP
    (udp(A, 1, S, 2), flipped(udp(A, 1, S, 2), 26)),                                # UDP
    (ping(A, S, 1), flipped(ping(A, S, 1), 22)),                                    # ICMP
    (icmp_error(S, A, udp(A, 1, S, 2)), icmp_error(S, A, flipped(udp(A, 1, S, 2), 10))),  # the quoted header
], ids=["ip", "tcp", "udp", "icmp", "quoted-ip"])
def test_the_checker_rejects_a_wrong_checksum(good, bad):
    checked(good)
    with pytest.raises(AssertionError):
        checked(bad)


def test_scapy_dissects_icmp_quotes():
    # guard: the checks above rely on scapy dissecting ICMP quotes into IPerror/TCPerror/UDPerror
    error = IP(icmp_error(S, WAN_ADDR, tcp(WAN_ADDR, 1, S, 2)))
    assert error.haslayer(IPerror) and error.haslayer(TCPerror) and not error.haslayer(Raw)


def test_a_forward_whose_answers_would_collide_with_a_tracked_connection_is_refused():
    """An outside host first reaches an inside host directly (tracked untranslated), then through a forward
    whose translated tuple is the same flow: the second must not take over the first's entry."""
    nat = make_nat(forwards=(Forward(6, 8080, ip_from_str(A), 80),))
    direct = tcp(S, 5555, A, 80, flags="S")
    assert nat.process(direct, "wan", 0.0).packet == direct
    before = len(nat)
    verdict = nat.process(tcp(S, 5555, WAN_ADDR, 8080, flags="S"), "wan", 1.0)
    assert (verdict.packet, verdict.drop) == (None, DropReason.NAT_INVALID)
    assert len(nat) == before


# -- port forwards added and removed at run time (a CNI runtime's portMappings) --------------------------

RUNTIME_WEB = Forward(nat_module.TCP, 8080, ip_from_str(B), 80, owner="cni0123")
RUNTIME_DNS = Forward(nat_module.UDP, 5353, ip_from_str(B), 53, owner="cni0123")


def test_a_forward_added_at_run_time_takes_new_connections():
    nat = make_nat()
    untouched = tcp(X, 40000, WAN_ADDR, 8080)
    assert nat.process(untouched, "wan", 0.0).packet == untouched   # for the router: no forward yet
    nat.add_forward(RUNTIME_WEB)
    there = run(nat, tcp(X, 40001, WAN_ADDR, 8080), "wan", 1.0)
    assert (there.dst, there[TCP].dport, there.src) == (B, 80, X)
    back = run(nat, tcp(B, 80, X, 40001, "SA"), "lan", 1.5)
    assert (back.src, back[TCP].sport) == (WAN_ADDR, 8080)
    assert nat.forwards == (RUNTIME_WEB,)


def test_a_nat_without_masquerade_forwards():
    """A router with no [nat] gets a bare Nat when its first forward comes: forwarding works on its own."""
    nat = Nat(FakeRouting(), rng=random.Random(1))
    nat.add_forward(RUNTIME_DNS)
    there = run(nat, udp(X, 4000, WAN_ADDR, 5353), "wan", 0.0)
    assert (there.dst, there[UDP].dport) == (B, 53)
    assert run(nat, udp(B, 53, X, 4000), "lan", 0.1)[UDP].sport == 5353
    plain = udp(A, 1000, S, 53)
    assert nat.process(plain, "lan", 0.2).packet == plain   # nothing masquerades


def test_removing_a_forward_keeps_its_connections_and_stops_new_ones():
    nat = make_nat()
    nat.add_forward(RUNTIME_WEB)
    run(nat, tcp(X, 40000, WAN_ADDR, 8080), "wan", 0.0)
    run(nat, tcp(B, 80, X, 40000, "SA"), "lan", 0.1)
    assert nat.remove_forwards(owner="cni0123") == (RUNTIME_WEB,)
    assert nat.forwards == ()
    # as iptables: the tracked connection lives on until it ends or times out
    assert run(nat, tcp(X, 40000, WAN_ADDR, 8080, "A"), "wan", 0.2).dst == B
    assert run(nat, tcp(B, 80, X, 40000, "A"), "lan", 0.3).src == WAN_ADDR
    new = tcp(X, 40001, WAN_ADDR, 8080)
    assert nat.process(new, "wan", 0.4).packet == new   # a new one is the router's own again


def test_removing_frees_the_port_for_masquerade():
    nat = make_nat()
    nat.add_forward(RUNTIME_WEB)
    assert run(nat, tcp(A, 8080, S, 80), "lan", 0.0)[TCP].sport != 8080
    nat.remove_forwards(protocol=nat_module.TCP, port=8080)
    assert run(nat, tcp(C, 8080, S, 80), "lan", 0.1)[TCP].sport == 8080


def test_a_port_a_mapping_holds_is_lent_until_the_mapping_ends():
    """Adding a forward over a live mapping's port: the mapping keeps it (its answers still come back), the
    forward takes new connections, and when the mapping ends the port stays the forward's."""
    nat = make_nat()
    out = run(nat, udp(A, 8080, S, 53), "lan", 0.0)
    assert out[UDP].sport == 8080
    nat.add_forward(Forward(nat_module.UDP, 8080, ip_from_str(C), 80))
    answer = run(nat, udp(S, 53, WAN_ADDR, 8080), "wan", 0.5)
    assert (answer.dst, answer[UDP].dport) == (A, 8080)                  # the mapping's answer
    forwarded = run(nat, udp(X, 999, WAN_ADDR, 8080), "wan", 0.6)
    assert (forwarded.dst, forwarded[UDP].dport) == (C, 80)              # a new connection: forwarded
    nat.handle_timer(1000.0)                                             # everything expires
    assert len(nat.mappings) == 0
    assert run(nat, udp(B, 8080, S, 53), "lan", 1001.0)[UDP].sport != 8080   # still reserved
    nat.remove_forwards(protocol=nat_module.UDP, port=8080)
    nat.handle_timer(3000.0)
    assert run(nat, udp(B, 8080, S, 53), "lan", 3001.0)[UDP].sport == 8080   # free again


@pytest.mark.parametrize(("forward", "message"), [
    (Forward(nat_module.TCP, 8080, ip_from_str(C), 81), "tcp port 8080 is forwarded already: tcp port 8080 to 10.0.0.3:80 (by cni0123)"),
    (Forward(nat_module.TCP, 8080, ip_from_str(C), 81, interface="wan"), "forwarded already"),
    (Forward(1, 8080, ip_from_str(C), 81), "only TCP and UDP"),
    (Forward(nat_module.TCP, 0, ip_from_str(C), 81), "between 1 and 65535"),
    (Forward(nat_module.TCP, 81, ip_from_str(C), 65536), "between 1 and 65535"),
    (Forward(nat_module.TCP, 81, b"\1\2\3", 80), "4 bytes"),
])
def test_refused_forwards(forward, message):
    nat = make_nat()
    nat.add_forward(RUNTIME_WEB)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nat.add_forward(forward)
    assert nat.forwards == (RUNTIME_WEB,)


def test_one_port_on_two_interfaces_and_removal_by_port():
    nat = make_nat()
    wan = Forward(nat_module.TCP, 2222, ip_from_str(B), 22, interface="wan", owner="one")
    lan = Forward(nat_module.TCP, 2222, ip_from_str(C), 22, interface="lan", owner="two")
    nat.add_forward(wan)
    nat.add_forward(lan)
    assert run(nat, tcp(X, 1, WAN_ADDR, 2222), "wan", 0.0).dst == B
    assert run(nat, tcp(A, 1, LAN_ADDR, 2222), "lan", 0.0).dst == C
    assert nat.remove_forwards(owner="two") == (lan,)
    assert run(nat, tcp(A, 2222, S, 80), "lan", 0.1)[TCP].sport != 2222   # wan's forward still reserves it
    assert nat.remove_forwards(protocol=nat_module.TCP, port=2222) == (wan,)
    assert nat.remove_forwards(owner="one") == ()                           # idempotent
    with pytest.raises(ValueError, match="by owner, or by protocol and port"):
        nat.remove_forwards(protocol=nat_module.TCP)


def test_forwards_are_bounded():
    nat = make_nat()
    for port in range(1, nat_module.MAX_FORWARDS + 1):
        nat.add_forward(Forward(nat_module.UDP, port, ip_from_str(B), 53))
    with pytest.raises(ValueError, match=f"there are {nat_module.MAX_FORWARDS} port forwards already"):
        nat.add_forward(Forward(nat_module.TCP, 1, ip_from_str(B), 53))
    configured = Nat(FakeRouting(), forwards=tuple(Forward(nat_module.TCP, p, ip_from_str(B), 80)
                                                    for p in range(1, nat_module.MAX_FORWARDS + 2)))
    with pytest.raises(ValueError, match="port forwards already"):   # an operator's config may hold more, not a runtime
        configured.add_forward(Forward(nat_module.UDP, 1, ip_from_str(B), 53))


@given(
    low=st.integers(0, 20), span=st.integers(1, 10),
    ops=st.lists(st.tuples(st.sampled_from(["take", "random", "give", "reserve", "unreserve"]), st.integers(0, 40)),
                 max_size=80),
    seed=st.integers(0, 2**16),
)
def test_port_pool_reservations_against_a_model(low, span, ops, seed):
    """Taken and reserved sets are the model: a reserved port is never handed out, a lent one comes back to
    the reservation, an unreserved one to the free ports once nothing holds it."""
    high = low + span - 1
    pool = nat_mapping.PortPool(low, high)
    rng = random.Random(seed)
    taken: set[int] = set()      # held by mappings
    reserved: set[int] = set()

    def free(port: int) -> bool:
        return port not in taken and port not in reserved

    for op, port in ops:
        if op == "take":
            assert pool.take(port) == free(port)
            if free(port):
                taken.add(port)
        elif op == "random":
            got = pool.take_random(rng)
            if any(free(p) for p in range(low, high + 1)):
                assert got is not None and free(got)
                taken.add(got)
            else:
                assert got is None
        elif op == "give" and taken:
            back = sorted(taken)[port % len(taken)]
            pool.give_back(back)
            taken.discard(back)
        elif op == "reserve":
            if port in reserved:
                with pytest.raises(ValueError):
                    pool.reserve(port)
            else:
                pool.reserve(port)
                reserved.add(port)
        elif op == "unreserve" and reserved:
            gone = sorted(reserved)[port % len(reserved)]
            pool.unreserve(gone)
            reserved.discard(gone)
        assert len(pool) == sum(free(p) for p in range(low, high + 1))
        assert all(pool.is_free(p) == free(p) for p in range(0, 41))


def test_unreserved_while_lent_is_freed_by_the_mapping():
    pool = nat_mapping.PortPool(10, 12)
    assert pool.take(11)
    pool.reserve(11)              # lent to the mapping that holds it
    pool.unreserve(11)            # no longer reserved; still held
    assert not pool.is_free(11)
    pool.give_back(11)
    assert pool.is_free(11)
    with pytest.raises(ValueError, match="was not taken"):
        pool.give_back(11)


def test_no_port_left_drop_is_unchanged_by_reservation(monkeypatch):
    monkeypatch.setattr(nat_mapping, "PORT_RANGE", (2000, 2001))
    nat = make_nat()
    run(nat, udp(A, 2000, S, 53), "lan", 0.0)
    nat.add_forward(Forward(nat_module.UDP, 2001, ip_from_str(B), 53))
    assert nat.process(udp(B, 2000, S, 53), "lan", 0.0).drop is DropReason.NAT_NO_PORT
