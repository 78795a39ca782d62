"""Configuring links with iproute2 (shell side, slow path only).

Why iproute2 rather than a netlink library: a handful of commands run once per
container at attach time, never on the data path; `ip` is on every host that
runs containers; and each command is logged at debug level, so a user can
repeat exactly what the daemon did by hand.
"""

import logging
import os
import shutil
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface

import trio

from vswitch.core.wire.addr import Network
from vswitch.errors import DeviceError

log = logging.getLogger(__name__)


NETNS_RUN_DIR = "/var/run/netns"   # where `ip netns` keeps its named namespaces


def netns_path(netns: str) -> str:
    """The namespace file of ``netns``: an `ip netns` name's file under /var/run/netns, or the path as it is."""
    return netns if netns.startswith("/") else f"{NETNS_RUN_DIR}/{netns}"


def missing_netns(netns: str) -> DeviceError:
    if netns.startswith("/"):   # a container's namespace: `ip netns add` would make another, empty one
        return DeviceError(2, f"network namespace {netns!r} does not exist (no such file: has its process ended?)")
    return DeviceError(2, f"network namespace {netns!r} does not exist: create it with `ip netns add {netns}`")


async def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS`` (``nsenter --net=PATH ip ARGS`` for a namespace path, which `ip -n` does not
    take); raise DeviceError with ip's own message on failure (unless ``check`` is false)."""
    if shutil.which("ip") is None:
        raise DeviceError(2, "the `ip` command is missing: install iproute2")
    if netns is not None and netns.startswith("/"):
        if shutil.which("nsenter") is None:
            raise DeviceError(2, "the `nsenter` command is missing: install util-linux")
        command = ["nsenter", f"--net={netns}", "ip", *args]
    else:
        command = ["ip", *(("-n", netns) if netns else ()), *args]
    log.debug("running: %s", " ".join(command))
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0 and check:
        message = result.stderr.decode(errors="replace").strip()
        if netns is not None and ("Cannot open network namespace" in message or "nsenter: cannot open" in message):
            raise missing_netns(netns)
        raise DeviceError(result.returncode, f"`{' '.join(command)}` failed: {message}")
    return result.stdout.decode()


async def netns_exists(netns: str) -> bool:
    if netns.startswith("/"):
        return os.path.exists(netns)
    return netns in (await ip("netns", "list")).split()


async def configure_link(
    device: str, *, netns: str | None = None, address: str | IPv4Interface | None = None,
    gateway: str | IPv4Address | None = None, mtu: int | None = None, ifname: str | None = None,
    mac: str | None = None, move: bool = True, routes: Iterable[Network] = (), gso_max_segs: int | None = None,
) -> None:
    """Move ``device`` into ``netns`` (if given, and ``move``) and rename it ``ifname`` there, then set its MAC,
    MTU and ``gso_max_segs`` (the most segments its stack's super-frames have), up, address and the routes via
    ``gateway`` (the default route, unless ``routes`` names the networks),
    and bring ``lo`` up; all of them are no-ops on a device that has them
    already (a device taken back after a restart, with ``move`` false).

    The daemon keeps its file descriptor across the move: a TAP stays ours.
    """
    if netns is not None and move:
        if not await netns_exists(netns):  # `ip link set … netns` would only say "Invalid netns value"
            raise missing_netns(netns)
        await ip("link", "set", "dev", device, "netns", netns_path(netns))   # ip takes a name or a path here
    if ifname is not None and ifname != device:
        await ip("link", "set", "dev", device, "name", ifname, netns=netns)
        device = ifname
    if mac is not None:
        await ip("link", "set", "dev", device, "address", mac, netns=netns)
    if mtu is not None:
        await ip("link", "set", "dev", device, "mtu", str(mtu), netns=netns)
    if gso_max_segs is not None:
        await limit_gso_segments(device, gso_max_segs, netns=netns)
    await ip("link", "set", "dev", device, "up", netns=netns)
    if address is not None:
        await ip("addr", "replace", str(address), "dev", device, netns=netns)
    if gateway is not None:
        for to in [str(route) for route in routes] or ["default"]:
            await ip("route", "replace", to, "via", str(gateway), "dev", device, netns=netns)
    if netns is not None:
        await ip("link", "set", "dev", "lo", "up", netns=netns)


_gso_refused = False   # a kernel that refuses to change gso_max_segs is told of once


async def limit_gso_segments(device: str, segments: int, *, netns: str | None = None) -> None:
    """Set ``device``'s ``gso_max_segs``: the most segments its stack puts in one super-frame. Only a speed-up
    (the overlay then sends each in one UDP GSO send), so a kernel that refuses it is logged, once, and the
    device works as it is."""
    global _gso_refused
    try:
        await ip("link", "set", "dev", device, "gso_max_segs", str(segments), netns=netns)
    except DeviceError as exc:
        log.log(logging.DEBUG if _gso_refused else logging.WARNING,
                "%s keeps its super-frames' size (each may take two sends to a peer): %s", device, exc)
        _gso_refused = True
