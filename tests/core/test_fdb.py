"""The forwarding database: learning, moves, ageing with an explicit clock, limits, statics."""

import pytest

from vswitch.core.l2.fdb import DEFAULT_AGEING, Fdb

A = b"\x02\x00\x00\x00\x00\x0a"
B = b"\x02\x00\x00\x00\x00\x0b"
C = b"\x02\x00\x00\x00\x00\x0c"
D = b"\x02\x00\x00\x00\x00\x0d"


def test_learn_then_lookup():
    fdb = Fdb()
    assert fdb.lookup(A, 0.0) is None
    fdb.learn(A, "p1", 5.0)
    entry = fdb.lookup(A, 5.0)
    assert entry is not None
    assert (entry.mac, entry.port, entry.static, entry.updated) == (A, "p1", False, 5.0)
    assert fdb.lookup(B, 5.0) is None
    assert len(fdb) == 1
    assert [e.mac for e in fdb] == [A]
    stats = fdb.statistics()
    assert stats.learned == 1 and stats.entries == 1 and stats.moved == 0


def test_default_ageing():
    assert Fdb().ageing == DEFAULT_AGEING == 300.0


def test_relearn_refreshes_and_reorders():
    fdb = Fdb(ageing=10)
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 1.0)
    assert fdb.poll_at() == 10.0  # A is oldest
    fdb.learn(A, "p1", 2.0)
    assert fdb.get(A).updated == 2.0
    assert fdb.poll_at() == 11.0  # now B is oldest
    assert fdb.statistics().learned == 2  # a refresh is not a new entry
    assert fdb.handle_timer(11.0) == 1
    assert fdb.lookup(B, 11.0) is None
    assert fdb.lookup(A, 11.0) is not None


def test_station_move():
    fdb = Fdb()
    fdb.learn(A, "p1", 0.0)
    fdb.learn(A, "p2", 1.0)
    entry = fdb.lookup(A, 1.0)
    assert entry.port == "p2" and entry.updated == 1.0
    stats = fdb.statistics()
    assert stats.moved == 1 and stats.learned == 1 and stats.entries == 1
    fdb.learn(A, "p2", 2.0)
    assert fdb.statistics().moved == 1  # same port again is not a move


def test_moved_entry_becomes_youngest():
    fdb = Fdb(ageing=10, max_entries=2)
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 1.0)
    fdb.learn(A, "p2", 2.0)
    fdb.learn(C, "p1", 3.0)  # evicts B, the oldest, not the moved A
    assert fdb.get(B) is None
    assert fdb.get(A).port == "p2"


def test_expires_exactly_at_updated_plus_ageing():
    fdb = Fdb(ageing=10)
    fdb.learn(A, "p1", 100.0)
    assert fdb.poll_at() == 110.0
    assert fdb.lookup(A, 109.999) is not None
    assert fdb.lookup(A, 110.0) is None  # lazily expired...
    assert fdb.get(A) is not None        # ...but still stored until the timer runs
    assert fdb.handle_timer(109.999) == 0
    assert len(fdb) == 1
    assert fdb.handle_timer(fdb.poll_at()) == 1  # woken at poll_at, the timer makes progress
    assert len(fdb) == 0
    assert fdb.get(A) is None
    assert fdb.poll_at() is None
    assert fdb.statistics().aged == 1


def test_handle_timer_removes_only_what_expired_and_counts_it():
    fdb = Fdb(ageing=10)
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 1.0)
    fdb.learn(C, "p2", 2.0)
    fdb.learn(D, "p2", 5.0)
    assert fdb.handle_timer(12.0) == 3
    assert [e.mac for e in fdb] == [D]
    assert fdb.poll_at() == 15.0
    assert fdb.handle_timer(1000.0) == 1
    assert fdb.statistics().aged == 4


def test_poll_at_none_when_empty():
    assert Fdb().poll_at() is None
    assert Fdb().handle_timer(1e9) == 0


def test_max_entries_evicts_oldest_dynamic():
    fdb = Fdb(max_entries=3)
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 1.0)
    fdb.learn(C, "p1", 2.0)
    fdb.learn(A, "p1", 3.0)  # refresh: B is now the oldest
    fdb.learn(D, "p1", 4.0)
    assert len(fdb) == 3
    assert fdb.get(B) is None
    assert {e.mac for e in fdb} == {A, C, D}
    stats = fdb.statistics()
    assert stats.evicted == 1 and stats.learned == 4


def test_static_never_ages():
    fdb = Fdb(ageing=10)
    fdb.add_static(A, "p1", now=0.0)
    assert fdb.poll_at() is None
    assert fdb.handle_timer(1e9) == 0
    entry = fdb.lookup(A, 1e9)
    assert entry is not None and entry.static and entry.port == "p1"


def test_static_never_moves_and_conflict_is_counted():
    fdb = Fdb()
    fdb.add_static(A, "p1")
    fdb.learn(A, "p2", 1.0)
    assert fdb.lookup(A, 1.0).port == "p1"
    assert fdb.lookup(A, 1.0).static
    stats = fdb.statistics()
    assert stats.static_conflicts == 1 and stats.moved == 0 and stats.learned == 0
    fdb.learn(A, "p1", 2.0)  # seen where it belongs: no conflict
    assert fdb.statistics().static_conflicts == 1
    assert fdb.poll_at() is None  # and it did not become dynamic


def test_static_never_evicted():
    fdb = Fdb(max_entries=2)
    fdb.add_static(A, "p1")
    fdb.learn(B, "p1", 0.0)
    fdb.learn(C, "p1", 1.0)
    assert fdb.get(A) is not None and fdb.get(B) is None and fdb.get(C) is not None
    assert fdb.statistics().evicted == 1


def test_full_of_statics_learns_nothing_and_add_static_raises():
    fdb = Fdb(max_entries=2)
    fdb.add_static(A, "p1")
    fdb.add_static(B, "p1")
    fdb.learn(C, "p2", 0.0)
    assert fdb.get(C) is None
    assert len(fdb) == 2
    with pytest.raises(ValueError):
        fdb.add_static(C, "p2")
    fdb.add_static(A, "p3")  # replacing an existing static needs no room
    assert fdb.get(A).port == "p3"


def test_add_static_over_dynamic_stops_it_ageing():
    fdb = Fdb(ageing=10)
    fdb.learn(A, "p1", 0.0)
    fdb.add_static(A, "p2", now=1.0)
    assert fdb.poll_at() is None
    assert fdb.handle_timer(100.0) == 0
    assert fdb.lookup(A, 100.0).port == "p2"
    assert len(fdb) == 1


def test_flush_port_dynamic_only():
    fdb = Fdb()
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 0.0)
    fdb.learn(C, "p2", 0.0)
    fdb.add_static(D, "p1")
    assert fdb.flush("p1") == 2
    assert {e.mac for e in fdb} == {C, D}
    assert fdb.statistics().flushed == 2
    assert fdb.poll_at() == 300.0  # C remains in the ageing order
    assert fdb.handle_timer(300.0) == 1


def test_flush_port_including_static():
    fdb = Fdb()
    fdb.learn(A, "p1", 0.0)
    fdb.add_static(D, "p1")
    fdb.add_static(C, "p2")
    assert fdb.flush("p1", include_static=True) == 2
    assert {e.mac for e in fdb} == {C}


def test_flush_everything():
    fdb = Fdb()
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p2", 0.0)
    fdb.add_static(C, "p3")
    assert fdb.flush() == 2
    assert {e.mac for e in fdb} == {C}
    assert fdb.flush(include_static=True) == 1
    assert len(fdb) == 0


def test_remove():
    fdb = Fdb(ageing=10)
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 5.0)
    assert fdb.remove(A) is True
    assert fdb.remove(A) is False
    assert fdb.get(A) is None
    assert fdb.poll_at() == 15.0  # the removed entry no longer drives the timer
    fdb.add_static(C, "p1")
    assert fdb.remove(C) is True
    assert len(fdb) == 1


def test_iteration_is_a_snapshot():
    fdb = Fdb()
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 0.0)
    for entry in fdb:
        fdb.remove(entry.mac)  # must not break the loop
    assert len(fdb) == 0


@pytest.mark.parametrize("kwargs", [
    {"ageing": 0}, {"ageing": -1}, {"ageing": -0.5}, {"max_entries": 0}, {"max_entries": -3},
])
def test_invalid_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        Fdb(**kwargs)


def test_smallest_valid_table():
    fdb = Fdb(ageing=0.001, max_entries=1)
    fdb.learn(A, "p1", 0.0)
    fdb.learn(B, "p1", 0.0)
    assert [e.mac for e in fdb] == [B]
