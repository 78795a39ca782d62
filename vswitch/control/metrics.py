"""The node's counters in Prometheus's text exposition format (0.0.4), for ``GET /metrics``.

:func:`snapshot` reads a node through the same reports ``vswitch show`` answers with (:mod:`.reports`), plus
the tables' limits; :func:`exposition` turns that snapshot into text and reads nothing else, so a test can feed
it any dict. Names follow Prometheus's conventions: a ``vswitch_`` prefix, ``_total`` on counters, base units
(bytes, seconds), one HELP and one TYPE line per family, label values escaped.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from vswitch import __version__

from .reports import NodeView, Row, show_peers, show_ports, show_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]
Sample = tuple[Labels, float | int | bool]


def snapshot(node: NodeView) -> Row:
    """What :func:`exposition` renders: the reports of ``show stats``, ``show ports`` and ``show peers``, the
    tables' limits, the lease source and the last reload."""
    overlay = node.overlay if node.config.overlay is not None else None
    router = node.router
    stats = show_stats(node)
    limits: Row = {
        "fdb": node.config.bridge.max_entries if stats["fdb"] is not None else None,
        "nat": router.nat.max_connections if router is not None and router.nat is not None else None,
        "neighbours": {name: i.neighbours.max_entries for name, i in router.interfaces.items()
                       if i.neighbours is not None} if router is not None else {},
        "peers": overlay.peers.max_peers if overlay is not None else None,
    }
    reloaded: tuple[float, bool] | None = getattr(node, "last_reload", None)
    return {
        "node": node.config.node.name,
        "stats": stats,
        "ports": show_ports(node),
        "peers": show_peers(node) if overlay is not None else None,
        "limits": limits,
        "reload": {"timestamp": reloaded[0], "success": reloaded[1]} if reloaded else None,
    }


class _Families:
    """The families in the order they are added, each with its HELP, TYPE and samples."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[Sample]]] = {}

    def add(self, name: str, kind: str, help: str, samples: Iterable[Sample]) -> None:
        self.families.setdefault(name, (kind, help, []))[2].extend(samples)

    def one(self, name: str, kind: str, help: str, value: Any, **labels: str) -> None:
        if value is not None:
            self.add(name, kind, help, [(labels, value)])

    def text(self) -> str:
        lines = []
        for name, (kind, help, samples) in self.families.items():
            if not samples:
                continue
            lines += [f"# HELP {name} {_escape_help(help)}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{_labels(labels)} {_value(value)}" for labels, value in samples]
        return "\n".join(lines) + "\n"


def exposition(snap: Row) -> str:
    """The text a scrape returns, from a :func:`snapshot`."""
    f = _Families()
    f.one("vswitch_build_info", "gauge", "Always 1; the version and node name as labels.", 1,
          version=__version__, node=str(snap["node"]))
    _ports(f, snap["ports"])
    stats = snap["stats"]
    limits = snap["limits"]
    f.one("vswitch_port_failures_total", "counter", "Ports taken down because their device or link failed.",
          stats["port_failures"])
    f.add("vswitch_drops_total", "counter", "Frames dropped, by reason (every reason, zero or not).",
          [({"reason": reason}, n) for reason, n in stats["drops"].items()])
    f.one("vswitch_internal_errors_total", "counter",
          "Frames lost with a batch to an unexpected exception (a bug; also a reason of vswitch_drops_total).",
          stats["drops"].get("internal-error", 0))
    if stats["bridge"] is not None:
        f.one("vswitch_bridge_unicast_total", "counter", "Frames the bridge sent out one port.",
              stats["bridge"]["unicast"])
        f.one("vswitch_bridge_flooded_total", "counter", "Frames the bridge flooded.", stats["bridge"]["flooded"])
    if stats["fdb"] is not None:
        fdb = stats["fdb"]
        f.one("vswitch_fdb_entries", "gauge", "Entries in the forwarding database.", fdb["entries"])
        f.one("vswitch_fdb_max_entries", "gauge", "The forwarding database's limit.", limits["fdb"])
        for key in ("learned", "moved", "aged", "evicted"):
            f.one(f"vswitch_fdb_{key}_total", "counter", f"Forwarding database entries {key}.", fdb[key])
    if stats["router"] is not None:
        _router(f, stats["router"], limits)
    if stats["overlay"] is not None:
        f.one("vswitch_overlay_encapsulated_total", "counter", "Packets sent to a peer through the overlay.",
              stats["overlay"]["encapsulated"])
        f.one("vswitch_overlay_decapsulated_total", "counter", "Packets received from a peer through the overlay.",
              stats["overlay"]["decapsulated"])
    if snap["peers"] is not None:
        _peers(f, snap["peers"], limits)
    if snap["reload"] is not None:
        f.one("vswitch_last_reload_timestamp_seconds", "gauge",
              "When the config was last read (the start, a reload or SIGHUP), in Unix seconds.",
              snap["reload"]["timestamp"])
        f.one("vswitch_last_reload_success", "gauge", "Whether the last reading of the config was taken (1) or not.",
              snap["reload"]["success"])
    return f.text()


_PORT_COUNTERS = {"frames": "Frames {verb} on the port.", "bytes": "Bytes {verb} on the port.",
                  "errors": "Errors of the port's device, {verb}.", "dropped": "Frames the port's device dropped, {verb}.",
                  "super_frames": "TCP super-frames (up to 64 KB, TSO/GRO) {verb} whole, each one of the frames."}


def _ports(f: _Families, ports: list[Row]) -> None:
    f.add("vswitch_port_up", "gauge", "Whether the port is up.", [({"port": p["name"]}, p["up"]) for p in ports])
    for direction, verb in (("rx", "received"), ("tx", "sent")):
        for key, what in _PORT_COUNTERS.items():
            f.add(f"vswitch_port_{direction}_{key}_total", "counter", what.format(verb=verb),
                  [({"port": p["name"]}, p[direction][key]) for p in ports])
    f.add("vswitch_port_tx_tail_dropped_total", "counter", "Frames dropped because the port's send queue was full.",
          [({"port": p["name"]}, p["tx_queue"]["tail_dropped"]) for p in ports])
    f.add("vswitch_port_tx_queue_frames", "gauge", "Frames waiting in the port's send queue.",
          [({"port": p["name"]}, p["tx_queue"]["depth"]) for p in ports])
    f.add("vswitch_port_tx_queue_max_frames", "gauge", "The port's send queue limit.",
          [({"port": p["name"]}, p["tx_queue"]["limit"]) for p in ports])


def _router(f: _Families, router: Row, limits: Row) -> None:
    f.one("vswitch_router_forwarded_total", "counter", "Packets the router forwarded.", router["forwarded"])
    f.one("vswitch_router_delivered_total", "counter", "Packets addressed to the router itself.", router["delivered"])
    neighbours = router["neighbours"]
    f.add("vswitch_neighbours", "gauge", "Entries in an interface's ARP table.",
          [({"interface": name}, n["entries"]) for name, n in neighbours.items()])
    f.add("vswitch_neighbours_max", "gauge", "An interface's ARP table limit.",
          [({"interface": name}, limit) for name, limit in limits["neighbours"].items()])
    f.add("vswitch_neighbour_requests_total", "counter", "ARP requests an interface sent.",
          [({"interface": name}, n["requests"]) for name, n in neighbours.items()])
    f.add("vswitch_neighbour_failed_total", "counter", "Addresses an interface gave up resolving.",
          [({"interface": name}, n["failed"]) for name, n in neighbours.items()])
    nat = router.get("nat")
    if nat is not None:
        f.one("vswitch_nat_connections", "gauge", "Connections the NAT tracks.", nat["connections"])
        f.one("vswitch_nat_max_connections", "gauge", "The NAT's connection limit.", limits["nat"])
        f.one("vswitch_nat_created_total", "counter", "Connections the NAT started tracking.", nat["created"])
        f.one("vswitch_nat_expired_total", "counter", "Tracked connections that timed out.", nat["expired"])
        f.one("vswitch_nat_early_dropped_total", "counter", "Unanswered connections dropped to make room.",
              nat["early_dropped"])
        f.one("vswitch_nat_source_limited_total", "counter",
              "New connections refused because their source held its limit.", nat["source_limited"])
        f.one("vswitch_nat_translated_total", "counter", "Packets the NAT rewrote.", nat["translated"])


def _peers(f: _Families, peers: Row, limits: Row) -> None:
    table = peers["peers"]
    f.one("vswitch_peers", "gauge", "Peers (other nodes' leases) in the overlay's table.", len(table))
    f.one("vswitch_peers_max", "gauge", "The overlay's peer table limit.", limits["peers"])
    for key, help in (("tx_packets", "Packets sent to the peer."), ("tx_bytes", "Bytes sent to the peer."),
                      ("rx_packets", "Packets received from the peer."), ("rx_bytes", "Bytes received from the peer."),
                      ("rx_dropped", "Packets from the peer refused.")):
        f.add(f"vswitch_peer_{key}_total", "counter", help, [({"subnet": p["subnet"]}, p[key]) for p in table])
    source = peers["source"]
    if source.get("source") == "etcd":
        f.one("vswitch_lease_source_connected", "gauge", "Whether the etcd lease source is connected and watching.",
              source["state"] == "connected")
        f.one("vswitch_lease_source_revision", "gauge", "The etcd revision the lease source last saw.",
              source["revision"])
        f.one("vswitch_lease_source_reconnects_total", "counter", "Times the lease source reconnected to etcd.",
              source["reconnects"])


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)
