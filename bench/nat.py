"""The userspace router and NAT: TCP through the daemon, and the core's lookups per second.

Device part (root, iproute2, iperf3, ping; skipped with a note on stderr otherwise).
Two containers sit on the daemon's bridge (TAP ports, 10.244.1.2 and .3/24,
gateway 10.244.1.1 on the router); the router's ``ext`` interface is an
AF_PACKET port on a veth whose other end is an outside host's eth0
(198.51.100.1/24) in a namespace of its own. One iperf3 TCP stream each
(5 s by default; ``--duration``, whole seconds):

* ``nat.bridged.tcp``: container -> container on the same bridge;
* ``nat.routed.tcp``: container -> outside host through the router, no NAT
  (the outside host routes 10.244.0.0/16 back via 198.51.100.2);
* ``nat.masquerade.tcp``: the same through a second daemon whose config adds
  ``[[nat.masquerade]]`` (the outside host has no route back: only translated
  traffic can answer);

each with its ratio to the bridged figure (``*.tcp_ratio``). The veth end in
this namespace has no address and IPv6 disabled, so the host's own stack
sends nothing on it; every namespace and the veth are removed at the end.

Core part (no devices, no Trio): a :class:`Router` with 10,000 random routes
(/16 to /32 through 32 gateways, plus the default), 1,000 inside hosts and a
:class:`Nat` tracking 100,000 connections (60 % TCP, taken through the
three-way handshake, 40 % UDP, answered), all made by pushing frames through
``Router.handle_frames``; every neighbour is a static entry. Then batches of
64 frames of those established flows, picked at random, alternate between the
inside interface (original direction) and the outside one (answers):

* ``nat.core.routed.<size>B``: a router without NAT (the outside routes back);
* ``nat.core.masquerade.<size>B``: the router with the NAT, every packet translated;
* ``nat.core.routed.scale_ratio`` / ``nat.core.masquerade.scale_ratio``: the
  time per 64-byte packet through those routers over the time through routers
  with small tables (100 routes, 100 inside hosts, 1,000 connections), the same
  number of distinct frames each, in turn; the target is at most 1.10;
* ``nat.core.lookup.hit`` / ``.miss``: ``RouteTable.lookup`` alone over the
  same 10,000 routes, destinations already cached, or more distinct
  destinations than the cache holds so that every lookup walks the prefix lengths.

New connections per second through ``Router.handle_frames`` (TCP SYNs of 64
bytes, batches of 64, the same routes) with a NAT of the daemon's default size
(65,536 connections, 16,384 per source), whatever state its table is in:

* ``nat.core.new_connections.empty``: the table starts empty; 16,384 new
  connections from the inside hosts, each one translated and sent;
* ``.source_at_limit``: one host holds its 16,384 connections and keeps
  opening more, every one refused (nat-source-limit), while
  ``.beside_source_at_limit`` is the other hosts' new connections, made in
  between its batches (one batch each in turn, each timed on its own);
* ``.ports_exhausted``: all 64,512 TCP ports of the masquerade address are
  held, by the inside hosts (about 65 each, far under their limit); every new
  connection is refused (nat-no-port);
* ``.worst_ratio``: the slowest of those over the empty table's figure; the
  target is at least 0.5 (within 2x).

The empty table and the source at its limit start each round from a new
table, set up outside the timing; the exhausted ports' table is set up once
(refusals leave it as it was). A line reports the best round and lists them
all.

``--duration`` sets both iperf3's run (rounded to whole seconds) and the
core's seconds per measured round of forwarding and lookups (0.5 by default,
best of 3); new connections are counted, not timed, per round (``--rounds``
applies). ``--quick`` shrinks the core's tables (1,000 routes, 4,000
connections, a NAT of 4,096 whose exhausted ports are mostly reserved by
forward rules rather than held) for smoke tests. ``--core-only`` skips the device
part (``python -m bench nat --core-only``); :func:`run_devices` and
:func:`run_core` run one part alone.
"""

import collections
import itertools
import math
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from vswitch.core.actions import Drop, DropReason, Transmit
from vswitch.core.l3.router import Router
from vswitch.core.l3.routes import ROUTE_CACHE
from vswitch.core.nat import (
    DEFAULT_MAX_CONNECTIONS,
    Forward,
    Masquerade,
    Nat,
    State,
    invert,
    make_key,
)
from vswitch.core.nat.mapping import PORT_RANGE
from vswitch.core.wire.addr import Network, ip_from_str
from vswitch.core.wire.ethernet import ETH_P_IP, build_ethernet
from vswitch.core.wire.ipv4 import PROTO_TCP, PROTO_UDP, build_ipv4
from vswitch.core.wire.tcp import ACK, SYN, build_tcp
from vswitch.core.wire.udp import build_udp
from vswitch.testing import (
    Daemon,
    Namespaces,
    outside_link,
    ping,
    sh,
    unique,
    uplink_config,
)

from .common import BATCH, FRAME_SIZES, Options, best_rate, mac, profiled, result
from .devices import iperf_seconds, iperf_tcp
from .devices import unavailable as devices_unavailable

CORE_DEFAULTS = dict(duration=0.5, rounds=3, warmup=0.2)
DEVICE_SECONDS = 5
SEED = 4  # the tables are random, the same every run
# The small tables the large ones are held against (``*.scale_ratio``), with the same number of distinct frames.
SMALL_TABLES = dict(routes=100, connections=1_000, hosts=100, servers=1_000)
SCALE_FRAME = 64
SCALE_TARGET = 1.10   # the large tables within 10% of the small ones


def unavailable() -> str | None:
    """Why the device part cannot run here, or None (the core part always can)."""
    return devices_unavailable("iperf3", "ping")


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    reason = "--core-only" if options.core_only else unavailable()
    if reason is None:
        yield from run_devices(options)
    else:
        print(f"bench nat: skipping the device part: {reason}", file=sys.stderr)
    yield from run_core(options)


# -- devices ---------------------------------------------------------------------------

BRIDGE_NET = "10.244.1.0/24"
GATEWAY = "10.244.1.1"
CONTAINERS = ("10.244.1.2", "10.244.1.3")
OUTSIDE, ROUTER_EXT = "198.51.100.1", "198.51.100.2"


def _start(workdir: Path, label: str, containers: tuple[str, str], uplink: str, *, masquerade: bool) -> Daemon:
    config = workdir / f"{label}.toml"
    taps = [
        {"name": unique("t"), "netns": ns, "address": f"{ip}/24", "gateway": GATEWAY}
        for ns, ip in zip(containers, CONTAINERS, strict=True)
    ]
    config.write_text(uplink_config("natbench", workdir / f"{label}.sock", taps, uplink, gateway=GATEWAY, ext=ROUTER_EXT,
                                    outside=OUTSIDE, masquerade=masquerade))
    return Daemon(config).start()


def _reach(daemon: Daemon, ns: str, address: str, what: str) -> None:
    if not ping(ns, address, count=3):
        raise RuntimeError(f"{what}: {ns} cannot reach {address}:\n{daemon.log}")


def run_devices(options: Options = Options()) -> Iterator[dict[str, Any]]:
    """The three iperf3 figures and their ratios; needs root and the tools (see :func:`unavailable`)."""
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"bench nat: {reason}")
    seconds = iperf_seconds(DEVICE_SECONDS if options.duration is None else options.duration)
    spaces = Namespaces()
    daemon: Daemon | None = None
    uplink = unique("u")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            c1, c2, outside = spaces.create(), spaces.create(), spaces.create()
            outside_link(uplink, outside, f"{OUTSIDE}/24")

            # bridge and router, no NAT: the outside host routes the containers' network back
            daemon = _start(workdir, "routed", (c1, c2), uplink, masquerade=False)
            sh("ip", "-n", outside, "route", "add", "10.244.0.0/16", "via", ROUTER_EXT)
            _reach(daemon, c1, CONTAINERS[1], "bridge")
            _reach(daemon, c1, OUTSIDE, "router")
            bridged = iperf_tcp(c1, c2, CONTAINERS[1], seconds, workdir)
            yield result("nat.bridged.tcp", round(bridged / 1e9, 3), "Gbit/s", seconds=seconds,
                         path="container -> bridge -> container")
            routed = iperf_tcp(c1, outside, OUTSIDE, seconds, workdir)
            forwarded = daemon.show("stats")["router"]["forwarded"]
            yield result("nat.routed.tcp", round(routed / 1e9, 3), "Gbit/s", seconds=seconds,
                         ratio_to_bridged=round(routed / bridged, 4), router_forwarded=forwarded,
                         path="container -> bridge -> router -> packet port -> outside host")
            yield result("nat.routed.tcp_ratio", round(routed / bridged, 4), "ratio", note="routed / bridged")
            daemon.stop()
            daemon = None

            # the same with masquerade; without the route back only translated traffic is answered
            sh("ip", "-n", outside, "route", "del", "10.244.0.0/16")
            daemon = _start(workdir, "masquerade", (c1, c2), uplink, masquerade=True)
            _reach(daemon, c1, OUTSIDE, "masquerade")
            masqueraded = iperf_tcp(c1, outside, OUTSIDE, seconds, workdir)
            nat = daemon.show("nat")["statistics"]
            yield result("nat.masquerade.tcp", round(masqueraded / 1e9, 3), "Gbit/s", seconds=seconds,
                         ratio_to_bridged=round(masqueraded / bridged, 4),
                         ratio_to_routed=round(masqueraded / routed, 4),
                         nat_translated=nat["translated"], nat_created=nat["created"],
                         path="container -> bridge -> router + masquerade -> packet port -> outside host")
            yield result("nat.masquerade.tcp_ratio", round(masqueraded / bridged, 4), "ratio",
                         note="masquerade / bridged")
        finally:
            if daemon is not None:
                daemon.kill()
            sh("ip", "link", "del", uplink, check=False)  # also removes the outside end
            spaces.cleanup()


# -- the core ------------------------------------------------------------------------------


@attrs.frozen
class Sizes:
    routes: int
    connections: int
    hosts: int
    servers: int
    batches: int       # distinct batches of 64 frames cycled through while measuring
    table: int         # the NAT's max_connections when new connections are measured
    new: int           # new connections per measured round
    held_ports: int    # ports held by connections when they are exhausted (the rest reserved by forward rules)
    gateways: int = 32


PORTS = PORT_RANGE[1] - PORT_RANGE[0] + 1   # 64,512
FULL = Sizes(routes=10_000, connections=100_000, hosts=1_000, servers=20_000, batches=256,
             table=DEFAULT_MAX_CONNECTIONS, new=16_384, held_ports=PORTS)
QUICK = Sizes(routes=1_000, connections=4_000, hosts=100, servers=1_000, batches=16, table=4_096, new=512, held_ports=512)

INSIDE = Network.parse("10.244.0.0/16")
GW_ADDRESS, EXT_ADDRESS = ip_from_str("10.244.0.1"), ip_from_str(ROUTER_EXT)
GW_MAC, EXT_MAC = mac(0xA, 1), mac(0xA, 2)
DEFAULT_GATEWAY = ip_from_str(OUTSIDE)
_RESERVED = [Network.parse(n) for n in ("0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "198.51.100.0/24", "224.0.0.0/3")]
TCP_PORT, UDP_PORT = 443, 53


def _public(value: int) -> bool:
    ip = value.to_bytes(4, "big")
    return not any(ip in net for net in _RESERVED)


@attrs.frozen
class Flow:
    proto: int
    host: int           # index of the inside host
    inside: bytes       # inside address
    sport: int
    server: bytes
    dport: int


class Topology:
    """The routes, hosts, servers and flows of the core part; built once, shared by both routers."""

    def __init__(self, sizes: Sizes) -> None:
        rng = random.Random(SEED)
        self.sizes = sizes
        self.gateways = [ip_from_str(f"198.51.100.{10 + i}") for i in range(sizes.gateways)]
        prefixes: dict[tuple[int, int], bytes] = {}
        while len(prefixes) < sizes.routes:
            length = rng.randint(16, 32)
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
            address = rng.getrandbits(32) & mask
            # the whole prefix must be public: its first and last addresses are
            if _public(address) and _public(address | (~mask & 0xFFFFFFFF)):
                prefixes[(address, length)] = rng.choice(self.gateways)
        self.routes = [(Network(a, (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF), via) for (a, n), via in prefixes.items()]
        self.hosts = [bytes((10, 244, 1 + i // 250, 2 + i % 250)) for i in range(sizes.hosts)]
        self.host_macs = [mac(1, i) for i in range(sizes.hosts)]
        self.servers = self.destinations(rng, sizes.servers)
        flows = []
        endpoints = sizes.connections // 2
        for k in range(endpoints):   # each inside address and port talks to two servers
            proto = PROTO_TCP if k % 5 < 3 else PROTO_UDP
            host = k % sizes.hosts
            for server in rng.sample(self.servers, 2):
                flows.append(Flow(proto, host, self.hosts[host], 10000 + k // sizes.hosts, server,
                                  TCP_PORT if proto == PROTO_TCP else UDP_PORT))
        self.flows = flows
        self.rng = rng

    def destinations(self, rng: random.Random, count: int) -> list[bytes]:
        """Distinct public addresses: three in four inside one of the routes, the rest anywhere (the default)."""
        found: dict[bytes, None] = {}   # insertion-ordered, so the same seed gives the same list
        while len(found) < count:
            if rng.random() < 0.75:
                network, _ = rng.choice(self.routes)
                value = network.address | (rng.getrandbits(32) & ~network.mask & 0xFFFFFFFF)
            else:
                value = rng.getrandbits(32)
            if _public(value):
                found[value.to_bytes(4, "big")] = None
        return list(found)

    def router(self, *, nat: bool) -> Router:
        router = Router()
        router.add_interface("gw", GW_ADDRESS, 16, mac=GW_MAC)
        router.add_interface("ext", EXT_ADDRESS, 24, mac=EXT_MAC)
        router.add_route(Network(0, 0), via=DEFAULT_GATEWAY)
        for network, via in self.routes:
            router.add_route(network, via=via)
        for i, gateway in enumerate([DEFAULT_GATEWAY, *self.gateways]):
            router.add_neighbour("ext", gateway, mac(2, i))
        for host, host_mac in zip(self.hosts, self.host_macs, strict=True):
            router.add_neighbour("gw", host, host_mac)
        if nat:
            masquerade(router, 2 * self.sizes.connections)
        return router


def masquerade(router: Router, max_connections: int, forwards: tuple[Forward, ...] = ()) -> Nat:
    """Give ``router`` a fresh NAT masquerading the inside network out of ``ext``."""
    router.nat = Nat(
        router, masquerade=(Masquerade(INSIDE, "ext", (INSIDE,)),), forwards=forwards,
        max_connections=max_connections, rng=random.Random(SEED),
    )
    return router.nat


def _frame(key: bytes, size: int, flags: int, dst_mac: bytes, src_mac: bytes) -> bytes:
    """An Ethernet frame of ``size`` bytes (or just the headers) for a NAT-style key: proto, src, dst, sport, dport."""
    proto, src, dst = key[0], key[1:5], key[5:9]
    sport, dport = int.from_bytes(key[9:11], "big"), int.from_bytes(key[11:13], "big")
    header = 14 + 20 + (20 if proto == PROTO_TCP else 8)
    payload = bytes(max(0, size - header))
    if proto == PROTO_TCP:
        segment = build_tcp(src, dst, sport, dport, seq=1, ack=1, flags=flags, payload=payload)
    else:
        segment = build_udp(src, dst, sport, dport, payload)
    return build_ethernet(dst_mac, src_mac, ETH_P_IP, build_ipv4(src, dst, proto, segment))


def _key(flow: Flow) -> bytes:
    return make_key(flow.proto, flow.inside, flow.sport, flow.server, flow.dport)


def _outbound(topo: Topology, flow: Flow, size: int, flags: int) -> bytes:
    """Inside host -> server, as it reaches the router's inside interface."""
    return _frame(_key(flow), size, flags, GW_MAC, topo.host_macs[flow.host])


def _inbound(reply: bytes, size: int, flags: int) -> bytes:
    """An answer (``reply`` is the tuple it arrives with), as it reaches the router's outside interface."""
    return _frame(reply, size, flags, EXT_MAC, mac(2, 0))


def _push(router: Router, interface: str, frames: list[bytes], now: float) -> int:
    """Frames through the router in batches; returns how many came out. Any drop is a broken set-up."""
    sent = 0
    for i in range(0, len(frames), BATCH):
        for action in router.handle_frames(interface, frames[i:i + BATCH], now):
            if isinstance(action, Drop):
                raise AssertionError(f"set-up frame dropped on {interface}: {action.reason}")
            assert isinstance(action, Transmit)
            sent += len(action.frames)
    return sent


def _replies(topo: Topology, router: Router) -> list[bytes]:
    """Per flow, the tuple its answers arrive with: to the inside host, or to the mapping on the outside address."""
    if router.nat is None:
        return [invert(_key(flow)) for flow in topo.flows]
    reply = {conn.orig: conn.reply for conn in router.nat.connections()}
    return [reply[_key(flow)] for flow in topo.flows]


def _establish(topo: Topology, router: Router, now: float) -> list[bytes]:
    """Open every flow: TCP's three-way handshake, UDP's request and answer. Returns the reply tuples."""
    flows = topo.flows
    _push(router, "gw", [_outbound(topo, f, 0, SYN) for f in flows], now)
    replies = _replies(topo, router)
    answers = [_inbound(r, 0, SYN | ACK) for r in replies]
    _push(router, "ext", answers, now)
    _push(router, "gw", [_outbound(topo, f, 0, ACK) for f in flows if f.proto == PROTO_TCP], now)
    nat = router.nat
    if nat is not None:
        states = collections.Counter(conn.state for conn in nat.connections())
        expected = {State.ESTABLISHED: sum(f.proto == PROTO_TCP for f in flows),
                    State.REPLIED: sum(f.proto == PROTO_UDP for f in flows)}
        assert states == expected, f"connections not established: {dict(states)}"
    return replies


def _schedule(topo: Topology, replies: list[bytes], picks: list[list[int]], size: int) -> list[tuple[str, list[bytes]]]:
    """The batches of ``picks`` (flow indexes) as frames of ``size`` bytes: outbound and answers in turn."""
    flows = topo.flows
    return [("gw", [_outbound(topo, flows[i], size, ACK) for i in batch]) if b % 2 == 0
            else ("ext", [_inbound(replies[i], size, ACK) for i in batch])
            for b, batch in enumerate(picks)]


def _forwarding(label: str, topo: Topology, router: Router, replies: list[bytes], picks: list[list[int]],
                size: int, opts: Options) -> dict[str, Any]:
    """Packets/s through ``Router.handle_frames``: batches of established flows, both directions in turn."""
    schedule = _schedule(topo, replies, picks, size)
    per_chunk = sum(len(frames) for _, frames in schedule)
    handle = router.handle_frames
    clock = time.monotonic

    def chunk() -> int:
        for interface, frames in schedule:
            handle(interface, frames, clock())
        return per_chunk

    # Check once that every frame is forwarded (and, with NAT, translated by a known connection).
    nat = router.nat
    before = nat.statistics() if nat is not None else None
    out = 0
    for interface, frames in schedule:
        for action in handle(interface, frames, clock()):
            assert isinstance(action, Transmit), f"{label}: {action}"
            out += len(action.frames)
    assert out == per_chunk, f"{label}: {per_chunk} frames in, {out} out"
    if nat is not None and before is not None:
        after = nat.statistics()
        assert after.created == before.created, f"{label}: flows are not established connections"
        assert after.translated - before.translated == per_chunk, f"{label}: not every packet translated"

    name = f"nat.core.{label}.{size}B"
    with profiled(opts.profile, name):
        pps, rounds = best_rate(chunk, duration=opts.duration, rounds=opts.rounds, warmup=opts.warmup)
    extra: dict[str, Any] = {"routes": len(router.routes)}
    if nat is not None:
        extra["connections"] = len(nat)
    return result(
        name, round(pps), "packets/s", frame_size=size, mbit_s=round(pps * size * 8 / 1e6, 1), batch=BATCH,
        **extra, rounds=[round(r) for r in rounds],
    )


def _scale(label: str, large: tuple[Router, list[tuple[str, list[bytes]]]],
           small: tuple[Router, list[tuple[str, list[bytes]]]], opts: Options) -> dict[str, Any]:
    """The time per packet through a router with the large tables over one with the small tables, the same
    number of distinct frames each. A pass over each in turn, for twice a part's measuring time, keeping the
    quickest pass of each: the machine's moods fall on both alike, and a pass it slowed is not kept."""
    quickest = [math.inf, math.inf]
    perf_counter, clock = time.perf_counter, time.monotonic
    deadline = perf_counter() + 2 * opts.rounds * opts.duration
    while True:
        for i, (router, schedule) in enumerate((large, small)):
            handle = router.handle_frames
            packets = sum(len(frames) for _, frames in schedule)
            start = perf_counter()
            for interface, frames in schedule:
                handle(interface, frames, clock())
            quickest[i] = min(quickest[i], (perf_counter() - start) / packets)
        if perf_counter() >= deadline:
            break
    ratio = quickest[0] / quickest[1]
    tables: dict[str, Any] = {"routes": len(large[0].routes), "small_routes": len(small[0].routes)}
    if large[0].nat is not None and small[0].nat is not None:
        tables.update(connections=len(large[0].nat), small_connections=len(small[0].nat))
    return result(
        f"nat.core.{label}.scale_ratio", round(ratio, 3), "ratio", frame_size=SCALE_FRAME,
        us_per_packet=round(quickest[0] * 1e6, 2), small_us_per_packet=round(quickest[1] * 1e6, 2), **tables,
        target=SCALE_TARGET, meets_target=ratio <= SCALE_TARGET,
        note="time per packet, large tables / small tables: the quickest pass of each, taken in turn",
    )


def _lookups(label: str, router: Router, destinations: list[bytes], opts: Options) -> dict[str, Any]:
    """``RouteTable.lookup`` calls per second, cycling through ``destinations`` in slices."""
    table = router.routes
    lookup = table.lookup
    consume = collections.deque(maxlen=0).extend
    part = 4096
    slices = itertools.cycle([destinations[i:i + part] for i in range(0, len(destinations), part)])

    def chunk() -> int:
        dsts = next(slices)
        consume(map(lookup, dsts))
        return len(dsts)

    name = f"nat.core.lookup.{label}"
    with profiled(opts.profile, name):
        rate, rounds = best_rate(chunk, duration=opts.duration, rounds=opts.rounds, warmup=opts.warmup)
    return result(name, round(rate), "lookups/s", routes=len(table), destinations=len(destinations),
                  cache_size=ROUTE_CACHE, rounds=[round(r) for r in rounds])


# -- new connections ----------------------------------------------------------------------


def _syns(topo: Topology, hosts: list[int], count: int, first_port: int) -> list[bytes]:
    """``count`` TCP SYNs of distinct new connections: the hosts in turn, each from its next port, to a server."""
    frames = []
    servers = topo.servers
    for i in range(count):
        host = hosts[i % len(hosts)]
        sport = first_port + i // len(hosts)
        assert sport <= 0xFFFF, "more connections than ports"
        key = make_key(PROTO_TCP, topo.hosts[host], sport, servers[i % len(servers)], TCP_PORT)
        frames.append(_frame(key, 64, SYN, GW_MAC, topo.host_macs[host]))
    return frames


def _timed(router: Router, frames: list[bytes], now: float) -> tuple[float, collections.Counter]:
    """Seconds ``frames`` spend in ``Router.handle_frames`` (inside, in batches), and what became of them:
    how many were sent, how many dropped for each reason."""
    perf_counter = time.perf_counter
    elapsed = 0.0
    outcomes: collections.Counter = collections.Counter()
    for i in range(0, len(frames), BATCH):
        batch = frames[i:i + BATCH]
        start = perf_counter()
        actions = router.handle_frames("gw", batch, now)
        elapsed += perf_counter() - start
        for action in actions:
            if isinstance(action, Transmit):
                outcomes["sent"] += len(action.frames)
            else:
                outcomes[str(action.reason)] += 1
    return elapsed, outcomes


def _expect(label: str, outcomes: collections.Counter, count: int, outcome: str) -> None:
    if outcomes != {outcome: count}:
        raise AssertionError(f"{label}: expected {count} {outcome}, got {dict(outcomes)}")


def _new_connections(topo: Topology, router: Router, opts: Options) -> Iterator[dict[str, Any]]:
    """New connections/s with an empty table, beside a source at its limit, and with the ports exhausted."""
    sizes, rounds = topo.sizes, opts.rounds
    assert rounds is not None
    others = list(range(1, len(topo.hosts)))
    now = time.monotonic()

    # (a) an empty table, every round
    fresh = _syns(topo, others, sizes.new, 20_000)
    empty = []
    for _ in range(rounds):
        masquerade(router, sizes.table)
        elapsed, outcomes = _timed(router, fresh, now)
        _expect("empty", outcomes, sizes.new, "sent")
        empty.append(sizes.new / elapsed)

    # (b) host 0 holds its share and keeps trying; the others open theirs in between, batch for batch
    limit = masquerade(router, sizes.table).max_per_source
    held = _syns(topo, [0], limit, PORT_RANGE[0])
    refused = _syns(topo, [0], sizes.new, PORT_RANGE[0] + limit)
    at_limit, beside = [], []
    for _ in range(rounds):
        nat = masquerade(router, sizes.table)
        _push(router, "gw", held, now)
        times = [0.0, 0.0]
        outcomes = [collections.Counter(), collections.Counter()]
        for i in range(0, sizes.new, BATCH):
            for side, frames in enumerate((refused, fresh)):
                seconds, batch_outcomes = _timed(router, frames[i:i + BATCH], now)
                times[side] += seconds
                outcomes[side] += batch_outcomes
        _expect("source at its limit", outcomes[0], sizes.new, str(DropReason.NAT_SOURCE_LIMIT))
        _expect("beside a source at its limit", outcomes[1], sizes.new, "sent")
        assert nat.statistics().early_dropped == 0
        at_limit.append(sizes.new / times[0])
        beside.append(sizes.new / times[1])

    # (c) every TCP port of the masquerade address held by the hosts, each far under its limit
    reserved = tuple(Forward(PROTO_TCP, port, topo.hosts[0], port)
                     for port in range(PORT_RANGE[0] + sizes.held_ports, PORT_RANGE[1] + 1))
    nat = masquerade(router, sizes.table, reserved)
    _push(router, "gw", _syns(topo, others, sizes.held_ports, 20_000), now)
    assert nat.statistics().mappings == sizes.held_ports
    blocked = _syns(topo, others, sizes.new, 20_000 + math.ceil(sizes.held_ports / len(others)))   # ports not yet used
    exhausted = []
    for _ in range(rounds):
        elapsed, outcomes = _timed(router, blocked, now)
        _expect("ports exhausted", outcomes, sizes.new, str(DropReason.NAT_NO_PORT))
        exhausted.append(sizes.new / elapsed)

    common = dict(connections_per_round=sizes.new, table=sizes.table, per_source=limit, routes=len(router.routes))
    yield result("nat.core.new_connections.empty", round(max(empty)), "connections/s", **common,
                 outcome="sent", rounds=[round(r) for r in empty])
    yield result("nat.core.new_connections.source_at_limit", round(max(at_limit)), "connections/s", **common,
                 outcome=str(DropReason.NAT_SOURCE_LIMIT), held=limit, rounds=[round(r) for r in at_limit])
    yield result("nat.core.new_connections.beside_source_at_limit", round(max(beside)), "connections/s", **common,
                 outcome="sent", rounds=[round(r) for r in beside])
    yield result("nat.core.new_connections.ports_exhausted", round(max(exhausted)), "connections/s", **common,
                 outcome=str(DropReason.NAT_NO_PORT), held_ports=sizes.held_ports,
                 reserved_ports=len(reserved), rounds=[round(r) for r in exhausted])
    cases = {"source_at_limit": max(at_limit), "beside_source_at_limit": max(beside), "ports_exhausted": max(exhausted)}
    worst = min(cases, key=cases.__getitem__)
    ratio = cases[worst] / max(empty)
    yield result("nat.core.new_connections.worst_ratio", round(ratio, 3), "ratio", worst=worst,
                 target=0.5, meets_target=ratio >= 0.5, note="the slowest case / the empty table")


def run_core(options: Options = Options()) -> Iterator[dict[str, Any]]:
    """Packets/s through the router with and without NAT, and route lookups/s; no devices."""
    opts = options.resolve(**CORE_DEFAULTS)
    sizes = QUICK if options.quick else FULL
    topo = Topology(sizes)
    now = time.monotonic()
    picks = [topo.rng.choices(range(len(topo.flows)), k=BATCH) for _ in range(sizes.batches)]

    small = Topology(attrs.evolve(sizes, **SMALL_TABLES))
    small_picks = [small.rng.choices(range(len(small.flows)), k=BATCH) for _ in range(sizes.batches)]

    routed = topo.router(nat=False)
    replies = _replies(topo, routed)
    for size in FRAME_SIZES:
        yield _forwarding("routed", topo, routed, replies, picks, size, opts)
    small_routed = small.router(nat=False)
    yield _scale("routed", (routed, _schedule(topo, replies, picks, SCALE_FRAME)),
                 (small_routed, _schedule(small, _replies(small, small_routed), small_picks, SCALE_FRAME)), opts)

    masquerading = topo.router(nat=True)
    replies = _establish(topo, masquerading, now)
    for size in FRAME_SIZES:
        yield _forwarding("masquerade", topo, masquerading, replies, picks, size, opts)
    small_masquerading = small.router(nat=True)
    small_replies = _establish(small, small_masquerading, now)
    yield _scale("masquerade", (masquerading, _schedule(topo, replies, picks, SCALE_FRAME)),
                 (small_masquerading, _schedule(small, small_replies, small_picks, SCALE_FRAME)), opts)
    del masquerading, replies, small_masquerading, small_replies

    # Every server and inside host: fewer than the cache holds, so after two passes every lookup hits.
    cached = topo.servers + topo.hosts
    assert len(cached) < ROUTE_CACHE
    for _ in range(2):
        for dst in cached:
            routed.routes.lookup(dst)
    yield _lookups("hit", routed, cached, opts)
    # Twice as many distinct destinations as the cache holds, cycled: each is evicted before it comes back.
    yield _lookups("miss", routed, topo.destinations(topo.rng, 2 * ROUTE_CACHE), opts)

    yield from _new_connections(topo, routed, opts)
