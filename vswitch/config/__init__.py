"""The node's configuration: TOML in (:mod:`.loader`), validated and parsed values out (:mod:`.model`).

``from vswitch.config import load`` is the way in; the values and limits are re-exported here.
"""

from vswitch.errors import ConfigError

from .loader import load, loads, parse, parse_interface, parse_ip
from .model import (
    IFNAMSIZ,
    MAX_AGEING,
    MAX_BRIDGE_ENTRIES,
    MAX_PING_INTERVAL,
    NAT_PROTOCOLS,
    OVERLAY_INTERFACE,
    PORT_TYPES,
    SUN_PATH_MAX,
    BridgeConfig,
    Config,
    ForwardConfig,
    HostConfig,
    InterfaceConfig,
    MasqueradeConfig,
    NatConfig,
    NeighbourConfig,
    NodeConfig,
    OverlayConfig,
    PeerConfig,
    PortConfig,
    RouteConfig,
    RouterConfig,
)

__all__ = [
    "ConfigError", "load", "loads", "parse", "parse_interface", "parse_ip",
    "IFNAMSIZ", "MAX_AGEING", "MAX_BRIDGE_ENTRIES", "MAX_PING_INTERVAL", "NAT_PROTOCOLS", "OVERLAY_INTERFACE",
    "PORT_TYPES", "SUN_PATH_MAX",
    "BridgeConfig", "Config", "ForwardConfig", "HostConfig", "InterfaceConfig", "MasqueradeConfig", "NatConfig",
    "NeighbourConfig", "NodeConfig", "OverlayConfig", "PeerConfig", "PortConfig", "RouteConfig", "RouterConfig",
]
