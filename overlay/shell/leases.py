"""Where leases come from: a :class:`LeaseSource`.

The embedded default, :class:`StaticLeases`, reads them from the config
(``[overlay]`` for this node, ``[[overlay.peers]]`` for the others) and is
read again on SIGHUP or ``vswitch reload``; the next source keeps them in
etcd under flannel's ``/coreos.com/network`` prefix, behind the same two
calls. Either feeds the peer table through one path, the one reload uses.
"""

from typing import Protocol

from vswitch.config import OverlayConfig
from vswitch.overlay.core.peers import Lease


class LeaseSource(Protocol):
    """Where leases come from: the config now, etcd next."""

    async def own_lease(self) -> Lease:
        """This node's lease (acquired, or renewed)."""
        ...

    async def peer_leases(self) -> list[Lease]:
        """Every other node's lease, as it stands now."""
        ...


class StaticLeases:
    """Leases written in the config: this node's ``[overlay]``, the others' ``[[overlay.peers]]``."""

    def __init__(self, config: OverlayConfig, vtep_mac: bytes | None) -> None:
        self.config = config
        self.vtep_mac = vtep_mac

    async def own_lease(self) -> Lease:
        return Lease(self.config.subnet, self.config.public_ip.packed, self.vtep_mac)

    async def peer_leases(self) -> list[Lease]:
        return config_leases(self.config)


def config_leases(config: OverlayConfig) -> list[Lease]:
    """The peers' leases written in ``[[overlay.peers]]``."""
    return [Lease(p.subnet, p.public_ip.packed, p.vtep_mac) for p in config.peers]
