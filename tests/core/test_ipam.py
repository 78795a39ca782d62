"""The address pool: host-local's order, one address per owner, and a saved state read back with suspicion."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vswitch.core.l3.ipam import AddressPool, PoolExhausted
from vswitch.core.wire.addr import Network, ip_from_str, ip_to_str

SUBNET = Network.parse("10.244.3.0/24")
GATEWAY = ip_from_str("10.244.3.1")


def pool(subnet: Network = SUBNET) -> AddressPool:
    return AddressPool(subnet, reserved=[GATEWAY])


def test_addresses_follow_the_gateway_in_order_and_an_owner_keeps_its_own():
    p = pool()
    assert [ip_to_str(p.allocate(name)) for name in ("a", "b", "c")] == ["10.244.3.2", "10.244.3.3", "10.244.3.4"]
    assert ip_to_str(p.allocate("b")) == "10.244.3.3"
    assert p.owner(ip_from_str("10.244.3.4")) == "c"


def test_a_released_address_is_not_given_straight_out_again():
    p = pool()
    for name in ("a", "b"):
        p.allocate(name)
    assert p.release("a") == ip_from_str("10.244.3.2")
    assert p.release("a") is None
    assert ip_to_str(p.allocate("c")) == "10.244.3.4"


def test_the_search_wraps_and_a_full_pool_says_so():
    p = AddressPool(Network.parse("10.0.0.0/29"), reserved=[ip_from_str("10.0.0.1")])
    assert p.capacity == 5    # .2 to .6: not the network, the broadcast or the gateway
    given_out = [p.allocate(str(i)) for i in range(5)]
    assert len(set(given_out)) == 5 and ip_from_str("10.0.0.7") not in given_out
    with pytest.raises(PoolExhausted, match="all 5 addresses of 10.0.0.0/29"):
        p.allocate("one more")
    p.release("1")
    assert p.allocate("again") == given_out[1]


def test_state_round_trips_and_keeps_the_cursor():
    p = pool()
    for name in ("a", "b", "c"):
        p.allocate(name)
    p.release("c")
    q = pool()
    assert q.restore(p.state()) == []
    assert q.allocations == p.allocations
    assert ip_to_str(q.allocate("d")) == "10.244.3.5"


def test_a_saved_state_is_checked_entry_by_entry():
    state = {"subnet": "10.244.3.0/24", "last": "bogus", "addresses": {
        "ok": "10.244.3.9", "outside": "10.244.4.2", "gateway": "10.244.3.1", "twice": "10.244.3.9",
        "garbage": "10.244.3.²", "broadcast": "10.244.3.255", "": "10.244.3.20", "number": 7}}
    p = pool()
    refused = p.restore(state)
    assert p.allocations == {"ok": ip_from_str("10.244.3.9")}
    assert len(refused) == 7 and any("given twice" in r for r in refused)
    assert pool().restore({"subnet": "10.244.7.0/24", "addresses": {"a": "10.244.7.2"}}) != []


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=80))
def test_no_address_is_ever_given_to_two_owners(steps):
    p = AddressPool(Network.parse("10.0.0.0/28"), reserved=[ip_from_str("10.0.0.1")])
    for allocate, owner in steps:
        if allocate:
            p.allocate(str(owner))
        else:
            p.release(str(owner))
        addresses = list(p.allocations.values())
        assert len(addresses) == len(set(addresses))
        assert all(a in p.subnet and a not in (ip_from_str("10.0.0.0"), ip_from_str("10.0.0.1"),
                                                ip_from_str("10.0.0.15")) for a in addresses)
