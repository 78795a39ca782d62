"""Containers' TAPs that outlive the daemon (``[node] live_restore``): made persistent, recorded in the state dir,
taken back in their namespaces at the next start, so that a restart or an upgrade costs a container only the gap,
with no change of device, address, route or MAC.

The record (``attachments.json``) holds each TAP's port as configured, whether it came from the config or from
`attach`, and the inode of its namespace file, so that a ``/proc/PID/ns/net`` whose process ended and whose PID
was taken again is not mistaken for the container's namespace. It is read back as untrusted input: each entry is
parsed as a ``[[ports]]`` table and a bad one is logged and left out.
"""

import errno
import logging
import os
import secrets
from ipaddress import IPv4Interface
from typing import Any

import attrs
import trio

from vswitch import config as config_module
from vswitch.config import PortConfig
from vswitch.core.wire.addr import mac_to_str
from vswitch.errors import ConfigError, DeviceError
from vswitch.shell.netns import configure_link, ip, netns_path
from vswitch.shell.ports.tuntap import (
    TunTapPort,
    open_tun_device,
    reopen_tun_device,
    tap_flags,
)
from vswitch.shell.state import StateDir

from .assemble import stable_mac

log = logging.getLogger(__name__)

ORIGINS = ("config", "attach")
MAX_ATTACHMENTS = 65536


@attrs.frozen
class Attachment:
    """A TAP the daemon linked: its port (``ifname`` and ``mac`` filled in), where it came from, and the inode of
    its namespace file when it was linked (None: the host's namespace)."""

    port: PortConfig
    origin: str
    inode: int | None

    def to_json(self) -> dict[str, Any]:
        p = self.port
        return {"origin": self.origin, "inode": self.inode, "netns": p.netns, "ifname": p.ifname,
                "mac": mac_to_str(p.mac) if p.mac else None, "mtu": p.mtu,
                "address": str(p.address) if p.address else None, "gateway": str(p.gateway) if p.gateway else None,
                "routes": [str(route) for route in p.routes]}


def completed(port: PortConfig, node: str) -> PortConfig:
    """``port`` with its device name in the namespace and its MAC: the port's name, and one derived from the
    node's and the port's names, unless configured, so that a device made again looks the same to its peers."""
    return attrs.evolve(port, ifname=port.ifname or port.name, mac=port.mac or stable_mac(node, "port", port.name))


def load(state: StateDir) -> dict[str, Attachment]:
    """The attachments saved by the last daemon; entries that do not parse are logged and left out."""
    saved = state.read("attachments")
    entries = saved.get("ports") if saved is not None else None
    if not isinstance(entries, dict):
        return {}
    found: dict[str, Attachment] = {}
    for name, entry in list(entries.items())[:MAX_ATTACHMENTS]:
        try:
            if not isinstance(entry, dict) or entry.get("origin") not in ORIGINS:
                raise ConfigError("origin", f"must be one of {', '.join(ORIGINS)}")
            inode = entry.get("inode")
            if inode is not None and (not isinstance(inode, int) or isinstance(inode, bool) or inode < 0):
                raise ConfigError("inode", "must be a non-negative integer")
            fields = {key: entry[key] for key in ("netns", "ifname", "mac", "mtu", "address", "gateway", "routes")
                      if entry.get(key) is not None}
            port = config_module.parse({"ports": [{"name": name, "type": "tap", **fields}]}).ports[0]
        except (ConfigError, TypeError) as exc:
            log.warning("%s/attachments.json: port %r left out: %s", state.path, name, exc)
            continue
        found[name] = Attachment(port, entry["origin"], inode)
    return found


def save(state: StateDir, attachments: dict[str, Attachment]) -> None:
    state.keep("attachments", {"ports": {name: a.to_json() for name, a in sorted(attachments.items())}})


def netns_inode(netns: str | None) -> int | None:
    return os.stat(netns_path(netns)).st_ino if netns is not None else None


async def link_tap(port: PortConfig, *, persist: bool, gso_max_segs: int | None = None) -> TunTapPort:
    """A new TAP for ``port`` (completed): made under a unique name in the host, moved into its namespace, named
    ``ifname`` there and configured (with ``gso_max_segs``, if given); persistent if asked. On failure nothing is
    left behind."""
    assert port.ifname is not None and port.mac is not None
    host_name = f"vs{secrets.token_hex(6)}" if port.netns is not None else port.ifname
    tap = TunTapPort(port.name, open_tun_device(host_name, tap_flags("tap")), mtu=port.mtu, vnet=True)
    try:
        if persist:
            tap.persist(True)
        await configure_link(host_name, netns=port.netns, ifname=port.ifname, mac=mac_to_str(port.mac),
                             address=port.address, gateway=port.gateway, mtu=port.mtu, routes=port.routes,
                             gso_max_segs=gso_max_segs)
    except BaseException:
        with trio.CancelScope(shield=True):
            await discard(tap)
        raise
    return tap


async def take_back(attachment: Attachment, *, previous: IPv4Interface | None = None,
                    gso_max_segs: int | None = None) -> TunTapPort:
    """The TAP of a saved attachment, re-opened where it is, its configuration made sure of (no-ops when it
    has it; ``gso_max_segs`` as :func:`link_tap`); ``previous``, the address it had, is removed when the
    attachment has another now. DeviceError with ENOENT when its namespace or the device is gone."""
    port = attachment.port
    assert port.ifname is not None and port.mac is not None
    try:
        inode = netns_inode(port.netns)
    except OSError:
        raise DeviceError(errno.ENOENT, f"network namespace {port.netns!r} is gone") from None
    if inode != attachment.inode:
        raise DeviceError(errno.ENOENT, f"network namespace {port.netns!r} is another one now (its inode changed)")
    path = netns_path(port.netns) if port.netns is not None else None
    fd = await trio.to_thread.run_sync(reopen_tun_device, path, port.ifname, tap_flags("tap"))
    tap = TunTapPort(port.name, fd, mtu=port.mtu, vnet=True)
    try:
        if previous is not None and previous != port.address:
            await ip("addr", "del", str(previous), "dev", port.ifname, netns=port.netns, check=False)
        await configure_link(port.ifname, netns=port.netns, mac=mac_to_str(port.mac), address=port.address,
                             gateway=port.gateway, mtu=port.mtu, move=False, routes=port.routes,
                             gso_max_segs=gso_max_segs)
    except BaseException:
        with trio.CancelScope(shield=True):
            await tap.aclose()
        raise
    return tap


async def discard(tap: TunTapPort) -> None:
    """Close ``tap`` and delete its device for good."""
    try:
        tap.persist(False)
    except DeviceError as exc:   # its fd failed already: the device is gone, or goes with the close
        log.debug("%s", exc)
    await tap.aclose()


async def delete(attachment: Attachment) -> None:
    """Delete the device of an attachment no longer wanted (a config port since removed); gone already is fine."""
    try:
        tap = await take_back(attachment)
    except DeviceError as exc:
        log.info("%s: %s", attachment.port.name, exc)
        return
    await discard(tap)
    log.info("deleted the device of %s (%s in netns %s): no longer in the config", attachment.port.name,
             attachment.port.ifname, attachment.port.netns)
