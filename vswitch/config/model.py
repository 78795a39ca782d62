"""The configuration's values: frozen attrs classes, and the limits the loader checks them against.

:mod:`vswitch.config.loader` makes them from TOML; the daemon builds a node from them.
"""

import attrs

from vswitch.core.l2.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from vswitch.core.nat import DEFAULT_MAX_CONNECTIONS
from vswitch.errors import ConfigError

PORT_TYPES = ("tap", "tun", "packet", "memory")
NAT_PROTOCOLS = ("tcp", "udp")
OVERLAY_BACKENDS = {"udp": (8285, 28, "flannel0"), "vxlan": (8472, 50, "flannel.1")}  # port, overhead, device
OVERLAY_INTERFACE = "overlay"   # the router interface the overlay is, in router mode
# Documented maxima: beyond them a value is a typo, or a table that would take the node's memory.
MAX_BRIDGE_ENTRIES = 1 << 20    # FDB entries (about 200 bytes each)
MAX_AGEING = 1_000_000.0        # seconds (11.6 days)
MAX_PING_INTERVAL = 3600.0      # seconds
IFNAMSIZ = 16                   # Linux: a device name is at most 15 bytes and a NUL
SUN_PATH_MAX = 107              # a Unix socket path: sockaddr_un.sun_path holds 108 bytes with the NUL


@attrs.frozen
class NodeConfig:
    name: str = "vswitch"
    control: str | None = None


@attrs.frozen
class BridgeConfig:
    ageing: float = DEFAULT_AGEING
    max_entries: int = DEFAULT_MAX_ENTRIES


@attrs.frozen
class HostConfig:
    """A simulated host on the far end of a memory port."""

    address: str
    mac: bytes | None = None
    gateway: str | None = None
    ping: tuple[str, ...] = ()
    ping_interval: float = 1.0


@attrs.frozen
class PortConfig:
    name: str
    type: str
    netns: str | None = None
    address: str | None = None
    gateway: str | None = None
    mtu: int = 1500
    pcap: str | None = None
    device: str | None = None
    host: HostConfig | None = None


@attrs.frozen
class InterfaceConfig:
    """A router interface: on the bridge, or on a port of its own (``port``)."""

    name: str
    address: str               # with prefix length: 10.244.1.1/24
    port: str | None = None
    mtu: int = 1500
    mac: bytes | None = None
    proxy_arp: bool = False


@attrs.frozen
class RouteConfig:
    to: str
    via: str | None = None
    interface: str | None = None


@attrs.frozen
class NeighbourConfig:
    """A static ARP entry on a router interface."""

    interface: str
    address: str
    mac: bytes


@attrs.frozen
class RouterConfig:
    interfaces: tuple[InterfaceConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    neighbours: tuple[NeighbourConfig, ...] = ()


@attrs.frozen
class MasqueradeConfig:
    source: str
    out: str
    exclude: tuple[str, ...] = ()


@attrs.frozen
class ForwardConfig:
    protocol: str
    port: int
    to: str
    to_port: int
    interface: str | None = None


@attrs.frozen
class NatConfig:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_source: int | None = None   # None: the NAT's default, a quarter of max_connections
    masquerade: tuple[MasqueradeConfig, ...] = ()
    forward: tuple[ForwardConfig, ...] = ()


@attrs.frozen
class PeerConfig:
    """A static lease: another node's subnet and where its daemon listens."""

    subnet: str
    public_ip: str
    vtep_mac: bytes | None = None


@attrs.frozen
class OverlayConfig:
    backend: str
    network: str
    subnet: str
    public_ip: str
    port: int
    mtu: int                       # the overlay's: the underlay's minus 28 (udp) or 50 (vxlan)
    vni: int = 1
    vtep_mac: bytes | None = None  # None: a stable default from the node's name
    ip_masq: bool = False
    subnet_env: str | None = None
    device: str | None = None      # drop-in mode: the flannel0 TUN or flannel.1 TAP to open in the host namespace
    peers: tuple[PeerConfig, ...] = ()


@attrs.frozen
class Config:
    node: NodeConfig = NodeConfig()
    bridge: BridgeConfig = BridgeConfig()
    ports: tuple[PortConfig, ...] = ()
    router: RouterConfig = RouterConfig()
    nat: NatConfig = NatConfig()
    overlay: OverlayConfig | None = None

    def interface_on(self, port: str) -> InterfaceConfig | None:
        """The router interface that ``port`` carries, if any (such a port is not on the bridge)."""
        return next((i for i in self.router.interfaces if i.port == port), None)

    def check_runnable(self) -> None:
        """Refuse a config a daemon could do nothing with (an empty file, say): no port, no overlay, and no
        control socket through which containers could be attached later."""
        if not self.ports and self.overlay is None and not self.node.control:
            raise ConfigError("config", "nothing to run: no [[ports]], no [overlay], and no [node] control socket"
                                        " to attach containers through at run time")
