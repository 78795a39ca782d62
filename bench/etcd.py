"""Scale on etcd leases: a node's start with 1,000 leases in etcd, a churn of 1,000 of them, and forwarding
with 1,000 peers in the table.

Needs the ``etcd`` and ``etcdctl`` commands (Debian: etcd-server, etcd-client) and no root: the node runs in
this process on a memory underlay, etcd on loopback. One etcd of its own
(:class:`vswitch.testing.etcd.EtcdServer`: free ports, a temporary data directory) holds flannel's vxlan
network ``10.0.0.0/8`` with ``SubnetLen`` 24 under ``/bench`` (a /16 has only 255 /24s), and 1,000 leases
(``--quick``: 100) as flanneld writes them: each under an etcd lease of its own (a grant, then a put with
it), with a distinct public IP (100.64.0.0/10) and VTEP MAC; a writer keeps 64 requests in flight.

* ``etcd.start``: seconds from a node's start (``prepare`` then ``serve``: router mode, ``leases =
  "etcd"``, one memory host) to forwarding: it holds its lease and every peer, and a ping from its host to
  an address in a peer's subnet has reached the memory underlay as VXLAN addressed to that peer's public
  IP. The median of ``--rounds`` rounds (default 5), each listed, with the seconds ``prepare`` took of
  them (``prepare_rounds``); each round is a new node with an empty state dir, which takes a new lease
  (subnet.env's FLANNEL_SUBNET steers it to 10.0.1.0/24, given back after the round).
* ``etcd.churn.write``: seconds a separate process took to write a churn of as many new leases (a grant
  and a put each) and to delete as many of the old ones, interleaved, while a node runs; ``writer_cpu`` is
  its own CPU time, which bounds it on a small machine (httpx costs about a millisecond a request).
  ``etcd.churn.apply``: seconds from that writer's last answer until the node's peer table holds exactly
  the leases etcd holds (polled every 5 ms), with ``applies``, the peer sets its watch handed on, and
  ``watch_reconnects``. ``etcd.churn.cpu``: CPU seconds of this process (the node; the writer and etcd
  are processes of their own) from the first write until then, with ``per_apply_ms``.
* ``etcd.forward.<backend>.2_peers`` / ``.1000_peers`` (vxlan, udp): frames/s of 64 bytes through the core
  as ``vswitch run`` builds it (``build_core``: bridge, router, overlay) from a host on the bridge to
  addresses in the peers' subnets, encapsulated for them, with a peer table of 2 leases or of 1,000
  (``--quick`` too); 1,024 distinct frames spread over every peer. A round runs both tables for
  ``--duration`` seconds each, in 50 ms turns, so that a load that comes and goes on the machine falls on
  both alike; the best round of each is reported, every round listed. ``.ratio``: 1,000 peers' rate over
  2 peers', the median of the rounds' (each listed); the target is 0.9 or more (within 10 %).
"""

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from vswitch.config import Config, loads
from vswitch.core.actions import Transmit
from vswitch.core.wire import ethernet, ipv4, udp
from vswitch.core.wire.addr import Network, ip_from_str, ip_to_str
from vswitch.core.wire.ethernet import ETH_P_IP, build_ethernet
from vswitch.core.wire.field import at
from vswitch.core.wire.ipv4 import PROTO_UDP, build_ipv4
from vswitch.core.wire.udp import build_udp
from vswitch.daemon import UNDERLAY_PORT, Node, build_core, prepare, serve
from vswitch.overlay.core.codec import ADDRESS_IP, ADDRESS_LEN, VXLAN_HEADER_LEN
from vswitch.overlay.core.flannel import (
    lease_attrs,
    lease_value,
    network_config_json,
    parse_network_config,
    subnet_key,
)
from vswitch.overlay.core.peers import Lease, LeaseChanges
from vswitch.overlay.shell.etcd import EtcdClient
from vswitch.shell.ports.udp import MemoryUnderlay
from vswitch.testing.etcd import EtcdServer, etcd_missing

from .common import BATCH, Options, best_rate, mac, profiled, rate_result, result

ROOT = Path(__file__).parents[1]
PREFIX = "/bench"
NETWORK = Network.parse("10.0.0.0/8")
SUBNET_LEN = 24
BACKEND = "vxlan"
CONFIG_JSON = network_config_json(NETWORK, backend=BACKEND, subnet_len=SUBNET_LEN)
CONFIG = parse_network_config(CONFIG_JSON)
OWN_SUBNET = Network.parse("10.0.1.0/24")   # SubnetMin: the node's, by subnet.env; peer k has the (k + 2)th /24
OWN_PUBLIC_IP = "192.0.2.1"
HOST, GATEWAY = "10.0.1.2", "10.0.1.1"      # the node's memory host on its bridge, and the router's address there
HOST_PORT = f"""
[[ports]]
name = "c1"
type = "memory"
host = {{ address = "{HOST}/24", gateway = "{GATEWAY}" }}
"""
LEASES, QUICK_LEASES = 1_000, 100
FORWARD_PEERS = (2, 1_000)                  # the peer tables whose forwarding is compared
LEASE_TTL = 3600
IN_FLIGHT = 64                              # requests a writer has in flight
POLL = 0.005                                # seconds between two looks at the node's peer table
WITHIN = 120.0                              # seconds any one step may take before the suite gives up
FORWARD_FRAMES = 1024                       # distinct frames per cycle (16 batches of 64)
FRAME_SIZE = 64
SLICE = 0.05                                # seconds per turn of one peer table while forwarding is compared
TARGET_RATIO = 0.9

DEFAULTS = dict(duration=0.5, rounds=5, warmup=0.2)


def unavailable() -> str | None:
    """Why this suite cannot run here (no etcd), or None."""
    return etcd_missing()


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"bench etcd: {reason}")
    opts = options.resolve(**DEFAULTS)
    count = QUICK_LEASES if opts.quick else LEASES
    with EtcdServer() as etcd, tempfile.TemporaryDirectory() as tmp:
        yield from trio.run(_cluster, etcd.endpoint, Path(tmp), count, opts)
    for backend in ("vxlan", "udp"):
        yield from _forward(backend, opts)


# -- the leases ------------------------------------------------------------------------------


def peer_lease(k: int) -> Lease:
    """Peer ``k``'s lease: the (k + 2)th /24 of the network, public IP 100.64.0.0 + k + 1, VTEP MAC 0e:00:00:..."""
    n = k + 2
    public_ip = ((100 << 24 | 64 << 16) + k + 1).to_bytes(4, "big")
    return Lease(Network.parse(f"10.{n >> 8}.{n & 255}.0/{SUBNET_LEN}"), public_ip,
                 bytes((0x0E, 0, 0)) + (k + 1).to_bytes(3, "big"))


async def write_leases(endpoint: str, added: Sequence[int], removed: Sequence[int]) -> tuple[float, float]:
    """Put the leases of peers ``added`` as flanneld does (a grant, then a put with it) and delete those of
    ``removed``, interleaved, IN_FLIGHT at a time; the monotonic times of the first request and the last answer."""
    limiter = trio.CapacityLimiter(IN_FLIGHT)

    async def add(client: EtcdClient, k: int) -> None:
        lease = peer_lease(k)
        async with limiter:
            lease_id, _ = await client.grant(LEASE_TTL)
            await client.put(subnet_key(PREFIX, lease.subnet),
                             lease_value(lease_attrs(CONFIG, lease.public_ip, lease.vtep_mac)), lease=lease_id)

    async def remove(client: EtcdClient, k: int) -> None:
        async with limiter:
            await client.delete(subnet_key(PREFIX, peer_lease(k).subnet))

    steps = itertools.zip_longest([(add, k) for k in added], [(remove, k) for k in removed])
    async with EtcdClient([endpoint]) as client:
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for pair in steps:
                for step, k in filter(None, pair):
                    nursery.start_soon(step, client, k)
        return started, time.monotonic()


def writer_main() -> None:
    """The churn's writer, in a process of its own: reads ``{"endpoint", "added", "removed"}`` (a JSON line),
    says ``ready``, waits for ``go``, writes, then prints ``{"started", "finished"}`` (monotonic seconds) and
    the CPU seconds it spent (``cpu``)."""
    plan = json.loads(sys.stdin.readline())
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    cpu = time.process_time()
    started, finished = trio.run(write_leases, plan["endpoint"], plan["added"], plan["removed"])
    print(json.dumps({"started": started, "finished": finished, "cpu": time.process_time() - cpu}), flush=True)


# -- a node on etcd --------------------------------------------------------------------------


def node_config(endpoint: str, state: Path) -> Config:
    """Router mode on etcd leases, one memory host; subnet.env steers the lease to OWN_SUBNET (when free)."""
    state.mkdir(parents=True)
    env = state / "subnet.env"
    env.write_text(f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU=1450\n")
    return loads(f"""
[node]
name = "bench"
state_dir = "{state}"
{HOST_PORT}
[overlay]
leases = "etcd"
public_ip = "{OWN_PUBLIC_IP}"
subnet_env = "{env}"

[etcd]
endpoints = ["{endpoint}"]
prefix = "{PREFIX}"
""")


def _holds(node: Node, subnets: set[Network]) -> bool:
    """Whether the node's peer table holds exactly the leases of ``subnets`` (cheaply: it is polled)."""
    table = node.overlay.peers
    return len(table) == len(subnets) and all(
        (peer := table.lookup(subnet.network)) is not None and peer.lease.subnet == subnet for subnet in subnets)


async def _give_back(node: Node, endpoint: str) -> None:
    """Close the node's etcd client and give its subnet back (key and etcd lease), for the next node to take."""
    source = node.leases
    await source.client.aclose()
    async with EtcdClient([endpoint]) as client:
        await client.delete(subnet_key(PREFIX, source.acquired.subnet))
        await client.revoke(source.acquired.lease_id)


async def _start_round(endpoint: str, state: Path, peers: Sequence[int]) -> tuple[float, float]:
    """Seconds from prepare() to a ping's echo request reaching the underlay as VXLAN to a peer's public IP,
    and the seconds prepare() took of them."""
    config = node_config(endpoint, state)
    underlay = MemoryUnderlay()
    target = peer_lease(peers[len(peers) // 2])
    far_end = underlay.port("peer", ip_to_str(target.public_ip), CONFIG.tunnel_port)
    destination = (target.subnet.address + 2).to_bytes(4, "big")
    inner_dst = at(ADDRESS_LEN + VXLAN_HEADER_LEN + ethernet.HEADER_LEN, ipv4.DST)   # the inner packet's
    with trio.fail_after(WITHIN):
        start = time.perf_counter()
        node = await prepare(config, underlay=underlay)
        prepared = time.perf_counter() - start
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve, node)
                runner = node.hosts[0][0]
                nursery.start_soon(lambda: runner.ping(ip_to_str(destination), timeout=WITHIN))
                datagram = (await far_end.receive_batch())[0]
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
        finally:
            await _give_back(node, endpoint)
    if node.leases.acquired.subnet != OWN_SUBNET or not _holds(node, {peer_lease(k).subnet for k in peers}):
        raise RuntimeError(f"bench etcd: the node took {node.leases.acquired.subnet} and holds "
                           f"{len(node.overlay.peers)} peers, not {OWN_SUBNET} and the {len(peers)} in etcd")
    if datagram[ADDRESS_IP] != ip_from_str(OWN_PUBLIC_IP) or datagram[inner_dst] != destination:
        raise RuntimeError(f"bench etcd: the underlay got something other than the ping: {datagram.hex()}")
    return elapsed, prepared


async def _line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError("bench etcd: the churn's writer ended early")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def _churn(endpoint: str, state: Path, peers: Sequence[int], opts: Options) -> dict[str, Any]:
    """A node holding ``peers``; a churn of as many new and as many gone, written by another process."""
    added = list(range(peers[-1] + 1, peers[-1] + 1 + len(peers)))
    expected = {peer_lease(k).subnet for k in added}
    node = await prepare(node_config(endpoint, state), underlay=MemoryUnderlay())
    applies = 0
    set_leases = node.overlay.set_leases

    def counted(leases: list[Lease]) -> LeaseChanges:   # how often the watch hands the peers on
        nonlocal applies
        applies += 1
        return set_leases(leases)

    node.overlay.set_leases = counted
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, node)
            writer = await trio.lowlevel.open_process(
                [sys.executable, "-c", "from bench.etcd import writer_main; writer_main()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
            try:
                buffer = bytearray()
                plan = {"endpoint": endpoint, "added": added, "removed": list(peers)}
                await writer.stdin.send_all(json.dumps(plan).encode() + b"\n")
                with trio.fail_after(WITHIN):
                    if await _line(writer.stdout, buffer) != b"ready":
                        raise RuntimeError("bench etcd: the churn's writer did not start")
                    cpu = time.process_time()
                    await writer.stdin.send_all(b"go\n")
                    with profiled(opts.profile, "etcd.churn (the node, while it takes the churn)"):
                        times = json.loads(await _line(writer.stdout, buffer))   # the table cannot match before
                        while not _holds(node, expected):
                            await trio.sleep(POLL)
                    matched, cpu = time.monotonic(), time.process_time() - cpu
                    await writer.wait()
            finally:
                if writer.returncode is None:
                    writer.kill()
                    await writer.wait()
            nursery.cancel_scope.cancel()
    finally:
        await _give_back(node, endpoint)
    return {"write": times["finished"] - times["started"], "writer_cpu": times["cpu"],
            "apply": max(0.0, matched - times["finished"]), "cpu": cpu, "applies": applies,
            "reconnects": node.leases.status.reconnects}


async def _cluster(endpoint: str, workdir: Path, count: int, opts: Options) -> list[dict[str, Any]]:
    async with EtcdClient([endpoint]) as client:
        await client.put(f"{PREFIX}/config".encode(), CONFIG_JSON)
    peers = range(count)
    started, finished = await write_leases(endpoint, peers, ())
    seconds, prepared = [], []
    for r in range(opts.rounds):
        with profiled(opts.profile, f"etcd.start round {r + 1}"):
            elapsed, took = await _start_round(endpoint, workdir / f"start{r}", peers)
        seconds.append(elapsed)
        prepared.append(took)
    churn = await _churn(endpoint, workdir / "churn", peers, opts)
    common = dict(leases=count, network=str(NETWORK), subnet_len=SUBNET_LEN, backend=BACKEND)
    churned = dict(common, added=count, removed=count)
    return [
        result("etcd.start", round(statistics.median(seconds), 4), "s", **common, statistic="median",
               rounds=[round(s, 4) for s in seconds], prepare_rounds=[round(s, 4) for s in prepared],
               leases_written_in=round(finished - started, 3),
               path="prepare (take the lease, list the peers) + serve, until a ping from the node's host to a "
                    "peer's subnet reaches the underlay addressed to that peer"),
        result("etcd.churn.write", round(churn["write"], 4), "s", **churned, writer_cpu=round(churn["writer_cpu"], 3),
               writer="a separate process (httpx, like the node): grant + put per added lease, delete per removed "
                      f"one, interleaved, {IN_FLIGHT} in flight"),
        result("etcd.churn.apply", round(churn["apply"], 4), "s", **churned, applies=churn["applies"],
               watch_reconnects=churn["reconnects"],
               measured="from the last write's answer until the node's peer table holds exactly etcd's leases; "
                        "applies: the peer sets the watch handed to the node"),
        result("etcd.churn.cpu", round(churn["cpu"], 4), "s", **churned,
               per_apply_ms=round(churn["cpu"] / max(churn["applies"], 1) * 1e3, 3),
               measured="time.process_time of the node's process from the first write until its peer table "
                        "matched: the node, and the poll (every 5 ms once the writer is done)"),
    ]


# -- forwarding with many peers ------------------------------------------------------------------


def _forward_core(backend: str, peers: int) -> tuple[Callable[[], int], dict[str, Any]]:
    """The core of a router-mode node with ``peers`` leases, and a chunk of frames from its host to all of them."""
    config = loads(f"""{HOST_PORT}
[[router.interfaces]]
name = "gw"
address = "{GATEWAY}/24"

[overlay]
backend = "{backend}"
network = "{NETWORK}"
subnet = "{OWN_SUBNET}"
public_ip = "{OWN_PUBLIC_IP}"
""")
    core, router, overlay, _ = build_core(config)
    assert router is not None and overlay is not None
    core.add_port("c1")
    core.add_port(UNDERLAY_PORT)   # the overlay's interface is down until its port exists
    leases = [peer_lease(k) for k in range(peers)]
    overlay.set_leases(leases if backend == "vxlan" else [attrs.evolve(lease, vtep_mac=None) for lease in leases])
    gateway_mac, host_mac, src = router.interfaces["gw"].mac, mac(1, 1), ip_from_str(HOST)
    frames = []
    for i in range(FORWARD_FRAMES):   # peer i % peers, host 1, 2, ... of its subnet
        dst = (leases[i % peers].subnet.address + 1 + (i // peers) % 254).to_bytes(4, "big")
        payload = bytes(FRAME_SIZE - ethernet.HEADER_LEN - ipv4.MIN_HEADER_LEN - udp.HEADER_LEN)
        packet = build_ipv4(src, dst, PROTO_UDP, build_udp(src, dst, 10000 + i, 5001, payload))
        frames.append(build_ethernet(gateway_mac, host_mac, ETH_P_IP, packet))
    batches = [frames[i:i + BATCH] for i in range(0, len(frames), BATCH)]
    handle, clock = core.handle_frames, time.monotonic

    def chunk() -> int:
        for batch in batches:
            handle("c1", batch, clock())
        return FORWARD_FRAMES

    # Check once that every frame goes out to the underlay, for a peer.
    chunk()   # the bridge learns the host
    sent = [a for batch in batches for a in handle("c1", batch, clock())]
    out = sum(len(a.frames) for a in sent if type(a) is Transmit and a.port == UNDERLAY_PORT)
    if out != FORWARD_FRAMES or len(sent) != len(batches):
        raise RuntimeError(f"bench etcd: {out} of {FORWARD_FRAMES} frames went to the underlay ({sent[:3]} ...)")
    reached = sum(1 for p in overlay.peers if p.counters.tx_packets)
    destinations = len({frame[at(ethernet.HEADER_LEN, ipv4.DST)] for frame in frames})
    return chunk, dict(peers=peers, peers_sent_to=reached, destinations=destinations)


def _interleaved(chunks: Sequence[Callable[[], int]], duration: float) -> list[float]:
    """frames/s of each chunk over about ``duration`` seconds of its own, run in SLICE-second turns (the mean of
    its turns' rates): a load that comes and goes on the machine falls on all of them alike."""
    rates: list[list[float]] = [[] for _ in chunks]
    for turn in range(max(1, round(duration / SLICE))):
        for i in range(len(chunks)) if turn % 2 == 0 else reversed(range(len(chunks))):
            rates[i].append(best_rate(chunks[i], duration=SLICE, rounds=1, warmup=0)[0])
    return [statistics.fmean(turns) for turns in rates]


def _forward(backend: str, opts: Options) -> Iterator[dict[str, Any]]:
    tables = [_forward_core(backend, n) for n in FORWARD_PEERS]
    chunks = [chunk for chunk, _ in tables]
    if opts.warmup:
        _interleaved(chunks, opts.warmup)
    with profiled(opts.profile, f"etcd.forward.{backend}"):
        rounds = [_interleaved(chunks, opts.duration) for _ in range(opts.rounds)]
    for i, n in enumerate(FORWARD_PEERS):
        rates = [r[i] for r in rounds]
        yield rate_result(f"etcd.forward.{backend}.{n}_peers", max(rates), FRAME_SIZE, batch=BATCH, **tables[i][1],
                          rounds=[round(x) for x in rates],
                          path="host -> bridge -> router -> overlay (encapsulated for the peer) -> underlay")
    ratios = [r[-1] / r[0] for r in rounds]
    ratio = statistics.median(ratios)
    yield result(f"etcd.forward.{backend}.ratio", round(ratio, 4), "ratio",
                 note=f"{FORWARD_PEERS[-1]} peers / {FORWARD_PEERS[0]} peers: the median of the rounds', each the "
                      f"two tables in {SLICE:g} s turns", rounds=[round(x, 4) for x in ratios],
                 target=TARGET_RATIO, meets_target=ratio >= TARGET_RATIO)
