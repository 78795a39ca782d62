"""The overlay's shell side: leases, subnet.env, the flannel device in drop-in mode, flannel's masquerade rules.

Leases come from a :class:`LeaseSource`. The embedded default,
:class:`StaticLeases`, reads them from the config (``[overlay]`` for this
node, ``[[overlay.peers]]`` for the others) and is read again on SIGHUP or
``vswitch reload``; the next source keeps them in etcd under flannel's
``/coreos.com/network`` prefix, behind the same two calls.
"""

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import trio

from vswitch.config import OverlayConfig
from vswitch.core.nat import Masquerade
from vswitch.core.wire.addr import Network, ip_to_str, mac_to_str
from vswitch.errors import DeviceError
from vswitch.overlay.core.backends import BACKENDS
from vswitch.overlay.core.peers import Lease, LeaseChanges
from vswitch.overlay.core.tunnel import Overlay
from vswitch.shell.netns import ip

log = logging.getLogger(__name__)

MULTICAST = Network.parse("224.0.0.0/4")


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


def build_overlay(config: OverlayConfig, vtep_mac: bytes | None) -> Overlay:
    # Inside is the daemon's router (IP), or in drop-in mode flannel's device: a TAP for VXLAN, which carries frames.
    ethernet = config.device is not None and BACKENDS[config.backend].carries_ethernet
    return Overlay(
        backend=config.backend, network=config.network, subnet=config.subnet, port=config.port, vni=config.vni,
        vtep_mac=vtep_mac, inside="ethernet" if ethernet else "ip",
    )


def device_name(config: OverlayConfig) -> str:
    return config.device or BACKENDS[config.backend].device


def restart_needed(old: OverlayConfig, new: OverlayConfig) -> list[str]:
    """The keys a reload cannot change (only ``[[overlay.peers]]`` can change under a running daemon)."""
    return [name for name in ("backend", "network", "subnet", "public_ip", "port", "mtu", "vni", "vtep_mac", "ip_masq",
                              "subnet_env", "device") if getattr(old, name) != getattr(new, name)]


# -- subnet.env --------------------------------------------------------------------


def subnet_env(config: OverlayConfig) -> str:
    """What flanneld writes: the network, the subnet's first usable address with its length, the MTU, ip-masq."""
    subnet = config.subnet
    return (
        f"FLANNEL_NETWORK={config.network}\n"
        f"FLANNEL_SUBNET={ip_to_str((subnet.address + 1).to_bytes(4, 'big'))}/{subnet.prefix_len}\n"
        f"FLANNEL_MTU={config.mtu}\n"
        f"FLANNEL_IPMASQ={'true' if config.ip_masq else 'false'}\n"
    )


def write_subnet_env(path: str, config: OverlayConfig) -> None:
    """Write ``path`` as flanneld does: its directory made 0755, the file 0644, replaced atomically."""
    target = Path(path)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(subnet_env(config))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)


# -- flannel's masquerade rules, in router mode -----------------------------------------


def masquerade_rules(config: OverlayConfig, interfaces: dict[str, Network], overlay_interface: str) -> tuple[Masquerade, ...]:
    """flannel's ip-masq rules (``FLANNEL-POSTRTG``) for the daemon's router.

    Containers' traffic leaving the cluster network, except to multicast, is
    masqueraded to the address of the interface it leaves by; traffic
    between containers never is; traffic from outside the network to other
    nodes' containers is masqueraded to the overlay's address, so their
    answers come back through this node.
    """
    network, subnet = config.network, config.subnet
    rules = [
        Masquerade(network, name, exclude=(network, MULTICAST))
        for name, net in interfaces.items()
        if name != overlay_interface and net.network not in network
    ]
    rules.append(Masquerade(Network(0, 0), overlay_interface, exclude=(subnet,), exclude_sources=(network,)))
    return tuple(rules)


# -- drop-in mode: the flannel device in the host namespace -----------------------------------


async def configure_device(config: OverlayConfig, vtep_mac: bytes | None) -> None:
    """Address the device as flanneld does: the subnet's network address as a /32, the MTU, up, the network's route."""
    name = device_name(config)
    if vtep_mac is not None:
        await ip("link", "set", "dev", name, "address", mac_to_str(vtep_mac))
    await ip("link", "set", "dev", name, "mtu", str(config.mtu))
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


# -- flannel's masquerade rules, in drop-in mode: iptables in the host's nat table ---------------

MASQ_CHAIN = "FLANNEL-POSTRTG"
MASQ_COMMENT = "flanneld masq"
KUBE_PROXY_MARK = "0x4000/0x4000"   # flannel's trafficmngr.KubeProxyMark: kube-proxy's own SNAT mark
MASQ_JUMP = ("-m", "comment", "--comment", MASQ_COMMENT, "-j", MASQ_CHAIN)   # in POSTROUTING


def iptables_masq_rules(config: OverlayConfig, *, random_fully: bool) -> list[tuple[str, ...]]:
    """The rules of ``FLANNEL-POSTRTG`` in order, exactly flannel's ``masqRules`` (pkg/trafficmngr/iptables).

    Traffic marked by kube-proxy is left alone (it masquerades it itself);
    pod ↔ cluster traffic, in either direction, and outside → this node's
    pods are not translated; pod traffic leaving the cluster network (but not
    to multicast) and host traffic into the cluster network are masqueraded.
    """
    network, subnet = str(config.network), str(config.subnet)
    comment = ("-m", "comment", "--comment", MASQ_COMMENT)
    masquerade = ("-j", "MASQUERADE", *(("--random-fully",) if random_fully else ()))
    return [
        ("-m", "mark", "--mark", KUBE_PROXY_MARK, *comment, "-j", "RETURN"),
        ("-s", subnet, "-d", network, *comment, "-j", "RETURN"),
        ("-s", network, "-d", subnet, *comment, "-j", "RETURN"),
        ("!", "-s", network, "-d", subnet, *comment, "-j", "RETURN"),
        ("-s", network, "!", "-d", str(MULTICAST), *comment, *masquerade),
        ("!", "-s", network, "-d", network, *comment, *masquerade),
    ]


async def _iptables(*args: str, check: bool = True) -> tuple[int, str]:
    """Run ``iptables -w 5 -t nat ARGS``; DeviceError with its message on failure (unless ``check`` is false)."""
    if shutil.which("iptables") is None:
        raise DeviceError(2, "overlay.ip_masq in drop-in mode needs the `iptables` command: install iptables"
                             " (Debian: apt-get install iptables), or set ip_masq = false")
    command = ["iptables", "-w", "5", "-t", "nat", *args]
    log.debug("running: %s", " ".join(command))
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    message = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0 and check:
        raise DeviceError(result.returncode, f"`{' '.join(command)}` failed: {message}")
    return result.returncode, result.stdout.decode() or message


async def _supports_random_fully() -> bool:
    """As go-iptables' HasRandomFully: iptables 1.6.2 or later."""
    _, version = await _iptables("--version", check=False)
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", version)
    return found is not None and tuple(int(n) for n in found.groups()) >= (1, 6, 2)


async def install_masquerade(config: OverlayConfig) -> None:
    """flannel's ip-masq rules in the nat table: ``FLANNEL-POSTRTG`` (made or emptied), jumped to from POSTROUTING.

    Idempotent, as flanneld's start is: rules a killed daemon left behind are replaced, not doubled.
    """
    random_fully = await _supports_random_fully()
    await _iptables("-N", MASQ_CHAIN, check=False)   # exists already: emptied next
    await _iptables("-F", MASQ_CHAIN)
    for rule in iptables_masq_rules(config, random_fully=random_fully):
        await _iptables("-A", MASQ_CHAIN, *rule)
    if (await _iptables("-C", "POSTROUTING", *MASQ_JUMP, check=False))[0] != 0:
        await _iptables("-A", "POSTROUTING", *MASQ_JUMP)
    log.info("ip-masq: iptables nat chain %s installed (%s)", MASQ_CHAIN,
             "MASQUERADE --random-fully" if random_fully else "MASQUERADE")


async def remove_masquerade() -> None:
    """Undo :func:`install_masquerade`: the POSTROUTING jump, then the chain. Never raises for what is gone."""
    if shutil.which("iptables") is None:
        return
    for _ in range(8):   # every copy of the jump (a crashed daemon and a manual `-A` may have left more)
        if (await _iptables("-D", "POSTROUTING", *MASQ_JUMP, check=False))[0] != 0:
            break
    await _iptables("-F", MASQ_CHAIN, check=False)
    code, message = await _iptables("-X", MASQ_CHAIN, check=False)
    if code != 0:
        log.warning("ip-masq: could not delete the iptables nat chain %s: %s", MASQ_CHAIN, message)
    else:
        log.info("ip-masq: iptables nat chain %s removed", MASQ_CHAIN)
