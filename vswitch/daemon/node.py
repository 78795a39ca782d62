"""The running daemon: a :class:`Node` (its switch, devices, overlay wiring), serving until a signal, reloading
its config, attaching containers at run time."""

import logging
import os
import signal
import time
from ipaddress import IPv4Address

import attrs
import trio

from vswitch.config import Config, ConfigError, PortConfig, load
from vswitch.core.l3.ipam import AddressPool, PoolExhausted
from vswitch.core.l3.router import Router
from vswitch.core.nat import Forward
from vswitch.core.wire.addr import ip_from_str, ip_to_str, mac_to_str
from vswitch.errors import DeviceError
from vswitch.overlay.core.backends import BACKENDS
from vswitch.overlay.core.gro import segments_per_send
from vswitch.overlay.core.peers import Lease, LeaseChanges
from vswitch.overlay.core.tunnel import Overlay
from vswitch.overlay.shell.leases import EtcdLeases, StaticLeases
from vswitch.overlay.shell.masq import (
    install_masquerade,
    remove_masquerade,
)
from vswitch.overlay.shell.node import (
    apply_lease_routes,
    configure_device,
    device_name,
    restart_needed,
)
from vswitch.overlay.shell.subnet_env import write_subnet_env
from vswitch.shell.faults import Faults
from vswitch.shell.hosts import HostRunner
from vswitch.shell.ports import PcapWriter, Port
from vswitch.shell.ports.pcap import open_pcaps
from vswitch.shell.ports.tuntap import TunTapPort
from vswitch.shell.ports.udp import MemoryUnderlay, UdpPort
from vswitch.shell.state import StateDir
from vswitch.shell.switch import Switch
from vswitch.shell.systemd import Notifier, watchdog_interval

from . import restore
from .assemble import (
    UNDERLAY_PORT,
    build_core,
    faults_pcap,
    memory_port,
    open_device_port,
    runtime_nat,
    with_pcap,
)
from .lease import address_pool, addressed, gateway, static_pool, take_lease

log = logging.getLogger(__name__)


@attrs.define
class Node:
    """A configured daemon: its switch, simulated hosts, and the devices it opened."""

    config: Config
    switch: Switch
    hosts: list[tuple[HostRunner, tuple[IPv4Address, ...], float]]   # with the addresses each pings, how often
    router: Router | None = None
    overlay: Overlay | None = None
    vtep_mac: bytes | None = None
    underlay: MemoryUnderlay | None = None   # a simulated underlay (tests, the demo); None: a real UDP socket
    config_path: str | None = None           # the file the config came from, which `reload` and SIGHUP read again
    devices_open: bool = False
    masquerading: bool = False               # drop-in ip_masq: flannel's iptables rules are (being) installed
    pcaps: list[PcapWriter] = attrs.Factory(list)   # the config's pcap files, opened last (open_pcaps)
    leases: EtcdLeases | None = None         # with etcd leases: the source that renews ours and watches the others
    pool: AddressPool | None = None          # with etcd leases: the addresses of our lease, given to containers
    state: StateDir | None = None            # where the pool's allocations are saved
    attached: dict[str, PortConfig] = attrs.Factory(dict)   # the ports `attach` added, as they were configured
    taps: dict[str, TunTapPort] = attrs.Factory(dict)        # the containers' TAPs, by port name
    links: dict[str, restore.Attachment] = attrs.Factory(dict)   # with live restore: what attachments.json holds
    # when the config was last (re)read and whether that worked: the start counts as the first (metrics)
    last_reload: tuple[float, bool] = attrs.Factory(lambda: (time.time(), True))

    def port_config(self, name: str) -> PortConfig | None:
        """How port ``name`` was configured: in the config, or by `attach`."""
        return self.attached.get(name) or next((p for p in self.config.ports if p.name == name), None)

    def save_addresses(self) -> None:
        if self.pool is not None and self.state is not None:
            self.state.keep("addresses", self.pool.state())

    async def open_devices(self) -> None:
        """Open the device ports of the config and link them into their namespaces (once).

        On failure every device opened so far is closed again: a refused
        start leaves no device behind.
        """
        if self.devices_open:
            return
        self.devices_open = True
        opened: list[Port] = []
        created: list[TunTapPort] = []   # new persistent TAPs, which a refused start deletes again
        saved = restore.load(self.state) if self.live_restore else {}
        try:
            for pc in self.config.ports:
                if pc.type == "memory":
                    continue
                if pc.type == "tap":
                    pc = restore.completed(pc, self.config.node.name)
                    port, new = await self._open_tap(pc, "config", saved.pop(pc.name, None))
                    created += [port] if new else []
                else:
                    port = await open_device_port(pc, gso_max_segs=self._segments(pc) if pc.type == "tun" else None)
                opened.append(port)
                self.switch.add_port(with_pcap(port, pc, self.pcaps))
            if self.overlay is not None:
                opened += await self._open_overlay()
            for name, attachment in saved.items():
                await self._restore_other(name, attachment)
            if self.live_restore:
                self._restore_forwards()
        except BaseException:
            for port in opened:
                with trio.CancelScope(shield=True):
                    await (restore.discard(port) if port in created else port.aclose())
            with trio.CancelScope(shield=True):
                await self.remove_host_rules()
            raise

    def _segments(self, pc: PortConfig) -> int | None:
        """A container device's ``gso_max_segs``: on an overlay node, no more than the overlay sends in one
        UDP GSO send (:func:`segments_per_send`); elsewhere the kernel's default."""
        return segments_per_send(pc.mtu) if self.overlay is not None else None

    @property
    def live_restore(self) -> bool:
        return self.config.node.live_restore and self.state is not None

    async def _open_tap(self, pc: PortConfig, origin: str, saved: restore.Attachment | None) -> tuple[TunTapPort, bool]:
        """The TAP of ``pc`` (completed): the saved one taken back if it is the same link, else a new one
        (persistent with live restore); with whether it is new."""
        tap = None
        if saved is not None and (saved.port.netns, saved.port.ifname) == (pc.netns, pc.ifname):
            try:
                tap = await restore.take_back(attrs.evolve(saved, port=pc), previous=saved.port.address,
                                              gso_max_segs=self._segments(pc))
                log.info("took back %s (%s in netns %s)", pc.name, pc.ifname, pc.netns)
            except DeviceError as exc:
                log.warning("cannot take back %s, making it again: %s", pc.name, exc)
        elif saved is not None:
            await restore.delete(saved)   # moved to another namespace or name
        new = tap is None
        if tap is None:
            tap = await restore.link_tap(pc, persist=self.live_restore, gso_max_segs=self._segments(pc))
        self.taps[pc.name] = tap
        if self.live_restore:
            self.links[pc.name] = restore.Attachment(pc, origin, restore.netns_inode(pc.netns))
        return tap, new

    async def _restore_other(self, name: str, saved: restore.Attachment) -> None:
        """A saved attachment the config does not have: an attached port comes back if its namespace is still
        there; a config port since removed from the config has its device deleted. Either way a port whose
        namespace went away is dropped, with its address."""
        if saved.origin == "attach" and name not in self.switch.ports:
            try:
                tap = await restore.take_back(saved, gso_max_segs=self._segments(saved.port))
            except DeviceError as exc:
                log.warning("attached port %s dropped: %s", name, exc)
            else:
                self.switch.add_port(tap)
                self.taps[name], self.links[name], self.attached[name] = tap, saved, saved.port
                log.info("took back attached port %s (%s in netns %s)", name, saved.port.ifname, saved.port.netns)
                return
        else:
            await restore.delete(saved)
        if self.pool is not None and self.pool.release(name) is not None:
            self.save_addresses()

    def save_links(self) -> None:
        if self.live_restore:
            assert self.state is not None
            restore.save(self.state, self.links)

    def open_pcaps(self) -> None:
        """Open (and so truncate) the config's pcap files: the last step of a start, once nothing can refuse it."""
        open_pcaps(writer for writer in self.pcaps if not writer.opened)

    async def remove_host_rules(self) -> None:
        """Take out what the daemon put into the host beyond its devices: drop-in ip_masq's iptables rules."""
        if self.masquerading:
            self.masquerading = False
            await remove_masquerade()

    async def _open_overlay(self) -> list[Port]:
        """The underlay socket, the flannel device in drop-in mode, its routes and ip-masq rules, and subnet.env."""
        oc = self.config.overlay
        assert oc is not None and self.overlay is not None
        opened: list[Port] = []
        if self.underlay is None:
            port = UdpPort.open(UNDERLAY_PORT, str(oc.public_ip), oc.port, source_ports=oc.backend == "vxlan",
                                mtu=oc.mtu)
            opened.append(port)
            self.switch.add_port(port)
        if oc.device is not None:
            name = device_name(oc)
            device = TunTapPort.open(name, kind="tap" if BACKENDS[oc.backend].carries_ethernet else "tun", mtu=oc.mtu)
            opened.append(device)
            await configure_device(oc, self.vtep_mac)
            self.switch.add_port(device)
            await apply_lease_routes(oc, LeaseChanges(added=tuple(p.lease for p in self.overlay.peers)))
            if oc.ip_masq:   # in router mode the router masquerades (masquerade_rules); here the host kernel does
                self.masquerading = True
                await install_masquerade(oc)
        if oc.subnet_env:
            write_subnet_env(oc.subnet_env, oc)
        return opened

    async def reload(self, config: Config) -> LeaseChanges:
        """Take the peers of a re-read config; unchanged peers carry on untouched.

        Only ``[[overlay.peers]]`` changes under a running daemon: any other
        change raises ValueError naming the keys, and nothing changes.
        """
        if self.overlay is None or self.config.overlay is None:
            raise ValueError("this daemon has no overlay: nothing to reload")
        if self.leases is not None:
            raise ValueError("this daemon's leases come from etcd, which it watches: there is nothing to reload")
        if config.overlay is None:
            raise ValueError("the new config has no [overlay]: restart the daemon to remove it")
        keys = [f"overlay.{key}" for key in restart_needed(self.config.overlay, config.overlay)]
        for section in attrs.fields(Config):   # the other sections: a reload would silently ignore them
            old, new = getattr(self.config, section.name), getattr(config, section.name)
            if section.name == "overlay" or old == new:
                continue
            if attrs.has(type(old)):
                keys += [f"{section.name}.{f.name}" for f in attrs.fields(type(old))
                         if getattr(old, f.name) != getattr(new, f.name)]
            else:
                keys.append(section.name)
        if keys:
            raise ValueError(f"{', '.join(keys)} changed: a restart takes those (peers reload alone)")
        self.config = attrs.evolve(self.config, overlay=config.overlay)
        changes = await self.set_peers(await StaticLeases(config.overlay, self.vtep_mac).peer_leases())
        log.info("reloaded leases: %s", changes)
        return changes

    async def set_peers(self, leases: list[Lease]) -> LeaseChanges:
        """Make the peer table hold ``leases``, the one path by which peers change (a reload, an etcd watch):
        unchanged peers carry on untouched; in VXLAN drop-in mode flannel's routes follow."""
        assert self.overlay is not None and self.config.overlay is not None
        changes = self.overlay.set_leases(leases)
        if self.devices_open:
            await apply_lease_routes(self.config.overlay, changes)
        return changes

    async def reload_file(self, path: str | None = None) -> LeaseChanges:
        """Read a config file and take its peers (:meth:`reload`): ``path``, which the daemon then runs from
        (a later reload or SIGHUP reads it), or else the file it runs from. What `vswitch reload` and SIGHUP
        do; ValueError (ConfigError is one) says why not, and then nothing changes."""
        path = path or self.config_path
        if path is None:
            raise ValueError("this daemon was not started from a config file")
        try:
            changes = await self.reload(load(path))
        except Exception:
            self.last_reload = (time.time(), False)
            raise
        self.last_reload = (time.time(), True)
        self.config_path = path
        return changes

    async def attach(self, port: PortConfig) -> PortConfig:
        """Link a container at run time: a new TAP in its netns, on the bridge (``port`` as
        :func:`vswitch.control.protocol.attach_port` parses it). Without an address it gets the next free one
        of the lease, with the default route via the gateway. Returns the port as configured."""
        if port.name in self.switch.ports:
            raise ValueError(f"port {port.name!r} already exists")
        if port.address is None and self.pool is not None:
            port = addressed(port, self.pool, gateway(self.config, self.pool))
        port = restore.completed(port, self.config.node.name)
        try:
            device, _ = await self._open_tap(port, "attach", None)
            try:
                self.switch.add_port(device)   # refused if a router interface on the bridge has that name
            except BaseException:
                self.taps.pop(port.name, None)
                self.links.pop(port.name, None)
                with trio.CancelScope(shield=True):
                    await restore.discard(device)
                raise
        except BaseException:
            if self.pool is not None:
                self.pool.release(port.name)
            raise
        self.attached[port.name] = port
        self.save_addresses()
        self.save_links()
        log.info("attached %s in netns %s%s", port.name, port.netns, f" as {port.address}" if port.address else "")
        return port

    async def detach(self, name: str) -> None:
        """Remove a port; its TAP is deleted for good (persistent or not), and its address goes back to the pool."""
        if name not in self.switch.ports:
            raise KeyError(f"no port named {name!r}")
        tap = self.taps.pop(name, None)
        if tap is not None:
            try:
                tap.persist(False)   # the close that remove_port makes deletes it
            except DeviceError as exc:
                log.debug("%s", exc)
        await self.switch.remove_port(name)
        self.remove_forwards(owner=name)   # a container's published ports go with it
        self.attached.pop(name, None)
        if self.links.pop(name, None) is not None:
            self.save_links()
        if self.pool is not None and self.pool.release(name) is not None:
            self.save_addresses()
        log.info("detached %s", name)

    def add_forward(self, forward: Forward) -> None:
        """A port forward at run time (a CNI runtime's portMappings): ValueError says why not."""
        if self.router is None:
            raise ValueError("this daemon has no router: port forwards need [[router.interfaces]]")
        if forward.interface is not None and forward.interface not in self.router.interfaces:
            raise ValueError(f"no router interface named {forward.interface!r} "
                             f"(interfaces: {', '.join(self.router.interfaces)})")
        runtime_nat(self.router, self.config).add_forward(forward)
        log.info("forwarding %s", forward)
        self._save_forwards()

    def remove_forwards(self, *, owner: str | None = None, protocol: int | None = None,
                        port: int | None = None) -> tuple[Forward, ...]:
        """Remove the port forwards of ``owner``, or of ``protocol`` and ``port``; the ones removed."""
        nat = self.router.nat if self.router is not None else None
        if nat is None:
            return ()
        removed = nat.remove_forwards(owner=owner, protocol=protocol, port=port)
        for forward in removed:
            log.info("no longer forwarding %s", forward)
        if removed:
            self._save_forwards()
        return removed

    def _save_forwards(self) -> None:
        """With live restore, the forwards added at run time (a container's published ports) are kept beside its
        attachment, so a restart publishes them again."""
        nat = self.router.nat if self.router is not None else None
        if not self.live_restore or nat is None:
            return
        assert self.state is not None
        self.state.keep("forwards", {"forwards": [
            {"protocol": f.protocol, "port": f.port, "to": ip_to_str(f.to), "to_port": f.to_port,
             "interface": f.interface, "owner": f.owner} for f in nat.forwards if f.owner]})

    def _restore_forwards(self) -> None:
        """The saved run-time forwards whose owner came back (an attached port); the others are dropped. The file
        is checked entry by entry, each as :meth:`add_forward` checks a new one."""
        assert self.state is not None
        saved = self.state.read("forwards") or {}
        entries = saved.get("forwards")
        for entry in entries if isinstance(entries, list) else ():
            try:
                forward = Forward(int(entry["protocol"]), int(entry["port"]), ip_from_str(str(entry["to"])),
                                  int(entry["to_port"]), entry.get("interface"), str(entry["owner"]))
                if forward.owner not in self.switch.ports:
                    raise ValueError(f"its port {forward.owner} did not come back")
                self.add_forward(forward)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("saved port forward %r dropped: %s", entry, exc)
        self._save_forwards()


async def prepare(config: Config, *, underlay: MemoryUnderlay | None = None, config_path: str | None = None) -> Node:
    """:func:`build`, with etcd leases taken first: the lease completes the config (its subnet, the network and
    backend of ``<prefix>/config``), and the containers' ports without an address get one of the lease."""
    if config.etcd is None:
        node = build(config, underlay=underlay, config_path=config_path)
        # Without etcd, state is kept where it was asked for: a state_dir written, or live restore
        keep = config.node.state_dir is not None or config.node.live_restore
        node.state = StateDir(config.node.state_path) if keep else None
        node.pool = static_pool(config, node.state)   # attach's addresses (the config's ports keep theirs)
        return node
    config, source = await take_lease(config)
    pool = address_pool(config, source.state)
    if pool is not None:
        gw = gateway(config, pool)
        try:
            config = attrs.evolve(config, ports=tuple(addressed(p, pool, gw) for p in config.ports))
        except PoolExhausted as exc:
            raise ConfigError("ports", f"more containers than the lease {pool.subnet} has addresses for: {exc}") from None
    node = build(config, underlay=underlay, config_path=config_path)
    node.leases, node.pool, node.state = source, pool, source.state
    assert node.overlay is not None
    node.overlay.set_leases(await source.peer_leases())
    return node


def build(config: Config, *, underlay: MemoryUnderlay | None = None, config_path: str | None = None) -> Node:
    """The node with its memory ports; device ports open in :meth:`Node.open_devices`.

    ``underlay`` puts the overlay on a simulated UDP network instead of a
    real socket (several nodes in one process: tests, the demo).
    """
    core, router, overlay, vtep_mac = build_core(config)
    switch = Switch(core, faults=Faults(faults_pcap(config)))
    hosts = []
    pcaps: list[PcapWriter] = []
    for pc in config.ports:
        if pc.type != "memory":
            continue
        port, runner = memory_port(config, pc, pcaps)
        switch.add_port(port)
        hosts.append((runner, pc.host.ping, pc.host.ping_interval))
    if overlay is not None and underlay is not None:
        assert config.overlay is not None
        switch.add_port(underlay.port(UNDERLAY_PORT, str(config.overlay.public_ip), config.overlay.port,
                                      mtu=config.overlay.mtu))
    return Node(config, switch, hosts, router, overlay, vtep_mac, underlay, config_path, pcaps=pcaps)


async def _pinger(runner: HostRunner, targets: tuple[IPv4Address, ...], interval: float) -> None:
    while True:
        for target in targets:
            result = await runner.ping(target, timeout=interval)
            if result.received:
                log.info("%s: reply from %s in %.3f ms", runner.host.name, target, result.rtts[0] * 1e3)
            else:
                log.warning("%s: no reply from %s", runner.host.name, target)
        await trio.sleep(interval)


async def serve(node: Node, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Run the node until cancelled.

    Start-up goes in the order that lets a refused start leave nothing
    behind: devices and sockets first (closed again if anything after them
    fails), then the control socket (which refuses if another daemon is
    listening on it), then the pcap files, which opening truncates; only
    then do frames flow.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                await node.open_devices()
                if node.config.node.control:
                    from vswitch.control.server import ControlServer

                    path = await nursery.start(ControlServer(node, node.config.node.control).run)
                    log.info("control socket: %s (try `vswitch show ports --control %s`)", path, path)
                if node.config.node.metrics:
                    from vswitch.control.http import MetricsServer

                    await nursery.start(MetricsServer(node, *node.config.node.metrics).run)
                node.open_pcaps()
                node.save_addresses()
                node.save_links()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await node.switch.aclose()
                raise
            await nursery.start(node.switch.run)
            if node.leases is not None:
                await nursery.start(node.leases.run, node.set_peers)
            for runner, targets, interval in node.hosts:
                await nursery.start(runner.run)
                log.info("%s: %s %s", runner.host.name, mac_to_str(runner.host.mac), runner.host.interface)
                if targets:
                    nursery.start_soon(_pinger, runner, targets, interval)
            task_status.started(node)
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 15):
            await node.remove_host_rules()


async def run_until_signal(node: Node) -> int:
    """Serve until SIGINT or SIGTERM, then shut down within the switch's bounded timeout; returns that signal.

    SIGHUP reads the config again and takes its peers (see :meth:`Node.reload_file`).
    """
    notifier = Notifier.from_environ()
    try:
        return await _serve_until_signal(node, notifier)
    except BaseException as exc:   # a start refused, or a node that must stop (its etcd lease deleted)
        notifier.notify(STOPPING=1, STATUS=f"stopped: {_first_line(exc)}")
        raise


def _first_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]


async def _serve_until_signal(node: Node, notifier: Notifier) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, node)
            notifier.notify(READY=1, STATUS=f"serving {len(node.switch.ports)} port(s)", MAINPID=os.getpid())
            interval = watchdog_interval()
            if notifier.enabled and interval is not None:
                await nursery.start(notifier.watchdog, interval)
            log.info(
                "node %s running with %d port(s): %s", node.config.node.name, len(node.switch.ports),
                ", ".join(node.switch.ports) or "none",
            )
            if not node.switch.ports:
                log.warning("no ports yet: link containers with `vswitch attach` (control socket %s)",
                            node.config.node.control)
            stopped_by = signal.SIGTERM
            async for signum in signals:
                if signum == signal.SIGHUP:
                    try:
                        await node.reload_file()
                    except (ValueError, OSError) as exc:
                        log.error("SIGHUP: reload refused, the running leases stay: %s", exc)
                        notifier.notify(STATUS=f"reload refused: {exc}")
                    else:
                        notifier.notify(STATUS=f"reloaded; serving {len(node.switch.ports)} port(s)")
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                notifier.notify(STOPPING=1, STATUS=f"{signal.Signals(signum).name}: shutting down")
                stopped_by = signum
                break
            nursery.cancel_scope.cancel()
    log.info("node %s stopped", node.config.node.name)
    return stopped_by

