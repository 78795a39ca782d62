"""Wiring: a validated config becomes a running switch (shell side)."""

import hashlib
import ipaddress
import logging
import signal

import attrs
import trio

from .bridge import Bridge
from .config import Config, PortConfig
from .datapath import Datapath
from .host import Host, HostRunner
from .nat import Forward, Masquerade, Nat
from .netns import configure_link
from .ports import MemoryPort, PcapPort, PcapWriter, Port
from .ports.packet import PacketPort
from .ports.tuntap import DeviceError, TunTapPort
from .router import Router
from .switch import Core, Switch
from .wire.addr import Network, ip_from_str, mac_to_str
from .wire.ipv4 import PROTO_TCP, PROTO_UDP

log = logging.getLogger(__name__)


def stable_mac(*parts: str) -> bytes:
    """A locally administered unicast MAC derived from names, the same every run."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return bytes([0x02]) + digest[:5]


@attrs.define
class Node:
    """A configured daemon: its switch, simulated hosts, and the devices it opened."""

    config: Config
    switch: Switch
    hosts: list[tuple[HostRunner, tuple[str, ...], float]]
    router: Router | None = None
    devices_open: bool = False

    async def open_devices(self) -> None:
        """Open the device ports of the config and link them into their namespaces (once)."""
        if self.devices_open:
            return
        self.devices_open = True
        opened: list[Port] = []
        try:
            for pc in self.config.ports:
                if pc.type == "memory":
                    continue
                port = await open_device_port(pc)
                opened.append(port)
                self.switch.add_port(_with_pcap(port, pc))
        except BaseException:
            for port in opened:
                with trio.CancelScope(shield=True):
                    await port.aclose()
            raise

    async def attach(
        self, *, netns: str, name: str, address: str | None = None, gateway: str | None = None, mtu: int = 1500,
    ) -> None:
        """Link a container at run time: a new TAP in ``netns``, on the bridge."""
        if name in self.switch.ports:
            raise ValueError(f"port {name!r} already exists")
        pc = PortConfig(name=name, type="tap", netns=netns, address=address, gateway=gateway, mtu=mtu)
        port = await open_device_port(pc)
        self.switch.add_port(port)
        log.info("attached %s in netns %s%s", name, netns, f" as {address}" if address else "")

    async def detach(self, name: str) -> None:
        """Remove a port; closing a TAP's fd deletes the device."""
        if name not in self.switch.ports:
            raise KeyError(f"no port named {name!r}")
        await self.switch.remove_port(name)
        log.info("detached %s", name)


async def open_device_port(pc: PortConfig) -> Port:
    """Open a tap or packet port and configure its link; DeviceError says what went wrong."""
    if pc.type == "packet":
        assert pc.device is not None  # config validation guarantees it
        return PacketPort.open(pc.device, name=pc.name, mtu=pc.mtu)
    port = TunTapPort.open(pc.name, kind=pc.type, mtu=pc.mtu)  # tap or tun
    try:
        await configure_link(pc.name, netns=pc.netns, address=pc.address, gateway=pc.gateway, mtu=pc.mtu)
    except BaseException:
        with trio.CancelScope(shield=True):
            await port.aclose()
        raise
    return port


def _with_pcap(port: Port, pc: PortConfig) -> Port:
    if not pc.pcap:
        return port
    try:
        writer = PcapWriter.open(pc.pcap)
    except OSError as exc:
        raise DeviceError(exc.errno or 1, f"ports {pc.name}: cannot write pcap {pc.pcap}: {exc.strerror}") from None
    return PcapPort(port, writer)


def build(config: Config) -> Node:
    """The node with its memory ports; device ports open in :meth:`Node.open_devices`."""
    core, router = build_core(config)
    switch = Switch(core)
    hosts = []
    for pc in config.ports:
        if pc.type != "memory":
            continue
        port, runner = _build_memory_port(config, pc)
        switch.add_port(port)
        hosts.append((runner, pc.host.ping, pc.host.ping_interval))
    return Node(config, switch, hosts, router)


def build_core(config: Config) -> tuple[Core, Router | None]:
    """The bridge alone, or the bridge and the router joined in a :class:`Datapath`."""
    bridge = Bridge(ageing=config.bridge.ageing, max_entries=config.bridge.max_entries)
    if not config.router.interfaces:
        return bridge, None
    router = Router()
    port_types = {p.name: p.type for p in config.ports}
    for ic in config.router.interfaces:
        address = ipaddress.IPv4Interface(ic.address)
        layer3 = ic.port is not None and port_types[ic.port] == "tun"
        mac = None if layer3 else ic.mac or stable_mac(config.node.name, "router", ic.name)
        router.add_interface(
            ic.name, address.ip.packed, address.network.prefixlen, mac=mac, mtu=ic.mtu, proxy_arp=ic.proxy_arp,
        )
    for rc in config.router.routes:
        router.add_route(Network.parse(rc.to), via=ip_from_str(rc.via) if rc.via else None, interface=rc.interface)
    for nc in config.router.neighbours:
        router.add_neighbour(nc.interface, ip_from_str(nc.address), nc.mac)
    nat = config.nat
    if nat.masquerade or nat.forward:
        router.nat = Nat(
            router,
            masquerade=tuple(
                Masquerade(Network.parse(m.source), m.out, tuple(Network.parse(e) for e in m.exclude))
                for m in nat.masquerade
            ),
            forwards=tuple(
                Forward(PROTO_TCP if f.protocol == "tcp" else PROTO_UDP, f.port, ip_from_str(f.to), f.to_port, f.interface)
                for f in nat.forward
            ),
            max_connections=nat.max_connections,
        )
    datapath = Datapath(bridge, router)
    for ic in config.router.interfaces:
        datapath.attach_interface(ic.name, ic.port)
    return datapath, router


def _build_memory_port(config: Config, pc: PortConfig) -> tuple[Port, HostRunner]:
    assert pc.host is not None  # config validation guarantees it for memory ports
    port, far_end = MemoryPort.pair(pc.name, f"{pc.name}-host", mtu=pc.mtu)
    port = _with_pcap(port, pc)
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
    await node.open_devices()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.switch.run)
        for runner, targets, interval in node.hosts:
            await nursery.start(runner.run)
            log.info("%s: %s %s", runner.host.name, mac_to_str(runner.host.mac), runner.host.interface)
            if targets:
                nursery.start_soon(_pinger, runner, targets, interval)
        if node.config.node.control:
            from .control import ControlServer

            path = await nursery.start(ControlServer(node, node.config.node.control).run)
            log.info("control socket: %s (try `vswitch show ports --control %s`)", path, path)
        task_status.started(node)


async def run_until_signal(node: Node) -> None:
    """Serve until SIGINT or SIGTERM, then shut down within the switch's bounded timeout."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await node.open_devices()  # before any nursery, so a DeviceError reaches the CLI as itself
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
