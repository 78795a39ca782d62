"""podman links its containers through vswitch: the CNI plugin as a real runtime calls it.

Debian's podman 4.3.1 with its CNI backend runs containers from a busybox rootfs imported on the spot (no
registry), with runc (crun fails on this machine's hybrid cgroups). Two daemons, each in a "VM" namespace
joined by a veth and the overlay, each a CNI network of its own:

    vm1: daemon node1, gateway 10.244.1.1/24, network vsA   ── overlay (udp) ──   vm2: node2, 10.244.2.1/24, vsB
         containers a1, a2 (podman run --network vsA)                                  container b1 (--network vsB)
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netkit import Daemon, Namespaces, requires_root, sh, underlay, unique

pytestmark = [requires_root, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("podman") is None or shutil.which("runc") is None
                                 or not Path("/bin/busybox").exists(),
                                 reason="needs podman, runc and busybox-static (CI installs them)")]

ROOT = Path(__file__).resolve().parents[2]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


class Podman:
    """podman with the CNI backend, our plugin directory and network configs, and an image of its own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin, self.conf = tmp / "cni-bin", tmp / "net.d"
        self.conf.mkdir()
        (tmp / "containers.conf").write_text(f'[network]\ncni_plugin_dirs = ["{self.bin}", "/usr/lib/cni"]\n')
        self.env = {"CONTAINERS_CONF": str(tmp / "containers.conf"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self.image = f"localhost/vswitch-test:{unique('i')}"
        root = tmp / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        for applet in ("sh", "ping", "ip", "sleep", "nc", "cat"):
            (root / "bin" / applet).symlink_to("busybox")
        for empty in ("proc", "sys", "dev", "tmp", "etc"):
            (root / empty).mkdir()
        sh("tar", "-C", str(root), "-cf", str(tmp / "rootfs.tar"), ".")
        self("import", "-q", str(tmp / "rootfs.tar"), self.image)
        self.containers: list[str] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        command = ["podman", "--runtime", "runc", "--network-backend", "cni", "--network-config-dir", str(self.conf),
                   *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def run(self, network: str) -> str:
        name = unique("pc")
        self("run", "-d", "--name", name, "--network", network, *ULIMITS, self.image, "sleep", "600")
        self.containers.append(name)
        return name

    def address(self, container: str) -> str:
        out = self("exec", container, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return out.split("inet ")[1].split("/")[0]

    def close(self) -> None:
        for name in self.containers:
            self("rm", "-f", "-t", "0", name, check=False)
        self("rmi", "-f", self.image, check=False)


def install(podman: Podman, network: str, control: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vswitch", "cni", "install", "--bin-dir", str(podman.bin),
                             "--conf-dir", str(podman.conf), "--control", str(control), "--network", network],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0, result.stderr


def node_config(tmp: Path, n: int) -> Path:
    peer = 3 - n
    path = tmp / f"node{n}.toml"
    path.write_text(f"""
[node]
name = "node{n}"
control = "{tmp / f"n{n}.sock"}"
state_dir = "{tmp / f"state{n}"}"

[[router.interfaces]]
name = "gw"
address = "10.244.{n}.1/24"

[overlay]
network = "10.244.0.0/16"
subnet = "10.244.{n}.0/24"
public_ip = "10.99.0.{n}"

[[overlay.peers]]
subnet = "10.244.{peer}.0/24"
public_ip = "10.99.0.{peer}"
""")
    return path


class Setup:
    def __init__(self, tmp: Path, spaces: Namespaces) -> None:
        self.vm = {1: spaces.create("vm"), 2: spaces.create("vm")}
        underlay(self.vm[1], self.vm[2])
        self.podman = Podman(tmp)
        self.networks = {n: unique("vs") for n in (1, 2)}
        self.daemons = {}
        for n in (1, 2):
            config = node_config(tmp, n)
            install(self.podman, self.networks[n], tmp / f"n{n}.sock")
            self.daemons[n] = Daemon(config, netns=self.vm[n]).start()

    def close(self) -> None:
        self.podman.close()
        for daemon in self.daemons.values():
            daemon.kill()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    spaces = Namespaces()
    made = None
    try:
        made = Setup(tmp_path_factory.mktemp("podman"), spaces)
        yield made
    finally:
        if made is not None:
            made.close()
        spaces.cleanup()


def test_two_containers_get_addresses_from_vswitch_and_ping_each_other(setup):
    podman = setup.podman
    a1, a2 = podman.run(setup.networks[1]), podman.run(setup.networks[1])
    addresses = [podman.address(a1), podman.address(a2)]
    assert all(a.startswith("10.244.1.") for a in addresses) and addresses[0] != addresses[1], addresses
    result = podman("exec", a1, "ping", "-c", "2", "-W", "3", addresses[1], check=False)
    assert result.returncode == 0, result.stdout + result.stderr + setup.daemons[1].log[-2000:]
    ports = [p for p in setup.daemons[1].show("ports") if p["name"].startswith("cni")]
    assert sorted(p["address"].split("/")[0] for p in ports) == sorted(addresses)


def test_a_container_on_another_node_is_reached(setup):
    podman = setup.podman
    a, b = podman.run(setup.networks[1]), podman.run(setup.networks[2])
    target = podman.address(b)
    assert target.startswith("10.244.2.")
    result = podman("exec", a, "ping", "-c", "2", "-W", "3", target, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_podman_rm_releases_the_address(setup, tmp_path_factory):
    podman = setup.podman
    c = podman.run(setup.networks[1])
    address = podman.address(c)
    state = Path(setup.daemons[1].config_path).parent / "state1" / "addresses.json"
    assert address in json.loads(state.read_text())["addresses"].values()
    podman("rm", "-f", "-t", "0", c)
    podman.containers.remove(c)
    assert address not in json.loads(state.read_text())["addresses"].values()
    assert not [p for p in setup.daemons[1].show("ports") if p.get("address", "") and p["address"].startswith(address + "/")]
