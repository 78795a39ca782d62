"""Configuring links with iproute2 (shell side, slow path only).

Why iproute2 rather than a netlink library: a handful of commands run once per
container at attach time, never on the data path; `ip` is on every host that
runs containers; and each command is logged at debug level, so a user can
repeat exactly what the daemon did by hand.
"""

import logging
import shutil
from ipaddress import IPv4Address, IPv4Interface

import trio

from vswitch.errors import DeviceError

log = logging.getLogger(__name__)


def missing_netns(netns: str) -> DeviceError:
    return DeviceError(2, f"network namespace {netns!r} does not exist: create it with `ip netns add {netns}`")


async def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS``; raise DeviceError with ip's own message on failure (unless ``check`` is false)."""
    if shutil.which("ip") is None:
        raise DeviceError(2, "the `ip` command is missing: install iproute2")
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    log.debug("running: %s", " ".join(command))
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0 and check:
        message = result.stderr.decode(errors="replace").strip()
        if netns is not None and "Cannot open network namespace" in message:
            raise missing_netns(netns)
        raise DeviceError(result.returncode, f"`{' '.join(command)}` failed: {message}")
    return result.stdout.decode()


async def netns_exists(netns: str) -> bool:
    return netns in (await ip("netns", "list")).split()


async def configure_link(
    device: str, *, netns: str | None = None, address: str | IPv4Interface | None = None,
    gateway: str | IPv4Address | None = None, mtu: int | None = None,
) -> None:
    """Move ``device`` into ``netns`` (if given), then set MTU, up, address and default route there.

    The daemon keeps its file descriptor across the move: a TAP stays ours.
    """
    if netns is not None:
        if not await netns_exists(netns):  # `ip link set … netns` would only say "Invalid netns value"
            raise missing_netns(netns)
        await ip("link", "set", "dev", device, "netns", netns)
    if mtu is not None:
        await ip("link", "set", "dev", device, "mtu", str(mtu), netns=netns)
    await ip("link", "set", "dev", device, "up", netns=netns)
    if address is not None:
        await ip("addr", "replace", str(address), "dev", device, netns=netns)
    if gateway is not None:
        await ip("route", "replace", "default", "via", str(gateway), "dev", device, netns=netns)

