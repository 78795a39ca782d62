"""flannel's cluster state in etcd: its keys, its JSON, how a node takes a subnet. Pure.

flanneld keeps everything under one prefix (``--etcd-prefix``, by default
``/coreos.com/network``): the network config at ``<prefix>/config`` and one
key per node at ``<prefix>/subnets/10.244.1.0-24``, whose value names the
node's public address (and for VXLAN its VTEP MAC) and which hangs on an etcd
lease of 24 hours, so a node that stops renewing drops out of the cluster.
A key with no etcd lease is a reservation: it never expires.

This module is that layout, byte for byte as flanneld reads and writes it
(flannel-io/flannel ``pkg/subnet/config.go``, ``pkg/lease/lease.go``,
``pkg/subnet/etcd/registry.go`` and ``local_manager.go``), with no I/O:

* :func:`parse_network_config` and :func:`network_config_json`: the config,
  with flannel's defaults and checks;
* :func:`lease_value` and :func:`parse_lease_value`: a lease's value, as Go's
  ``json.Marshal`` writes flannel's ``LeaseAttrs`` (compact, in the struct's
  field order) — so a flanneld node reads ours and we read its;
* :func:`plan_acquire`: flannel's ``tryAcquireLease`` as a decision on a
  listing (reuse the lease holding our public address, else the previous
  subnet, else a random free one), the shell doing the etcd calls;
* :class:`LeaseBook`: the subnets as listed and watched, and the peers they
  make.

JSON is decoded as Go decodes it into flannel's structs: keys match
case-insensitively, the last of a repeated key wins, unknown keys are
ignored. Everything here comes from etcd, so from anyone who can write to
it: sizes are bounded, and any malformed input is a :class:`FlannelError`
naming the key (or ``None`` for a key name), never another exception.
"""

import json
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from vswitch.core.wire.addr import (
    Network,
    ip_from_str,
    ip_to_str,
    mac_from_str,
    mac_to_str,
)

from .backends import BACKENDS
from .codec import MAX_VNI
from .peers import DEFAULT_MAX_PEERS, Lease

DEFAULT_PREFIX = "/coreos.com/network"
LEASE_TTL = 24 * 3600          # flannel's subnetTTL: the etcd lease each subnet key hangs on
MAX_CONFIG_SIZE = 64 * 1024    # a config is some 100 bytes; more is not a config
MAX_LEASE_SIZE = 4096          # a lease value is some 130 bytes (a wireguard one some 200)
FREE_CANDIDATES = 100          # allocateSubnet picks at random among the first 100 free subnets
DEFAULT_VXLAN_VNI = 1          # flannel's vxlan defaultVNI
_MAX_UINT32 = 0xFFFFFFFF

# Why a key under subnets/ is no peer: stable strings, counted in LeaseBook.ignored (and shown by `show peers`).
MALFORMED_KEY = "malformed key"          # not <prefix>/subnets/a.b.c.d-n as flannel writes it
MALFORMED_VALUE = "malformed value"      # not a lease flannel would read
OVER_THE_LIMIT = "over the limit"        # the book holds max_leases keys already
OUTSIDE_THE_NETWORK = "outside the network"
NO_VTEP_MAC = "no VTEP MAC"              # a vxlan lease without BackendData.VtepMAC
OTHER_VNI = "other VNI"                  # a vxlan lease whose VNI is not the config's: its node drops our datagrams
CONFLICT = "conflict"                    # its public address or VTEP MAC is another's (or ours), or it overlaps our subnet
OTHER_BACKEND = "backend other"          # a BackendType flannel does not register either
# flannel's registered backends (pkg/backend/*: backend.Register), and the cloud ones of older releases:
# "backend host-gw" and the like; any other type counts as OTHER_BACKEND, so the counters stay few.
FLANNEL_BACKENDS = ("udp", "vxlan", "host-gw", "wireguard", "ipsec", "ipip", "alloc", "extension", "tencent-vpc",
                    "ali-vpc", "aws-vpc", "gce")
REASONS = (MALFORMED_KEY, MALFORMED_VALUE, OVER_THE_LIMIT, OUTSIDE_THE_NETWORK, NO_VTEP_MAC, OTHER_VNI, CONFLICT,
           *(f"backend {name}" for name in FLANNEL_BACKENDS), OTHER_BACKEND)   # every key LeaseBook.ignored can have


class FlannelError(ValueError):
    """A config or lease that flannel's layout does not allow: ``key`` names the JSON key (``Backend.Type``)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


class NetworkFull(FlannelError):
    """No free subnet is left between SubnetMin and SubnetMax (flannel: "out of subnets")."""


# -- JSON as Go decodes it into a struct ---------------------------------------------------------

_MISSING: Any = object()


class _GoObject(dict):
    """A JSON object as Go matches it to a struct: case-insensitive keys, the last repeat wins."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__((key.lower(), value) for key, value in pairs)

    def get_field(self, name: str) -> Any:
        return self.get(name.lower(), _MISSING)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _decode(data: bytes, limit: int, what: str) -> _GoObject:
    if len(data) > limit:
        raise FlannelError("", f"{what} of {len(data)} bytes: more than the {limit} bytes vswitch reads")
    try:
        value = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_GoObject, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FlannelError("", f"{what} that is not JSON: {exc}") from None
    if not isinstance(value, _GoObject):
        raise FlannelError("", f"{what} that is not a JSON object")
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else {bool: "a boolean", str: "a string", int: "a number", float: "a number",
                                         list: "an array", _GoObject: "an object"}[type(value)]


def _integer(obj: _GoObject, name: str, key: str, low: int, high: int) -> int | None:
    """A whole number in ``low..high`` (Go refuses 1.0 and 1e2 for an int); None when absent or null."""
    value = obj.get_field(name)
    if value is _MISSING or value is None:
        return None
    if type(value) is not int:
        raise FlannelError(key, f"must be a whole number, not {_type_name(value)}")
    if not low <= value <= high:
        raise FlannelError(key, f"{value} is out of range ({low}..{high})")
    return value


def _string(obj: _GoObject, name: str, key: str) -> str | None:
    value = obj.get_field(name)
    if value is _MISSING:
        return None
    if type(value) is not str:
        raise FlannelError(key, f"must be a string, not {_type_name(value)}")
    return value


def _boolean(obj: _GoObject, name: str, key: str) -> bool | None:
    value = obj.get_field(name)
    if value is _MISSING or value is None:
        return None
    if type(value) is not bool:
        raise FlannelError(key, f"must be true or false, not {_type_name(value)}")
    return value


def _ipv4(text: str, key: str) -> bytes:
    """Dotted decimal, as Go's net.ParseIP takes it for IPv4 (no leading zeros)."""
    try:
        return ip_from_str(text)
    except ValueError:
        raise FlannelError(key, f"{text[:64]!r} is not an IPv4 address") from None


_CIDR_PREFIX = re.compile(r"[0-9]{1,8}")


def _cidr(text: str, key: str) -> Network:
    """``10.244.0.0/16`` as Go's net.ParseCIDR takes it: the host bits are cleared, as flannel's IP4Net keeps it."""
    address, slash, length = text.partition("/")
    if not slash or not _CIDR_PREFIX.fullmatch(length) or int(length) > 32:
        raise FlannelError(key, f"{text[:64]!r} is not an IPv4 network such as 10.244.0.0/16")
    return Network.of(_ipv4(address, key), int(length))


def _last(network: Network) -> int:
    return network.address | (~network.mask & 0xFFFFFFFF)


def _overlaps(a: Network, b: Network) -> bool:
    return a.address <= _last(b) and b.address <= _last(a)


# -- the network config --------------------------------------------------------------------------


@attrs.frozen
class NetworkConfig:
    """``<prefix>/config``, with flannel's defaults filled in (``CheckNetworkConfig``).

    ``port`` and ``vni`` are what the config says (None: not given); :attr:`tunnel_port`
    and :attr:`tunnel_vni` are what the backend then uses.
    """

    network: Network
    subnet_len: int
    subnet_min: Network       # the lowest subnet a node may take, a /subnet_len
    subnet_max: Network       # the highest
    backend: str              # "udp" or "vxlan": a key of BACKENDS
    port: int | None = None
    vni: int | None = None    # vxlan only

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    @property
    def subnet_count(self) -> int:
        """How many subnets lie from SubnetMin to SubnetMax."""
        return (self.subnet_max.address - self.subnet_min.address) // self.subnet_size + 1

    def subnets(self) -> Iterator[Network]:
        """Every subnet from SubnetMin to SubnetMax, in order."""
        mask = self.subnet_min.mask
        for address in range(self.subnet_min.address, self.subnet_max.address + 1, self.subnet_size):
            yield Network(address, mask)

    @property
    def tunnel_port(self) -> int:
        """The UDP port the backend uses: the config's, else the backend's default (8285 udp, 8472 vxlan)."""
        return self.port if self.port is not None else BACKENDS[self.backend].default_port

    @property
    def tunnel_vni(self) -> int | None:
        """The VNI of a vxlan network: the config's, else flannel's default 1; None for udp."""
        if self.backend != "vxlan":
            return None
        return self.vni if self.vni is not None else DEFAULT_VXLAN_VNI


def parse_network_config(data: bytes) -> NetworkConfig:
    """``<prefix>/config`` as flanneld reads it (ParseConfig, then CheckNetworkConfig), for the backends vswitch speaks."""
    obj = _decode(data, MAX_CONFIG_SIZE, "a network config")
    if _boolean(obj, "EnableIPv4", "EnableIPv4") is False:
        raise FlannelError("EnableIPv4", "false: vswitch carries IPv4 only, so the network must enable it")
    if _boolean(obj, "EnableIPv6", "EnableIPv6"):
        raise FlannelError("EnableIPv6", "true: vswitch carries IPv4 only; its leases would lack the IPv6 subnet")
    text = _string(obj, "Network", "Network")
    if text is None:
        raise FlannelError("Network", "missing: the cluster's network, such as 10.244.0.0/16")
    network = _cidr(text, "Network")
    if network.address == 0 and network.prefix_len == 0:
        raise FlannelError("Network", f"{text}: please define a network other than 0.0.0.0/0")
    prefix = network.prefix_len
    subnet_len = _integer(obj, "SubnetLen", "SubnetLen", 0, _MAX_UINT32) or 0   # 0 is Go's zero value: unset
    if subnet_len:
        if subnet_len > 30:
            raise FlannelError("SubnetLen", f"{subnet_len}: must be 30 or less, to leave room for a gateway and hosts")
        if subnet_len < prefix + 2:
            raise FlannelError("SubnetLen", f"{subnet_len}: must be at least {prefix + 2}, so that the /{prefix}"
                                            " network holds four subnets (the first is never used)")
    elif prefix > 28:
        raise FlannelError("Network", f"{network} is too small: flannel needs a /28 or wider")
    else:
        subnet_len = 24 if prefix <= 22 else prefix + 2
    size = 1 << (32 - subnet_len)
    bounds = []
    for name, default in (("SubnetMin", network.address + size), ("SubnetMax", _last(network) + 1 - size)):
        given = _string(obj, name, name)
        address = int.from_bytes(_ipv4(given, name), "big") if given is not None else 0
        if address == 0:   # Go's zero value: unset
            address = default
        elif address & network.mask != network.address:
            raise FlannelError(name, f"{given} is not in the network {network}")
        elif address % size:
            raise FlannelError(name, f"{given} is not on a /{subnet_len} boundary")
        bounds.append(Network(address, (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF))
    subnet_min, subnet_max = bounds
    if subnet_min.address > subnet_max.address:
        raise FlannelError("SubnetMin", f"{ip_to_str(subnet_min.network)} is above SubnetMax"
                                        f" {ip_to_str(subnet_max.network)}: no subnet is left to take")
    backend, port, vni = _backend(obj.get_field("Backend"))
    return NetworkConfig(network, subnet_len, subnet_min, subnet_max, backend, port, vni)


def _backend(value: Any) -> tuple[str, int | None, int | None]:
    """``Backend``: (type, port, VNI). flannel's code takes udp when it is absent (its docs say vxlan)."""
    if value is _MISSING:
        return "udp", None, None
    if not isinstance(value, _GoObject):
        raise FlannelError("Backend", f'must be an object such as {{"Type": "vxlan"}}, not {_type_name(value)}')
    kind = _string(value, "Type", "Backend.Type")
    if not kind:
        raise FlannelError("Backend.Type", "missing: the backend, such as \"udp\" or \"vxlan\"")
    if kind not in BACKENDS:
        raise FlannelError("Backend.Type", f"{kind[:64]!r}: vswitch does not speak flannel's {kind[:64]} backend,"
                                           f" only {' and '.join(BACKENDS)}")
    port = _integer(value, "Port", "Backend.Port", 0, 65535) or None   # 0: the backend's default port
    vni = None
    if kind == "vxlan":
        vni = _integer(value, "VNI", "Backend.VNI", 0, MAX_VNI)
        for name in ("GBP", "DirectRouting"):   # both change what goes on the wire
            if _boolean(value, name, f"Backend.{name}"):
                raise FlannelError(f"Backend.{name}", "true: vswitch does not speak flannel's vxlan with it")
    return kind, port, vni


def network_config_json(network: Network, *, backend: str = "udp", subnet_len: int | None = None,
                        port: int | None = None, vni: int | None = None) -> bytes:
    """The config ``vswitch network init`` writes, compact, with the keys flannel's docs spell:
    ``{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}``. FlannelError if flanneld
    (or vswitch) would refuse it."""
    doc: dict[str, Any] = {"Network": str(network)}
    if subnet_len is not None:
        doc["SubnetLen"] = subnet_len
    section: dict[str, Any] = {"Type": backend}
    if vni is not None:
        if backend != "vxlan":
            raise FlannelError("Backend.VNI", f"only the vxlan backend has a VNI, not {backend}")
        section["VNI"] = vni
    if port is not None:
        section["Port"] = port
    doc["Backend"] = section
    data = json.dumps(doc, separators=(",", ":")).encode()
    parse_network_config(data)
    return data


def is_compatible(config: NetworkConfig, subnet: Network) -> bool:
    """flannel's isSubnetConfigCompat: a subnet the config would hand out (its length, from SubnetMin to SubnetMax)."""
    return (subnet.prefix_len == config.subnet_len
            and config.subnet_min.address <= subnet.address <= config.subnet_max.address)


def free_subnets(config: NetworkConfig, taken: Iterable[Network], limit: int = FREE_CANDIDATES) -> list[Network]:
    """allocateSubnet's candidates: the first ``limit`` subnets from SubnetMin that overlap nothing taken.

    The taken subnets become sorted, merged address ranges, and the walk jumps over
    each, so a full /8 of /24s costs the number of ranges, not of subnets.
    """
    ranges: list[list[int]] = []
    for start, end in sorted((n.address, _last(n)) for n in taken):
        if ranges and start <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([start, end])
    size, mask = config.subnet_size, config.subnet_min.mask
    address, last = config.subnet_min.address, config.subnet_max.address
    found: list[Network] = []
    i = 0
    while address <= last and len(found) < limit:
        while i < len(ranges) and ranges[i][1] < address:
            i += 1
        if i < len(ranges) and ranges[i][0] < address + size:   # the subnet overlaps this range: go past it
            address = (ranges[i][1] // size + 1) * size
            continue
        found.append(Network(address, mask))
        address += size
    return found


# -- keys ------------------------------------------------------------------------------------------


def _clean(prefix: str) -> str:
    """The prefix as Go's path.Join leaves it (flannel joins it with "config" and "subnets")."""
    path = posixpath.normpath(prefix or ".")
    return "/" + path.lstrip("/") if path.startswith("//") else path


def config_key(prefix: str) -> bytes:
    return f"{_clean(prefix)}/config".encode()


def subnets_prefix(prefix: str) -> bytes:
    """What every lease's key starts with: ``/coreos.com/network/subnets/``."""
    return f"{_clean(prefix)}/subnets/".encode()


def _subnet_name(subnet: Network) -> bytes:
    return f"{ip_to_str(subnet.network)}-{subnet.prefix_len}".encode()


def subnet_key(prefix: str, subnet: Network) -> bytes:
    """flannel's MakeSubnetKey: ``/coreos.com/network/subnets/10.244.1.0-24``."""
    return subnets_prefix(prefix) + _subnet_name(subnet)


_SUBNET_NAME = re.compile(rb"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})-([0-9]{1,2})")
_MAX_NAME = len(b"255.255.255.255-31")


def _parse_subnet_name(name: bytes) -> Network | None:
    """``10.244.1.0-24`` exactly as MakeSubnetKey writes it (no leading zeros, no host bits); flannel's
    ParseSubnetKey also takes a prefix length up to 31 only. A dual-stack key (``…&fc00::-64``) is None."""
    if len(name) > _MAX_NAME:
        return None
    match = _SUBNET_NAME.fullmatch(name)
    if match is None:
        return None
    *octets, length = (int(group) for group in match.groups())
    if length > 31 or max(octets) > 255:
        return None
    subnet = Network.of(bytes(octets), length)
    return subnet if _subnet_name(subnet) == name else None


def parse_subnet_key(prefix: str, key: bytes) -> Network | None:
    """The subnet a lease's key names; None for anything else (another prefix, a malformed name)."""
    head = subnets_prefix(prefix)
    return _parse_subnet_name(key[len(head):]) if key.startswith(head) else None


# -- lease values ------------------------------------------------------------------------------


@attrs.frozen
class LeaseAttrs:
    """A lease's value (flannel's LeaseAttrs), what vswitch uses of it.

    ``backend`` is the BackendType as written: flannel's udp backend writes
    none (""). ``vni`` and ``vtep_mac`` come from a vxlan lease's BackendData.
    """

    public_ip: bytes
    backend: str = ""
    vni: int | None = None
    vtep_mac: bytes | None = None

    @property
    def kind(self) -> str:
        """The backend the lease is for: its BackendType, udp when it has none."""
        return self.backend or "udp"


def lease_attrs(config: NetworkConfig, public_ip: bytes, vtep_mac: bytes | None = None) -> LeaseAttrs:
    """This node's lease value for the config's backend, as flannel's backend writes it."""
    if config.backend == "vxlan":
        if vtep_mac is None:
            raise ValueError("a vxlan lease needs the VTEP MAC")
        return LeaseAttrs(public_ip, "vxlan", config.tunnel_vni, vtep_mac)
    return LeaseAttrs(public_ip)


def lease_value(attrs: LeaseAttrs) -> bytes:
    """The value flanneld writes (Go's json.Marshal of LeaseAttrs): udp
    ``{"PublicIP":"10.99.0.1","PublicIPv6":null}``, vxlan the same with
    ``"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}``."""
    if len(attrs.public_ip) != 4:
        raise ValueError(f"a public address is 4 bytes, not {len(attrs.public_ip)}")
    head = f'{{"PublicIP":"{ip_to_str(attrs.public_ip)}","PublicIPv6":null'
    if attrs.backend == "":
        return f"{head}}}".encode()
    if attrs.backend != "vxlan":
        raise ValueError(f"vswitch writes udp leases (no BackendType) and vxlan ones, not {attrs.backend!r}")
    if attrs.vni is None or not 0 <= attrs.vni <= MAX_VNI or attrs.vtep_mac is None or len(attrs.vtep_mac) != 6:
        raise ValueError(f"a vxlan lease needs a VNI (0..{MAX_VNI}) and a 6-byte VTEP MAC: {attrs}")
    data = f'{{"VNI":{attrs.vni},"VtepMAC":"{mac_to_str(attrs.vtep_mac)}"}}'
    return f'{head},"BackendType":"vxlan","BackendData":{data}}}'.encode()


def parse_lease_value(data: bytes) -> LeaseAttrs:
    """A lease's value as flanneld reads it; FlannelError (naming the key) for one vswitch cannot use."""
    obj = _decode(data, MAX_LEASE_SIZE, "a lease")
    text = _string(obj, "PublicIP", "PublicIP")
    if text is None:
        raise FlannelError("PublicIP", "missing (an IPv6-only lease, which vswitch cannot use)")
    public_ip = _ipv4(text, "PublicIP")
    if public_ip == bytes(4) or public_ip[0] >= 224:
        raise FlannelError("PublicIP", f"{text} is not a unicast address")
    ipv6 = obj.get_field("PublicIPv6")
    if ipv6 is not _MISSING and ipv6 is not None and type(ipv6) is not str:
        raise FlannelError("PublicIPv6", f"must be a string or null, not {_type_name(ipv6)}")
    backend = _string(obj, "BackendType", "BackendType") or ""
    vni = vtep_mac = None
    data_field = obj.get_field("BackendData")
    if backend == "vxlan" and data_field is not _MISSING and data_field is not None:
        if not isinstance(data_field, _GoObject):
            raise FlannelError("BackendData", f"must be an object, not {_type_name(data_field)}")
        vni = _integer(data_field, "VNI", "BackendData.VNI", 0, _MAX_UINT32)   # a uint32 in flannel
        mac = _string(data_field, "VtepMAC", "BackendData.VtepMAC")
        if mac is not None:
            try:
                vtep_mac = mac_from_str(mac)
            except ValueError:
                raise FlannelError("BackendData.VtepMAC", f"{mac[:64]!r} is not a MAC address") from None
    return LeaseAttrs(public_ip, backend, vni, vtep_mac)


@attrs.frozen
class Record:
    """One key under ``subnets/``, as etcd lists it."""

    subnet: Network
    attrs: LeaseAttrs
    lease_id: int              # the etcd lease it hangs on; 0: a reservation, which never expires
    mod_revision: int

    @property
    def reservation(self) -> bool:
        return self.lease_id == 0


# -- acquiring ----------------------------------------------------------------------------------


@attrs.frozen
class Reuse:
    """A lease (or reservation) holds our public address and suits the config: put our value on it again
    (a reservation without an etcd lease, so that it stays one)."""

    record: Record


@attrs.frozen
class Stale:
    """A lease holds our public address but no longer suits the config: delete it, then decide again."""

    record: Record


@attrs.frozen
class Take:
    """Create this subnet's key, in a transaction guarded on its version being 0 (no one took it meanwhile)."""

    subnet: Network


def _by_subnet(record: Record) -> tuple[int, int]:
    return record.subnet.address, record.subnet.mask


def plan_acquire(config: NetworkConfig, records: Iterable[Record], public_ip: bytes, previous: Network | None,
                 choose: Callable[[Sequence[Network]], Network], *, occupied: Iterable[Network] = ()) -> Reuse | Stale | Take:
    """What flannel's tryAcquireLease does with a listing, as a decision for the shell to carry out.

    1. A lease holding ``public_ip`` is ours: if it suits the config, :class:`Reuse` it
       (the previous subnet's first, if several); one that does not is :class:`Stale`.
    2. Else the ``previous`` subnet (subnet.env's FLANNEL_SUBNET, or the state dir's), if it suits
       the config and nothing holds it.
    3. Else ``choose`` (``random.Random.choice``) among the first 100 free subnets from SubnetMin.

    ``occupied``: subnets whose keys exist but whose values do not parse (:attr:`LeaseBook.unreadable`),
    not free either. Where flannel checks only that no key names the previous subnet exactly, this
    checks that nothing overlaps it. :class:`NetworkFull` when nothing is free.
    """
    records = list(records)
    ours = sorted((r for r in records if r.attrs.public_ip == public_ip), key=_by_subnet)
    for record in ours:
        if not is_compatible(config, record.subnet):
            return Stale(record)
    if ours:
        return Reuse(next((r for r in ours if r.subnet == previous), ours[0]))
    taken = [r.subnet for r in records] + list(occupied)
    if previous is not None and is_compatible(config, previous) and not any(_overlaps(previous, t) for t in taken):
        return Take(previous)
    free = free_subnets(config, taken)
    if not free:
        raise NetworkFull("Network", f"out of subnets: all {config.subnet_count} /{config.subnet_len} subnets from"
                                     f" {config.subnet_min} to {config.subnet_max} are taken")
    subnet = choose(free)
    if subnet not in free:
        raise ValueError(f"choose picked {subnet}, which is not one of the free subnets it was given")
    return Take(subnet)


# -- the cluster as listed and watched ---------------------------------------------------------------


def _backend_reason(kind: str) -> str:
    return f"backend {kind}" if kind in FLANNEL_BACKENDS else OTHER_BACKEND


class LeaseBook:
    """Every key under ``subnets/``, kept from a listing (:meth:`replace`) and the watch's events
    (:meth:`put`, :meth:`delete`); :meth:`peers` is the leases the peer table should hold.

    ``records`` holds every lease that parses, whatever its backend (for ``show leases``);
    ``unreadable`` the subnets whose keys hold values that do not parse (still taken). Both
    together hold at most ``max_leases`` keys: a key beyond that is counted and forgotten.

    A peer is a record of our backend (a vxlan one with a VTEP MAC and our VNI), inside the
    network, not ours (``own``, our public address or VTEP MAC). Two records that claim
    the same public address or VTEP MAC, or one that overlaps our subnet, would make the
    peer table refuse the whole set: the one with the older mod_revision stays (the lower
    subnet on a tie), the other is a counted ``conflict``.

    ``ignored`` counts why keys did not become peers: each put (or newly listed key) once,
    and each record when it starts to conflict (seen when :meth:`peers` next looks).

    :meth:`peers` is asked after every watch batch, with thousands of leases: a record whose
    public address and VTEP MAC no other holds can conflict with nothing, so the book keeps
    those apart (``_clean``, indexed by address and MAC as they come and go) and sorts out
    only the few that share one (``_contested``), and only after a change.
    """

    def __init__(self, prefix: str, config: NetworkConfig, *, public_ip: bytes | None = None,
                 vtep_mac: bytes | None = None, max_leases: int = DEFAULT_MAX_PEERS) -> None:
        if max_leases < 1:
            raise ValueError(f"max_leases must be at least 1, got {max_leases}")
        self.prefix = prefix
        self.config = config
        self._public_ip = public_ip
        self._vtep_mac = vtep_mac
        self.max_leases = max_leases
        self.records: dict[Network, Record] = {}
        self.unreadable: dict[Network, int] = {}        # subnet → mod_revision
        self.ignored: Counter[str] = Counter()
        self._head = subnets_prefix(prefix)
        self._vxlan = config.backend == "vxlan"
        self._own: Network | None = None
        self._candidates: dict[Network, Record] = {}    # the records that pass every test but conflicts
        self._by_address: dict[bytes, set[Network]] = {}   # the candidates by public address ...
        self._by_mac: dict[bytes, set[Network]] = {}       # ... and by VTEP MAC
        self._clean: dict[Network, Lease] = {}          # candidates that share nothing: peers
        self._contested: dict[Network, Record] = {}     # candidates that share an address or MAC, or overlap own
        self._peers: list[Lease] | None = None          # cached until a candidate or own changes
        self._conflicts: frozenset[Network] = frozenset()

    @property
    def public_ip(self) -> bytes | None:
        """Ours: a lease of another's that claims it conflicts."""
        return self._public_ip

    @property
    def vtep_mac(self) -> bytes | None:
        """Ours (vxlan): a lease of another's that claims it conflicts."""
        return self._vtep_mac

    @property
    def own(self) -> Network | None:
        """Our subnet, once acquired: never a peer, and no peer may overlap it."""
        return self._own

    @own.setter
    def own(self, subnet: Network | None) -> None:
        if subnet != self._own:
            self._own = subnet
            for candidate in self._candidates:
                self._settle(candidate)
            self._peers = None

    def __len__(self) -> int:
        return len(self.records) + len(self.unreadable)

    def _subnet(self, key: bytes) -> Network | None:
        return _parse_subnet_name(key[len(self._head):]) if key.startswith(self._head) else None

    def _unusable(self, record: Record) -> str | None:
        """Why a record can be no peer, whatever the others say; None if it can."""
        network, subnet = self.config.network, record.subnet
        if subnet.prefix_len < network.prefix_len or subnet.address & network.mask != network.address:
            return OUTSIDE_THE_NETWORK
        attrs = record.attrs
        if attrs.kind != self.config.backend:
            return _backend_reason(attrs.kind)
        if self._vxlan:
            if attrs.vtep_mac is None:
                return NO_VTEP_MAC
            if attrs.vni != self.config.tunnel_vni:
                return OTHER_VNI
        return None

    # -- the candidates, and who shares what --

    def _keys(self, record: Record) -> tuple[bytes, bytes | None]:
        return record.attrs.public_ip, record.attrs.vtep_mac if self._vxlan else None

    def _index(self, record: Record, add: bool) -> None:
        """Add a candidate to the address and MAC indexes, or take it out; settle whoever shares either."""
        subnet = record.subnet
        affected = {subnet}
        for index, value in zip((self._by_address, self._by_mac), self._keys(record)):
            if value is None:
                continue
            group = index.setdefault(value, set())
            if add:
                group.add(subnet)
            else:
                group.discard(subnet)
                if not group:
                    del index[value]
            affected |= group
        if add:
            self._candidates[subnet] = record
        else:
            del self._candidates[subnet]
        for other in affected:
            self._settle(other)
        self._peers = None

    def _settle(self, subnet: Network) -> None:
        """File a candidate as clean or contested (or neither: ours, or no longer a candidate)."""
        self._clean.pop(subnet, None)
        self._contested.pop(subnet, None)
        record = self._candidates.get(subnet)
        if record is None or subnet == self._own:
            return
        address, mac = self._keys(record)
        own = self._own
        if (len(self._by_address[address]) > 1 or address == self.public_ip
                or mac is not None and (len(self._by_mac[mac]) > 1 or mac == self.vtep_mac)
                or own is not None and _overlaps(subnet, own)):
            self._contested[subnet] = record
        else:
            self._clean[subnet] = Lease(subnet, address, mac)

    def _hold(self, record: Record) -> None:
        """``records`` and the candidates say what ``record``'s key now says."""
        subnet = record.subnet
        old = self.records.get(subnet)
        if old == record:
            return
        self.records[subnet] = record
        if old is not None and subnet in self._candidates:
            self._index(old, add=False)
        if self._unusable(record) is None:
            self._index(record, add=True)

    def _forget(self, subnet: Network) -> bool:
        record = self.records.pop(subnet, None)
        if record is None:
            return self.unreadable.pop(subnet, None) is not None
        if subnet in self._candidates:
            self._index(record, add=False)
        return True

    # -- what etcd says --

    def _store(self, subnet: Network, value: bytes, lease_id: int, mod_revision: int) -> str | None:
        """Hold what ``subnet``'s key now says; the reason it is no peer (conflicts aside), None if it may be."""
        if subnet not in self.records and subnet not in self.unreadable and len(self) >= self.max_leases:
            return OVER_THE_LIMIT
        try:
            record = Record(subnet, parse_lease_value(value), lease_id, mod_revision)
        except FlannelError:
            self._forget(subnet)
            self.unreadable[subnet] = mod_revision
            return MALFORMED_VALUE
        self.unreadable.pop(subnet, None)
        self._hold(record)
        return self._unusable(record)

    def put(self, key: bytes, value: bytes, lease_id: int, mod_revision: int) -> str | None:
        """A key was written (the watch's PUT); the reason it is no peer, counted, or None."""
        subnet = self._subnet(key)
        reason = MALFORMED_KEY if subnet is None else self._store(subnet, value, lease_id, mod_revision)
        if reason is not None:
            self.ignored[reason] += 1
        return reason

    def delete(self, key: bytes) -> Network | None:
        """A key was deleted, or its etcd lease expired (the watch's DELETE): the subnet it held, None if unknown."""
        subnet = self._subnet(key)
        return subnet if subnet is not None and self._forget(subnet) else None

    def replace(self, kvs: Iterable[tuple[bytes, bytes, int, int]]) -> None:
        """A whole listing ``(key, value, lease_id, mod_revision)``, as after a compaction: the book ends as the
        events in between would have left it. Keys held already keep their place under the limit; a key
        counts in ``ignored`` only if it is new or changed (another mod_revision)."""
        before = {subnet: r.mod_revision for subnet, r in self.records.items()} | self.unreadable
        self.records, self.unreadable, self._candidates = {}, {}, {}
        self._by_address, self._by_mac, self._clean, self._contested = {}, {}, {}, {}
        self._peers = None
        fresh: list[tuple[Network, bytes, int, int]] = []
        for key, value, lease_id, mod_revision in kvs:
            subnet = self._subnet(key)
            if subnet is None:
                self.ignored[MALFORMED_KEY] += 1
            elif subnet in before:
                reason = self._store(subnet, value, lease_id, mod_revision)
                if reason is not None and before[subnet] != mod_revision:
                    self.ignored[reason] += 1
            elif len(fresh) < self.max_leases:
                fresh.append((subnet, value, lease_id, mod_revision))
            else:
                self.ignored[OVER_THE_LIMIT] += 1
        for subnet, value, lease_id, mod_revision in fresh:
            reason = self._store(subnet, value, lease_id, mod_revision)
            if reason is not None:
                self.ignored[reason] += 1

    # -- the peers --

    def peers(self) -> list[Lease]:
        """The leases the peer table should hold (in no particular order): a set PeerTable.update accepts."""
        if self._peers is None:
            self._peers = list(self._clean.values()) + self._resolve()
        return list(self._peers)

    def _resolve(self) -> list[Lease]:
        """The contested candidates that stay: the oldest first takes its address and MAC."""
        addresses, macs = {self.public_ip}, {self.vtep_mac}
        ours = self._candidates.get(self._own) if self._own is not None else None
        if ours is not None:
            address, mac = self._keys(ours)
            addresses.add(address)
            macs.add(mac)
        addresses.discard(None)
        macs.discard(None)
        own = self._own
        winners: list[Lease] = []
        conflicts: set[Network] = set()
        for record in sorted(self._contested.values(), key=lambda r: (r.mod_revision, r.subnet.address, r.subnet.mask)):
            subnet = record.subnet
            address, mac = self._keys(record)
            if address in addresses or mac in macs or (own is not None and _overlaps(subnet, own)):
                conflicts.add(subnet)
                continue
            addresses.add(address)
            if mac is not None:
                macs.add(mac)
            winners.append(Lease(subnet, address, mac))
        new = conflicts - self._conflicts
        if new:
            self.ignored[CONFLICT] += len(new)
        self._conflicts = frozenset(conflicts)
        return winners

    @property
    def conflicts(self) -> frozenset[Network]:
        """The records left out of :meth:`peers` for a conflict, as it last looked."""
        self.peers()
        return self._conflicts

    def excluded(self) -> Mapping[Network, str]:
        """Every record that is no peer, and why ("own" for ours): for ``show leases``."""
        self.peers()
        result = {}
        for subnet, record in self.records.items():
            if subnet == self._own:
                result[subnet] = "own"
            elif subnet in self._conflicts:
                result[subnet] = CONFLICT
            elif (reason := self._unusable(record)) is not None:
                result[subnet] = reason
        return result
