"""The configuration's values: frozen attrs classes, and the limits the loader checks them against.

:mod:`vswitch.config.loader` makes them from TOML; the daemon builds a node from them.
The values are parsed once, there, into what their users take, so nothing
downstream parses a string again: networks are the core's
:class:`~vswitch.core.wire.addr.Network`, MAC addresses 6 ``bytes``, IPv4
addresses :class:`~ipaddress.IPv4Address` (``.packed`` is the core's 4
bytes) and addresses with a prefix length :class:`~ipaddress.IPv4Interface`
(the ``ip`` and its ``network``). Each renders (``str``) in the notation
the config is written in, so what ``show``, ``subnet.env`` and iproute2 get
reads as before.
"""

from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import attrs

from vswitch.core.l2.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from vswitch.core.nat import DEFAULT_MAX_CONNECTIONS
from vswitch.core.wire.addr import Network
from vswitch.core.wire.ipv4 import PROTO_TCP, PROTO_UDP
from vswitch.errors import ConfigError

__all__ = [
    "IFNAMSIZ",
    "MAX_AGEING",
    "MAX_BRIDGE_ENTRIES",
    "MAX_PING_INTERVAL",
    "NAT_PROTOCOLS",
    "OVERLAY_INTERFACE",
    "PORT_TYPES",
    "SUN_PATH_MAX",
    "BridgeConfig",
    "Config",
    "EtcdConfig",
    "ForwardConfig",
    "DEFAULT_ETCD_ENDPOINT",
    "DEFAULT_ETCD_PREFIX",
    "LEASE_SOURCES",
    "HostConfig",
    "InterfaceConfig",
    "MasqueradeConfig",
    "NatConfig",
    "NeighbourConfig",
    "NodeConfig",
    "OverlayConfig",
    "PeerConfig",
    "PortConfig",
    "RouteConfig",
    "RouterConfig",
]

PORT_TYPES = ("tap", "tun", "packet", "memory")
NAT_PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}   # the config's names and the IP protocol numbers
OVERLAY_INTERFACE = "overlay"   # the router interface the overlay is, in router mode
# Documented maxima: beyond them a value is a typo, or a table that would take the node's memory.
MAX_BRIDGE_ENTRIES = 1 << 20    # FDB entries (about 200 bytes each)
MAX_AGEING = 1_000_000.0        # seconds (11.6 days)
MAX_PING_INTERVAL = 3600.0      # seconds
LEASE_SOURCES = ("static", "etcd")   # [overlay] leases: the config's [[overlay.peers]], or flannel's leases in etcd
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_ETCD_PREFIX = "/coreos.com/network"   # flanneld's --etcd-prefix
IFNAMSIZ = 16                   # Linux: a device name is at most 15 bytes and a NUL
SUN_PATH_MAX = 107              # a Unix socket path: sockaddr_un.sun_path holds 108 bytes with the NUL


@attrs.frozen
class NodeConfig:
    name: str = "vswitch"
    control: str | None = None
    state_dir: str | None = None   # None: /var/lib/vswitch/<name> (NodeConfig.state_path)
    live_restore: bool = False     # TAPs outlive the daemon and come back at its next start (Docker's live-restore)
    metrics: tuple[str, int] | None = None   # (host, port) of the /metrics and /healthz HTTP server

    @property
    def state_path(self) -> str:
        """Where the daemon keeps what outlives it: the lease it held, the addresses it gave containers."""
        return self.state_dir or f"/var/lib/vswitch/{self.name}"


@attrs.frozen
class BridgeConfig:
    ageing: float = DEFAULT_AGEING
    max_entries: int = DEFAULT_MAX_ENTRIES


@attrs.frozen
class HostConfig:
    """A simulated host on the far end of a memory port."""

    address: IPv4Interface
    mac: bytes | None = None
    gateway: IPv4Address | None = None
    ping: tuple[IPv4Address, ...] = ()
    ping_interval: float = 1.0


@attrs.frozen
class PortConfig:
    name: str
    type: str
    netns: str | None = None
    address: IPv4Interface | None = None   # configured on the device in its namespace
    gateway: IPv4Address | None = None    # the default route's, or with routes, theirs
    mtu: int = 1500
    pcap: str | None = None
    device: str | None = None
    host: HostConfig | None = None
    ifname: str | None = None              # tap: the device's name inside netns (None: the port's name)
    mac: bytes | None = None               # tap: None: derived from the node's and the port's names
    routes: tuple[Network, ...] = ()       # tap: routed via gateway instead of a default route (a host port)


@attrs.frozen
class InterfaceConfig:
    """A router interface: on the bridge, or on a port of its own (``port``)."""

    name: str
    address: IPv4Interface     # 10.244.1.1/24: the router's address and the interface's network
    port: str | None = None
    mtu: int = 1500
    mac: bytes | None = None
    proxy_arp: bool = False


@attrs.frozen
class RouteConfig:
    to: Network
    via: IPv4Address | None = None
    interface: str | None = None


@attrs.frozen
class NeighbourConfig:
    """A static ARP entry on a router interface."""

    interface: str
    address: IPv4Address
    mac: bytes


@attrs.frozen
class RouterConfig:
    interfaces: tuple[InterfaceConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    neighbours: tuple[NeighbourConfig, ...] = ()


@attrs.frozen
class MasqueradeConfig:
    source: Network
    out: str
    exclude: tuple[Network, ...] = ()


@attrs.frozen
class ForwardConfig:
    protocol: int              # PROTO_TCP or PROTO_UDP (NAT_PROTOCOLS)
    port: int
    to: IPv4Address
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

    subnet: Network
    public_ip: IPv4Address
    vtep_mac: bytes | None = None


@attrs.frozen
class OverlayConfig:
    backend: str                   # a name in vswitch.overlay.core.backends.BACKENDS
    network: Network
    subnet: Network
    public_ip: IPv4Address
    port: int
    mtu: int                       # the overlay's: the underlay's less the backend's overhead
    vni: int = 1
    vtep_mac: bytes | None = None  # None: a stable default from the node's name
    ip_masq: bool = False
    subnet_env: str | None = None
    device: str | None = None      # drop-in mode: the flannel0 TUN or flannel.1 TAP to open in the host namespace
    peers: tuple[PeerConfig, ...] = ()
    leases: str = "static"         # a name in LEASE_SOURCES; with "etcd", network, subnet and peers came from etcd


@attrs.frozen
class EtcdConfig:
    """``[etcd]``: where flannel's leases are kept, as flanneld's ``--etcd-*`` flags say it.

    With etcd leases, ``[overlay]`` is known whole only once the node holds
    its lease: ``<prefix>/config`` gives the network and backend, the lease
    the subnet. Until then :attr:`Config.overlay` is None and ``overlay``
    here keeps the ``[overlay]`` table as written, which
    :func:`vswitch.config.resolve_lease` completes.
    """

    endpoints: tuple[str, ...] = (DEFAULT_ETCD_ENDPOINT,)
    prefix: str = DEFAULT_ETCD_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    lease_ttl: int = 86400          # flannel's subnetTTL, 24 h
    renew_margin: float = 3600.0    # renew this long before the lease expires (flanneld: 60 min)
    overlay: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)   # the [overlay] table as written
    source: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)    # the whole file, to parse again


@attrs.frozen
class Config:
    node: NodeConfig = NodeConfig()
    bridge: BridgeConfig = BridgeConfig()
    ports: tuple[PortConfig, ...] = ()
    router: RouterConfig = RouterConfig()
    nat: NatConfig = NatConfig()
    overlay: OverlayConfig | None = None
    etcd: EtcdConfig | None = None     # with etcd leases; overlay is None until resolve_lease completes it

    def check_runnable(self) -> None:
        """Refuse a config a daemon could do nothing with (an empty file, say): no port, no overlay, and no
        control socket through which containers could be attached later."""
        if not self.ports and self.overlay is None and self.etcd is None and not self.node.control:
            raise ConfigError("config", "nothing to run: no [[ports]], no [overlay], and no [node] control socket"
                                        " to attach containers through at run time")
