"""The control socket: a running daemon answers `vswitch show`, `capture`,
`attach` and `detach` over a Unix stream socket.

Protocol: the client sends one JSON object on one line, e.g.
``{"command": "show", "what": "fdb"}``; the daemon answers one line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``, and
closes the connection. ``capture`` is the one exception: after its
``{"ok": true, ...}`` line the daemon streams a classic pcap file (global
header, then records) until the client hangs up, ``count`` frames have been
written, the port goes away, or the daemon stops.

Everything is bounded: the request line (``MAX_REQUEST`` bytes), the time a
client has to send it and take its answer (``CLIENT_TIMEOUT``), and each
capture's buffer (a slow reader loses frames, counted, and never slows the
switch). Connections come from two pools with their own limits, so captures
can never lock out ``show``: a connection counts against the request pool
(``MAX_REQUESTS``) until its request line asks for a capture, and then against
the capture pool (``MAX_CAPTURES``). A capture has no time limit, but one whose
client takes nothing of what waits for it for ``STALL_TIMEOUT`` seconds is
ended; a quiet port's capture, with nothing to send, never is. Refusals,
timeouts, stalls and failures are counted (``show stats``, ``control``).

Each connection is a bulkhead: an unexpected exception while serving one
client (a handler, the capture stream) closes that client, is counted and
logged with its traceback once per place it was raised, and never reaches the
server's task. The monitor callback a capture installs runs in a port's task,
where the switch's own containment ends it (:mod:`vswitch.shell.faults`, site
``monitor``), and the capture with it.
"""

import errno
import inspect
import itertools
import json
import logging
import os
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import trio

from vswitch.config import SUN_PATH_MAX
from vswitch.core.actions import DropReason
from vswitch.core.nat import PROTOCOL_NAMES, describe
from vswitch.core.wire.addr import ip_to_str, mac_to_str
from vswitch.errors import ControlError
from vswitch.overlay.core.codec import capture_frame
from vswitch.shell.faults import FirstAtSite
from vswitch.shell.ports.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    SNAPLEN,
    PcapWriter,
)

log = logging.getLogger(__name__)

MAX_REQUEST = 16 * 1024          # bytes in a request line
MAX_RESPONSE = 64 * 1024 * 1024  # bytes in a response line (an FDB of 65536 entries is ~6 MB)
CLIENT_TIMEOUT = 10.0            # seconds to send a request and take the answer
MAX_REQUESTS = 16                # concurrent connections that are not (yet) captures
MAX_CAPTURES = 16                # concurrent captures, apart from the requests
STALL_TIMEOUT = 10.0             # seconds a capture waits for its client to take the next piece
SEND_PIECE = 64 * 1024           # bytes a capture sends at a time: progress is measured per piece
CAPTURE_FRAMES = 4096            # frames a capture buffers for a slow reader ...
CAPTURE_BYTES = 8 * 1024 * 1024  # ... and bytes; beyond either, frames are dropped and counted
LISTING_SLICE = 512              # table rows rendered between checkpoints: a long listing never holds up forwarding
NAT_LISTED = 1000                # connections `show nat` lists unless asked for more (its counters cover them all)




def not_listening(path: str) -> str:
    return f"no daemon is listening on {path} (is `vswitch run` running? is [node] control set?)"


def daemon_listening(path: str, *, timeout: float = 2.0) -> bool:
    """Whether a daemon accepts connections on the control socket ``path``: the check a start makes before
    it opens anything (blocking; no Trio)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except TimeoutError:
            return True    # a listener with a full backlog: still alive
        except OSError:
            return False   # nothing there, a stale socket, or a path the server will report on itself
    return True


# -- line I/O shared by both sides ---------------------------------------------


async def _read_line(stream: trio.abc.ReceiveStream, limit: int, what: str) -> tuple[bytes, bytes]:
    """One ``\\n``-terminated line (without it) and whatever followed it.

    At end of stream the partial line is returned as is (``nc`` without a
    final newline still works).
    """
    buffer = bytearray()
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(buffer), b""
        start = len(buffer)
        buffer += chunk
        end = buffer.find(b"\n", start)
        if end > limit or (end < 0 and len(buffer) > limit):
            raise ControlError(f"{what} too long (more than {limit} bytes)")
        if end >= 0:
            return bytes(buffer[:end]), bytes(buffer[end + 1:])


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _response(*, result: Any = None, error: str | None = None) -> bytes:
    return _encode({"ok": False, "error": error} if error is not None else {"ok": True, "result": result})


async def _answer(result: Any) -> bytes:
    """The answer line for ``result``. A long listing (an FDB of a million entries is a second of work) is
    encoded in a worker thread, so that the ports go on meanwhile; ``result`` is a snapshot nothing else holds."""
    rows = result.get("connections") if isinstance(result, dict) else result
    if isinstance(rows, list) and len(rows) > LISTING_SLICE:
        return await trio.to_thread.run_sync(lambda: _response(result=result))
    return _response(result=result)


# -- what `show` reports ----------------------------------------------------------


def show_ports(node: Any) -> list[dict[str, Any]]:
    switch = node.switch
    bridge_ports = _bridge_statistics(switch.core).ports
    interface_of = getattr(switch.core, "interface_of", lambda name: None)
    ports = []
    for status in switch.port_status():
        dev = status.device
        bridge = bridge_ports.get(status.name)
        ports.append({
            "name": status.name,
            "type": switch.ports[status.name].kind,
            "up": status.up,
            "closed": status.closed,
            "rx": {"frames": dev.rx_frames, "bytes": dev.rx_bytes, "errors": dev.rx_errors,
                   "dropped": dev.rx_dropped},
            "tx": {"frames": dev.tx_frames, "bytes": dev.tx_bytes, "errors": dev.tx_errors,
                   "dropped": dev.tx_dropped},
            "tx_queue": {"depth": status.tx.queued, "limit": switch.tx_queue,
                         "tail_dropped": status.tx.tail_dropped, "sent_batches": status.tx.sent_batches},
            "bridge": attrs.asdict(bridge) if bridge is not None else None,
            "router_interface": interface_of(status.name),   # a port the router owns is not on the bridge
        })
    return ports


async def show_fdb(node: Any, now: float) -> list[dict[str, Any]]:
    """Every FDB entry, by port then MAC; ``age`` is seconds since its address was last seen."""
    entries = sorted(_fdb(node.switch.core), key=lambda e: (e.port, e.mac))
    return await _rendered(entries, lambda e: {
        "mac": mac_to_str(e.mac), "port": e.port, "static": e.static, "age": round(max(0.0, now - e.updated), 3),
    })


async def _rendered(items: Sequence[Any], render: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """``render`` applied to each item, a slice at a time with a checkpoint between slices, so that listing a
    table of a million entries lets the ports run meanwhile (``items`` is a snapshot: a list)."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(items), LISTING_SLICE):
        rows += map(render, items[start:start + LISTING_SLICE])
        await trio.lowlevel.checkpoint()
    return rows


def show_stats(node: Any, server: "ControlServer | None" = None) -> dict[str, Any]:
    """The node's counters; with ``server``, its captures and the control socket's own."""
    switch = node.switch
    overlay = getattr(node, "overlay", None)
    # Drop-in mode has no bridge: the overlay alone sits between its device and the underlay.
    stats = None if overlay is not None and getattr(node, "router", None) is None else _bridge_statistics(switch.core)
    drops = switch.drop_counts()
    tail = {s.name: s.tx.tail_dropped for s in switch.port_status()}
    return {
        "bridge": {"unicast": stats.unicast, "flooded": stats.flooded} if stats else None,
        "port_failures": switch.port_failures,
        "drops": {str(reason): drops.get(reason, 0) for reason in DropReason},
        "fdb": attrs.asdict(stats.fdb) if stats else None,
        "ports": {
            name: {**attrs.asdict(port), "tail_dropped": tail.get(name, 0)} for name, port in stats.ports.items()
        } if stats else {},
        "router": _router_stats(node),
        "overlay": _overlay_stats(overlay) if overlay is not None else None,
        "captures": [c.summary() for c in server.captures] if server else [],
        "control": attrs.asdict(server.statistics()) if server else None,
        "faults": switch.faults.describe(),
        "recent_drops": [
            {"port": d.port, "reason": str(d.reason), "bytes": len(d.frame), "head": d.frame[:14].hex()}
            for d in switch.recent_drops
        ],
    }


def _router(node: Any) -> Any:
    router = getattr(node, "router", None)
    if router is None:
        raise ControlError("this daemon has no router: add [[router.interfaces]] to its config")
    return router


def _overlay(node: Any) -> Any:
    overlay = getattr(node, "overlay", None)
    if overlay is None:
        raise ControlError("this daemon has no overlay: add [overlay] to its config")
    return overlay


def _overlay_stats(overlay: Any) -> dict[str, Any]:
    stats = overlay.statistics()
    return {"encapsulated": stats.encapsulated, "decapsulated": stats.decapsulated,
            "icmp_sent": dict(stats.icmp_sent), "icmp_rate_limited": stats.icmp_rate_limited}


def show_peers(node: Any) -> dict[str, Any]:
    """This node's lease, every peer's with its counters, and the overlay's drops."""
    overlay = _overlay(node)
    config = node.config.overlay
    return {
        "lease": {**overlay.describe(), "public_ip": str(config.public_ip), "mtu": config.mtu,
                  "mode": "drop-in " + (config.device or "") if config.device else "router"},
        "peers": [
            {"subnet": str(p.lease.subnet), "public_ip": ip_to_str(p.lease.public_ip), "port": p.port,
             "vtep_mac": mac_to_str(p.lease.vtep_mac) if p.lease.vtep_mac else None, **attrs.asdict(p.counters)}
            for p in overlay.peers
        ],
        "statistics": _overlay_stats(overlay),
        "drops": {str(reason): n for reason, n in sorted(overlay.drop_counts().items(), key=lambda i: str(i[0]))},
    }


def show_arp(node: Any, now: float) -> list[dict[str, Any]]:
    """Every neighbour of every router interface with an ARP cache."""
    entries = []
    for name, iface in _router(node).interfaces.items():
        table = iface.neighbours
        if table is None:
            continue
        for n in sorted(table, key=lambda n: n.ip):
            entries.append({
                "interface": name,
                "address": ip_to_str(n.ip),
                "mac": mac_to_str(n.mac) if n.mac else None,
                "state": str(n.state(now, table.reachable_time)),
                "confirmed": None if n.static or n.confirmed == float("-inf") else round(now - n.confirmed, 3),
                "queued": len(n.queue),
            })
    return entries


def show_routes(node: Any) -> dict[str, Any]:
    router = _router(node)
    return {
        "interfaces": [
            {"name": i.name, "address": f"{ip_to_str(i.address)}/{i.network.prefix_len}",
             "mac": mac_to_str(i.mac) if i.mac else None, "mtu": i.mtu, "up": i.up, "proxy_arp": i.proxy_arp,
             **attrs.asdict(i.stats)}
            for i in router.interfaces.values()
        ],
        "routes": [
            {"to": str(r.network), "via": ip_to_str(r.via) if r.via else None, "interface": r.interface,
             "type": "connected" if r.connected else "static"}
            for r in sorted(router.routes, key=lambda r: (-r.network.prefix_len, r.network.address))
        ],
    }


async def show_nat(node: Any, now: float, limit: int = NAT_LISTED) -> dict[str, Any]:
    """The first ``limit`` tracked connections, least recently seen first per protocol and state, with what
    each direction is rewritten to (``unlisted``: how many more there are); the table's limits and counters."""
    nat = _router(node).nat
    if nat is None:
        raise ControlError("this daemon's router does no NAT: add [[nat.masquerade]] or [[nat.forward]] to its config")
    listed = list(itertools.islice(nat.connections(), limit))
    connections = await _rendered(listed, lambda c: {
        "protocol": describe(c.orig)["protocol"],
        "state": str(c.state),
        "kind": c.kind,
        "assured": c.assured,
        "original": _endpoints(c.orig),
        "reply": _endpoints(c.reply),
        "expires": round(max(0.0, c.expires() - now), 3),
        "packets": list(c.packets),
        "bytes": list(c.bytes),
    })
    return {
        "statistics": attrs.asdict(nat.statistics()),
        "max_connections": nat.max_connections,
        "max_per_source": nat.max_per_source,
        "rules": {
            "masquerade": [{"source": str(m.source), "out": m.out, "exclude": [str(e) for e in m.exclude]}
                           for m in nat.masquerade],
            "forward": [{"protocol": PROTOCOL_NAMES[f.protocol], "port": f.port, "to": ip_to_str(f.to),
                         "to_port": f.to_port, "interface": f.interface} for f in nat.forwards],
        },
        "connections": connections,
        "unlisted": len(nat) - len(connections),
    }


def _endpoints(key: bytes) -> dict[str, Any]:
    d = describe(key)
    return {"src": d["src"], "sport": d["sport"], "dst": d["dst"], "dport": d["dport"]}


def _bridge_statistics(core: Any) -> Any:
    statistics = getattr(core, "statistics", None)
    if statistics is None:
        raise ControlError("this daemon's core keeps no statistics")
    return statistics()


def _fdb(core: Any) -> Any:
    fdb = getattr(core, "fdb", None)
    if fdb is None:
        raise ControlError("this daemon's core has no forwarding database")
    return fdb


def _router_stats(node: Any) -> dict[str, Any] | None:
    router = getattr(node, "router", None)
    if router is None:
        return None
    stats = router.statistics()
    result: dict[str, Any] = {
        "forwarded": stats.forwarded, "delivered": stats.delivered, "fragments_created": stats.fragments_created,
        "icmp_sent": dict(stats.icmp_sent), "icmp_rate_limited": stats.icmp_rate_limited,
        "neighbours": {name: attrs.asdict(i.neighbours.statistics())
                       for name, i in router.interfaces.items() if i.neighbours is not None},
    }
    if router.nat is not None:
        result["nat"] = attrs.asdict(router.nat.statistics())
    return result


# -- human output: aligned tables -------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; ``right`` lists right-aligned (numeric) columns."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_ports(result: list[dict[str, Any]]) -> str:
    rows = []
    for p in result:
        state = "closed" if p["closed"] else ("up" if p["up"] else "down")
        rx, tx, q = p["rx"], p["tx"], p["tx_queue"]
        rows.append([
            p["name"], p["type"], state, rx["frames"], rx["bytes"], tx["frames"], tx["bytes"],
            f"{rx['errors']}/{tx['errors']}", f"{rx['dropped']}/{tx['dropped']}",
            f"{q['depth']}/{q['limit']}", q["tail_dropped"],
        ])
    headers = ["port", "type", "state", "rx-frames", "rx-bytes", "tx-frames", "tx-bytes",
               "errors(rx/tx)", "dropped(rx/tx)", "tx-queue", "tail-drops"]
    return format_table(headers, rows, right=range(3, 11))


def format_fdb(result: list[dict[str, Any]]) -> str:
    rows = [
        [e["port"], e["mac"], "static" if e["static"] else "learned", "-" if e["static"] else int(e["age"])]
        for e in result
    ]
    table = format_table(["port", "mac", "type", "age"], rows, right=[3])
    return f"{table}\n{len(rows)} {'entry' if len(rows) == 1 else 'entries'}"


def format_stats(result: dict[str, Any]) -> str:
    bridge, fdb = result["bridge"], result["fdb"]
    lines = [
        f"bridge: {bridge['unicast']} unicast, {bridge['flooded']} flooded" if bridge else "bridge: none (drop-in mode)",
        f"ports failed: {result.get('port_failures', 0)}",
        "drops:",
    ]
    lines += ["  " + line for line in format_table(
        ["reason", "frames"], sorted(result["drops"].items()), right=[1]).splitlines()]
    if fdb:
        lines.append("fdb: " + ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in fdb.items()))
    if result["ports"]:
        rows = [
            [name, p["rx_frames"], p["rx_bytes"], p["tx_frames"], p["tx_bytes"], p["rx_dropped"], p["tail_dropped"]]
            for name, p in result["ports"].items()
        ]
        lines.append("ports:")
        lines += ["  " + line for line in format_table(
            ["port", "rx-frames", "rx-bytes", "tx-frames", "tx-bytes", "rx-dropped", "tail-drops"], rows,
            right=range(1, 7)).splitlines()]
    router = result.get("router")
    if router:
        icmp = ", ".join(f"{n} {kind}" for kind, n in sorted(router["icmp_sent"].items())) or "none"
        lines.append(f"router: {router['forwarded']} forwarded, {router['delivered']} for the router,"
                     f" {router['fragments_created']} fragments made")
        lines.append(f"  icmp sent: {icmp}; {router['icmp_rate_limited']} rate-limited")
        for name, n in router["neighbours"].items():
            lines.append(f"  arp {name}: {n['entries']} entries, {n['requests']} requests, {n['resolved']} resolved,"
                         f" {n['failed']} failed, {n['queue_dropped'] + n['pending_full']} held packets dropped")
        if router.get("nat"):
            lines.append("  nat: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in router["nat"].items()))
    overlay = result.get("overlay")
    if overlay:
        icmp = ", ".join(f"{n} {kind}" for kind, n in sorted(overlay["icmp_sent"].items())) or "none"
        lines.append(f"overlay: {overlay['encapsulated']} encapsulated, {overlay['decapsulated']} decapsulated;"
                     f" icmp sent: {icmp}")
    if result.get("control"):
        lines.append(format_control(result["control"]))
    if result.get("captures"):
        lines.append("captures:")
        rows = [[c["port"], c["written"], c["dropped"]] for c in result["captures"]]
        lines += ["  " + line for line in format_table(["port", "written", "dropped"], rows, right=[1, 2]).splitlines()]
    faults = result.get("faults")
    if faults and faults["total"]:
        where = f"; their frames are in {faults['pcap']}" if faults["pcap"] else ""
        lines.append(f"internal errors: {faults['total']} batches lost to bugs, contained{where}")
        lines += ["  " + line for line in format_table(
            ["site", "port", "faults"], [[f["site"], f["port"] or "-", f["faults"]] for f in faults["by_site"]],
            right=[2]).splitlines()]
        for fault in faults["recent"][-3:]:
            lines.append(f"  latest: {fault['site']} on {fault['port'] or '-'}: {fault['error']} at {fault['where']}")
    if result.get("recent_drops"):
        lines.append("recent drops (newest last; first 14 bytes):")
        rows = [[d["port"], d["reason"], d["bytes"], d["head"]] for d in result["recent_drops"][-10:]]
        lines += ["  " + line for line in format_table(
            ["port", "reason", "bytes", "head"], rows, right=[2]).splitlines()]
    return "\n".join(lines)


def format_control(control: dict[str, Any]) -> str:
    requests, captures = control["requests"], control["captures"]
    return (f"control: {requests['active']}/{requests['limit']} requests, {captures['active']}/{captures['limit']}"
            f" captures; refused {requests['refused']} requests, {captures['refused']} captures;"
            f" {control['timed_out']} timed out, {control['stalled']} stalled, {control['failed']} failed")


def format_arp(result: list[dict[str, Any]]) -> str:
    rows = [
        [e["interface"], e["address"], e["mac"] or "(incomplete)", e["state"],
         "-" if e["confirmed"] is None else int(e["confirmed"]), e["queued"]]
        for e in result
    ]
    table = format_table(["interface", "address", "mac", "state", "confirmed", "queued"], rows, right=[4, 5])
    return f"{table}\n{len(rows)} {'neighbour' if len(rows) == 1 else 'neighbours'}"


def format_routes(result: dict[str, Any]) -> str:
    rows = [
        [i["name"], i["address"], i["mac"] or "(l3)", i["mtu"], "up" if i["up"] else "down",
         "yes" if i["proxy_arp"] else "no", i["rx_packets"], i["tx_packets"]]
        for i in result["interfaces"]
    ]
    lines = format_table(["interface", "address", "mac", "mtu", "state", "proxy-arp", "rx", "tx"], rows,
                         right=[3, 6, 7]).splitlines()
    lines.append("")
    rows = [[r["to"], r["via"] or "-", r["interface"], r["type"]] for r in result["routes"]]
    lines += format_table(["destination", "via", "interface", "type"], rows).splitlines()
    return "\n".join(lines)


def format_nat(result: dict[str, Any]) -> str:
    def pair(t: dict[str, Any]) -> str:
        return f"{t['src']}:{t['sport']} -> {t['dst']}:{t['dport']}"

    rows = [
        [c["protocol"], c["state"], c["kind"], pair(c["original"]), pair(c["reply"]), int(c["expires"]),
         f"{c['packets'][0]}/{c['packets'][1]}"]
        for c in result["connections"]
    ]
    table = format_table(["proto", "state", "nat", "original (as sent)", "reply (as it arrives)", "expires",
                          "packets(orig/reply)"], rows, right=[5, 6])
    stats = result["statistics"]
    sources = f"{stats['sources']} source{'' if stats['sources'] == 1 else 's'}"
    if result.get("unlisted"):
        table += f"\n... and {result['unlisted']} more (--limit N lists more)"
    return (f"{table}\n{stats['connections']} of {result['max_connections']} connections from {sources}"
            f" (at most {result['max_per_source']} per source), {stats['mappings']} mappings;"
            f" {stats['created']} created, {stats['expired']} expired, {stats['early_dropped']} dropped early,"
            f" {stats['source_limited']} refused at the source limit, {stats['translated']} packets translated")


def format_peers(result: dict[str, Any]) -> str:
    lease = result["lease"]
    vxlan = f", vni {lease['vni']}, vtep {lease['vtep_mac']}" if "vni" in lease else ""
    lines = [(
        f"this node: {lease['subnet']} of {lease['network']} at {lease['public_ip']}:{lease['port']}"
        f" ({lease['backend']}{vxlan}, mtu {lease['mtu']}, {lease['mode']} mode)"
    )]
    rows = [
        [p["subnet"], f"{p['public_ip']}:{p['port']}", p["vtep_mac"] or "-", p["tx_packets"], p["tx_bytes"],
         p["rx_packets"], p["rx_bytes"], p["rx_dropped"]]
        for p in result["peers"]
    ]
    lines += format_table(["subnet", "endpoint", "vtep-mac", "tx-packets", "tx-bytes", "rx-packets", "rx-bytes",
                           "rx-refused"], rows, right=range(3, 8)).splitlines()
    lines.append(f"{len(rows)} {'peer' if len(rows) == 1 else 'peers'}")
    if result["drops"]:
        lines.append("refused: " + ", ".join(f"{n} {reason}" for reason, n in result["drops"].items()))
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[Any], str]] = {
    "ports": format_ports, "fdb": format_fdb, "arp": format_arp, "routes": format_routes, "nat": format_nat,
    "peers": format_peers, "stats": format_stats,
}


# -- capture ------------------------------------------------------------------------


class _Chunk:
    """The file PcapWriter writes into: bytes collected until the next send."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


class CaptureSession:
    """One client's live capture of a port: a bounded buffer between the
    switch's tasks (:meth:`push`, sync, never blocks) and the client's socket
    (:meth:`stream`). Should :meth:`push` raise (a bug), the switch contains
    it in the port's task and ends the monitor, and with it this capture.

    ``convert`` turns the port's frames into what is recorded (the underlay's
    datagrams into UDP frames); ``linktype`` says what they are (Ethernet, or
    raw IP for a TUN port).
    """

    def __init__(
        self, port: str, *, count: int | None = None, max_frames: int = CAPTURE_FRAMES,
        max_bytes: int = CAPTURE_BYTES, clock: Callable[[], float] = time.time,
        convert: Callable[[list[bytes]], list[bytes]] | None = None, linktype: int = LINKTYPE_ETHERNET,
    ) -> None:
        self.port = port
        self.linktype = linktype
        self.count = count
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._clock = clock
        self._convert = convert
        self._batches: deque[tuple[float, list[bytes]]] = deque()
        self._frames = 0
        self._bytes = 0
        self._wakeup = trio.Event()
        self.written = 0
        self.dropped = 0
        self.stalled = False   # ended because the client took nothing for the stall timeout

    def summary(self) -> dict[str, Any]:
        return {"port": self.port, "written": self.written, "dropped": self.dropped,
                "buffered": self._frames, "count": self.count}

    def push(self, frames: list[bytes]) -> None:
        """The switch's monitor callback, run in a port's task: keep what fits, count the rest."""
        if self._convert is not None:
            frames = self._convert(frames)
        room = min(self.max_frames - self._frames, len(frames))
        size = 0
        for i in range(room):
            length = min(len(frames[i]), SNAPLEN)
            if self._bytes + size + length > self.max_bytes:
                room = i
                break
            size += length
        if room:
            self._batches.append((self._clock(), frames[:room]))
            self._frames += room
            self._bytes += size
            self._wakeup.set()
        self.dropped += len(frames) - room

    async def _next(self) -> list[tuple[float, list[bytes]]]:
        while not self._batches:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        batches = list(self._batches)
        self._batches.clear()
        self._frames = self._bytes = 0
        return batches

    async def stream(self, out: trio.abc.SendStream, *, stall_timeout: float = STALL_TIMEOUT) -> None:
        """Write the pcap header, then records, until ``count`` frames are written (forever if None).

        Returns early, with ``stalled`` set, when the client has taken nothing
        of what waits for it for ``stall_timeout`` seconds. Waiting for frames
        is not a stall: a quiet port's capture waits as long as its client.
        """
        ts = 0.0
        chunk = _Chunk()
        writer = PcapWriter(chunk, linktype=self.linktype, clock=lambda: ts)
        if not await self._send(out, chunk.take(), stall_timeout):
            return
        while self.count is None or self.written < self.count:
            for ts, frames in await self._next():
                if self.count is not None:
                    frames = frames[: self.count - self.written]
                writer.write(frames)
                self.written += len(frames)
            if not await self._send(out, chunk.take(), stall_timeout):
                return

    async def _send(self, out: trio.abc.SendStream, data: bytes, stall_timeout: float) -> bool:
        """Send ``data`` a piece at a time; False, and ``stalled``, if a piece waits ``stall_timeout``."""
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE):
            with trio.move_on_after(stall_timeout) as scope:
                await out.send_all(view[start:start + SEND_PIECE])
            if scope.cancelled_caught:
                self.stalled = True
                return False
        return True


# -- the server ----------------------------------------------------------------------


Handler = Callable[["ControlServer", dict[str, Any]], Awaitable[Any]]


@attrs.define
class Pool:
    """One kind of connection's share of the socket: how many now, at most, and turned away."""

    limit: int
    active: int = 0
    refused: int = 0   # turned away because ``active`` was at ``limit``


@attrs.frozen
class ControlStatistics:
    requests: Pool   # connections until their request line says they are captures
    captures: Pool
    timed_out: int   # requests not sent, or answers not taken, within the client timeout
    stalled: int     # captures ended because their client took nothing for the stall timeout
    failed: int      # clients closed by an unexpected exception (a bug; its traceback is logged)


class ControlServer:
    """Serves the control protocol for ``node`` on the Unix socket ``path``."""

    def __init__(
        self, node: Any, path: str, *, max_requests: int = MAX_REQUESTS, max_captures: int = MAX_CAPTURES,
        timeout: float = CLIENT_TIMEOUT, stall_timeout: float = STALL_TIMEOUT, max_request: int = MAX_REQUEST,
        capture_frames: int = CAPTURE_FRAMES, capture_bytes: int = CAPTURE_BYTES,
    ) -> None:
        self.node = node
        self.path = str(path)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.max_request = max_request
        self.capture_frames = capture_frames
        self.capture_bytes = capture_bytes
        self.captures: list[CaptureSession] = []
        self._request_pool = Pool(max_requests)
        self._capture_pool = Pool(max_captures)
        self._timed_out = 0
        self._stalled = 0
        self._failed = 0
        self._first_at_site = FirstAtSite()

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(attrs.evolve(self._request_pool), attrs.evolve(self._capture_pool),
                                 self._timed_out, self._stalled, self._failed)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the socket file is removed on the way out."""
        sock, identity = await self._listen()
        try:
            listener = trio.SocketListener(sock)
            async with listener, trio.open_nursery() as nursery:
                log.debug("control socket listening on %s", self.path)
                task_status.started(self.path)
                await self._accept_loop(listener, nursery)
        finally:
            self._unlink_if_ours(identity)

    async def _listen(self) -> tuple[trio.socket.SocketType, tuple[int, int]]:
        path = self.path
        size = len(os.fsencode(path))
        if size > SUN_PATH_MAX:
            raise ControlError(f"control socket path is too long ({size} bytes, at most {SUN_PATH_MAX}): {path}")
        await self._remove_stale(path)
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create {parent} for the control socket: {exc.strerror}") from None
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            # Restrict before listen(): until then a connect() is refused anyway.
            os.chmod(path, 0o600)
            info = os.stat(path)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        return sock, (info.st_dev, info.st_ino)

    async def _remove_stale(self, path: str) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.fail_after(2.0):
                await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        except trio.TooSlowError:
            pass  # a listener with a full backlog: still alive
        except OSError as exc:
            raise ControlError(f"cannot check the existing control socket {path}: {exc.strerror}") from None
        finally:
            probe.close()
        raise ControlError(f"another daemon is already listening on {path}")

    def _unlink_if_ours(self, identity: tuple[int, int]) -> None:
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove control socket %s: %s", self.path, exc.strerror)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                log.warning("control socket: %s; pausing accept for 100 ms", exc.strerror)
                await trio.sleep(0.1)  # back off while descriptors are short (as trio.serve_listeners does)
                continue
            pool = self._request_pool
            if pool.active >= pool.limit:
                pool.refused += 1
                await _refuse(stream, f"too many requests at once (at most {pool.limit})", patience=0.1)
                await stream.aclose()
                continue
            pool.active += 1
            nursery.start_soon(self._serve_client, stream)

    # -- one connection ----------------------------------------------------------

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        """One connection, from accept to close: whatever goes wrong here costs this client alone."""
        pool, what = self._request_pool, "a control client"
        try:
            async with stream:
                try:
                    with trio.fail_after(self.timeout):
                        line, _ = await _read_line(stream, self.max_request, "request")
                        request = parse_request(line)
                        what = f"a control client's {request['command']!r}"
                        if request["command"] != "capture":
                            await stream.send_all(await _answer(await self._dispatch(request)))
                            return
                        if self._capture_pool.active >= self._capture_pool.limit:
                            self._capture_pool.refused += 1
                            raise ControlError(f"too many captures at once (at most {self._capture_pool.limit})")
                        pool.active -= 1
                        pool = self._capture_pool
                        pool.active += 1
                        session, monitor = await self._start_capture(stream, request)
                except ControlError as exc:
                    await _refuse(stream, str(exc))
                    return
                except trio.TooSlowError:
                    self._timed_out += 1
                    await _refuse(stream, f"timed out after {self.timeout:g} s")
                    return
                # The capture streams for as long as its client takes what it is sent.
                await self._run_capture(stream, session, monitor)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up
        except Exception as exc:  # the bulkhead: a bug costs this client, never the server or the daemon
            self._fail(what, exc)
        finally:
            pool.active -= 1

    def _fail(self, what: str, exc: Exception) -> None:
        """Count an unexpected exception; log its traceback the first time it comes from its place."""
        self._failed += 1
        if not self._first_at_site("control", exc):
            log.debug("%s failed again: %r", what, exc)
            return
        log.error("%s failed (once per place; `show stats` counts them): %r", what, exc, exc_info=exc)

    async def _dispatch(self, request: dict[str, Any]) -> Any:
        command = request["command"]
        handler = COMMANDS.get(command)
        if handler is None:
            available = ", ".join(sorted([*COMMANDS, "capture"]))
            raise ControlError(f"unknown command {command!r} (available: {available})")
        try:
            return await handler(self, request)
        except ControlError:
            raise
        except Exception as exc:  # a bug in a handler: the client hears of it, the data path carries on
            self._fail(f"control command {command!r}", exc)
            raise ControlError(f"internal error in {command}: {exc!r}") from exc

    # -- capture -----------------------------------------------------------------

    async def _start_capture(self, stream: trio.abc.SendStream, request: dict[str, Any]) -> tuple[CaptureSession, Any]:
        port = _field(request, "port", str)
        count = _field(request, "count", int, required=False)
        if count is not None and count < 1:
            raise ControlError(f"count must be at least 1, got {count}")
        switch = self.node.switch
        if port not in switch.ports:
            raise ControlError(f"no port named {port!r} (ports: {', '.join(switch.ports) or 'none'})")
        device = switch.ports[port]
        convert = None
        if device.kind == "udp":   # the underlay: datagrams become the UDP frames they are on the wire
            local_ip, local_port = socket.inet_aton(device.address), device.port

            def convert(frames: list[bytes]) -> list[bytes]:
                return [capture_frame(f, local_ip, local_port) for f in frames]

        linktype = LINKTYPE_RAW if device.kind == "tun" else LINKTYPE_ETHERNET   # a TUN carries bare IP packets
        session = CaptureSession(port, count=count, max_frames=self.capture_frames, max_bytes=self.capture_bytes,
                                 convert=convert, linktype=linktype)
        monitor = switch.add_monitor(port, session.push)
        try:
            await stream.send_all(_response(result={"port": port, "snaplen": SNAPLEN, "linktype": linktype}))
        except BaseException:
            switch.remove_monitor(monitor)
            raise
        self.captures.append(session)
        log.info("capture of %s started", port)
        return session, monitor

    async def _run_capture(self, stream: trio.SocketStream, session: CaptureSession, monitor: Any) -> None:
        try:
            async with trio.open_nursery() as nursery:
                async def finish(fn: Callable[[], Awaitable[None]]) -> None:
                    # Whichever ends first ends the capture: count reached,
                    # client stalled or gone, port gone.
                    try:
                        await fn()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(finish, lambda: session.stream(stream, stall_timeout=self.stall_timeout))
                nursery.start_soon(finish, lambda: _wait_for_hangup(stream))
                nursery.start_soon(finish, monitor.ended.wait)
        finally:
            self.node.switch.remove_monitor(monitor)
            self.captures.remove(session)
            stalled = ""
            if session.stalled:
                self._stalled += 1
                stalled = f"; its client took nothing for {self.stall_timeout:g} s"
            log.info("capture of %s ended: %d frames written, %d dropped for a slow reader%s",
                     session.port, session.written, session.dropped, stalled)


async def _refuse(stream: trio.abc.SendStream, error: str, *, patience: float = 1.0) -> None:
    """Tell the client why, if it takes the line within ``patience`` seconds."""
    with trio.move_on_after(patience):
        try:
            await stream.send_all(_response(error=error))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it already hung up


async def _wait_for_hangup(stream: trio.abc.ReceiveStream) -> None:
    """Return when the client closes its end (anything it sends is ignored)."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass


# -- requests and their handlers -------------------------------------------------------


def parse_request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"malformed request: not a JSON line ({exc})") from None
    if not isinstance(request, dict):
        raise ControlError("malformed request: expected a JSON object like {\"command\": \"show\", \"what\": \"fdb\"}")
    if not isinstance(request.get("command"), str):
        raise ControlError("malformed request: \"command\" (a string) is required")
    return request


_TYPE_NAMES = {str: "a string", int: "an integer"}


def _field(request: dict[str, Any], key: str, type_: type, *, required: bool = True) -> Any:
    if key not in request or request[key] is None:
        if required:
            raise ControlError(f"{request['command']}: {key!r} is required")
        return None
    value = request[key]
    if not isinstance(value, type_) or isinstance(value, bool):
        raise ControlError(f"{request['command']}: {key!r} must be {_TYPE_NAMES[type_]}, got {value!r}")
    return value


async def _cmd_show(server: ControlServer, request: dict[str, Any]) -> Any:
    what = _field(request, "what", str)
    node = server.node
    if what == "ports":
        return show_ports(node)
    if what == "fdb":
        return await show_fdb(node, trio.current_time())  # the daemon's Switch runs on trio's clock
    if what == "stats":
        return show_stats(node, server)
    if what == "arp":
        return show_arp(node, trio.current_time())
    if what == "routes":
        return show_routes(node)
    if what == "nat":
        limit = _field(request, "limit", int, required=False)
        if limit is not None and limit < 1:
            raise ControlError(f"show: 'limit' must be at least 1, got {limit}")
        return await show_nat(node, trio.current_time(), NAT_LISTED if limit is None else limit)
    if what == "peers":
        return show_peers(node)
    raise ControlError(f"cannot show {what!r} (available: {', '.join(FORMATTERS)})")


async def _cmd_attach(server: ControlServer, request: dict[str, Any]) -> Any:
    kwargs = {key: _field(request, key, str) for key in ("netns", "name", "address")}
    gateway = _field(request, "gateway", str, required=False)
    mtu = _field(request, "mtu", int, required=False)
    if gateway is not None:
        kwargs["gateway"] = gateway
    if mtu is not None:
        kwargs["mtu"] = mtu
    try:
        attach = server.node.attach
    except AttributeError:
        raise ControlError("attach is not available in this version of the daemon") from None
    await _call(attach, kwargs, "attach")
    return {"name": kwargs["name"], "netns": kwargs["netns"], "address": kwargs["address"]}


async def _cmd_detach(server: ControlServer, request: dict[str, Any]) -> Any:
    name = _field(request, "name", str)
    try:
        detach = server.node.detach
    except AttributeError:
        raise ControlError("detach is not available in this version of the daemon") from None
    await _call(detach, {"name": name}, "detach")
    return {"name": name}


async def _cmd_reload(server: ControlServer, request: dict[str, Any]) -> Any:
    """Read the daemon's config file again and take its peers (as SIGHUP does)."""
    from vswitch.config import load
    from vswitch.errors import ConfigError

    node = server.node
    path = getattr(node, "config_path", None)
    if path is None:
        raise ControlError("reload: this daemon was not started from a config file")
    try:
        config = load(path)
    except ConfigError as exc:
        raise ControlError(f"reload: {exc}") from None
    changes = await _call(node.reload, {"config": config}, "reload")
    return {
        "config": path, "added": [str(lease) for lease in changes.added],
        "removed": [str(lease) for lease in changes.removed], "changed": [str(lease) for lease in changes.changed],
        "unchanged": changes.kept,
    }


async def _call(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
    """Call a Node method that may be sync or async; its refusals become errors for the client."""
    try:
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
    except (ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ControlError(f"{what}: {message}") from None
    return result


COMMANDS: dict[str, Handler] = {
    "show": _cmd_show, "attach": _cmd_attach, "detach": _cmd_detach, "reload": _cmd_reload,
}


# -- the client -----------------------------------------------------------------------


async def connect(path: str) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(not_listening(path)) from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: the control socket belongs to the daemon's user; "
                           "run this as root (sudo)") from None
    except OSError as exc:
        raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None


def _check_response(line: bytes, path: str) -> Any:
    if not line:
        raise ControlError(f"the daemon on {path} closed the connection without answering")
    try:
        response = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError(f"the daemon on {path} sent a malformed answer: {line[:200]!r}") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise ControlError(f"the daemon on {path} sent a malformed answer: {line[:200]!r}")
    if not response["ok"]:
        raise ControlError(str(response.get("error", "the daemon refused without saying why")))
    return response.get("result")


async def request(path: str, message: dict[str, Any], *, timeout: float = CLIENT_TIMEOUT) -> Any:
    """Send one request to the daemon on ``path``; its result, or ControlError with its message."""
    try:
        with trio.fail_after(timeout):
            stream = await connect(path)
            async with stream:
                try:
                    await stream.send_all(_encode(message))
                    line, _ = await _read_line(stream, MAX_RESPONSE, "response")
                except trio.BrokenResourceError as exc:
                    raise ControlError(f"the daemon on {path} hung up: {exc}") from None
    except trio.TooSlowError:
        raise ControlError(f"the daemon on {path} did not answer within {timeout:g} s") from None
    return _check_response(line, path)


class PcapRecords:
    """Splits a pcap byte stream at record boundaries, so a capture that is
    cut short still leaves a file whose every record is whole."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._record_header: struct.Struct | None = None
        self.records = 0

    def feed(self, data: bytes) -> bytes:
        """Append ``data``; return the complete part (header and whole records) not returned before."""
        buffer = self._buffer
        buffer += data
        out = bytearray()
        if self._record_header is None:
            if len(buffer) < 24:
                return b""
            magic = buffer[:4]
            if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                self._record_header = struct.Struct("<IIII")
            elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                self._record_header = struct.Struct(">IIII")
            else:
                raise ControlError(f"the daemon sent something that is not a pcap stream: {bytes(magic)!r}")
            out += buffer[:24]
            del buffer[:24]
        header = self._record_header
        offset = 0
        while len(buffer) - offset >= 16:
            incl_len = header.unpack_from(buffer, offset)[2]
            end = offset + 16 + incl_len
            if end > len(buffer):
                break
            offset = end
            self.records += 1
        out += buffer[:offset]
        del buffer[:offset]
        return bytes(out)


async def capture(
    path: str, port: str, out: BinaryIO, *, count: int | None = None, records: PcapRecords | None = None,
) -> int:
    """Stream ``port``'s frames as pcap into ``out`` (flushed per chunk); returns the records written.

    Ends when the daemon closes the stream (``count`` reached, port gone,
    daemon stopped); cancel it to stop early. ``out`` only ever receives
    whole records; ``records.records`` counts them, also after a cancel.
    """
    message: dict[str, Any] = {"command": "capture", "port": port}
    if count is not None:
        message["count"] = count
    records = records if records is not None else PcapRecords()
    try:
        with trio.fail_after(CLIENT_TIMEOUT):
            stream = await connect(path)
    except trio.TooSlowError:
        raise ControlError(f"the daemon on {path} did not accept within {CLIENT_TIMEOUT:g} s") from None
    async with stream:
        try:
            try:
                with trio.fail_after(CLIENT_TIMEOUT):
                    await stream.send_all(_encode(message))
                    line, rest = await _read_line(stream, MAX_REQUEST, "response")
            except trio.TooSlowError:
                raise ControlError(f"the daemon on {path} did not answer within {CLIENT_TIMEOUT:g} s") from None
            _check_response(line, path)
            data = rest
            while True:
                complete = records.feed(data)
                if complete:
                    out.write(complete)
                    out.flush()
                data = await stream.receive_some(65536)
                if not data:
                    break
        except trio.BrokenResourceError:
            pass  # the daemon went away: what was written is whole
    return records.records
