"""The CNI plugin driven as the spec defines, against a real daemon: every command, through env and stdin.

A daemon (a router with the gateway 10.88.7.1/24 on its bridge, no overlay) runs in a "VM" namespace; the
"containers" are namespaces made with `ip netns add`, which the plugin is given as paths, as runtimes do.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netkit import Daemon, Namespaces, in_ns, requires_root, sh

from vswitch.cli.cni import port_name

pytestmark = [requires_root, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "10.88.7.1"


class Node:
    def __init__(self, tmp: Path, spaces: Namespaces) -> None:
        self.spaces = spaces
        self.vm = spaces.create("vm")
        self.control = tmp / "n1.sock"
        self.state = tmp / "state"
        config = tmp / "node1.toml"
        config.write_text(f'[node]\nname = "node1"\ncontrol = "{self.control}"\nstate_dir = "{self.state}"\n\n'
                          f'[[router.interfaces]]\nname = "gw"\naddress = "{GATEWAY}/24"\n')
        self.daemon = Daemon(config, netns=self.vm).start()
        self.config = {"cniVersion": "1.0.0", "name": "vstest", "type": "vswitch-cni", "control": str(self.control),
                       "dns": {"nameservers": [GATEWAY]}}

    def container(self) -> tuple[str, str]:
        """A new namespace, and its path as a runtime passes it."""
        ns = self.spaces.create("vc")
        return ns, f"/var/run/netns/{ns}"

    def cni(self, command: str, container: str = "", netns: str = "", *, ifname: str = "eth0",
            config: dict | None = None) -> tuple[int, dict]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
               "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, "-m", "vswitch.cli.cni"], env={k: v for k, v in env.items() if v},
                                input=json.dumps(config or self.config), capture_output=True, text=True, timeout=60)
        return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}

    def ports(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.daemon.show("ports")}


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    spaces = Namespaces()
    made = None
    try:
        made = Node(tmp_path_factory.mktemp("cni"), spaces)
        yield made
    finally:
        if made is not None:
            made.daemon.kill()
        spaces.cleanup()


def test_add_links_the_container_and_prints_the_result(node):
    ns, path = node.container()
    code, result = node.cni("ADD", "container-a", path)
    assert code == 0, result
    [interface] = result["interfaces"]
    link = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", "eth0").stdout)[0]
    assert (interface["name"], interface["sandbox"], interface["mac"]) == ("eth0", path, link["address"])
    [ip] = result["ips"]
    assert ip["address"].startswith("10.88.7.") and ip["address"].endswith("/24") and ip["gateway"] == GATEWAY
    assert ip["interface"] == 0 and "version" not in ip   # 1.0.0 has no version field
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}] and result["dns"] == node.config["dns"]
    assert result["cniVersion"] == "1.0.0"
    addresses = sh("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert ip["address"] in addresses
    assert f"default via {GATEWAY}" in sh("ip", "-n", ns, "route").stdout
    assert "UP" in sh("ip", "-n", ns, "link", "show", "dev", "lo").stdout
    assert in_ns(ns, "ping", "-c", "1", "-W", "3", GATEWAY, check=False).returncode == 0
    port = node.ports()[port_name("container-a", "eth0")]
    assert (port["netns"], port["ifname"], port["attached"]) == (path, "eth0", True)


def test_check_verifies_and_del_is_idempotent(node):
    ns, path = node.container()
    code, added = node.cni("ADD", "container-b", path)
    assert code == 0, added
    code, answer = node.cni("CHECK", "container-b", path, config={**node.config, "prevResult": added})
    assert (code, answer) == (0, {})
    wrong = {**added, "ips": [{"address": "10.88.7.250/24", "interface": 0}]}
    code, error = node.cni("CHECK", "container-b", path, config={**node.config, "prevResult": wrong})
    assert code == 1 and error["code"] == 101 and "10.88.7.250/24" in error["msg"]
    code, error = node.cni("CHECK", "container-b", "/var/run/netns/elsewhere")
    assert code == 1 and error["code"] == 101
    name = port_name("container-b", "eth0")
    address = node.ports()[name]["address"]
    for _ in range(2):
        assert node.cni("DEL", "container-b", path) == (0, {})
    assert name not in node.ports()
    assert subprocess.run(["ip", "-n", ns, "link", "show", "dev", "eth0"], capture_output=True).returncode != 0
    saved = json.loads((node.state / "addresses.json").read_text())["addresses"]
    assert address.split("/")[0] not in saved.values()
    code, error = node.cni("CHECK", "container-b", path)
    assert code == 1 and error["code"] == 101


def test_del_of_a_container_whose_namespace_is_gone_still_succeeds(node):
    ns, path = node.container()
    assert node.cni("ADD", "container-c", path)[0] == 0
    sh("ip", "netns", "del", ns)
    node.spaces.created.remove(ns)
    assert node.cni("DEL", "container-c", "") == (0, {})
    assert port_name("container-c", "eth0") not in node.ports()


def test_gc_removes_what_the_runtime_no_longer_has_and_status_answers(node):
    kept, gone = node.container(), node.container()
    assert node.cni("ADD", "keep-me", kept[1])[0] == 0
    assert node.cni("ADD", "lose-me", gone[1])[0] == 0
    gc = {**node.config, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "keep-me",
                                                                                "ifname": "eth0"}]}
    assert node.cni("GC", config=gc) == (0, {})
    ports = node.ports()
    assert port_name("keep-me", "eth0") in ports and port_name("lose-me", "eth0") not in ports
    assert node.cni("STATUS", config={**node.config, "cniVersion": "1.1.0"}) == (0, {})
    assert node.cni("DEL", "keep-me", kept[1]) == (0, {})


def test_a_daemon_refusal_is_the_plugins_own_code(node):
    code, error = node.cni("ADD", "no-such-netns", "/var/run/netns/does-not-exist")
    assert code == 1 and error["code"] == 100 and "does-not-exist" in error["msg"]
    assert port_name("no-such-netns", "eth0") not in node.ports()
