"""TOML configuration → validated, frozen attrs values.

Every error names the key (``ports[1].type``) and the reason, and unknown
keys are errors, so a typo never silently does nothing.
"""

import ipaddress
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from .wire.addr import mac_from_str

PORT_TYPES = ("tap", "tun", "packet", "memory")
SUPPORTED_PORT_TYPES = ("tap", "packet", "memory")
PLANNED_SECTIONS = ("router", "nat", "overlay")


class ConfigError(ValueError):
    def __init__(self, key: str, reason: str, *, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {reason}")


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
class Config:
    node: NodeConfig = NodeConfig()
    bridge: BridgeConfig = BridgeConfig()
    ports: tuple[PortConfig, ...] = ()


# -- loading -----------------------------------------------------------------


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
    for section in PLANNED_SECTIONS:
        if section in data:
            raise ConfigError(section, "this version does not implement this section yet")
    _check_keys(data, "", {"node", "bridge", "ports"})
    node = _section(data, "node", _parse_node)
    bridge = _section(data, "bridge", _parse_bridge)
    raw_ports = data.get("ports", [])
    if not isinstance(raw_ports, list):
        raise ConfigError("ports", "must be an array of tables ([[ports]])")
    ports = tuple(_parse_port(raw, f"ports[{i}]") for i, raw in enumerate(raw_ports))
    seen: dict[str, str] = {}
    for i, port in enumerate(ports):
        if port.name in seen:
            raise ConfigError(f"ports[{i}].name", f"{port.name!r} is already used by {seen[port.name]}")
        seen[port.name] = f"ports[{i}]"
    return Config(node, bridge, ports)


def _section(data: dict[str, Any], key: str, parse_fn: Callable[[dict[str, Any], str], Any]) -> Any:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a table")
    return parse_fn(raw, key)


def _parse_node(raw: dict[str, Any], key: str) -> NodeConfig:
    _check_keys(raw, key, {"name", "control"})
    return NodeConfig(
        name=_get(raw, key, "name", str, NodeConfig.name),
        control=_get(raw, key, "control", str, None),
    )


def _parse_bridge(raw: dict[str, Any], key: str) -> BridgeConfig:
    _check_keys(raw, key, {"ageing", "max_entries"})
    ageing = _get(raw, key, "ageing", (int, float), DEFAULT_AGEING)
    if ageing <= 0:
        raise ConfigError(f"{key}.ageing", f"must be a positive number of seconds, got {ageing}")
    max_entries = _get(raw, key, "max_entries", int, DEFAULT_MAX_ENTRIES)
    if max_entries < 1:
        raise ConfigError(f"{key}.max_entries", f"must be at least 1, got {max_entries}")
    return BridgeConfig(float(ageing), max_entries)


def _parse_port(raw: Any, key: str) -> PortConfig:
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a table")
    _check_keys(raw, key, {"name", "type", "netns", "address", "gateway", "mtu", "pcap", "device", "host"})
    name = _require(raw, key, "name", str)
    if not name or len(name) > 15 or "/" in name or name.strip() != name:
        raise ConfigError(f"{key}.name", f"{name!r} is not a valid device name (1-15 characters, no '/' or spaces)")
    type_ = _require(raw, key, "type", str)
    if type_ not in PORT_TYPES:
        raise ConfigError(f"{key}.type", f"{type_!r} is not one of {', '.join(PORT_TYPES)}")
    if type_ not in SUPPORTED_PORT_TYPES:
        raise ConfigError(
            f"{key}.type", f"{type_!r} ports carry IP packets, not Ethernet frames, and join the router;"
            f" this version has no router yet (available: {', '.join(SUPPORTED_PORT_TYPES)})",
        )
    mtu = _get(raw, key, "mtu", int, 1500)
    if not 68 <= mtu <= 65535:
        raise ConfigError(f"{key}.mtu", f"must be between 68 and 65535, got {mtu}")
    address = _get(raw, key, "address", str, None)
    if address is not None:
        _interface(address, f"{key}.address")
    gateway = _get(raw, key, "gateway", str, None)
    if gateway is not None:
        _ip(gateway, f"{key}.gateway")
    host = None
    if "host" in raw:
        if not isinstance(raw["host"], dict):
            raise ConfigError(f"{key}.host", "must be a table")
        host = _parse_host(raw["host"], f"{key}.host")
    netns = _get(raw, key, "netns", str, None)
    device = _get(raw, key, "device", str, None)
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
    return PortConfig(
        name=name, type=type_, netns=netns, address=address, gateway=gateway,
        mtu=mtu, pcap=_get(raw, key, "pcap", str, None), device=device, host=host,
    )


def _parse_host(raw: dict[str, Any], key: str) -> HostConfig:
    _check_keys(raw, key, {"address", "mac", "gateway", "ping", "ping_interval"})
    address = _require(raw, key, "address", str)
    _interface(address, f"{key}.address")
    mac = _get(raw, key, "mac", str, None)
    mac_bytes = None
    if mac is not None:
        try:
            mac_bytes = mac_from_str(mac)
        except ValueError:
            raise ConfigError(f"{key}.mac", f"{mac!r} is not a MAC address like 02:00:00:00:00:01") from None
        if mac_bytes[0] & 1:
            raise ConfigError(f"{key}.mac", f"{mac} is a multicast address; a host needs a unicast one")
    gateway = _get(raw, key, "gateway", str, None)
    if gateway is not None:
        _ip(gateway, f"{key}.gateway")
    ping = _get(raw, key, "ping", list, [])
    for i, target in enumerate(ping):
        if not isinstance(target, str):
            raise ConfigError(f"{key}.ping[{i}]", "must be an IPv4 address string")
        _ip(target, f"{key}.ping[{i}]")
    interval = _get(raw, key, "ping_interval", (int, float), 1.0)
    if interval <= 0:
        raise ConfigError(f"{key}.ping_interval", f"must be positive, got {interval}")
    return HostConfig(address, mac_bytes, gateway, tuple(ping), float(interval))


# -- helpers -------------------------------------------------------------


def _check_keys(raw: dict[str, Any], key: str, allowed: set[str]) -> None:
    for name in raw:
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", (int, float): "a number"}


def _get(raw: dict[str, Any], key: str, name: str, type_: Any, default: Any) -> Any:
    if name not in raw:
        return default
    value = raw[name]
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}.{name}", f"must be {_TYPE_NAMES.get(type_, type_)}, got {value!r}")
    return value


def _require(raw: dict[str, Any], key: str, name: str, type_: Any) -> Any:
    if name not in raw:
        raise ConfigError(f"{key}.{name}", "is required")
    return _get(raw, key, name, type_, None)


def _interface(text: str, key: str) -> ipaddress.IPv4Interface:
    if "/" not in text:
        raise ConfigError(key, f"{text!r} needs a prefix length, like 10.0.0.1/24")
    try:
        return ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not an IPv4 address with prefix: {exc}") from None


def _ip(text: str, key: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not an IPv4 address") from None
