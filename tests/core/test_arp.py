"""The neighbour cache: states, the pending queue, retries, eviction and GC, with time passed in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vswitch.core.l3.neighbour import REFRESH_INTERVAL, NeighbourTable, State


def addr(n: int) -> bytes:
    return bytes((198, 51, 100, n))


def hw(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


def table(**kwargs) -> NeighbourTable:
    options = {"reachable_time": 30.0, "gc_stale_time": 60.0, "retrans_time": 1.0, "delay_first_probe": 5.0}
    return NeighbourTable(**{**options, "max_probes": 3, **kwargs})


def state(t: NeighbourTable, n: int, now: float) -> State | None:
    entry = t.get(addr(n))
    return None if entry is None else entry.state(now, t.reachable_time)


def send(t: NeighbourTable, n: int, packet: bytes, now: float):
    """What the router does per packet: the fast path, then the slow one."""
    return t.lookup(addr(n), now) or t.resolve(addr(n), packet, now).mac


# -- resolving ---------------------------------------------------------------------


def test_unknown_address_is_held_and_asked_for_once():
    t = table()
    first = t.resolve(addr(5), b"p1", 10.0)
    assert first.mac is None and first.request and first.dropped == []
    assert state(t, 5, 10.0) is State.INCOMPLETE
    second = t.resolve(addr(5), b"p2", 10.2)
    assert second.mac is None and not second.request   # rate-limited: the timer asks again
    assert t.get(addr(5)).queue == [b"p1", b"p2"]
    assert t.lookup(addr(5), 10.3) is None
    assert t.statistics().requests == 1


def test_reply_releases_held_packets_in_order_and_makes_the_entry_reachable():
    t = table()
    for i in range(3):
        t.resolve(addr(5), b"p%d" % i, 10.0 + i / 10)
    held = t.learn(addr(5), hw(5), 10.5, confirmed=True, create=False)
    assert held == [b"p0", b"p1", b"p2"]
    assert state(t, 5, 10.5) is State.REACHABLE
    assert t.get(addr(5)).queue == []
    assert t.resolve(addr(5), b"p3", 10.6).mac == hw(5)
    assert t.poll_at() == pytest.approx(10.0 + 60.0)   # nothing probing: only the GC deadline remains
    assert t.handle_timer(20.0).requests == []          # no more requests once resolved
    stats = t.statistics()
    assert stats.resolved == 1 and stats.requests == 1 and stats.entries == 1


def test_overheard_request_resolves_an_incomplete_entry_but_leaves_it_stale():
    t = table()
    t.resolve(addr(5), b"p", 0.0)
    held = t.learn(addr(5), hw(5), 0.5, confirmed=False, create=False)
    assert held == [b"p"]
    assert state(t, 5, 0.5) is State.STALE
    assert t.handle_timer(1.0).requests == []  # resolved: no longer probing


def test_queue_is_bounded_and_drops_the_oldest():
    t = table(queue_len=3)
    assert t.resolve(addr(5), b"p0", 0.0).request
    for i in range(1, 3):
        assert t.resolve(addr(5), b"p%d" % i, 0.0).dropped == []
    res = t.resolve(addr(5), b"p3", 0.0)
    assert res.mac is None and res.dropped == [b"p0"]
    res = t.resolve(addr(5), b"p4", 0.0)
    assert res.dropped == [b"p1"]
    assert t.get(addr(5)).queue == [b"p2", b"p3", b"p4"]
    assert t.statistics().queue_dropped == 2
    assert t.learn(addr(5), hw(5), 0.1, confirmed=True, create=False) == [b"p2", b"p3", b"p4"]


def test_max_pending_bounds_addresses_resolving_at_once():
    t = table(max_pending=2)
    assert t.resolve(addr(1), b"a", 0.0).request
    assert t.resolve(addr(2), b"b", 0.0).request
    res = t.resolve(addr(3), b"c", 0.0)
    assert res.mac is None and not res.request and res.dropped == [b"c"]
    assert t.get(addr(3)) is None
    assert t.statistics().pending_full == 1
    # a resolving address still takes more packets; a resolved one frees a slot
    assert t.resolve(addr(1), b"a2", 0.0).dropped == []
    t.learn(addr(1), hw(1), 0.5, confirmed=True, create=False)
    assert t.resolve(addr(3), b"c2", 0.6).request


# -- retries and failure -----------------------------------------------------------


def test_requests_repeat_every_retrans_time_then_the_address_fails_with_its_packets():
    t = table(retrans_time=1.0, max_probes=3)
    t.resolve(addr(5), b"p0", 100.0)
    t.resolve(addr(5), b"p1", 100.1)
    assert t.poll_at() == 101.0
    assert t.handle_timer(100.9) == t.handle_timer(100.9)  # nothing due
    assert t.handle_timer(100.99).requests == []
    assert t.handle_timer(101.0).requests == [addr(5)]
    assert t.poll_at() == 102.0
    assert t.handle_timer(101.5).requests == []
    assert t.handle_timer(102.0).requests == [addr(5)]
    assert t.statistics().requests == 3   # max_probes requests in all
    expiry = t.handle_timer(103.0)
    assert expiry.requests == []
    assert expiry.failed == [(addr(5), [b"p0", b"p1"])]
    assert t.get(addr(5)) is None
    assert t.statistics().failed == 1
    assert t.poll_at() is None
    # a new packet starts over
    assert t.resolve(addr(5), b"p2", 103.5).request


@pytest.mark.parametrize("max_probes", [1, 2, 5])
def test_number_of_requests_is_max_probes(max_probes):
    t = table(max_probes=max_probes, retrans_time=0.5)
    t.resolve(addr(9), b"p", 0.0)
    requests, failed, now = 1, [], 0.0
    while not failed:
        now = t.poll_at()
        assert now is not None and now <= 0.5 * (max_probes + 1)
        expiry = t.handle_timer(now)
        requests += len(expiry.requests)
        failed = expiry.failed
    assert requests == max_probes
    assert now == pytest.approx(0.5 * max_probes)
    assert failed == [(addr(9), [b"p"])]


def test_late_reply_after_failure_is_not_learned_unless_addressed_to_us():
    t = table(max_probes=1)
    t.resolve(addr(5), b"p", 0.0)
    assert t.handle_timer(1.0).failed
    assert t.learn(addr(5), hw(5), 1.5, confirmed=True, create=False) == []
    assert t.get(addr(5)) is None


# -- REACHABLE, STALE, DELAY -----------------------------------------------------------


def test_reachable_becomes_stale_after_reachable_time():
    t = table(reachable_time=30.0)
    t.learn(addr(5), hw(5), 10.0, confirmed=True, create=True)
    assert state(t, 5, 10.0) is State.REACHABLE
    assert state(t, 5, 39.99) is State.REACHABLE
    assert state(t, 5, 40.0) is State.STALE
    assert t.lookup(addr(5), 10.5) == hw(5)
    assert t.lookup(addr(5), 40.0) is None  # stale: the slow path decides


def test_stale_entry_in_use_is_still_used_and_refreshed_after_a_delay():
    t = table(reachable_time=30.0, delay_first_probe=5.0, retrans_time=1.0, max_probes=3)
    t.learn(addr(5), hw(5), 0.0, confirmed=True, create=True)
    res = t.resolve(addr(5), b"p", 35.0)
    assert res.mac == hw(5) and not res.request and res.dropped == []
    assert t.poll_at() == 40.0                       # DELAY
    assert t.resolve(addr(5), b"q", 36.0).mac == hw(5)
    assert t.poll_at() == 40.0                       # still one refresh, not rescheduled
    assert t.handle_timer(39.9).requests == []
    assert t.handle_timer(40.0).requests == [addr(5)]
    # an overheard request does not count as an answer ...
    t.learn(addr(5), hw(5), 40.5, confirmed=False, create=False)
    assert t.handle_timer(41.0).requests == [addr(5)]
    # ... a reply does
    assert t.learn(addr(5), hw(5), 41.5, confirmed=True, create=False) == []
    assert state(t, 5, 41.5) is State.REACHABLE
    assert t.handle_timer(42.0).requests == []
    assert t.get(addr(5)) is not None


def test_refreshing_stale_entries_counts_against_max_pending():
    # The fuzzer saw 260 addresses being asked for on a table whose max_pending is 256 (issue 10): stale
    # entries in use joined the refresh without the limit, which also bounds how fast a table asks.
    t = table(max_pending=2)
    for n in (1, 2, 3):
        t.learn(addr(n), hw(n), 0.0, confirmed=True, create=True)
    for n in (1, 2, 3):
        assert t.resolve(addr(n), b"p", 31.0).mac == hw(n)    # stale, and still used
    assert t.handle_timer(36.0).requests == [addr(1), addr(2)]
    for n in (1, 2):
        t.learn(addr(n), hw(n), 36.5, confirmed=True, create=False)
    assert t.resolve(addr(3), b"q", 37.0).mac == hw(3)          # room again: now it is refreshed
    assert t.handle_timer(42.0).requests == [addr(3)]


def test_stale_entry_that_never_answers_is_removed():
    t = table(reachable_time=30.0, delay_first_probe=5.0, retrans_time=1.0, max_probes=2)
    t.learn(addr(5), hw(5), 0.0, confirmed=True, create=True)
    assert t.resolve(addr(5), b"p", 31.0).mac == hw(5)
    asked = []
    for now in (36.0, 37.0):
        asked += t.handle_timer(now).requests
    assert asked == [addr(5), addr(5)]
    expiry = t.handle_timer(38.0)
    assert expiry.failed == [(addr(5), [])]   # nothing was held: the packets went out
    assert t.get(addr(5)) is None


def test_stale_entry_not_in_use_is_not_probed():
    t = table()
    t.learn(addr(5), hw(5), 0.0, confirmed=True, create=True)
    assert state(t, 5, 31.0) is State.STALE
    assert t.poll_at() == 60.0          # only GC
    assert t.handle_timer(45.0).requests == []


def test_new_mac_in_a_request_makes_the_entry_stale_with_the_new_mac():
    t = table()
    t.learn(addr(5), hw(5), 0.0, confirmed=True, create=True)
    t.learn(addr(5), hw(6), 1.0, confirmed=False, create=False)
    entry = t.get(addr(5))
    assert entry.mac == hw(6)
    assert entry.state(1.0, t.reachable_time) is State.STALE
    t.learn(addr(5), hw(6), 2.0, confirmed=True, create=False)
    assert t.get(addr(5)).state(2.0, t.reachable_time) is State.REACHABLE


def test_learn_creates_only_when_asked():
    t = table()
    assert t.learn(addr(5), hw(5), 0.0, confirmed=False, create=False) == []
    assert t.get(addr(5)) is None and len(t) == 0
    t.learn(addr(5), hw(5), 0.0, confirmed=False, create=True)
    assert state(t, 5, 0.0) is State.STALE  # a request addressed to us: known, not confirmed


# -- static entries ------------------------------------------------------------------


def test_static_entries_never_change_age_or_get_probed():
    t = table()
    t.add_static(addr(1), hw(1))
    assert state(t, 1, 0.0) is State.STATIC
    assert t.lookup(addr(1), 1e9) == hw(1)
    assert t.resolve(addr(1), b"p", 1e9).mac == hw(1)
    assert t.learn(addr(1), hw(9), 5.0, confirmed=True, create=True) == []
    assert t.get(addr(1)).mac == hw(1)
    assert t.poll_at() is None
    assert t.handle_timer(1e9).requests == []
    assert t.flush() == []
    assert t.get(addr(1)).mac == hw(1)   # flush forgets dynamic entries only
    assert t.remove(addr(1)).mac == hw(1)
    assert t.get(addr(1)) is None


def test_static_replaces_a_resolving_entry_and_stops_its_requests():
    t = table()
    t.resolve(addr(1), b"p", 0.0)
    t.add_static(addr(1), hw(1))
    assert state(t, 1, 0.0) is State.STATIC
    assert len(t) == 1
    assert t.handle_timer(5.0) == t.handle_timer(5.0)
    assert t.handle_timer(5.0).requests == [] and t.handle_timer(5.0).failed == []


def test_remove_and_flush():
    t = table()
    t.resolve(addr(1), b"p1", 0.0)
    t.resolve(addr(2), b"p2", 0.0)
    t.learn(addr(3), hw(3), 0.0, confirmed=True, create=True)
    removed = t.remove(addr(1))
    assert removed.queue == [b"p1"]
    assert t.remove(addr(1)) is None
    assert sorted(t.flush()) == [b"p2"]
    assert len(t) == 0 and t.poll_at() is None
    assert t.handle_timer(10.0).requests == []


def test_limits_must_be_positive():
    for name in ("max_entries", "max_pending", "queue_len", "max_probes"):
        with pytest.raises(ValueError):
            NeighbourTable(**{name: 0})


# -- bounds: LRU eviction ----------------------------------------------------------------


def test_full_table_evicts_the_least_recently_used_entry():
    t = table(max_entries=3)
    for n in (1, 2, 3):
        t.learn(addr(n), hw(n), float(n), confirmed=True, create=True)
    assert send(t, 1, b"x", 5.0) == hw(1)  # 1 is now the most recently used
    t.learn(addr(4), hw(4), 6.0, confirmed=True, create=True)
    assert {e.ip for e in t} == {addr(1), addr(3), addr(4)}
    assert t.statistics().evicted == 1
    res = t.resolve(addr(5), b"p", 7.0)     # evicts 3, the least recently used now
    assert res.request and res.dropped == []
    assert {e.ip for e in t} == {addr(1), addr(4), addr(5)}
    assert t.statistics().evicted == 2 and len(t) == 3


def test_eviction_prefers_entries_that_are_not_resolving():
    t = table(max_entries=3)
    t.resolve(addr(1), b"p1", 0.0)        # oldest, resolving
    t.learn(addr(2), hw(2), 1.0, confirmed=True, create=True)
    t.learn(addr(3), hw(3), 2.0, confirmed=True, create=True)
    t.resolve(addr(4), b"p4", 3.0)
    assert {e.ip for e in t} == {addr(1), addr(3), addr(4)}
    assert t.get(addr(1)).queue == [b"p1"]


def test_eviction_of_a_resolving_entry_hands_back_its_packets():
    t = table(max_entries=2, max_pending=4)
    t.resolve(addr(1), b"p1", 0.0)
    t.resolve(addr(2), b"p2", 0.0)
    res = t.resolve(addr(3), b"p3", 0.0)
    assert res.request and res.dropped == [b"p1"]
    assert t.get(addr(1)) is None
    assert t.handle_timer(1.0).requests == [addr(2), addr(3)]  # 1 is no longer asked for


def test_learning_a_stranger_never_evicts_packets_waiting_for_an_answer():
    t = table(max_entries=2, max_pending=2)
    t.resolve(addr(1), b"p1", 0.0)
    t.resolve(addr(2), b"p2", 0.0)
    assert t.learn(addr(3), hw(3), 0.5, confirmed=False, create=True) == []
    assert [p for e in t for p in e.queue] == [b"p1", b"p2"]
    assert t.learn(addr(1), hw(1), 0.6, confirmed=True, create=False) == [b"p1"]
    assert t.learn(addr(2), hw(2), 0.6, confirmed=True, create=False) == [b"p2"]


def test_static_entries_do_not_count_against_max_entries():
    t = table(max_entries=1)
    t.add_static(addr(1), hw(1))
    t.learn(addr(2), hw(2), 0.0, confirmed=True, create=True)
    assert len(t) == 2 and t.statistics().evicted == 0


# -- GC ------------------------------------------------------------------------------------


def test_unused_entries_are_forgotten_after_gc_stale_time():
    t = table(gc_stale_time=60.0)
    t.learn(addr(1), hw(1), 0.0, confirmed=True, create=True)
    t.learn(addr(2), hw(2), 10.0, confirmed=True, create=True)
    assert t.poll_at() == 60.0
    t.handle_timer(59.9)
    assert len(t) == 2
    t.handle_timer(60.0)
    assert {e.ip for e in t} == {addr(2)}
    assert t.poll_at() == 70.0
    assert t.statistics().expired == 1


def test_entries_in_use_are_kept_by_the_gc():
    """The fast path leaves ``used`` alone only within REFRESH_INTERVAL, so a used entry never ages out."""
    t = table(gc_stale_time=60.0, reachable_time=1000.0)
    t.learn(addr(1), hw(1), 0.0, confirmed=True, create=True)
    t.learn(addr(2), hw(2), 0.0, confirmed=True, create=True)
    now = 0.0
    while now < 200.0:
        assert send(t, 1, b"x", now) == hw(1)
        now += REFRESH_INTERVAL / 4
        deadline = t.poll_at()
        if deadline is not None and deadline <= now:
            t.handle_timer(now)
    assert t.get(addr(1)) is not None
    assert t.get(addr(2)) is None


def test_poll_at_is_after_now_once_the_timer_ran():
    """A deadline handle_timer would not act on makes the shell spin: here GC is shorter than resolving."""
    t = table(gc_stale_time=2.0, retrans_time=1.0, max_probes=3)
    t.resolve(addr(1), b"p", 0.0)
    now = 0.0
    seen = []
    for _ in range(10):
        deadline = t.poll_at()
        if deadline is None:
            break
        assert deadline > now
        now = deadline
        expiry = t.handle_timer(now)
        seen += expiry.failed
    assert seen == [(addr(1), [b"p"])]
    assert now == 3.0


# -- a property: packets are never lost without a word ------------------------------------------

_op = st.one_of(
    st.tuples(st.just("resolve"), st.integers(1, 6)),
    st.tuples(st.just("learn"), st.integers(1, 6), st.booleans(), st.booleans(), st.integers(1, 2)),
    st.tuples(st.just("timer"),),
    st.tuples(st.just("remove"), st.integers(1, 6)),
    st.tuples(st.just("flush"),),
)


@given(
    ops=st.lists(st.tuples(_op, st.floats(0.0, 3.0)), max_size=60),
    max_entries=st.integers(1, 5),
    max_pending=st.integers(1, 6),
    queue_len=st.integers(1, 3),
    max_probes=st.integers(1, 3),
)
def test_every_packet_is_sent_held_or_handed_back(ops, max_entries, max_pending, queue_len, max_probes):
    t = NeighbourTable(
        reachable_time=4.0, gc_stale_time=10.0, retrans_time=1.0, delay_first_probe=2.0,
        max_probes=max_probes, max_entries=max_entries, max_pending=max_pending, queue_len=queue_len,
    )
    given_in, handed_back = [], []
    now, serial = 0.0, 0
    for op, step in ops:
        now += step
        if op[0] == "resolve":
            serial += 1
            packet = b"%d" % serial
            given_in.append(packet)
            res = t.resolve(addr(op[1]), packet, now)
            handed_back += res.dropped
            if res.mac is not None:
                handed_back.append(packet)
                assert res.dropped == []
        elif op[0] == "learn":
            _, n, confirmed, create, m = op
            handed_back += t.learn(addr(n), hw(m), now, confirmed=confirmed, create=create)
        elif op[0] == "timer":
            expiry = t.handle_timer(now)
            handed_back += [p for _, held in expiry.failed for p in held]
        elif op[0] == "remove":
            removed = t.remove(addr(op[1]))
            if removed is not None:
                handed_back += removed.queue
        else:
            handed_back += t.flush()
        assert len(t) <= max_entries
        resolving = [e for e in t if e.mac is None]
        assert len(resolving) <= max_pending
        assert len(t._probing) <= max_pending   # stale entries being refreshed count too
        assert all(len(e.queue) <= queue_len for e in t)
        assert all(e.queue == [] for e in t if e.mac is not None)
    still_held = [p for e in t for p in e.queue]
    assert sorted(handed_back + still_held) == sorted(given_in)
    assert len(set(handed_back + still_held)) == len(given_in)  # none handed back twice
