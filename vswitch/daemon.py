"""Wiring: a validated config becomes a running switch (shell side)."""

import hashlib
import logging
import signal

import attrs
import trio

from .bridge import Bridge
from .config import Config, PortConfig
from .host import Host, HostRunner
from .ports import MemoryPort, PcapPort, PcapWriter, Port
from .switch import Switch
from .wire.addr import mac_to_str

log = logging.getLogger(__name__)


def stable_mac(*parts: str) -> bytes:
    """A locally administered unicast MAC derived from names, the same every run."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return bytes([0x02]) + digest[:5]


@attrs.define
class Node:
    config: Config
    switch: Switch
    hosts: list[tuple[HostRunner, tuple[str, ...], float]]


def build(config: Config) -> Node:
    switch = Switch(Bridge(ageing=config.bridge.ageing, max_entries=config.bridge.max_entries))
    hosts = []
    for pc in config.ports:
        port, runner = _build_memory_port(config, pc)
        switch.add_port(port)
        hosts.append((runner, pc.host.ping, pc.host.ping_interval))
    return Node(config, switch, hosts)


def _build_memory_port(config: Config, pc: PortConfig) -> tuple[Port, HostRunner]:
    assert pc.host is not None  # config validation guarantees it for memory ports
    port, far_end = MemoryPort.pair(pc.name, f"{pc.name}-host", mtu=pc.mtu)
    if pc.pcap:
        try:
            writer = PcapWriter.open(pc.pcap)
        except OSError as exc:
            raise SystemExit(f"ports {pc.name}: cannot write pcap {pc.pcap}: {exc.strerror}") from None
        port = PcapPort(port, writer)
    mac = pc.host.mac or stable_mac(config.node.name, pc.name)
    host = Host(f"{pc.name}-host", mac, pc.host.address, gateway=pc.host.gateway)
    return port, HostRunner(host, far_end)


async def _pinger(runner: HostRunner, targets: tuple[str, ...], interval: float) -> None:
    while True:
        for target in targets:
            result = await runner.ping(target, timeout=interval)
            if result.received:
                log.info("%s: reply from %s in %.3f ms", runner.host.name, target, result.rtts[0] * 1e3)
            else:
                log.warning("%s: no reply from %s", runner.host.name, target)
        await trio.sleep(interval)


async def serve(node: Node, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Run the node until cancelled."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.switch.run)
        for runner, targets, interval in node.hosts:
            await nursery.start(runner.run)
            log.info("%s: %s %s", runner.host.name, mac_to_str(runner.host.mac), runner.host.interface)
            if targets:
                nursery.start_soon(_pinger, runner, targets, interval)
        task_status.started(node)


async def run_until_signal(node: Node) -> None:
    """Serve until SIGINT or SIGTERM, then shut down within the switch's bounded timeout."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, node)
            log.info(
                "node %s running with %d port(s): %s", node.config.node.name, len(node.config.ports),
                ", ".join(p.name for p in node.config.ports) or "none",
            )
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    log.info("node %s stopped", node.config.node.name)
