"""Properties of the bridge under arbitrary traffic, port flaps and timers."""

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from scapy.all import Ether, raw

from vswitch.core.actions import Drop, DropReason, Transmit
from vswitch.core.l2.bridge import Bridge

PORTS = ["p1", "p2", "p3", "p4"]
UNICAST = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 7)]
GROUP = [b"\xff" * 6, bytes.fromhex("01005e000001"), bytes.fromhex("0180c2000000"),
         bytes.fromhex("0180c200000e"), bytes.fromhex("0180c2000010")]
ZERO = bytes(6)
PROBE = bytes([2, 0xEE, 0, 0, 0, 1])

structured = st.builds(
    lambda dst, src, payload: dst + src + b"\x08\x00" + payload,
    st.sampled_from(UNICAST + GROUP + [ZERO]),
    st.sampled_from(UNICAST + UNICAST + GROUP[:2] + [ZERO]),  # mostly valid sources
    st.binary(max_size=30),
)
frames = st.one_of(structured, st.binary(max_size=40))

step = st.one_of(
    st.tuples(st.just("rx"), st.sampled_from(PORTS), st.lists(frames, max_size=8), st.floats(0, 40)),
    st.tuples(st.just("flap"), st.sampled_from(PORTS), st.booleans(), st.floats(0, 5)),
    st.tuples(st.just("timer"), st.just(""), st.just(None), st.floats(0, 40)),
)


class Checked:
    """Drives a Bridge and keeps the counts an outside observer would see."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.rx = Counter()
        self.rx_bytes = Counter()
        self.tx = Counter()
        self.tx_bytes = Counter()
        self.dropped = Counter()
        self.reasons = Counter()

    def handle(self, port, batch, now):
        # fresh objects so identity tells frames apart (lengths 0/1 are interned, but never forwarded)
        batch = [bytes(bytearray(f)) for f in batch]
        up = {name for name, p in self.bridge.ports.items() if p.up}
        actions = self.bridge.handle_frames(port, batch, now)
        self.rx[port] += len(batch)
        self.rx_bytes[port] += sum(map(len, batch))

        sent: dict[int, set[str]] = {}
        dropped: Counter[int] = Counter()
        seen_ports = set()
        for action in actions:
            if isinstance(action, Transmit):
                assert action.port != port, "a frame went back out of its ingress port"
                assert action.port in up, "a frame went out of a down port"
                assert action.port not in seen_ports
                seen_ports.add(action.port)
                position = {id(f): i for i, f in enumerate(batch)}
                order = [position[id(f)] for f in action.frames]  # KeyError: not a frame of this batch
                assert order == sorted(order), "order changed on an egress port"
                for f in action.frames:
                    sent.setdefault(id(f), set()).add(action.port)
                self.tx[action.port] += len(action.frames)
                self.tx_bytes[action.port] += sum(map(len, action.frames))
            else:
                assert isinstance(action, Drop)
                assert action.port == port
                dropped[id(action.frame)] += 1
                self.dropped[port] += 1
                self.reasons[action.reason] += 1

        flood = up - {port}
        for f in batch:
            if len(f) < 14:
                continue
            if id(f) in sent:
                assert dropped[id(f)] == 0
                targets = sent[id(f)]
                if f[0] & 1:
                    assert targets == flood
                else:
                    assert len(targets) == 1 or targets == flood
            else:
                assert dropped[id(f)] == 1, "every frame is either forwarded or dropped once"
        truncated = sum(1 for a in actions if isinstance(a, Drop) and a.reason is DropReason.TRUNCATED)
        if port in up:
            assert truncated == sum(1 for f in batch if len(f) < 14)
        else:
            assert not sent
            assert [a.reason for a in actions] == [DropReason.PORT_DOWN] * len(batch)
        return batch, actions


@given(st.lists(step, max_size=25))
def test_bridge_invariants(steps):
    bridge = Bridge(ageing=30)
    for name in PORTS:
        bridge.add_port(name)
    checked = Checked(bridge)
    now = 0.0
    for kind, port, arg, dt in steps:
        now += dt
        if kind == "flap":
            bridge.set_port_up(port, arg)
            if not arg:
                assert all(e.port != port for e in bridge.fdb if not e.static)
            continue
        if kind == "timer":
            assert bridge.handle_timer(now) == []
            deadline = bridge.poll_at()
            assert deadline is None or deadline > now
            continue
        batch, _ = checked.handle(port, arg, now)
        if not bridge.ports[port].up:
            continue
        learned = [f[6:12] for f in batch if len(f) >= 14 and not f[6] & 1 and f[6:12] != ZERO]
        if not learned:
            continue
        # the last sighting of a source wins, and traffic to it goes exactly there
        src = learned[-1]
        entry = bridge.fdb.lookup(src, now)
        assert entry is not None and entry.port == port
        other = next((p for p, s in bridge.ports.items() if s.up and p != port), None)
        if other is not None:
            probe = src + PROBE + b"\x88\xb5probe"
            _, actions = checked.handle(other, [probe], now)
            assert [(a.port, len(a.frames)) for a in actions if isinstance(a, Transmit)] == [(port, 1)]

    stats = bridge.statistics()
    for name in PORTS:
        p = stats.ports[name]
        assert (p.rx_frames, p.rx_bytes, p.tx_frames, p.tx_bytes, p.rx_dropped) == (
            checked.rx[name], checked.rx_bytes[name], checked.tx[name], checked.tx_bytes[name], checked.dropped[name],
        )
    assert stats.drops == {reason: n for reason, n in checked.reasons.items() if n}
    assert DropReason.TX_QUEUE_FULL not in stats.drops


@given(st.lists(st.binary(max_size=80), max_size=30), st.sampled_from(PORTS), st.floats(0, 1e6))
def test_arbitrary_bytes_never_raise_and_never_return_to_ingress(batch, port, now):
    bridge = Bridge()
    for name in PORTS:
        bridge.add_port(name)
    checked = Checked(bridge)
    checked.handle(port, batch, now)


@given(st.lists(st.tuples(st.sampled_from(UNICAST), st.sampled_from(PORTS)), min_size=1, max_size=30))
def test_scapy_frames_are_forwarded_unchanged(sightings):
    bridge = Bridge()
    for name in PORTS:
        bridge.add_port(name)
    for i, (src, port) in enumerate(sightings):
        dst = sightings[i - 1][0]
        f = raw(Ether(src=src.hex(":"), dst=dst.hex(":")) / (b"%d" % i))
        for action in bridge.handle_frames(port, [f], float(i)):
            if isinstance(action, Transmit):
                assert action.frames == [f] and action.frames[0] is f
                assert Ether(action.frames[0]).src == src.hex(":")
