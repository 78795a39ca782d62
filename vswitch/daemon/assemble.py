"""A validated config becomes the daemon's core and ports: the datapath (bridge, router, NAT, overlay), the
device ports opened and linked into their namespaces, the simulated hosts of memory ports."""

import hashlib
import os
import tempfile

import trio

from vswitch.config import OVERLAY_INTERFACE, Config, PortConfig
from vswitch.core.datapath import Datapath, OnBridge, OnOverlay, OnPort
from vswitch.core.host import Host
from vswitch.core.l2.bridge import Bridge
from vswitch.core.l3.router import Router
from vswitch.core.nat import Forward, Masquerade, Nat
from vswitch.errors import ConfigError
from vswitch.overlay.core.dropin import DeviceOverlay
from vswitch.overlay.core.tunnel import Overlay
from vswitch.overlay.shell.leases import config_leases
from vswitch.overlay.shell.masq import (
    masquerade_rules,
)
from vswitch.overlay.shell.node import (
    build_overlay,
    device_name,
)
from vswitch.shell.hosts import HostRunner
from vswitch.shell.netns import configure_link
from vswitch.shell.ports import MemoryPort, PcapPort, PcapWriter, Port
from vswitch.shell.ports.packet import PacketPort
from vswitch.shell.ports.tuntap import TunTapPort
from vswitch.shell.switch import Core

UNDERLAY_PORT = "underlay"   # the switch port of the overlay's UDP socket


def stable_mac(*parts: str) -> bytes:
    """A locally administered unicast MAC derived from names, the same every run."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return bytes([0x02]) + digest[:5]


async def open_device_port(pc: PortConfig, *, gso_max_segs: int | None = None) -> Port:
    """Open a tap, tun or packet port and configure its link (a tap's or tun's with ``gso_max_segs``, if
    given); DeviceError says what went wrong."""
    if pc.type == "packet":
        assert pc.device is not None  # config validation guarantees it
        return PacketPort.open(pc.device, name=pc.name, mtu=pc.mtu)
    port = TunTapPort.open(pc.name, kind=pc.type, mtu=pc.mtu)  # tap or tun
    try:
        await configure_link(pc.name, netns=pc.netns, address=pc.address, gateway=pc.gateway, mtu=pc.mtu,
                             gso_max_segs=gso_max_segs)
    except BaseException:
        with trio.CancelScope(shield=True):
            await port.aclose()
        raise
    return port


def with_pcap(port: Port, pc: PortConfig, pcaps: list[PcapWriter]) -> Port:
    """``port`` recording to its pcap file, if it has one; the file opens with the others (Node.open_pcaps)."""
    if not pc.pcap:
        return port
    writer = PcapWriter.deferred(pc.pcap)
    pcaps.append(writer)
    return PcapPort(port, writer)


def faults_pcap(config: Config) -> str:
    """Where the frames of contained internal errors go, should there be any (vswitch.shell.faults): beside the
    control socket, or else in the temporary directory."""
    name = f"{config.node.name}.internal-errors.pcap"
    if config.node.control:
        return os.path.join(os.path.dirname(os.path.abspath(config.node.control)), name)
    return os.path.join(tempfile.gettempdir(), f"vswitch-{os.getpid()}-{name}")


def build_core(config: Config) -> tuple[Core, Router | None, Overlay | None, bytes | None]:
    """The bridge alone, the bridge and the router joined in a :class:`Datapath` (with the overlay as one
    of the router's interfaces), or, in drop-in mode, the overlay alone between its device and the underlay."""
    overlay = vtep_mac = None
    oc = config.overlay
    if oc is not None:
        vtep_mac = (oc.vtep_mac or stable_mac(config.node.name, "vtep")) if oc.backend == "vxlan" else None
        overlay = build_overlay(oc, vtep_mac)
        try:
            overlay.set_leases(config_leases(oc))
        except ValueError as exc:
            raise ConfigError("overlay.peers", str(exc)) from None
        if oc.device is not None:
            return DeviceOverlay(overlay, device_name(oc), UNDERLAY_PORT), None, overlay, vtep_mac
    bridge = Bridge(ageing=config.bridge.ageing, max_entries=config.bridge.max_entries)
    if not config.router.interfaces:
        return bridge, None, None, None
    router = Router()
    port_types = {p.name: p.type for p in config.ports}
    for ic in config.router.interfaces:
        layer3 = ic.port is not None and port_types[ic.port] == "tun"
        mac = None if layer3 else ic.mac or stable_mac(config.node.name, "router", ic.name)
        router.add_interface(
            ic.name, ic.address.ip.packed, ic.address.network.prefixlen, mac=mac, mtu=ic.mtu, proxy_arp=ic.proxy_arp,
        )
    for rc in config.router.routes:
        router.add_route(rc.to, via=rc.via.packed if rc.via else None, interface=rc.interface)
    for nc in config.router.neighbours:
        router.add_neighbour(nc.interface, nc.address.packed, nc.mac)
    masquerade = tuple(Masquerade(m.source, m.out, m.exclude) for m in config.nat.masquerade)
    if overlay is not None:
        assert oc is not None
        # The overlay is an L3 interface with flannel0's address; the whole cluster network is routed to it,
        # so an address no lease holds gets ICMP net unreachable, as flannel's proxy sends.
        router.add_interface(OVERLAY_INTERFACE, overlay.address, 32, mac=None, mtu=oc.mtu)
        router.add_route(overlay.network, interface=OVERLAY_INTERFACE)
        if oc.ip_masq:
            networks = {name: iface.network for name, iface in router.interfaces.items()}
            masquerade += masquerade_rules(oc, networks, OVERLAY_INTERFACE)
    nat = config.nat
    if masquerade or nat.forward:
        router.nat = Nat(
            router,
            masquerade=masquerade,
            forwards=tuple(Forward(f.protocol, f.port, f.to.packed, f.to_port, f.interface) for f in nat.forward),
            max_connections=nat.max_connections,
            max_per_source=nat.max_per_source,
        )
    datapath = Datapath(bridge, router)
    for ic in config.router.interfaces:
        datapath.attach(ic.name, OnBridge() if ic.port is None else OnPort(ic.port))
    if overlay is not None:
        datapath.attach(OVERLAY_INTERFACE, OnOverlay(overlay, UNDERLAY_PORT))
    return datapath, router, overlay, vtep_mac


def runtime_nat(router: Router, config: Config) -> Nat:
    """The router's NAT; a router that had none (no ``[nat]``) gets a bare one, with the config's limits, when its
    first port forward is added at run time."""
    if router.nat is None:
        router.nat = Nat(router, max_connections=config.nat.max_connections, max_per_source=config.nat.max_per_source)
    return router.nat


def memory_port(config: Config, pc: PortConfig, pcaps: list[PcapWriter]) -> tuple[Port, HostRunner]:
    assert pc.host is not None  # config validation guarantees it for memory ports
    port, far_end = MemoryPort.pair(pc.name, f"{pc.name}-host", mtu=pc.mtu)
    port = with_pcap(port, pc, pcaps)
    mac = pc.host.mac or stable_mac(config.node.name, pc.name)
    host = Host(f"{pc.name}-host", mac, pc.host.address, gateway=pc.host.gateway)
    return port, HostRunner(host, far_end)

