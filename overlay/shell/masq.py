"""flannel's masquerade rules (``ip_masq``): in router mode as rules of the daemon's own NAT, in drop-in mode as
flannel's ``FLANNEL-POSTRTG`` chain in the host's iptables nat table (installed on start, removed on stop)."""

import logging
import re
import shutil

import trio

from vswitch.config import OverlayConfig
from vswitch.core.nat import Masquerade
from vswitch.core.wire.addr import Network
from vswitch.errors import DeviceError

log = logging.getLogger(__name__)

MULTICAST = Network.parse("224.0.0.0/4")


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


# -- drop-in mode: iptables in the host's nat table ---------------------------------------------

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
