"""A node on etcd leases: its lease taken before anything is built, its config completed by what etcd says, and
its containers' addresses given from the lease."""

import logging
from ipaddress import IPv4Address, IPv4Interface

import attrs

from vswitch.config import Config, PortConfig, resolve_lease
from vswitch.core.l3.ipam import AddressPool
from vswitch.core.wire.addr import Network, ip_to_str
from vswitch.overlay.core.flannel import LeaseAttrs, NetworkConfig, lease_attrs
from vswitch.overlay.shell.leases import EtcdLeases
from vswitch.shell.state import StateDir

from .assemble import stable_mac

log = logging.getLogger(__name__)


def complete(config: Config, network: NetworkConfig, subnet: Network) -> Config:
    """``config`` with ``<prefix>/config``'s network and backend and the lease's subnet (resolve_lease)."""
    assert config.etcd is not None
    return resolve_lease(config, backend=network.backend, network=network.network, subnet=subnet, port=network.port,
                         vni=network.vni, where=f"{config.etcd.prefix}/config")


async def take_lease(config: Config) -> tuple[Config, EtcdLeases]:
    """Acquire this node's lease (or start from the one saved, with etcd away) and complete the config with it.

    The config is checked against etcd's network config before anything is
    written to etcd: a key that contradicts it is refused (ConfigError)
    without taking a lease.
    """
    settings = config.etcd
    assert settings is not None
    local = settings.overlay
    public_ip = IPv4Address(local["public_ip"]).packed
    source = EtcdLeases(settings, public_ip=public_ip, state=StateDir(config.node.state_path),
                        subnet_env=local.get("subnet_env"), backend=local.get("backend"))

    def ours(network: NetworkConfig) -> LeaseAttrs:
        overlay = complete(config, network, network.subnet_min).overlay   # refuses a contradicting config before we write
        assert overlay is not None
        return lease_attrs(network, public_ip, overlay.vtep_mac or stable_mac(config.node.name, "vtep"))

    acquired = await source.acquire(ours)
    return complete(config, acquired.config, acquired.subnet), source


def address_pool(config: Config, state: StateDir) -> AddressPool | None:
    """The pool of the lease's subnet, less the router's and the configured ports' addresses, with the
    allocations saved before taken back; None without etcd leases (or in drop-in mode, which has no router)."""
    oc = config.overlay
    if oc is None or oc.leases != "etcd" or oc.device is not None:
        return None
    return _pool(config, oc.subnet, state)


def static_pool(config: Config, state: StateDir | None) -> AddressPool | None:
    """Without etcd, the addresses `attach` gives: those of the overlay's subnet, or else of the network of the
    router's interface on the bridge, less the router's, the configured ports' and their simulated hosts'; None
    without a router on the bridge (in drop-in mode too). Saved in ``state``, if given (live restore)."""
    bridged = [i for i in config.router.interfaces if i.port is None]
    oc = config.overlay
    if not bridged or (oc is not None and oc.device is not None):
        return None
    if oc is not None:
        subnet = oc.subnet
    else:
        subnet = Network.of(bridged[0].address.network.network_address.packed, bridged[0].address.network.prefixlen)
    if subnet.prefix_len > 30 or not any(i.address.ip.packed in subnet for i in bridged):
        return None
    return _pool(config, subnet, state)


def _pool(config: Config, subnet: Network, state: StateDir | None) -> AddressPool:
    reserved = [i.address.ip.packed for i in config.router.interfaces]
    reserved += [p.address.ip.packed for p in config.ports if p.address is not None]
    reserved += [p.host.address.ip.packed for p in config.ports if p.host is not None]
    pool = AddressPool(subnet, reserved=reserved)
    saved = state.read("addresses") if state is not None else None
    if saved is not None:
        assert state is not None
        for refusal in pool.restore(saved):
            log.warning("%s/addresses.json: %s", state.path, refusal)
    return pool


def gateway(config: Config, pool: AddressPool) -> IPv4Address:
    """The containers' gateway: the router's address on the bridge inside the pool's subnet."""
    return next(i.address.ip for i in config.router.interfaces
                if i.port is None and i.address.ip.packed in pool.subnet)


def addressed(port: PortConfig, pool: AddressPool, gateway: IPv4Address) -> PortConfig:
    """``port`` with the next free address of the lease (its own, if it had one before) and its routes (the
    default route, unless it names them) via the gateway; a port with an address, or in the host namespace without
    routes (a host port has them), stays as it is."""
    if port.address is not None or (port.netns is None and not port.routes) or port.type != "tap":
        return port
    address = pool.allocate(port.name)
    return attrs.evolve(port, address=IPv4Interface(f"{ip_to_str(address)}/{pool.subnet.prefix_len}"),
                        gateway=port.gateway or gateway)
