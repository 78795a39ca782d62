"""``vswitch demo``: the embedded in-memory default.

Simulated hosts on one switch over in-memory links find each other by ARP
and ping; the demo prints who learned what and the counters, and with
``--pcap`` records every frame the hosts put on their links.
"""

import statistics
import sys
from collections.abc import Iterable
from typing import TextIO

import trio

from .actions import DropReason
from .bridge import Bridge
from .host import Host, HostRunner, PingResult
from .ports import MemoryPort, PcapPort, PcapWriter
from .switch import Switch
from .wire import build_ethernet
from .wire.addr import mac_to_str

DEMO_SUBNET = "10.0.0.{}/24"
PINGS = 3


def _mac(index: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, index])


async def run_demo(*, pcap: str | None = None, hosts: int = 3, out: TextIO | None = None) -> dict:
    """Run the demo, print its account to ``out`` and return a summary."""
    if not 2 <= hosts <= 50:
        raise ValueError("the demo needs between 2 and 50 hosts")
    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out)

    writer = PcapWriter.open(pcap) if pcap else None
    bridge = Bridge()
    switch = Switch(bridge)
    runners: list[HostRunner] = []
    for i in range(1, hosts + 1):
        port, far_end = MemoryPort.pair(f"p{i}", f"h{i}")
        if writer is not None:  # each frame once: as it enters the switch
            port = PcapPort(port, writer, tx=False, close_writer=False)
        switch.add_port(port)
        runners.append(HostRunner(Host(f"h{i}", _mac(i), DEMO_SUBNET.format(i)), far_end))

    say(f"vswitch demo: one learning bridge, {hosts} simulated hosts on in-memory links")
    say()
    say(f"  {'port':<6}{'host':<6}{'mac':<19}address")
    for i, r in enumerate(runners, 1):
        say(f"  {'p' + str(i):<6}{r.host.name:<6}{mac_to_str(r.host.mac):<19}{r.host.interface}")
    say()

    results: list[PingResult] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(switch.run)
                for r in runners:
                    await nursery.start(r.run)
                known: set[tuple[bytes, str]] = set()
                pairs = [(runners[i], runners[(i + 1) % hosts]) for i in range(hosts if hosts > 2 else 1)]
                for src, dst in pairs:
                    say(f"{src.host.name} pings {dst.host.name} ({dst.host.interface.ip}), {PINGS} times:")
                    result = await src.ping(str(dst.host.interface.ip), count=PINGS, timeout=1.0)
                    results.append(result)
                    for line in _drain_events(runners):
                        say(f"  {line}")
                    for entry in bridge.fdb:
                        if (entry.mac, entry.port) not in known:
                            known.add((entry.mac, entry.port))
                            say(f"  switch: learned {mac_to_str(entry.mac)} on port {entry.port}")
                    say(f"  {_summary(result)}")
                    say()

                say("A frame with a multicast source address arrives on p1: the switch drops and counts it.")
                bad = build_ethernet(runners[1].host.mac, b"\x03\x00\x00\x00\x00\x99", 0x88B5, b"\0" * 46)
                await runners[0].port.send_batch([bad])
                after = await runners[0].ping(str(runners[1].host.interface.ip), count=1)
                results.append(after)
                say(f"  forwarding continues: {_summary(after)}")
                say()
                nursery.cancel_scope.cancel()
    finally:
        if writer is not None:
            writer.close()

    stats = bridge.statistics()
    say("Forwarding database:")
    say(f"  {'mac':<19}{'port':<6}type")
    for entry in sorted(bridge.fdb, key=lambda e: e.port):
        say(f"  {mac_to_str(entry.mac):<19}{entry.port:<6}{'static' if entry.static else 'learned'}")
    say()
    say("Counters:")
    say(f"  {'port':<6}{'rx frames':>10}{'tx frames':>10}{'rx dropped':>11}")
    for name, p in stats.ports.items():
        say(f"  {name:<6}{p.rx_frames:>10}{p.tx_frames:>10}{p.rx_dropped:>11}")
    drops = ", ".join(f"{reason}={n}" for reason, n in stats.drops.items()) or "none"
    say(f"  unicast {stats.unicast}, flooded {stats.flooded}, drops: {drops}")
    sent = sum(r.sent for r in results)
    received = sum(r.received for r in results)
    say()
    say(f"{received}/{sent} echo replies received.")
    if writer is not None:
        say(f"Wrote {writer.frames} frames to {pcap}: open it with `wireshark {pcap}` or `tshark -r {pcap}`.")
    return {
        "sent": sent,
        "received": received,
        "fdb": len(bridge.fdb),
        "drops": {str(k): v for k, v in stats.drops.items()},
        "pcap_frames": writer.frames if writer is not None else 0,
        "invalid_source_drops": stats.drops.get(DropReason.INVALID_SOURCE, 0),
    }


def _drain_events(runners: Iterable[HostRunner]) -> list[str]:
    events = []
    for r in runners:
        events.extend(r.host.events)
        r.host.events.clear()
    return [text for _, text in sorted(events, key=lambda e: e[0])]


def _summary(result: PingResult) -> str:
    text = f"{result.received}/{result.sent} replies"
    if result.rtts:
        ms = [t * 1e3 for t in result.rtts]
        text += f", rtt min/avg/max {min(ms):.3f}/{statistics.mean(ms):.3f}/{max(ms):.3f} ms"
    return text
