"""The peer table: longest-prefix match, reloads that keep unchanged peers, conflicts, limits."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vswitch.core.wire.addr import Network, ip_from_str, mac_from_str
from vswitch.overlay.core.codec import address_header
from vswitch.overlay.core.peers import Lease, LeaseChanges, PeerTable


def lease(text: str, n: int, vtep: bool = False) -> Lease:
    """A lease of ``text`` for node ``n`` (public address 10.99.x.y, VTEP MAC from n)."""
    return Lease(Network.parse(text), (0x0A630000 + n).to_bytes(4, "big"),
                 bytes((2, 0, 0, 0)) + n.to_bytes(2, "big") if vtep else None)


networks = st.builds(
    lambda address, length: Network.of(address.to_bytes(4, "big"), length),
    st.integers(0, 0xFFFFFFFF), st.integers(0, 32),
)


def leases_of(subnets) -> list[Lease]:
    return [Lease(net, (0x0A630000 + i).to_bytes(4, "big")) for i, net in enumerate(subnets)]


def brute_force(leases: list[Lease], dst: bytes) -> Lease | None:
    matching = [lease for lease in leases if dst in lease.subnet]
    return max(matching, key=lambda lease: lease.subnet.prefix_len, default=None)


@given(subnets=st.sets(networks, max_size=30), probes=st.lists(st.integers(0, 0xFFFFFFFF), max_size=30),
       later=st.sets(networks, max_size=30))
def test_lookup_is_longest_prefix_match(subnets, probes, later):
    table = PeerTable(port=8285)
    for current in (leases_of(subnets), leases_of(later)):   # a reload must not leave stale answers behind
        table.update(current)
        # probe at random, and at each subnet's first and last address (and just past them)
        targets = [p.to_bytes(4, "big") for p in probes]
        for lease in current:
            first, last = lease.subnet.address, lease.subnet.address | (~lease.subnet.mask & 0xFFFFFFFF)
            targets += [v.to_bytes(4, "big") for v in (first, last, first - 1, last + 1) if 0 <= v <= 0xFFFFFFFF]
        for dst in targets + targets:    # twice: the second answer comes from the cache
            peer = table.lookup(dst)
            expected = brute_force(current, dst)
            assert (peer.lease if peer else None) == expected


lease_sets = st.dictionaries(
    st.integers(0, 15),                                         # the subnet: 10.244.k.0/24
    st.tuples(st.integers(0, 3), st.integers(0, 3)),            # which address and VTEP MAC it has
    max_size=10,
)


def as_leases(spec: dict[int, tuple[int, int]]) -> list[Lease]:
    # the address and MAC include the subnet, so two leases never conflict
    return [Lease(Network.parse(f"10.244.{k}.0/24"), bytes((10, 99, a, k)), bytes((2, 0, 0, m, 0, k)))
            for k, (a, m) in spec.items()]


@given(before=lease_sets, after=lease_sets)
def test_update_reports_what_changed_and_keeps_unchanged_peers(before, after):
    table = PeerTable(port=8472)
    table.update(as_leases(before))
    old = {p.lease.subnet: p for p in table}
    for p in old.values():
        p.counters.tx_packets = 7
    changes = table.update(as_leases(after))
    old_leases = {lease.subnet: lease for lease in as_leases(before)}
    new_leases = {lease.subnet: lease for lease in as_leases(after)}
    assert set(changes.added) == {lease for s, lease in new_leases.items() if s not in old_leases}
    assert set(changes.removed) == {lease for s, lease in old_leases.items() if s not in new_leases}
    assert set(changes.changed) == {lease for s, lease in new_leases.items() if s in old_leases and old_leases[s] != lease}
    assert changes.kept == sum(1 for s, lease in new_leases.items() if old_leases.get(s) == lease)
    assert bool(changes) == (before != after)
    assert {p.lease for p in table} == set(new_leases.values()) and len(table) == len(new_leases)
    for peer in table:
        if old_leases.get(peer.lease.subnet) == peer.lease:
            assert peer is old[peer.lease.subnet] and peer.counters.tx_packets == 7
        else:
            assert peer.counters.tx_packets == 0
        assert table.by_address(peer.lease.public_ip) is peer
        assert table.by_mac(peer.lease.vtep_mac) is peer
        assert table.lookup(peer.lease.subnet.network) is peer
    for lease in changes.removed:
        assert table.lookup(lease.subnet.network) is None
    for lease in (*changes.removed, *(old_leases[lease.subnet] for lease in changes.changed)):
        if lease.public_ip not in {x.public_ip for x in new_leases.values()}:
            assert table.by_address(lease.public_ip) is None
        if lease.vtep_mac not in {x.vtep_mac for x in new_leases.values()}:
            assert table.by_mac(lease.vtep_mac) is None


def test_update_example():
    table = PeerTable(port=8285)
    a, b, c = lease("10.244.2.0/24", 2), lease("10.244.3.0/24", 3), lease("10.244.4.0/24", 4)
    assert table.update([a, b]) == LeaseChanges(added=(a, b))
    peer_a = table.lookup(ip_from_str("10.244.2.9"))
    peer_a.counters.rx_packets = 5
    moved = Lease(b.subnet, ip_from_str("10.99.9.9"))
    changes = table.update([a, moved, c])
    assert changes == LeaseChanges(added=(c,), changed=(moved,), kept=1)
    assert table.lookup(ip_from_str("10.244.2.9")) is peer_a and peer_a.counters.rx_packets == 5
    assert table.by_address(b.public_ip) is None and table.by_address(moved.public_ip).lease == moved
    assert table.update([a, moved, c]) == LeaseChanges(kept=3) and not table.update([a, moved, c])
    assert table.update([]) == LeaseChanges(removed=(a, moved, c))
    assert len(table) == 0 and table.lookup(ip_from_str("10.244.2.9")) is None


def test_peer_header_and_order():
    table = PeerTable(port=8472)
    table.update([lease("10.244.9.0/24", 9), lease("10.244.2.0/24", 2), lease("10.244.0.0/23", 1)])
    assert [str(p.lease.subnet) for p in table] == ["10.244.0.0/23", "10.244.2.0/24", "10.244.9.0/24"]
    for peer in table:
        assert peer.header == address_header(peer.lease.public_ip, 8472) and peer.port == 8472


@pytest.mark.parametrize("second", [
    lease("10.244.2.0/24", 3),                          # the same subnet twice
    lease("10.244.3.0/24", 2),                          # the same public address
    Lease(Network.parse("10.244.3.0/24"), ip_from_str("10.99.0.3"), mac_from_str("02:00:00:00:00:02")),  # same MAC
], ids=["subnet", "public-ip", "vtep-mac"])
def test_conflicting_leases_raise_and_change_nothing(second):
    table = PeerTable(port=8285)
    kept = Lease(Network.parse("10.244.9.0/24"), ip_from_str("10.99.0.9"), mac_from_str("02:00:00:00:00:09"))
    table.update([kept])
    peer = next(iter(table))
    first = Lease(Network.parse("10.244.2.0/24"), ip_from_str("10.99.0.2"), mac_from_str("02:00:00:00:00:02"))
    with pytest.raises(ValueError, match="conflict"):
        table.update([first, second])
    assert list(table) == [peer]
    assert table.lookup(ip_from_str("10.244.2.1")) is None and table.by_address(ip_from_str("10.99.0.2")) is None
    assert table.by_mac(mac_from_str("02:00:00:00:00:02")) is None


def test_the_same_lease_twice_conflicts():
    table = PeerTable(port=8285)
    with pytest.raises(ValueError):
        table.update([lease("10.244.2.0/24", 2)] * 2)


def test_nested_subnets_are_not_conflicts():
    # a /16 and a /24 inside it, of different nodes: longest prefix decides
    table = PeerTable(port=8285)
    table.update([lease("10.0.0.0/16", 1), lease("10.0.5.0/24", 2)])
    assert table.lookup(ip_from_str("10.0.5.1")).lease.public_ip == ip_from_str("10.99.0.2")
    assert table.lookup(ip_from_str("10.0.6.1")).lease.public_ip == ip_from_str("10.99.0.1")


def test_max_peers():
    table = PeerTable(port=8285, max_peers=2)
    two = [lease("10.244.2.0/24", 2), lease("10.244.3.0/24", 3)]
    table.update(two)
    with pytest.raises(ValueError, match="limit of 2"):
        table.update([*two, lease("10.244.4.0/24", 4)])
    assert {p.lease for p in table} == set(two)
    with pytest.raises(ValueError, match="at least 1"):
        PeerTable(port=8285, max_peers=0)


def test_lease_text():
    assert str(lease("10.244.2.0/24", 2)) == "10.244.2.0/24 at 10.99.0.2"
    assert str(lease("10.244.2.0/24", 2, vtep=True)) == "10.244.2.0/24 at 10.99.0.2 vtep 02:00:00:00:00:02"
