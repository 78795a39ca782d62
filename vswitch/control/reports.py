"""What ``vswitch show`` reports: a node's tables and counters as plain dicts and lists.

Each report reads a running node and returns JSON-ready values, the answer
the client prints with ``--json`` and formats as a table otherwise
(:mod:`vswitch.cli.format`). A long listing is rendered a slice at a time
with a checkpoint between slices, so that listing a table of a million
entries never holds up forwarding.
"""

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import trio

from vswitch.config import Config, PortConfig
from vswitch.core.actions import DropReason
from vswitch.core.l2.bridge import BridgeStatistics
from vswitch.core.l2.fdb import Fdb
from vswitch.core.l3.router import Router
from vswitch.core.nat import PROTOCOL_NAMES, Forward, describe
from vswitch.core.wire.addr import ip_to_str, mac_to_str
from vswitch.errors import ControlError
from vswitch.overlay.core.tunnel import Overlay
from vswitch.shell.switch import Switch

LISTING_SLICE = 512              # table rows rendered between checkpoints: a long listing never holds up forwarding
NAT_LISTED = 1000                # connections `show nat` lists unless asked for more (its counters cover them all)

Row = dict[str, Any]
T = TypeVar("T")


class LeaseView(Protocol):
    """What the reports read of an etcd lease source (:class:`vswitch.overlay.shell.leases.EtcdLeases`)."""

    def describe(self) -> dict[str, object]: ...

    async def leases(self) -> list[dict[str, object]]: ...


class NodeView(Protocol):
    """What the reports read of a node (:class:`vswitch.daemon.Node` is one)."""

    @property
    def config(self) -> Config: ...

    @property
    def switch(self) -> Switch: ...

    @property
    def router(self) -> Router | None: ...

    @property
    def overlay(self) -> Overlay | None: ...

    @property
    def leases(self) -> LeaseView | None: ...

    def port_config(self, name: str) -> PortConfig | None: ...


def show_ports(node: NodeView) -> list[Row]:
    switch = node.switch
    stats = _bridge_statistics(node)
    bridge_ports = stats.ports if stats is not None else {}
    interface_of: Callable[[str], str | None] = getattr(switch.core, "interface_of", lambda name: None)
    ports = []
    for status in switch.port_status():
        dev = status.device
        bridge = bridge_ports.get(status.name)
        configured = node.port_config(status.name)
        ports.append({
            "name": status.name,
            "type": switch.ports[status.name].kind,
            "netns": configured.netns if configured else None,
            "ifname": configured.ifname if configured else None,
            "address": str(configured.address) if configured and configured.address else None,
            # linked at run time (`attach`, the CNI plugin), not by the config: what CNI's GC may remove
            "attached": configured is not None and all(p.name != status.name for p in node.config.ports),
            "up": status.up,
            "closed": status.closed,
            "tso": switch.ports[status.name].capabilities.tso,   # takes TCP super-frames whole
            "rx": {"frames": dev.rx_frames, "bytes": dev.rx_bytes, "errors": dev.rx_errors,
                   "dropped": dev.rx_dropped, "super_frames": dev.rx_super_frames},
            "tx": {"frames": dev.tx_frames, "bytes": dev.tx_bytes, "errors": dev.tx_errors,
                   "dropped": dev.tx_dropped, "super_frames": dev.tx_super_frames},
            "tx_queue": {"depth": status.tx.queued, "limit": switch.tx_queue,
                         "tail_dropped": status.tx.tail_dropped, "sent_batches": status.tx.sent_batches},
            "bridge": attrs.asdict(bridge) if bridge is not None else None,
            "router_interface": interface_of(status.name),   # a port the router owns is not on the bridge
        })
    return ports


async def show_fdb(node: NodeView, now: float) -> list[Row]:
    """Every FDB entry, by port then MAC; ``age`` is seconds since its address was last seen (static entries
    are refreshed too, though they never age out)."""
    entries = sorted(_fdb(node), key=lambda e: (e.port, e.mac))
    return await _rendered(entries, lambda e: {
        "mac": mac_to_str(e.mac), "port": e.port, "static": e.static, "age": round(max(0.0, now - e.updated), 3),
    })


async def _rendered(items: Sequence[T], render: Callable[[T], Row]) -> list[Row]:
    """``render`` applied to each item, a slice at a time with a checkpoint between slices, so that listing a
    table of a million entries lets the ports run meanwhile (``items`` is a snapshot: a list)."""
    rows: list[Row] = []
    for start in range(0, len(items), LISTING_SLICE):
        rows += map(render, items[start:start + LISTING_SLICE])
        await trio.lowlevel.checkpoint()
    return rows


def show_stats(
    node: NodeView, *, captures: Sequence[Row] = (), control: Row | None = None, nonzero: bool = False,
) -> Row:
    """The node's counters, with the control socket's ``captures`` and ``control`` counters when it has them.

    Every drop reason is listed, zero or not, unless ``nonzero``.
    """
    switch = node.switch
    overlay = node.overlay
    stats = _bridge_statistics(node)
    drops = switch.drop_counts()
    tail = {s.name: s.tx.tail_dropped for s in switch.port_status()}
    return {
        "bridge": {"unicast": stats.unicast, "flooded": stats.flooded} if stats else None,
        "port_failures": switch.port_failures,
        "drops": _drop_reasons(drops, nonzero),
        "fdb": attrs.asdict(stats.fdb) if stats else None,
        "ports": {
            name: {**attrs.asdict(port), "tail_dropped": tail.get(name, 0)} for name, port in stats.ports.items()
        } if stats else {},
        "router": _router_stats(node.router) if node.router is not None else None,
        "overlay": _overlay_stats(overlay) if overlay is not None else None,
        "captures": list(captures),
        "control": control,
        "faults": switch.faults.describe(),
        "recent_drops": [
            {"port": d.port, "reason": str(d.reason), "bytes": len(d.frame), "head": d.frame[:14].hex()}
            for d in switch.recent_drops
        ],
    }


def _drop_reasons(counts: Mapping[DropReason, int], nonzero: bool) -> dict[str, int]:
    """Every reason with its count, in the order of :class:`DropReason`; with ``nonzero`` only the counted ones."""
    return {str(reason): counts.get(reason, 0) for reason in DropReason if counts.get(reason, 0) or not nonzero}


def _router_stats(router: Router) -> Row:
    stats = router.statistics()
    result: Row = {
        "forwarded": stats.forwarded, "delivered": stats.delivered, "fragments_created": stats.fragments_created,
        "icmp_sent": dict(stats.icmp_sent), "icmp_rate_limited": stats.icmp_rate_limited,
        "neighbours": {name: attrs.asdict(i.neighbours.statistics())
                       for name, i in router.interfaces.items() if i.neighbours is not None},
        # The router's own count of its drops: whose they were where a reason is the bridge's too (truncated,
        # port-down), and the packets it held for an interface that went down, which the datapath does not pass on.
        "drops": _drop_reasons(router.drop_counts(), nonzero=True),
    }
    if router.nat is not None:
        result["nat"] = attrs.asdict(router.nat.statistics())
    return result


def _overlay_stats(overlay: Overlay) -> Row:
    stats = overlay.statistics()
    return {"encapsulated": stats.encapsulated, "decapsulated": stats.decapsulated,
            "icmp_sent": dict(stats.icmp_sent), "icmp_rate_limited": stats.icmp_rate_limited}


def show_peers(node: NodeView) -> Row:
    """This node's lease, every peer's with its counters, and the overlay's drops."""
    overlay = node.overlay
    config = node.config.overlay
    if overlay is None or config is None:
        raise ControlError("this daemon has no overlay: add [overlay] to its config")
    return {
        "lease": {**overlay.describe(), "public_ip": str(config.public_ip), "mtu": config.mtu,
                  "mode": "drop-in " + (config.device or "") if config.device else "router"},
        "source": node.leases.describe() if node.leases is not None else {"source": "static"},
        "peers": [
            {"subnet": str(p.lease.subnet), "public_ip": ip_to_str(p.lease.public_ip), "port": p.port,
             "vtep_mac": mac_to_str(p.lease.vtep_mac) if p.lease.vtep_mac else None, **attrs.asdict(p.counters)}
            for p in overlay.peers
        ],
        "statistics": _overlay_stats(overlay),
        "drops": {str(reason): n for reason, n in sorted(overlay.drop_counts().items(), key=lambda i: str(i[0]))},
    }


async def show_leases(node: NodeView) -> list[Row]:
    """Every lease in the cluster, as etcd holds them (flannel's nodes' too), ours marked."""
    if node.leases is None:
        raise ControlError("this daemon's leases are static (its config's [[overlay.peers]]): see `show peers`;"
                           " `show leases` lists etcd's")
    return await node.leases.leases()


def show_arp(node: NodeView, now: float) -> list[Row]:
    """Every neighbour of every router interface with an ARP cache."""
    entries = []
    for name, iface in _router(node, "ip neigh").interfaces.items():
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


def show_routes(node: NodeView) -> Row:
    router = _router(node, "ip route")
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


async def show_nat(node: NodeView, now: float, limit: int = NAT_LISTED) -> Row:
    """The first ``limit`` tracked connections, least recently seen first per protocol and state, with what
    each direction is rewritten to (``unlisted``: how many more there are); the rules, the table's limits and
    counters."""
    nat = _router(node, "iptables -t nat -L -n").nat
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
            "forward": [forward_row(f) for f in nat.forwards],
        },
        "connections": connections,
        "unlisted": len(nat) - len(connections),
    }


def forward_row(f: Forward) -> Row:
    """A port forward as `show nat`, `forward` and `unforward` list it; ``owner`` only for one added at run time
    (the config's have none)."""
    row: Row = {"protocol": PROTOCOL_NAMES[f.protocol], "port": f.port, "to": ip_to_str(f.to), "to_port": f.to_port,
                "interface": f.interface}
    if f.owner:
        row["owner"] = f.owner
    return row


def _endpoints(key: bytes) -> Row:
    d = describe(key)
    return {"src": d["src"], "sport": d["sport"], "dst": d["dst"], "dport": d["dport"]}


def _drop_in(node: NodeView) -> str | None:
    """The device of a node that runs the overlay in drop-in mode (no bridge, no router: the host kernel's)."""
    overlay = node.config.overlay
    return overlay.device if overlay is not None else None


def _router(node: NodeView, ask_the_host: str) -> Router:
    """The node's router; without one, what to do instead: in drop-in mode, ask the host (``ask_the_host``),
    since its config may have no [router] (the validator refuses one); otherwise, add one."""
    if node.router is not None:
        return node.router
    device = _drop_in(node)
    if device is not None:
        raise ControlError(f"this daemon runs the overlay in drop-in mode on {device}: the host kernel routes,"
                           f" resolves and masquerades for it; ask the host (`{ask_the_host}`)")
    raise ControlError("this daemon has no router: add [[router.interfaces]] to its config")


def _bridge_statistics(node: NodeView) -> BridgeStatistics | None:
    """The bridge's counters; None in drop-in mode, where the overlay alone sits between its device and the
    underlay."""
    statistics: Callable[[], BridgeStatistics] | None = getattr(node.switch.core, "statistics", None)
    return statistics() if statistics is not None else None


def _fdb(node: NodeView) -> Fdb:
    fdb: Fdb | None = getattr(node.switch.core, "fdb", None)
    if fdb is not None:
        return fdb
    device = _drop_in(node)
    if device is not None:
        raise ControlError(f"this daemon runs the overlay in drop-in mode on {device}: it has no bridge,"
                           " and so no forwarding database (its peers: `show peers`)")
    raise ControlError("this daemon's core has no forwarding database")
