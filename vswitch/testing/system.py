"""Helpers for tests and benchmarks with real devices: uniquely named network
namespaces that are always removed, a daemon run as a subprocess, and
commands run inside namespaces. Needs root and iproute2."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Daemon", "Namespaces", "can_run", "flannel_route", "in_ns", "kernel_flannel_node", "link_exists",
           "link_mac", "outside_link", "ping", "sh", "tap_config", "underlay", "unique", "uplink_config"]

def can_run() -> str | None:
    """None if namespaces and TAP devices can be used here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    return None


def unique(prefix: str = "vt") -> str:
    """A short unique name; device names must stay within 15 bytes."""
    return f"{prefix}{secrets.token_hex(3)}"


def sh(*command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(ns: str, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *command, check=check, timeout=timeout)


def ping(ns: str, address: str, *, count: int = 2, wait: float = 2) -> bool:
    result = in_ns(ns, "ping", "-c", str(count), "-i", "0.2", "-W", str(wait), address, check=False,
                   timeout=count * (wait + 1) + 5)
    return result.returncode == 0


def outside_link(device: str, outside: str, address: str) -> None:
    """A veth from here to namespace ``outside``, where it is ``eth0`` with ``address`` (``a.b.c.d/len``).

    This end, ``device``, is only a wire for a packet port: no address and no
    IPv6, so the local stack sends nothing on it. ``ip link del device``
    removes both ends.
    """
    sh("ip", "link", "add", device, "type", "veth", "peer", "name", "eth0", "netns", outside)
    sh("sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=1")
    sh("ip", "link", "set", device, "up")
    in_ns(outside, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    sh("ip", "-n", outside, "addr", "add", address, "dev", "eth0")
    sh("ip", "-n", outside, "link", "set", "eth0", "up")


def link_mac(ns: str, device: str) -> str:
    info = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", device).stdout)
    return info[0]["address"]


def link_exists(ns: str | None, device: str) -> bool:
    command = ["ip", *(("-n", ns) if ns else ()), "link", "show", "dev", device]
    return subprocess.run(command, capture_output=True).returncode == 0


class Namespaces:
    """Creates namespaces with unique names; ``cleanup`` kills what runs in them and deletes them."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, prefix: str = "vt") -> str:
        name = unique(prefix)
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def cleanup(self) -> None:
        for name in self.created:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()


class Daemon:
    """``vswitch run -c CONFIG`` as a subprocess (in network namespace ``netns`` if given: a "VM"); its log is
    collected by a thread."""

    def __init__(self, config_path: Path, control: Path | None = None, *, netns: str | None = None) -> None:
        self.config_path = config_path
        self.control = control
        self.netns = netns
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False  # the daemon closed its log: it has exited
        self.proc: subprocess.Popen | None = None

    def start(self, *, ready: str = "running", timeout: float = 20) -> "Daemon":
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [*inside, sys.executable, "-m", "vswitch", "run", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()
        self.wait_for(ready, timeout=timeout)
        return self

    def _collect(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, text: str, *, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self._eof:
                    code = self.proc.wait() if self.proc is not None else None
                    raise AssertionError(f"daemon exited ({code}) before {text!r}:\n{self.log}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log}")
                self._changed.wait(min(remaining, 0.5))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a `vswitch` command against this daemon's control socket."""
        command = [sys.executable, "-m", "vswitch", *args, "-c", str(self.config_path)]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout)

    def show(self, what: str, *options: str) -> object:
        """`vswitch show WHAT --json`; stats with every drop reason, zero or not (--all), so counts compare."""
        every = ("--all",) if what == "stats" else ()
        return json.loads(self.cli("show", what, "--json", *every, *options).stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def underlay(left: str, right: str) -> None:
    """Two "VMs" on one network: ``eth0`` 10.99.0.1/24 in namespace ``left`` and 10.99.0.2/24 in ``right``,
    one veth; no IPv6 chatter."""
    sh("ip", "-n", left, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", right)
    for i, vm in ((1, left), (2, right)):
        in_ns(vm, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
        sh("ip", "-n", vm, "addr", "add", f"10.99.0.{i}/24", "dev", "eth0")
        sh("ip", "-n", vm, "link", "set", "eth0", "up")


def tap_config(name: str, control: Path, ports: list[dict]) -> str:
    """A node config with tap ports: dicts of name, netns and optional address/gateway/mtu/pcap."""
    lines = ["[node]", f'name = "{name}"', f'control = "{control}"', ""]
    for port in ports:
        lines.append("[[ports]]")
        lines.append('type = "tap"')
        for key, value in port.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def uplink_config(name: str, control: Path, ports: list[dict], uplink: str, *, gateway: str, ext: str, outside: str,
                  masquerade: bool) -> str:
    """A node config whose tap ports (see :func:`tap_config`) sit on the bridge behind router interface ``gw``
    (``gateway``/24), with a packet port on ``uplink`` as router interface ``ext`` (``ext``/24) and the default
    route via ``outside``; with ``masquerade``, 10.244.0.0/16 leaving through ext is masqueraded (pod to pod is not).
    """
    text = tap_config(name, control, ports) + f"""
[[ports]]
name = "uplink"
type = "packet"
device = "{uplink}"

[[router.interfaces]]
name = "gw"
address = "{gateway}/24"

[[router.interfaces]]
name = "ext"
port = "uplink"
address = "{ext}/24"

[[router.routes]]
to = "0.0.0.0/0"
via = "{outside}"
"""
    if masquerade:
        text += """
[[nat.masquerade]]
source = "10.244.0.0/16"
out = "ext"
exclude = ["10.244.0.0/16"]
"""
    return text


# `ethtool -K DEVICE tx off` without ethtool: the legacy ETHTOOL_STXCSUM ioctl.
TX_CHECKSUM_OFF = r"""
import array, fcntl, socket, struct, sys
value = array.array("B", struct.pack("II", 0x17, 0))     # ETHTOOL_STXCSUM, off
ifreq = struct.pack("16sP", sys.argv[1].encode(), value.buffer_info()[0]).ljust(40, b"\0")
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s, 0x8946, ifreq)                          # SIOCETHTOOL
"""


def kernel_flannel_node(vm: str, container: str, *, public: str, subnet: str, vtep: str, address: str) -> None:
    """What flanneld's vxlan backend and the flannel CNI plugin (bridge cni0) make on node ``vm``: flannel.1
    with VTEP MAC ``vtep`` on ``public`` (its eth0), the subnet's network address on it, cni0 with the subnet's
    first address, and ``container`` on cni0 at ``address``. Peers come with :func:`flannel_route`."""
    network, prefix = subnet.split("/")
    gateway = network.rsplit(".", 1)[0] + ".1"

    def ipk(*args: str) -> None:
        sh("ip", "-n", vm, *args)

    in_ns(vm, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # A NIC puts complete checksums on the wire; a veth passes the kernel's unfinished ones (CHECKSUM_PARTIAL)
    # into the next namespace, where a userspace VTEP's socket gets inner TCP segments with only the
    # pseudo-header sum in their checksum field. Turn the veth's offload off, as a NIC would finish them.
    in_ns(vm, sys.executable, "-c", TX_CHECKSUM_OFF, "eth0")
    ipk("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", public, "dev", "eth0", "dstport", "8472",
        "nolearning")
    ipk("link", "set", "flannel.1", "mtu", "1450", "address", vtep)
    ipk("addr", "add", f"{network}/32", "dev", "flannel.1")
    ipk("link", "set", "flannel.1", "up")
    ipk("link", "add", "cni0", "type", "bridge")
    ipk("addr", "add", f"{gateway}/{prefix}", "dev", "cni0")
    ipk("link", "set", "cni0", "up")
    ipk("link", "add", "vethk", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu", "1450",
        "netns", container)
    ipk("link", "set", "vethk", "master", "cni0", "up")
    sh("ip", "-n", container, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
    sh("ip", "-n", container, "link", "set", "eth0", "up")
    sh("ip", "-n", container, "route", "add", "default", "via", gateway)


def flannel_route(vm: str, *, subnet: str, vtep: str, public: str) -> None:
    """What flanneld's vxlan backend adds on ``vm`` for a peer's lease: a permanent neighbour (the subnet's
    network address at the peer's VTEP MAC), its FDB entry (that MAC at its public address), an on-link route."""
    gateway = subnet.split("/")[0]
    sh("ip", "-n", vm, "neigh", "replace", gateway, "lladdr", vtep, "dev", "flannel.1", "nud", "permanent")
    sh("bridge", "-n", vm, "fdb", "append", vtep, "dev", "flannel.1", "dst", public)
    sh("ip", "-n", vm, "route", "replace", subnet, "via", gateway, "dev", "flannel.1", "onlink")
