"""`vswitch trace`: what the core would do with one packet, found by running it through a copy of the core. Pure.

As ``ovs-appctl ofproto/trace``, and possible because the core is pure: the
core object the switch runs (the bridge, the :class:`Datapath`, or drop-in
mode's :class:`DeviceOverlay`) is deep-copied, the frame the ingress port
would carry is made from a flow spec (:mod:`vswitch.core.trace`), and the
copy's own entry point, ``handle_frames``, takes it at the time given. What
comes out are the actions the live core would return; the live tables are
never touched (the copy learns, resolves and translates in their place).

The steps are read from the copy's tables just before the frame goes in —
the FDB entry of a MAC, the route and the neighbour of a next hop, the NAT
rule or connection that applies, the peer whose lease holds an address —
and, after, from what came out: a translation seen in the packet that left,
each transmission summarized, each drop with its reason.

It lives in the overlay's core because it reads every core the switch may
run, the overlay's among them, and the core may not import the overlay.
"""

import copy
from collections.abc import Mapping

import attrs

from vswitch.core.actions import Action, Drop, Transmit
from vswitch.core.datapath import Datapath, OnBridge, OnOverlay, OnPort
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l3.router import Interface, Router
from vswitch.core.trace import (
    ECHO_IDENT,
    Flow,
    build_frame,
    build_packet,
    describe,
    frame_summary,
    packet_summary,
)
from vswitch.core.wire import ipv4
from vswitch.core.wire.addr import ip_to_str, mac_to_str

from .codec import (
    ADDRESS_LEN,
    VXLAN_HEADER_LEN,
    address_header,
    flow_source_port,
    parse_address,
    vxlan_header,
)
from .dropin import DeviceOverlay
from .tunnel import Overlay

UNKNOWN_HOST_MAC = bytes.fromhex("020000007472")   # 02:00:00:00:74:72, locally administered: a source no table knows
BROADCAST_MAC = b"\xff" * 6
ETHERNET, IP, UNDERLAY = "ethernet", "ip", "underlay"   # what a port carries

# A deep copy costs about 20 µs an FDB entry and 120 µs a NAT connection (a 65,536-entry FDB 1.3 s, 64,512
# connections 7.8 s), time the switch's task does not forward: beyond this many, a trace is refused.
MAX_COPIED = 4096

Core = Bridge | Datapath | DeviceOverlay


@attrs.frozen
class Step:
    """One decision on the way: which part (``bridge``, ``router``, ``nat``, ``neighbour``, ``overlay``) and what."""

    part: str
    text: str


@attrs.frozen
class Trace:
    port: str
    flow: Flow
    medium: str                 # what the ingress port carries: "ethernet", "ip" or "underlay"
    frame: bytes = attrs.field(repr=lambda f: f"<{len(f)} bytes>")
    steps: tuple[Step, ...]
    actions: tuple[Action, ...]
    summaries: tuple[dict[str, object], ...]   # per action: a Transmit's frames summarized, a Drop's reason

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, as the control socket answers."""
        return {
            "port": self.port, "flow": str(self.flow), "medium": self.medium,
            "frame": self.summaries[0], "steps": [attrs.asdict(s) for s in self.steps],
            "actions": list(self.summaries[1:]),
        }


def trace(core: Core, port: str, flow: Flow, now: float, *, known: Mapping[bytes, bytes] | None = None,
          in_place: bool = False) -> Trace:
    """What ``core`` would do with ``flow``'s packet arriving on ``port`` at ``now``.

    ``core`` stays as it was: the packet goes through a deep copy of it,
    which takes time in proportion to its tables, so tables too large to
    copy (:data:`MAX_COPIED`) are refused. With ``in_place`` the packet goes
    through ``core`` itself, for a caller whose core is a copy already (the
    daemon's forked snapshot, :mod:`vswitch.shell.forked`), with no limit.

    ``known`` maps IPv4 addresses to the MACs of hosts the caller knows
    beyond the router's neighbours (the daemon's simulated hosts). An
    unknown port or a datagram no peer could have sent is a ValueError.
    """
    if not in_place:
        rows = _rows(core)
        if rows > MAX_COPIED:
            raise ValueError(f"the FDB and NAT tables hold {rows} entries; a trace copies them, which would hold up"
                             f" forwarding: it is refused beyond {MAX_COPIED}")
        core = copy.deepcopy(core)
    tracer = _Tracer(core, now, dict(known or {}))
    medium = tracer.medium(port)
    frame = tracer.ingress(port, medium, flow)
    steps = tracer.explain(port, medium, flow, frame)
    actions = tuple(tracer.core.handle_frames(port, [frame], now))
    steps += tracer.outcome(flow, actions)
    summaries = (tracer.summary(medium, frame), *(tracer.action_summary(a) for a in actions))
    return Trace(port, flow, medium, frame, tuple(steps), actions, summaries)


def _rows(core: Core) -> int:
    """The entries of the tables whose copy costs time in proportion: the FDB and the NAT connections."""
    if type(core) is Bridge:
        return len(core.fdb)
    if type(core) is Datapath:
        return len(core.bridge.fdb) + (len(core.router.nat) if core.router.nat is not None else 0)
    return 0


class _Tracer:
    """The copy of the core and what it knows, read in the order a packet goes."""

    def __init__(self, core: Core, now: float, known: dict[bytes, bytes]) -> None:
        self.core = core
        self.now = now
        self.known = known
        self.router: Router | None = core.router if type(core) is Datapath else None
        self.overlay: Overlay | None = core.overlay if type(core) is DeviceOverlay else None
        if type(core) is Datapath:
            self.overlay = next((a.tunnel for a in core._attachments.values() if type(a) is OnOverlay), None)  # type: ignore[misc]

    # -- the frame that comes in ------------------------------------------------------

    def medium(self, port: str) -> str:
        core = self.core
        if type(core) is Bridge:
            if port in core.ports:
                return ETHERNET
        elif type(core) is DeviceOverlay:
            if port == core.underlay:
                return UNDERLAY
            if port == core.device:
                return ETHERNET if core.overlay.inside == "ethernet" else IP
        else:
            assert type(core) is Datapath
            interface = core.interface_of(port)
            if interface is None:
                if port in core.bridge.ports and type(core._attachments.get(port)) is not OnBridge:
                    return ETHERNET
            else:
                attachment = core._attachments[interface]
                if type(attachment) is OnOverlay:
                    return UNDERLAY
                return IP if core.router.interfaces[interface].mac is None else ETHERNET
        raise ValueError(f"no port named {port!r}")

    def ingress(self, port: str, medium: str, flow: Flow) -> bytes:
        packet = build_packet(flow)
        if medium == IP:
            return packet
        if medium == UNDERLAY:
            return self._from_peer(flow, packet)
        src_mac = self._mac_of(flow.src) or UNKNOWN_HOST_MAC
        return build_frame(flow, src_mac, self._first_hop(port, flow))

    def _from_peer(self, flow: Flow, packet: bytes) -> bytes:
        """The datagram the peer whose lease holds the source sends, as the underlay delivers it."""
        overlay = self.overlay
        assert overlay is not None
        peer = overlay.peers.lookup(flow.src)
        if peer is None:
            raise ValueError(f"no peer's lease holds {ip_to_str(flow.src)}: a datagram from the underlay comes from"
                             " a peer, with a source in its subnet")
        header = address_header(peer.lease.public_ip, peer.port, overlay.port)
        if overlay.backend == "udp":
            return header + packet
        assert overlay.vtep_mac is not None and peer.lease.vtep_mac is not None
        return header + vxlan_header(overlay.vni) + overlay.vtep_mac + peer.lease.vtep_mac + b"\x08\x00" + packet

    def _mac_of(self, ip: bytes) -> bytes | None:
        """What the router's neighbour tables, or else the caller, know of ``ip``."""
        if self.router is not None:
            for iface in self.router.interfaces.values():
                entry = iface.neighbours.get(ip) if iface.neighbours is not None else None
                if entry is not None and entry.mac is not None:
                    return entry.mac
        return self.known.get(ip)

    def _first_hop(self, port: str, flow: Flow) -> bytes:
        """The destination MAC a host on ``port`` uses: its gateway's when the destination is off its subnet."""
        core = self.core
        if type(core) is DeviceOverlay:   # a flannel.1 TAP: the kernel put the peer's VTEP MAC there
            peer = core.overlay.peers.lookup(flow.dst)
            return peer.lease.vtep_mac or BROADCAST_MAC if peer is not None else BROADCAST_MAC
        gateway = self._gateway(port, flow.src)
        if gateway is not None and gateway.mac is not None and flow.dst not in gateway.network:
            return gateway.mac
        return self._mac_of(flow.dst) or BROADCAST_MAC

    def _gateway(self, port: str, src: bytes) -> Interface | None:
        """The router interface a host on ``port`` reaches: the port's own, or one on the bridge, the one whose
        network holds ``src`` first."""
        core = self.core
        if type(core) is not Datapath:
            return None
        interface = core.interface_of(port)
        if interface is not None:
            return core.router.interfaces[interface]
        on_bridge = [core.router.interfaces[name] for name, a in core._attachments.items() if type(a) is OnBridge]
        return next((i for i in on_bridge if src in i.network), on_bridge[0] if on_bridge else None)

    # -- the decisions, from the copy's tables before the frame goes in -----------------

    def explain(self, port: str, medium: str, flow: Flow, frame: bytes) -> list[Step]:
        steps = [Step("ingress", f"{flow} arrives on port {port} ({medium}): {describe(self.summary(medium, frame))}")]
        core = self.core
        if type(core) is DeviceOverlay:
            if medium == UNDERLAY:
                steps += self._from_underlay(flow)
                steps.append(Step("overlay", f"the packet is written into device {core.device}"))
            else:
                steps += self._to_peer(flow, build_packet(flow))
            return steps
        if type(core) is Bridge:
            self._bridge(core, port, frame, steps)
            return steps
        assert type(core) is Datapath
        interface = core.interface_of(port)
        if medium == UNDERLAY:
            steps += self._from_underlay(flow)
        elif interface is None:
            interface = self._bridge(core.bridge, port, frame, steps)
            if interface is None:
                return steps
        self._route(core, interface, flow, steps)
        return steps

    def _bridge(self, bridge: Bridge, port: str, frame: bytes, steps: list[Step]) -> str | None:
        """The bridge's decision; the router interface on the bridge the frame reaches, if it does."""
        src, dst = frame[6:12], frame[0:6]
        known = bridge.fdb.lookup(src, self.now)
        if known is None or known.port != port:
            steps.append(Step("bridge", f"learns {mac_to_str(src)} on port {port}"))
        router_ports = {} if type(self.core) is not Datapath else {
            name for name, a in self.core._attachments.items() if type(a) is OnBridge}
        if dst[0] & 1:
            targets = [p.name for p in bridge.ports.values() if p.up and p.name != port]
            steps.append(Step("bridge", f"{mac_to_str(dst)} is a group address: flooded to "
                                        f"{', '.join(targets) or 'no port'}"))
            return None
        entry = bridge.fdb.lookup(dst, self.now)
        if entry is None:
            targets = [p.name for p in bridge.ports.values() if p.up and p.name != port]
            steps.append(Step("bridge", f"{mac_to_str(dst)} is in no FDB entry: flooded to {', '.join(targets) or 'no port'}"))
            return None
        kind = "static" if entry.static else "learned"
        if entry.port in router_ports:
            steps.append(Step("bridge", f"{mac_to_str(dst)} is router interface {entry.port} ({kind}): to the router"))
            return entry.port
        steps.append(Step("bridge", f"{mac_to_str(dst)} is on port {entry.port} ({kind} FDB entry): forwarded there"))
        return None

    def _route(self, core: Datapath, interface: str, flow: Flow, steps: list[Step]) -> None:
        router = core.router
        dst = flow.dst
        nat = router.nat
        local = router.local_interface(dst)
        if local is not None and nat is not None:
            forward = next((f for f in nat.forwards if f.protocol == flow.protocol and f.port == flow.dport
                            and f.interface in (None, local)), None)
            if forward is not None:
                steps.append(Step("nat", f"port forward {ip_to_str(dst)}:{flow.dport} to"
                                         f" {ip_to_str(forward.to)}:{forward.to_port}"))
                dst, local = forward.to, None
        if local is not None:
            steps.append(Step("router", f"{ip_to_str(dst)} is the address of router interface {local}: delivered to the"
                                        " router itself"))
            return
        route = router.routes.lookup(dst)
        if route is None:
            steps.append(Step("router", f"no route to {ip_to_str(dst)}: dropped, ICMP net unreachable to the sender"))
            return
        nexthop = route.via or dst
        out = router.interfaces[route.interface]
        steps.append(Step("router", f"route {route} matches {ip_to_str(dst)}: next hop {ip_to_str(nexthop)}"
                                    f" on interface {out.name}"))
        if nat is not None:
            steps.append(Step("nat", self._nat_decision(router, flow, dst, out.name)))
        attachment = core._attachments[out.name]
        if type(attachment) is OnOverlay:
            steps += self._to_peer(Flow(flow.protocol, flow.src, dst, flow.sport, flow.dport), build_packet(flow))
            return
        if out.neighbours is None:
            steps.append(Step("router", f"interface {out.name} is an L3 port: the packet leaves with no Ethernet header"))
            return
        entry = out.neighbours.get(nexthop)
        if entry is None or entry.mac is None:
            pending = "being resolved" if entry is not None else "unknown"
            steps.append(Step("neighbour", f"{ip_to_str(nexthop)} is {pending} on {out.name}: an ARP request goes out,"
                                           " the packet waits for the answer"))
            return
        state = entry.state(self.now, out.neighbours.reachable_time)
        steps.append(Step("neighbour", f"{ip_to_str(nexthop)} is at {mac_to_str(entry.mac)} ({state}) on {out.name}"))
        if type(attachment) is OnBridge:
            fdb = core.bridge.fdb.lookup(entry.mac, self.now)
            where = f"on port {fdb.port}" if fdb is not None else "in no FDB entry: flooded"
            steps.append(Step("bridge", f"{mac_to_str(entry.mac)} is {where}"))
        elif type(attachment) is OnPort:
            steps.append(Step("router", f"interface {out.name} is port {attachment.port}"))

    def _nat_decision(self, router: Router, flow: Flow, dst: bytes, out: str) -> str:
        nat = router.nat
        assert nat is not None
        ports = (flow.sport.to_bytes(2, "big") + flow.dport.to_bytes(2, "big")) if flow.protocol != ipv4.PROTO_ICMP \
            else ECHO_IDENT.to_bytes(2, "big") * 2
        key = bytes((flow.protocol,)) + flow.src + flow.dst + ports
        if key in nat.conntrack.by_tuple:
            return "a tracked connection: its translation applies"
        rule = next((m for m in nat.masquerade if m.matches(flow.src, dst, out)), None)
        if rule is None:
            return f"no masquerade rule for {ip_to_str(flow.src)} > {ip_to_str(dst)} out {out}: not translated"
        address = router.interface_address(out)
        return (f"masquerade {rule.source} out {out}: a new connection, its source becomes "
                f"{ip_to_str(address) if address else '?'}")

    def _to_peer(self, flow: Flow, packet: bytes) -> list[Step]:
        overlay = self.overlay
        assert overlay is not None
        peer = overlay.peers.lookup(flow.dst)
        if peer is None:
            return [Step("overlay", f"no lease holds {ip_to_str(flow.dst)}: dropped (overlay-no-lease),"
                                    " ICMP net unreachable to the sender")]
        lease = peer.lease
        where = f"{ip_to_str(lease.public_ip)}:{peer.port}"
        if overlay.backend == "udp":
            return [Step("overlay", f"peer {lease.subnet} at {where}: flannel UDP, the packet (TTL one less) is the"
                                    f" payload of a datagram to {where}")]
        assert overlay.vtep_mac is not None and lease.vtep_mac is not None
        return [Step("overlay", f"peer {lease.subnet} at {where}: VXLAN VNI {overlay.vni}, outer UDP"
                                f" {flow_source_port(packet)} > {peer.port} to {ip_to_str(lease.public_ip)},"
                                f" inner {mac_to_str(overlay.vtep_mac)} > {mac_to_str(lease.vtep_mac)}")]

    def _from_underlay(self, flow: Flow) -> list[Step]:
        overlay = self.overlay
        assert overlay is not None
        peer = overlay.peers.lookup(flow.src)
        assert peer is not None   # ingress() made the datagram from it
        return [Step("overlay", f"a {overlay.backend} datagram from peer {peer.lease}: its inner source is in the"
                                " peer's subnet, the packet goes inside")]

    # -- what came out ------------------------------------------------------------------

    def outcome(self, flow: Flow, actions: tuple[Action, ...]) -> list[Step]:
        steps = []
        if self.router is not None and self.router.nat is not None:
            for action in actions:
                if type(action) is not Transmit:
                    continue
                for frame in action.frames:
                    seen = self.summary(self._port_medium(action.port), frame)
                    seen = seen.get("inner", seen)   # type: ignore[assignment]
                    if seen.get("protocol") != packet_summary(build_packet(flow))["protocol"]:
                        continue
                    before = (ip_to_str(flow.src), flow.sport or None, ip_to_str(flow.dst), flow.dport or None)
                    after = (seen.get("src"), seen.get("sport"), seen.get("dst"), seen.get("dport"))
                    if after[0] in (before[0], before[2]) and after[2] in (before[0], before[2]) and after != before:
                        continue   # an answer (a TCP RST), not the packet
                    if after != before:
                        steps.append(Step("nat", f"translated: {_endpoint(*before[:2])} > {_endpoint(*before[2:])}"
                                                 f" became {_endpoint(*after[:2])} > {_endpoint(*after[2:])}"))
        return steps

    def _port_medium(self, port: str) -> str:
        try:
            return self.medium(port)
        except ValueError:
            return ETHERNET

    def summary(self, medium: str, frame: bytes) -> dict[str, object]:
        if medium == IP:
            summary = packet_summary(frame)
        elif medium == UNDERLAY:
            summary = self._datagram_summary(frame)
        else:
            summary = frame_summary(frame)
        return {**summary, "text": describe(summary)}

    def _datagram_summary(self, datagram: bytes) -> dict[str, object]:
        overlay = self.overlay
        if overlay is None or len(datagram) < ADDRESS_LEN:
            return {"malformed": f"{len(datagram)} bytes, no datagram"}
        ip, port, local = parse_address(datagram)
        payload = datagram[ADDRESS_LEN:]
        summary: dict[str, object] = {"encapsulation": overlay.backend, "outer_dst": ip_to_str(ip), "outer_dport": port,
                                      "outer_sport": local or overlay.port}
        if overlay.backend == "udp":
            inner = packet_summary(payload)
        else:
            summary["vni"] = int.from_bytes(payload[4:7], "big")
            inner = frame_summary(payload[VXLAN_HEADER_LEN:])
            if "eth_src" in inner:
                summary["inner_eth_src"], summary["inner_eth_dst"] = inner.pop("eth_src"), inner.pop("eth_dst")
                inner.pop("ethertype")
        summary["inner"] = inner
        return {**summary, **inner}

    def action_summary(self, action: Action) -> dict[str, object]:
        if type(action) is Drop:
            return {"action": "drop", "port": action.port, "reason": str(action.reason)}
        assert type(action) is Transmit
        medium = self._port_medium(action.port)
        return {"action": "transmit", "port": action.port, "frames": [self.summary(medium, f) for f in action.frames]}



def _endpoint(ip: object, port: object) -> str:
    return f"{ip}:{port}" if port else str(ip)
