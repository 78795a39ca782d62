"""The overlay's node wiring: its core built from the config, and in drop-in mode flannel's device in the host
namespace, addressed and routed as flanneld does it.

The other shell parts: :mod:`.leases` (where leases come from), :mod:`.subnet_env` (flanneld's file),
:mod:`.masq` (flannel's masquerade rules, in the daemon's NAT or in iptables).
"""

from vswitch.config import OverlayConfig
from vswitch.core.wire.addr import ip_to_str, mac_to_str
from vswitch.overlay.core.backends import BACKENDS
from vswitch.overlay.core.gro import segments_per_send
from vswitch.overlay.core.peers import LeaseChanges
from vswitch.overlay.core.tunnel import Overlay
from vswitch.shell.netns import ip, limit_gso_segments


def build_overlay(config: OverlayConfig, vtep_mac: bytes | None) -> Overlay:
    # Inside is the daemon's router (IP), or in drop-in mode flannel's device: a TAP for VXLAN, which carries frames.
    ethernet = config.device is not None and BACKENDS[config.backend].carries_ethernet
    return Overlay(
        backend=config.backend, network=config.network, subnet=config.subnet, port=config.port, vni=config.vni,
        vtep_mac=vtep_mac, inside="ethernet" if ethernet else "ip", mtu=config.mtu, coalesce=True,
    )


def device_name(config: OverlayConfig) -> str:
    return config.device or BACKENDS[config.backend].device


def restart_needed(old: OverlayConfig, new: OverlayConfig) -> list[str]:
    """The keys a reload cannot change (only ``[[overlay.peers]]`` can change under a running daemon)."""
    return [name for name in ("backend", "network", "subnet", "public_ip", "port", "mtu", "vni", "vtep_mac", "ip_masq",
                              "subnet_env", "device") if getattr(old, name) != getattr(new, name)]


# -- drop-in mode: the flannel device in the host namespace -----------------------------------


async def configure_device(config: OverlayConfig, vtep_mac: bytes | None) -> None:
    """Address the device as flanneld does: the subnet's network address as a /32, the MTU, up, the network's route.
    Its ``gso_max_segs`` is what one UDP GSO send takes (:func:`segments_per_send`), as a container's TAP's."""
    name = device_name(config)
    if vtep_mac is not None:
        await ip("link", "set", "dev", name, "address", mac_to_str(vtep_mac))
    await ip("link", "set", "dev", name, "mtu", str(config.mtu))
    await limit_gso_segments(name, segments_per_send(config.mtu))
    await ip("addr", "replace", f"{ip_to_str(config.subnet.network)}/32", "dev", name)
    await ip("link", "set", "dev", name, "up")
    if config.backend == "udp":
        await ip("route", "replace", str(config.network), "dev", name)


async def apply_lease_routes(config: OverlayConfig, changes: LeaseChanges) -> None:
    """VXLAN drop-in: per lease, flannel's static neighbour and on-link route (the FDB entry is the daemon's)."""
    if config.device is None or config.backend != "vxlan":
        return
    name = device_name(config)
    for lease in changes.removed:
        gateway = ip_to_str(lease.subnet.network)
        await ip("route", "del", str(lease.subnet), "dev", name, check=False)
        await ip("neigh", "del", gateway, "dev", name, check=False)
    for lease in (*changes.changed, *changes.added):
        gateway = ip_to_str(lease.subnet.network)
        assert lease.vtep_mac is not None
        await ip("neigh", "replace", gateway, "lladdr", mac_to_str(lease.vtep_mac), "dev", name, "nud", "permanent")
        await ip("route", "replace", str(lease.subnet), "via", gateway, "dev", name, "onlink")
