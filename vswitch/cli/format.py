"""Text output of `vswitch show`: the daemon's answers as aligned tables.

Each formatter takes the plain dicts a report returns
(:mod:`vswitch.control.reports`), the same answer ``--json`` prints, and
shows the same facts.
"""

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; ``right`` lists right-aligned (numeric) columns."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_ports(result: list[Row]) -> str:
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


def format_fdb(result: list[Row]) -> str:
    rows = [[e["port"], e["mac"], "static" if e["static"] else "learned", int(e["age"])] for e in result]
    table = format_table(["port", "mac", "type", "age"], rows, right=[3])
    return f"{table}\n{len(rows)} {'entry' if len(rows) == 1 else 'entries'}"


def format_stats(result: Row) -> str:
    bridge, fdb = result["bridge"], result["fdb"]
    lines = [
        f"bridge: {bridge['unicast']} unicast, {bridge['flooded']} flooded" if bridge else "bridge: none (drop-in mode)",
        f"ports failed: {result.get('port_failures', 0)}",
        "drops:" if result["drops"] else "drops: none",
    ]
    if result["drops"]:
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
        if router.get("drops"):
            lines.append("  dropped by the router: " + ", ".join(f"{n} {reason}" for reason, n in router["drops"].items()))
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


def format_control(control: Row) -> str:
    requests, captures = control["requests"], control["captures"]
    return (f"control: {requests['active']}/{requests['limit']} requests, {captures['active']}/{captures['limit']}"
            f" captures; refused {requests['refused']} requests, {captures['refused']} captures;"
            f" {control['timed_out']} timed out, {control['stalled']} stalled, {control['failed']} failed")


def format_arp(result: list[Row]) -> str:
    rows = [
        [e["interface"], e["address"], e["mac"] or "(incomplete)", e["state"],
         "-" if e["confirmed"] is None else int(e["confirmed"]), e["queued"]]
        for e in result
    ]
    table = format_table(["interface", "address", "mac", "state", "confirmed", "queued"], rows, right=[4, 5])
    return f"{table}\n{len(rows)} {'neighbour' if len(rows) == 1 else 'neighbours'}"


def format_routes(result: Row) -> str:
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


def format_nat(result: Row) -> str:
    def pair(t: Row) -> str:
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
    return (f"{_format_nat_rules(result['rules'])}\n{table}\n{stats['connections']} of {result['max_connections']} connections from {sources}"
            f" (at most {result['max_per_source']} per source), {stats['mappings']} mappings;"
            f" {stats['created']} created, {stats['expired']} expired, {stats['early_dropped']} dropped early,"
            f" {stats['source_limited']} refused at the source limit, {stats['translated']} packets translated")


def _format_nat_rules(rules: Row) -> str:
    """One line per rule: what the connections below were translated by (a NAT made for port forwards at run
    time may have none left)."""
    lines = []
    for m in rules["masquerade"]:
        exclude = f" except to {', '.join(m['exclude'])}" if m["exclude"] else ""
        lines.append(f"masquerade {m['source']} out {m['out']}{exclude}")
    for f in rules["forward"]:
        where = f" on {f['interface']}" if f["interface"] else ""
        owner = f" ({f['owner']})" if f.get("owner") else ""
        lines.append(f"forward {f['protocol']} port {f['port']}{where} to {f['to']}:{f['to_port']}{owner}")
    return "\n".join(lines) or "no rules"


def format_peers(result: Row) -> str:
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
    source = result.get("source") or {"source": "static"}
    if source["source"] == "etcd":
        lines.append(f"leases: etcd {source['endpoint']}{source['prefix']}, {source['state']} since {source['since']},"
                     f" revision {source['revision']}"
                     + (f", lease until {source['expires']}" if source.get("expires") else ", a reservation"))
        if source.get("last_error"):
            lines.append(f"  last error: {source['last_error']}")
        if source.get("ignored"):
            lines.append("  ignored: " + ", ".join(f"{n} {reason}" for reason, n in sorted(source["ignored"].items())))
    else:
        lines.append("leases: static (the config's [[overlay.peers]])")
    if result["drops"]:
        lines.append("refused: " + ", ".join(f"{n} {reason}" for reason, n in result["drops"].items()))
    return "\n".join(lines)


def format_trace(result: Row) -> str:
    """The steps in order, then what leaves: each transmission's frames, each drop's reason."""
    lines = [f"trace {result['flow']} on port {result['port']}"]
    lines += [f"  {step['part']:<10} {step['text']}" for step in result["steps"]]
    lines.append("result:" if result["actions"] else "result: nothing leaves")
    for action in result["actions"]:
        if action["action"] == "drop":
            lines.append(f"  drop at {action['port']}: {action['reason']}")
        else:
            lines += [f"  transmit {action['port']}: {frame['text']}" for frame in action["frames"]]
    return "\n".join(lines)


def format_leases(result: list[Row]) -> str:
    rows = [
        [("* " if lease["ours"] else "  ") + lease["subnet"], lease["public_ip"], lease["backend"],
         lease["vtep_mac"] or "-",
         "reserved" if lease["reservation"] else ("?" if lease["expires_in"] is None else f"{lease['expires_in']}s")]
        for lease in result
    ]
    table = format_table(["  subnet", "public-ip", "backend", "vtep-mac", "expires-in"], rows)
    return f"{table}\n{len(rows)} {'lease' if len(rows) == 1 else 'leases'} (* this node's)"


FORMATTERS: dict[str, Callable[[Any], str]] = {
    "ports": format_ports, "fdb": format_fdb, "arp": format_arp, "routes": format_routes, "nat": format_nat,
    "peers": format_peers, "leases": format_leases, "stats": format_stats,
}
