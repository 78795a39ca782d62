"""TOML configuration → validated, frozen attrs values (:mod:`vswitch.config.model`).

Every error names the key (``ports[1].type``) and the reason, and unknown
keys are errors, so a typo never silently does nothing.
"""

import copy
import math
import os
import tomllib
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from vswitch.core.l2.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from vswitch.core.nat import DEFAULT_MAX_CONNECTIONS, MAX_CONNECTIONS
from vswitch.core.wire.addr import Network, ip_to_str, mac_from_str
from vswitch.errors import ConfigError
from vswitch.overlay.core.backends import BACKENDS

from .model import (
    DEFAULT_ETCD_ENDPOINT,
    DEFAULT_ETCD_PREFIX,
    IFNAMSIZ,
    LEASE_SOURCES,
    MAX_AGEING,
    MAX_BRIDGE_ENTRIES,
    MAX_PING_INTERVAL,
    NAT_PROTOCOLS,
    OVERLAY_INTERFACE,
    PORT_TYPES,
    SUN_PATH_MAX,
    BridgeConfig,
    Config,
    EtcdConfig,
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


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    return loads(text, source=str(path))


def loads(text: str, *, source: str | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}", source=source) from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.reason, source=source) from None


def parse(data: dict[str, Any]) -> Config:
    """A config from TOML's tables. With etcd leases its overlay is left for :func:`resolve_lease` to complete."""
    return _parse(data, resolved=False)


def _parse(data: dict[str, Any], *, resolved: bool) -> Config:
    _check_keys(data, "", {"node", "bridge", "ports", "router", "nat", "overlay", "etcd"})
    node = _section(data, "node", _parse_node)
    bridge = _section(data, "bridge", _parse_bridge)
    overlay = etcd = None
    if "overlay" in data:
        raw_overlay = _table(data["overlay"], "overlay")
        leases = _get(raw_overlay, "overlay", "leases", str, "static")
        if leases not in LEASE_SOURCES:
            raise ConfigError("overlay.leases", f"{leases!r} is not one of {', '.join(LEASE_SOURCES)}")
        if leases == "etcd" and not resolved:
            etcd = _parse_etcd(data, raw_overlay)
        else:
            overlay = _parse_overlay(raw_overlay, "overlay")
    if "etcd" in data and etcd is None and not resolved:
        raise ConfigError("etcd", 'is read only with etcd leases: set leases = "etcd" in [overlay], or remove [etcd]')
    raw_ports = data.get("ports", [])
    if not isinstance(raw_ports, list):
        raise ConfigError("ports", "must be an array of tables ([[ports]])")
    # With an overlay, containers' ports default to its MTU, so their packets fit in a datagram.
    inside_mtu = overlay.mtu if overlay is not None else 1500
    ports = tuple(_parse_port(raw, f"ports[{i}]", inside_mtu) for i, raw in enumerate(raw_ports))
    seen: dict[str, str] = {}
    for i, port in enumerate(ports):
        if port.name in seen:
            raise ConfigError(f"ports[{i}].name", f"{port.name!r} is already used by {seen[port.name]}")
        seen[port.name] = f"ports[{i}]"
    leased = etcd is not None or (overlay is not None and overlay.leases == "etcd")
    dropin = (overlay is not None and overlay.device is not None) or (etcd is not None and "device" in etcd.overlay)
    for i, port in enumerate(ports):
        if port.routes and dropin:
            raise ConfigError(f"ports[{i}].routes", "drop-in mode has no router to route through: the host reaches"
                                                    " the pods through flannel's device")
        if port.routes and port.address is None and not leased:
            raise ConfigError(f"ports[{i}].address", "a port with routes needs an address and a gateway (only"
                                                     " with etcd leases does it get them from the node's lease)")
    router = _section(data, "router", lambda raw, key: _parse_router(raw, key, ports, inside_mtu))
    nat = _section(data, "nat", lambda raw, key: _parse_nat(raw, key, router))
    if overlay is not None:
        _check_overlay_wiring(data, overlay, router)
    elif etcd is not None and "device" in etcd.overlay:
        _check_dropin(data)
    return Config(node, bridge, ports, router, nat, overlay, etcd)


GATEWAY_INTERFACE = "gateway"   # the router interface made for a lease's containers when the config has none


def resolve_lease(config: Config, *, backend: str, network: Network, subnet: Network, port: int | None,
                  vni: int | None, where: str) -> Config:
    """``config`` completed by what etcd says: the network, backend, port and VNI of ``<prefix>/config``
    (``where`` names it) and the subnet of this node's lease.

    A key of ``[overlay]`` that contradicts etcd is a ConfigError naming it.
    In router mode a bridge interface at the subnet's first address is
    added when the config has none in the subnet: the containers' gateway.
    Everything is then checked as a static config is.
    """
    assert config.etcd is not None, "resolve_lease completes a config with etcd leases"
    local = config.etcd.overlay
    port = port or BACKENDS[backend].default_port
    given = {"backend": backend, "network": str(network), "port": port}
    if backend == "vxlan":
        given["vni"] = vni if vni is not None else 1
    for key, value in given.items():
        if key in local and local[key] != value and not (key == "network" and _same_network(local[key], network)):
            raise ConfigError(f"overlay.{key}", f"is {local[key]!r} here but {value!r} in etcd's {where}:"
                                                " remove it here, or make the two agree")
    data = copy.deepcopy(config.etcd.source)
    data["overlay"] = {**local, **given, "subnet": str(subnet), "leases": "etcd"}
    if "device" not in local:
        router = data.setdefault("router", {})
        interfaces = router.setdefault("interfaces", []) if isinstance(router, dict) else None
        if isinstance(interfaces, list) and not any(_on_bridge_inside(i, subnet) for i in interfaces):
            first = ip_to_str((subnet.address + 1).to_bytes(4, "big"))
            interfaces.append({"name": GATEWAY_INTERFACE, "address": f"{first}/{subnet.prefix_len}"})
    return _parse(data, resolved=True)


def _same_network(text: Any, network: Network) -> bool:
    try:
        return _core_network(IPv4Network(text)) == network
    except ValueError:
        return False


def _on_bridge_inside(raw: Any, subnet: Network) -> bool:
    """Whether a configured ``[[router.interfaces]]`` table is already the gateway of ``subnet``."""
    try:
        address = IPv4Interface(raw["address"])
    except (KeyError, TypeError, ValueError):
        return False   # the parse that follows names what is wrong with it
    return "port" not in raw and address.ip.packed in subnet


def _section(data: dict[str, Any], key: str, parse_fn: Callable[[dict[str, Any], str], Any]) -> Any:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a table")
    return parse_fn(raw, key)


def _parse_node(raw: dict[str, Any], key: str) -> NodeConfig:
    _check_keys(raw, key, {"name", "control", "state_dir", "live_restore", "metrics"})
    control = _get(raw, key, "control", str, None)
    if control is not None and len(os.fsencode(control)) > SUN_PATH_MAX:
        raise ConfigError(f"{key}.control", f"a Unix socket path holds at most {SUN_PATH_MAX} bytes, this one has"
                          f" {len(os.fsencode(control))}: choose a shorter path")
    return NodeConfig(
        name=_get(raw, key, "name", str, NodeConfig().name),  # NodeConfig.name is the slot, not the default
        control=control,
        state_dir=_get(raw, key, "state_dir", str, None),
        live_restore=_get(raw, key, "live_restore", bool, False),
        metrics=_host_port(_get(raw, key, "metrics", str, None), f"{key}.metrics"),
    )


def _host_port(value: str | None, key: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` for an IPv6 address) as (host, port); port 0 takes any free one."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""   # a bare IPv6 address: the port cannot be told apart
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(key, f"must be host:port (\"127.0.0.1:9101\", \"[::1]:9101\"), got {value!r}")
    return host, int(port)


def _parse_bridge(raw: dict[str, Any], key: str) -> BridgeConfig:
    _check_keys(raw, key, {"ageing", "max_entries"})
    ageing = _seconds(raw, key, "ageing", DEFAULT_AGEING, MAX_AGEING)
    max_entries = _count(raw, key, "max_entries", DEFAULT_MAX_ENTRIES, MAX_BRIDGE_ENTRIES)
    return BridgeConfig(ageing, max_entries)


def _parse_port(raw: Any, key: str, default_mtu: int = 1500) -> PortConfig:
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a table")
    _check_keys(raw, key, {"name", "type", "netns", "address", "gateway", "mtu", "pcap", "device", "host", "ifname",
                           "mac", "routes"})
    name = _device_name(_require(raw, key, "name", str), f"{key}.name")
    type_ = _require(raw, key, "type", str)
    if type_ not in PORT_TYPES:
        raise ConfigError(f"{key}.type", f"{type_!r} is not one of {', '.join(PORT_TYPES)}")
    mtu = _get(raw, key, "mtu", int, 1500 if type_ == "packet" else default_mtu)  # a packet port is an uplink
    if not 68 <= mtu <= 65535:
        raise ConfigError(f"{key}.mtu", f"must be between 68 and 65535, got {mtu}")
    address = _optional(raw, key, "address", parse_interface)
    gateway = _optional(raw, key, "gateway", parse_ip)
    host = None
    if "host" in raw:
        if not isinstance(raw["host"], dict):
            raise ConfigError(f"{key}.host", "must be a table")
        host = _parse_host(raw["host"], f"{key}.host")
    netns = _get(raw, key, "netns", str, None)
    if netns is not None:
        _netns_name(netns, f"{key}.netns")
    device = _get(raw, key, "device", str, None)
    if device is not None:
        _device_name(device, f"{key}.device")
    if type_ == "memory" and host is None:
        raise ConfigError(f"{key}.host", "a memory port needs a simulated host on its other end ([ports.host])")
    if type_ != "memory" and host is not None:
        raise ConfigError(f"{key}.host", "only memory ports have a simulated host")
    if type_ == "packet":
        if device is None:
            raise ConfigError(f"{key}.device", "a packet port binds an existing interface: name it here")
        for name_ in ("netns", "address", "gateway"):
            if name_ in raw:
                raise ConfigError(f"{key}.{name_}", "applies to tap ports only (a packet port uses an existing interface)")
    elif device is not None:
        raise ConfigError(f"{key}.device", "applies to packet ports only")
    if gateway is not None and address is None:
        raise ConfigError(f"{key}.gateway", "needs an address on the same port")
    if type_ == "memory" and (netns or address):
        raise ConfigError(f"{key}.{'netns' if netns else 'address'}", "memory ports have no device to configure")
    ifname = _get(raw, key, "ifname", str, None)
    mac = _get(raw, key, "mac", str, None)
    routes = _port_routes(raw, key)
    for name_, value in (("ifname", ifname), ("mac", mac), ("routes", routes or None)):
        if value is not None and type_ != "tap":
            raise ConfigError(f"{key}.{name_}", "applies to tap ports only")
    if routes and address is not None and gateway is None:
        raise ConfigError(f"{key}.routes", "are routed via the port's gateway: set gateway (the router's address)")
    return PortConfig(
        name=name, type=type_, netns=netns, address=address, gateway=gateway,
        mtu=mtu, pcap=_get(raw, key, "pcap", str, None), device=device, host=host,
        ifname=_device_name(ifname, f"{key}.ifname") if ifname is not None else None,
        mac=_mac(mac, f"{key}.mac") if mac is not None else None, routes=routes,
    )


MAX_PORT_ROUTES = 64


def _port_routes(raw: dict[str, Any], key: str) -> tuple[Network, ...]:
    """``routes``: networks such as the cluster's, which a port in the host namespace reaches via its gateway
    (the daemon's router) while the host keeps its own default route."""
    value = raw.get("routes", [])
    if not isinstance(value, list) or len(value) > MAX_PORT_ROUTES:
        raise ConfigError(f"{key}.routes", f"must be an array of at most {MAX_PORT_ROUTES} networks"
                                           ' (["10.244.0.0/16"])')
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise ConfigError(f"{key}.routes[{i}]", "must be a network string like \"10.244.0.0/16\"")
    return tuple(_core_network(_network(text, f"{key}.routes[{i}]")) for i, text in enumerate(value))


def _parse_host(raw: dict[str, Any], key: str) -> HostConfig:
    _check_keys(raw, key, {"address", "mac", "gateway", "ping", "ping_interval"})
    address = parse_interface(_require(raw, key, "address", str), f"{key}.address")
    mac = _optional(raw, key, "mac", _mac)
    gateway = _optional(raw, key, "gateway", parse_ip)
    ping = []
    for i, target in enumerate(_get(raw, key, "ping", list, [])):
        if not isinstance(target, str):
            raise ConfigError(f"{key}.ping[{i}]", "must be an IPv4 address string")
        ping.append(parse_ip(target, f"{key}.ping[{i}]"))
    interval = _seconds(raw, key, "ping_interval", 1.0, MAX_PING_INTERVAL)
    return HostConfig(address, mac, gateway, tuple(ping), interval)


# -- router and NAT -------------------------------------------------------


def _parse_router(
    raw: dict[str, Any], key: str, ports: tuple[PortConfig, ...], bridge_mtu: int = 1500,
) -> RouterConfig:
    _check_keys(raw, key, {"interfaces", "routes", "neighbours"})
    by_name = {p.name: p for p in ports}
    interfaces = tuple(
        _parse_interface(item, f"{key}.interfaces[{i}]", by_name, bridge_mtu)
        for i, item in enumerate(_array(raw, key, "interfaces"))
    )
    names: dict[str, str] = {}
    networks_seen: dict[IPv4Network, str] = {}
    carried: dict[str, str] = {}
    for i, iface in enumerate(interfaces):
        where = f"{key}.interfaces[{i}]"
        if iface.name in names:
            raise ConfigError(f"{where}.name", f"{iface.name!r} is already used by {names[iface.name]}")
        names[iface.name] = where
        network = iface.address.network
        for other, other_where in networks_seen.items():
            if network.overlaps(other):
                # one address, one interface: the router could not tell which of the two a packet leaves by
                raise ConfigError(f"{where}.address", f"{iface.address} overlaps {other_where}'s network {other}")
        networks_seen[network] = where
        if iface.port is not None:
            if iface.port in carried:
                raise ConfigError(f"{where}.port", f"port {iface.port!r} already carries {carried[iface.port]}")
            carried[iface.port] = where
    for i, port in enumerate(ports):
        if port.type == "tun" and port.name not in carried:
            raise ConfigError(
                f"ports[{i}].type", "a tun port carries IP packets, not Ethernet frames: it must be the port"
                " of a router interface ([[router.interfaces]] with port = " + repr(port.name) + ")",
            )
    networks = [i.address.network for i in interfaces]
    routes = tuple(
        _parse_route(item, f"{key}.routes[{i}]", names, networks) for i, item in enumerate(_array(raw, key, "routes"))
    )
    neighbours = tuple(
        _parse_neighbour(item, f"{key}.neighbours[{i}]", interfaces) for i, item in enumerate(_array(raw, key, "neighbours"))
    )
    return RouterConfig(interfaces, routes, neighbours)


def _parse_interface(raw: Any, key: str, ports: dict[str, PortConfig], bridge_mtu: int = 1500) -> InterfaceConfig:
    raw = _table(raw, key)
    _check_keys(raw, key, {"name", "address", "port", "mtu", "mac", "proxy_arp"})
    name = _require(raw, key, "name", str)
    if "/" in name or name.strip() != name:
        raise ConfigError(f"{key}.name", f"{name!r} is not a valid interface name (no '/' or spaces)")
    address = parse_interface(_require(raw, key, "address", str), f"{key}.address")
    port_name = _get(raw, key, "port", str, None)
    port = None
    if port_name is not None:
        port = ports.get(port_name)
        if port is None:
            raise ConfigError(f"{key}.port", f"no port named {port_name!r} in [[ports]]")
    elif name in ports:   # an interface on the bridge is the bridge port of its name
        raise ConfigError(f"{key}.name", f"{name!r} is a port's name: an interface on the bridge is a bridge"
                                         " port of its own name, so choose another")
    mtu = _get(raw, key, "mtu", int, port.mtu if port else bridge_mtu)
    if not 68 <= mtu <= 65535:
        raise ConfigError(f"{key}.mtu", f"must be between 68 and 65535, got {mtu}")
    mac = _get(raw, key, "mac", str, None)
    proxy_arp = _get(raw, key, "proxy_arp", bool, False)
    if port is not None and port.type == "tun" and (mac is not None or proxy_arp):
        raise ConfigError(f"{key}.{'mac' if mac is not None else 'proxy_arp'}", "a tun port has no Ethernet and no ARP")
    return InterfaceConfig(name, address, port_name, mtu, _mac(mac, f"{key}.mac") if mac else None, proxy_arp)


def _parse_route(raw: Any, key: str, interfaces: dict[str, str], networks: list[IPv4Network]) -> RouteConfig:
    raw = _table(raw, key)
    _check_keys(raw, key, {"to", "via", "interface"})
    to = _network(_require(raw, key, "to", str), f"{key}.to")
    via = _get(raw, key, "via", str, None)
    interface = _get(raw, key, "interface", str, None)
    if via is None and interface is None:
        raise ConfigError(key, "needs a gateway (via) or an interface to send through")
    if interface is not None and interface not in interfaces:
        raise ConfigError(f"{key}.interface", f"no router interface named {interface!r}")
    gateway = None
    if via is not None:
        gateway = parse_ip(via, f"{key}.via")
        if interface is None and not any(gateway in net for net in networks):
            raise ConfigError(f"{key}.via", f"{via} is not on the network of any router interface")
    return RouteConfig(_core_network(to), gateway, interface)


def _parse_neighbour(raw: Any, key: str, interfaces: tuple[InterfaceConfig, ...]) -> NeighbourConfig:
    raw = _table(raw, key)
    _check_keys(raw, key, {"interface", "address", "mac"})
    interface = _require(raw, key, "interface", str)
    iface = next((i for i in interfaces if i.name == interface), None)
    if iface is None:
        raise ConfigError(f"{key}.interface", f"no router interface named {interface!r}")
    address = parse_ip(_require(raw, key, "address", str), f"{key}.address")
    return NeighbourConfig(interface, address, _mac(_require(raw, key, "mac", str), f"{key}.mac"))


def _parse_nat(raw: dict[str, Any], key: str, router: RouterConfig) -> NatConfig:
    _check_keys(raw, key, {"max_connections", "max_per_source", "masquerade", "forward"})
    names = {i.name for i in router.interfaces}
    max_connections = _count(raw, key, "max_connections", DEFAULT_MAX_CONNECTIONS, MAX_CONNECTIONS,
                             why=" (each connection takes about 1.4 KB of memory)")
    max_per_source = _count(raw, key, "max_per_source", None, max_connections, why=" (max_connections)")
    masquerade = []
    for i, item in enumerate(_array(raw, key, "masquerade")):
        where = f"{key}.masquerade[{i}]"
        item = _table(item, where)
        _check_keys(item, where, {"source", "out", "exclude"})
        source = _network(_require(item, where, "source", str), f"{where}.source")
        out = _require(item, where, "out", str)
        if out not in names:
            raise ConfigError(f"{where}.out", f"no router interface named {out!r}")
        exclude = []
        for j, net in enumerate(_get(item, where, "exclude", list, [])):
            if not isinstance(net, str):
                raise ConfigError(f"{where}.exclude[{j}]", f"must be a network like 10.244.0.0/16, got {net!r}")
            exclude.append(_core_network(_network(net, f"{where}.exclude[{j}]")))
        masquerade.append(MasqueradeConfig(_core_network(source), out, tuple(exclude)))
    forwards = []
    seen: dict[tuple[str, int, str | None], str] = {}
    for i, item in enumerate(_array(raw, key, "forward")):
        where = f"{key}.forward[{i}]"
        item = _table(item, where)
        _check_keys(item, where, {"protocol", "port", "to", "interface"})
        protocol = _get(item, where, "protocol", str, "tcp")
        if protocol not in NAT_PROTOCOLS:
            raise ConfigError(f"{where}.protocol", f"{protocol!r} is not one of {', '.join(NAT_PROTOCOLS)}")
        port = _require(item, where, "port", int)
        if not 1 <= port <= 65535:
            raise ConfigError(f"{where}.port", f"must be between 1 and 65535, got {port}")
        to = _require(item, where, "to", str)
        host, _, to_port_text = to.partition(":")
        address = parse_ip(host, f"{where}.to")
        to_port = port
        if to_port_text:
            if not to_port_text.isdigit() or not 1 <= int(to_port_text) <= 65535:
                raise ConfigError(f"{where}.to", f"{to!r} needs a port between 1 and 65535 after the colon")
            to_port = int(to_port_text)
        interface = _get(item, where, "interface", str, None)
        if interface is not None and interface not in names:
            raise ConfigError(f"{where}.interface", f"no router interface named {interface!r}")
        if (protocol, port, interface) in seen:
            raise ConfigError(f"{where}.port", f"{protocol} port {port} is already forwarded by {seen[protocol, port, interface]}")
        seen[protocol, port, interface] = where
        forwards.append(ForwardConfig(NAT_PROTOCOLS[protocol], port, address, to_port, interface))
    if (masquerade or forwards) and not router.interfaces:
        raise ConfigError(key, "NAT needs a router: add [[router.interfaces]]")
    return NatConfig(max_connections, max_per_source, tuple(masquerade), tuple(forwards))


# -- overlay ------------------------------------------------------------------


def _parse_overlay(raw: Any, key: str) -> OverlayConfig:
    raw = _table(raw, key)
    _check_keys(raw, key, {"backend", "network", "subnet", "public_ip", "port", "mtu", "vni", "vtep_mac", "ip_masq",
                           "subnet_env", "device", "peers", "leases"})
    backend = _get(raw, key, "backend", str, "udp")
    if backend not in BACKENDS:
        raise ConfigError(f"{key}.backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    default_port, overhead = BACKENDS[backend].default_port, BACKENDS[backend].overhead
    vxlan = backend == "vxlan"
    network = _network(_require(raw, key, "network", str), f"{key}.network")
    subnet_text = _require(raw, key, "subnet", str)
    subnet = _network(subnet_text, f"{key}.subnet")
    if not subnet.subnet_of(network):
        raise ConfigError(f"{key}.subnet", f"{subnet} is not inside the network {network}")
    if subnet.prefixlen > 30:
        raise ConfigError(f"{key}.subnet", f"{subnet} leaves no room for containers: use /30 or shorter (flannel: /24)")
    public_ip = _underlay_ip(raw, key, network)
    port = _get(raw, key, "port", int, default_port)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}.port", f"must be between 1 and 65535, got {port}")
    mtu = _get(raw, key, "mtu", int, 1500 - overhead)
    if not 68 <= mtu <= 65535 - overhead:
        raise ConfigError(f"{key}.mtu", f"must be between 68 and {65535 - overhead}, got {mtu}")
    vni = _get(raw, key, "vni", int, 1)
    if not 0 <= vni <= 0xFFFFFF:
        raise ConfigError(f"{key}.vni", f"must be between 0 and 16777215, got {vni}")
    if not vxlan:
        for name in ("vni", "vtep_mac"):
            if name in raw:
                raise ConfigError(f"{key}.{name}", "applies to the vxlan backend only")
    vtep_mac = _get(raw, key, "vtep_mac", str, None)
    device = _get(raw, key, "device", str, None)
    if device is not None:
        _device_name(device, f"{key}.device")
    peers = tuple(
        _parse_peer(item, f"{key}.peers[{i}]", network, subnet, vxlan) for i, item in enumerate(_array(raw, key, "peers"))
    )
    seen: dict[Any, str] = {}
    for i, peer in enumerate(peers):
        where = f"{key}.peers[{i}]"
        net = _ipaddress_network(peer.subnet)
        for other_key, other in seen.items():
            if isinstance(other_key, IPv4Network) and net.overlaps(other_key):
                raise ConfigError(f"{where}.subnet", f"{net} overlaps the subnet of {other}")
        seen[net] = where
        for name, value in (("public_ip", peer.public_ip), ("vtep_mac", peer.vtep_mac)):
            if value is None:
                continue
            if (name, value) in seen:
                raise ConfigError(f"{where}.{name}", f"is the same as {seen[name, value]}'s: one node, one lease")
            seen[name, value] = where
        if peer.public_ip == public_ip:
            raise ConfigError(f"{where}.public_ip", f"{public_ip} is this node's own public_ip")
    return OverlayConfig(
        backend=backend, network=_core_network(network), subnet=_core_network(subnet), public_ip=public_ip, port=port,
        mtu=mtu, vni=vni, vtep_mac=_mac(vtep_mac, f"{key}.vtep_mac") if vtep_mac else None,
        ip_masq=_get(raw, key, "ip_masq", bool, False), subnet_env=_get(raw, key, "subnet_env", str, None),
        device=device, peers=peers, leases=_get(raw, key, "leases", str, "static"),
    )


def _parse_peer(raw: Any, key: str, network: IPv4Network, own: IPv4Network, vxlan: bool) -> PeerConfig:
    raw = _table(raw, key)
    _check_keys(raw, key, {"subnet", "public_ip", "vtep_mac"})
    subnet = _network(_require(raw, key, "subnet", str), f"{key}.subnet")
    if not subnet.subnet_of(network):
        raise ConfigError(f"{key}.subnet", f"{subnet} is not inside the network {network}")
    if subnet.overlaps(own):
        raise ConfigError(f"{key}.subnet", f"{subnet} overlaps this node's subnet {own}")
    public_ip = _underlay_ip(raw, key, network)
    vtep_mac = _get(raw, key, "vtep_mac", str, None)
    if vxlan and vtep_mac is None:
        raise ConfigError(f"{key}.vtep_mac", "the vxlan backend needs each peer's VTEP MAC (its `show peers` prints it)")
    if not vxlan and vtep_mac is not None:
        raise ConfigError(f"{key}.vtep_mac", "applies to the vxlan backend only")
    return PeerConfig(_core_network(subnet), public_ip, _mac(vtep_mac, f"{key}.vtep_mac") if vtep_mac else None)


def _check_overlay_wiring(data: dict[str, Any], overlay: OverlayConfig, router: RouterConfig) -> None:
    """Router mode needs the containers' gateway on the router; drop-in mode leaves everything to the host kernel."""
    if overlay.device is not None:
        _check_dropin(data)
        return
    network, subnet = _ipaddress_network(overlay.network), _ipaddress_network(overlay.subnet)
    for i, iface in enumerate(router.interfaces):
        if iface.name == OVERLAY_INTERFACE:
            raise ConfigError(f"router.interfaces[{i}].name", f"{OVERLAY_INTERFACE!r} is the overlay's own interface")
        if iface.address.network.overlaps(network) and not iface.address.network.subnet_of(subnet):
            raise ConfigError(f"router.interfaces[{i}].address", f"{iface.address} reaches into the cluster network"
                              f" {network} beyond this node's subnet {subnet}")
    if not any(i.address.ip in subnet and i.port is None for i in router.interfaces):
        first = next(subnet.hosts())
        raise ConfigError(
            "overlay.subnet", f"the containers of {subnet} need a gateway on the daemon's router: add [[router.interfaces]]"
            f" with address = \"{first}/{subnet.prefixlen}\" (on the bridge), or set overlay.device for drop-in mode",
        )


def _check_dropin(data: dict[str, Any]) -> None:
    for section in ("ports", "router", "nat"):
        if data.get(section):
            raise ConfigError(
                "overlay.device", f"drop-in mode hands containers and routing to the host kernel: remove [{section}],"
                " or remove device to run the overlay on the daemon's own router",
            )


# -- etcd leases ------------------------------------------------------------------


def _parse_etcd(data: dict[str, Any], overlay: dict[str, Any]) -> EtcdConfig:
    """``[etcd]``, and ``[overlay]`` as far as it can be checked before etcd has said the rest."""
    _check_local_overlay(overlay, "overlay")
    raw = _table(data.get("etcd", {}), "etcd")
    key = "etcd"
    _check_keys(raw, key, {"endpoints", "prefix", "ca_file", "cert_file", "key_file", "username", "password",
                           "lease_ttl", "renew_margin"})
    endpoints = _get(raw, key, "endpoints", list, [DEFAULT_ETCD_ENDPOINT])
    if not endpoints:
        raise ConfigError(f"{key}.endpoints", "must list at least one endpoint, like \"http://127.0.0.1:2379\"")
    for i, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")) \
                or not endpoint.partition("://")[2].strip("/"):
            raise ConfigError(f"{key}.endpoints[{i}]", f"{endpoint!r} is not a URL like http://127.0.0.1:2379")
    prefix = _get(raw, key, "prefix", str, DEFAULT_ETCD_PREFIX)
    if not prefix.startswith("/") or prefix.endswith("/") and prefix != "/":
        raise ConfigError(f"{key}.prefix", f"{prefix!r} must start with '/' and not end with one, like {DEFAULT_ETCD_PREFIX}")
    files = {name: _get(raw, key, name, str, None) for name in ("ca_file", "cert_file", "key_file")}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        missing = "key_file" if files["key_file"] is None else "cert_file"
        raise ConfigError(f"{key}.{missing}", "a client certificate needs both cert_file and key_file")
    username, password = _get(raw, key, "username", str, None), _get(raw, key, "password", str, None)
    if (username is None) != (password is None):
        raise ConfigError(f"{key}.{'password' if password is None else 'username'}", "etcd's auth needs both username"
                                                                                      " and password")
    if any(not e.startswith("https://") for e in endpoints) and (files["cert_file"] or files["ca_file"]):
        raise ConfigError(f"{key}.endpoints", "ca_file and cert_file apply to https:// endpoints only")
    ttl = _count(raw, key, "lease_ttl", 86400, 10 * 365 * 86400)
    if ttl < 10:
        raise ConfigError(f"{key}.lease_ttl", f"must be at least 10 seconds, got {ttl}")
    margin = _seconds(raw, key, "renew_margin", min(3600.0, ttl / 2), ttl - 1)
    return EtcdConfig(tuple(endpoints), prefix, files["ca_file"], files["cert_file"], files["key_file"], username,
                      password, ttl, margin, overlay=dict(overlay), source=data)


def _check_local_overlay(raw: dict[str, Any], key: str) -> None:
    """The keys of ``[overlay]`` that stay local with etcd leases, checked alone; with the lease, the whole
    table is checked again as a static one (:func:`resolve_lease`)."""
    _check_keys(raw, key, {"backend", "network", "public_ip", "port", "mtu", "vni", "vtep_mac", "ip_masq", "subnet_env",
                           "device", "leases", "subnet", "peers"})
    if "subnet" in raw:
        raise ConfigError(f"{key}.subnet", "comes from the lease etcd hands out: remove it (a reservation in etcd"
                                           " pins a node's subnet)")
    if "peers" in raw:
        raise ConfigError(f"{key}.peers", "with etcd leases the peers come from etcd: remove [[overlay.peers]]")
    backend = _get(raw, key, "backend", str, None)
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"{key}.backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    network = _optional(raw, key, "network", _network)
    public_ip = parse_ip(_require(raw, key, "public_ip", str), f"{key}.public_ip")
    if network is not None and public_ip in network:
        raise ConfigError(f"{key}.public_ip", f"{public_ip} is inside the overlay network {network}: it must be an"
                                              " underlay address")
    for name, low, high in (("port", 1, 65535), ("mtu", 68, 65535), ("vni", 0, 0xFFFFFF)):
        value = _get(raw, key, name, int, None)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{key}.{name}", f"must be between {low} and {high}, got {value}")
    if backend == "udp" and ("vni" in raw or "vtep_mac" in raw):
        raise ConfigError(f"{key}.{'vni' if 'vni' in raw else 'vtep_mac'}", "applies to the vxlan backend only")
    _optional(raw, key, "vtep_mac", _mac)
    if (device := _get(raw, key, "device", str, None)) is not None:
        _device_name(device, f"{key}.device")
    _get(raw, key, "ip_masq", bool, False)
    _get(raw, key, "subnet_env", str, None)


def _array(raw: dict[str, Any], key: str, name: str) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{key}.{name}", f"must be an array of tables ([[{key}.{name}]])")
    return value


def _table(raw: Any, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a table")
    return raw


def _network(text: str, key: str) -> IPv4Network:
    """A network as ipaddress's, for the checks (``overlaps``, ``subnet_of``); the config keeps the core's
    :class:`Network` (:func:`_core_network`), which is what routes, NAT rules and the overlay take."""
    try:
        return IPv4Network(text)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not an IPv4 network like 10.244.0.0/16: {exc}") from None


def _core_network(network: IPv4Network) -> Network:
    return Network.of(network.network_address.packed, network.prefixlen)


def _ipaddress_network(network: Network) -> IPv4Network:
    return IPv4Network((network.address, network.prefix_len))


def _underlay_ip(raw: dict[str, Any], key: str, network: IPv4Network) -> IPv4Address:
    """``public_ip``: where a node's daemon listens, on the underlay, so outside the overlay's network."""
    public_ip = parse_ip(_require(raw, key, "public_ip", str), f"{key}.public_ip")
    if public_ip in network:
        raise ConfigError(f"{key}.public_ip", f"{public_ip} is inside the overlay network {network}: it must be an underlay address")
    return public_ip


def _mac(text: str, key: str) -> bytes:
    try:
        mac = mac_from_str(text)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not a MAC address like 02:00:00:00:00:01") from None
    if mac[0] & 1:
        raise ConfigError(key, f"{text} is a multicast address; a unicast one is needed")
    if not any(mac):
        raise ConfigError(key, f"{text} is the all-zero address, which no interface may have")
    return mac


def _device_name(name: str, key: str) -> str:
    """A Linux network device name (the kernel's dev_valid_name): 1-15 bytes, not . or .., no '/', ':' or space."""
    size = len(os.fsencode(name))
    if size >= IFNAMSIZ:
        raise ConfigError(key, f"{name!r} is not a valid device name: {size} bytes, at most {IFNAMSIZ - 1}")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise ConfigError(key, f"{name!r} is not a valid device name (no '/', ':' or spaces, not . or ..)")
    return name


def _netns_name(name: str, key: str) -> None:
    """A network namespace as `ip netns` names it (a file name under /var/run/netns), or the absolute path of a
    namespace file (``/proc/PID/ns/net``, a bind mount such as CNI's ``/var/run/netns/x``)."""
    if name.startswith("/"):
        if "\0" in name or len(os.fsencode(name)) > 4095:
            raise ConfigError(key, f"{name!r} is not a network namespace path (no NUL, at most 4095 bytes)")
        return
    if name in (".", "..") or "/" in name or "\0" in name or len(os.fsencode(name)) > 255:
        raise ConfigError(key, f"{name!r} is not a network namespace name (a file name under /var/run/netns: no"
                          " '/', not . or ..) nor the absolute path of one, such as /proc/PID/ns/net")


def _seconds(raw: dict[str, Any], key: str, name: str, default: float, maximum: float) -> float:
    """A positive, finite number of seconds up to ``maximum``."""
    value = _get(raw, key, name, (int, float), default)
    if not math.isfinite(value) or not 0 < value <= maximum:
        raise ConfigError(f"{key}.{name}", f"must be a positive, finite number of seconds, at most {maximum:g};"
                                           f" got {value}")
    return float(value)


def _count(raw: dict[str, Any], key: str, name: str, default: int | None, maximum: int, *, why: str = "") -> Any:
    """A size from 1 to ``maximum`` (``why`` says where the maximum comes from)."""
    value = _get(raw, key, name, int, default)
    if value is not None and not 1 <= value <= maximum:
        raise ConfigError(f"{key}.{name}", f"must be at least 1 and at most {maximum:,}{why}, got {value:,}")
    return value


# -- helpers -------------------------------------------------------------


def _check_keys(raw: dict[str, Any], key: str, allowed: set[str]) -> None:
    for name in raw:
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", (int, float): "a number", bool: "true or false"}


def _get(raw: dict[str, Any], key: str, name: str, type_: Any, default: Any) -> Any:
    if name not in raw:
        return default
    value = raw[name]
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}.{name}", f"must be {_TYPE_NAMES.get(type_, type_)}, got {value!r}")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{key}.{name}", "must not be empty")
    return value


def _require(raw: dict[str, Any], key: str, name: str, type_: Any) -> Any:
    if name not in raw:
        raise ConfigError(f"{key}.{name}", "is required")
    return _get(raw, key, name, type_, None)


def _optional(raw: dict[str, Any], key: str, name: str, parse_fn: Callable[[str, str], Any]) -> Any:
    """The string ``name`` parsed by ``parse_fn(text, key)``, or None when it is absent."""
    text = _get(raw, key, name, str, None)
    return None if text is None else parse_fn(text, f"{key}.{name}")


def parse_interface(text: str, key: str) -> IPv4Interface:
    """An IPv4 address with its prefix length (``10.0.0.1/24``), as the config takes one; ConfigError names ``key``."""
    if "/" not in text:
        raise ConfigError(key, f"{text!r} needs a prefix length, like 10.0.0.1/24")
    try:
        return IPv4Interface(text)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not an IPv4 address with prefix: {exc}") from None


def parse_ip(text: str, key: str) -> IPv4Address:
    """An IPv4 address, as the config takes one; ConfigError names ``key``."""
    try:
        return IPv4Address(text)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not an IPv4 address") from None
