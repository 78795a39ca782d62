"""Port publishing: a runtime's portMappings, through the CNI plugin, become port forwards that a client outside
the node reaches, and DEL (or `podman rm`) takes them away.

    outside ns  eth0 198.51.100.1/24 ── veth ── up0 (no address) in the "VM" namespace
                                                  │ packet port "uplink" = router interface ext 198.51.100.2/24
    vm ns:  daemon "pub" ─ bridge ─ gw 10.244.1.1/24 ─ containers attached by the plugin (addresses from the pool)

The client connects to ext's address, the node's; the router forwards to the container's address, untranslated
otherwise (the server sees the client's own address, as with iptables' DNAT).
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from netkit import (
    Daemon,
    Namespaces,
    ask_peer,
    in_ns,
    peer_server,
    requires_root,
    sh,
    stop,
    uplink_config,
    wait_until,
)
from test_cni_podman import (  # the same podman setup as the CNI podman tests
    ULIMITS,
    Podman,
    install,
)

from vswitch.cli.cni import port_name

pytestmark = [requires_root, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE, EXT, GATEWAY = "198.51.100.1", "198.51.100.2", "10.244.1.1"


@attrs.frozen
class Node:
    daemon: Daemon
    control: Path
    vm: str
    outside: str
    spaces: Namespaces


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("publish")
    spaces = Namespaces()
    daemon = None
    try:
        vm, outside = spaces.create("vm"), spaces.create("vo")
        sh("ip", "-n", vm, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside)
        for ns, device in ((vm, "up0"), (outside, "eth0")):
            in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", device, "up")
        sh("ip", "-n", outside, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        control = tmp / "ctl.sock"
        config = tmp / "pub.toml"
        config.write_text(uplink_config("pub", control, [], "up0", gateway=GATEWAY, ext=EXT, outside=OUTSIDE,
                                        masquerade=False))
        daemon = Daemon(config, netns=vm).start()
        yield Node(daemon, control, vm, outside, spaces)
    finally:
        if daemon is not None:
            daemon.kill()
        spaces.cleanup()


def cni(node: Node, command: str, container: str, netns: str, mappings: list | None = None) -> tuple[int, dict]:
    config = {"cniVersion": "1.0.0", "name": "vswitch", "type": "vswitch-cni", "control": str(node.control)}
    if mappings is not None:
        config["runtimeConfig"] = {"portMappings": mappings}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0", "CNI_NETNS": f"/run/netns/{netns}"}
    result = subprocess.run([sys.executable, "-m", "vswitch.cli.cni"], input=json.dumps(config), capture_output=True,
                            text=True, env=env, timeout=60)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def forwards(node: Node) -> list[dict]:
    try:
        return node.daemon.show("nat")["rules"]["forward"]
    except subprocess.CalledProcessError:   # no NAT yet: no forward was ever added
        return []


def refused(ns: str, kind: str, host: str, port: int) -> bool:
    client = in_ns(ns, sys.executable, "-c", f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_{'DGRAM' if kind == 'udp' else 'STREAM'})
s.settimeout(1.5)
try:
    s.connect(({host!r}, {port}))
    if {kind == 'udp'!r}:
        s.send(b"x")
    s.recv(10)
except OSError:
    raise SystemExit(0)
raise SystemExit(1)
""", check=False, timeout=20)
    return client.returncode == 0


def test_port_mappings_publish_the_containers_ports_to_a_client_outside(node):
    container = node.spaces.create("vc")
    code, added = cni(node, "ADD", "pubc1", container, [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5300, "containerPort": 53, "protocol": "udp", "hostIP": EXT},
    ])
    assert code == 0, f"{added}\n{node.daemon.log[-3000:]}"
    address = added["ips"][0]["address"].split("/")[0]
    owner = port_name("pubc1", "eth0")
    assert sorted((f["protocol"], f["port"], f["to"], f["to_port"], f["interface"], f["owner"])
                  for f in forwards(node)) == [("tcp", 8080, address, 80, None, owner),
                                               ("udp", 5300, address, 53, "ext", owner)]
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
                {"hostPort": 5300, "containerPort": 53, "protocol": "udp", "hostIP": EXT}]
    assert cni(node, "CHECK", "pubc1", container, mappings) == (0, {})   # CHECK verifies the published ports too
    servers = [peer_server(container, "tcp", 80), peer_server(container, "udp", 53)]
    try:
        local, seen = ask_peer(node.outside, "tcp", EXT, 8080)
        assert local.startswith(f"{OUTSIDE}:") and seen == local   # DNAT alone: the container sees the client
        local, seen = ask_peer(node.outside, "udp", EXT, 5300)
        assert seen == local

        subprocess.run([sys.executable, "-c", "import trio; from vswitch.control.client import request;"
                        f" trio.run(request, {str(node.control)!r}, {{'command': 'unforward', 'protocol': 'udp',"
                        " 'port': 5300})"], cwd=ROOT, check=True, timeout=30)
        code, error = cni(node, "CHECK", "pubc1", container, mappings)
        assert code == 1 and error["code"] == 101 and "udp port 5300 is not forwarded" in error["msg"], error
        code, error = cni(node, "DEL", "pubc1", container)
        assert code == 0, error
        assert forwards(node) == []
        assert refused(node.outside, "tcp", EXT, 8080)
        assert cni(node, "DEL", "pubc1", container)[0] == 0   # again: idempotent
    finally:
        for server in servers:
            stop(server)


def test_a_host_ip_that_is_not_the_nodes_is_code_7_and_attaches_nothing(node):
    container = node.spaces.create("vc")
    code, error = cni(node, "ADD", "pubc2", container, [{"hostPort": 9090, "containerPort": 90, "hostIP": "192.0.2.9"}])
    assert code == 1 and error["code"] == 7, error
    assert "hostIP 192.0.2.9 is not an address of this node's router" in error["msg"] and EXT in error["msg"]
    assert port_name("pubc2", "eth0") not in [p["name"] for p in node.daemon.show("ports")]


def test_a_refused_forward_undoes_the_whole_add(node):
    """The second container asks for a host port the first holds: its ADD fails, and leaves no port behind."""
    first, second = node.spaces.create("vc"), node.spaces.create("vc")
    assert cni(node, "ADD", "pubc3", first, [{"hostPort": 7070, "containerPort": 70}])[0] == 0
    try:
        code, error = cni(node, "ADD", "pubc4", second, [{"hostPort": 7171, "containerPort": 71},
                                                          {"hostPort": 7070, "containerPort": 70}])
        assert code == 1 and error["code"] == 100 and "tcp port 7070 is forwarded already" in error["msg"], error
        names = [p["name"] for p in node.daemon.show("ports")]
        assert port_name("pubc4", "eth0") not in names and port_name("pubc3", "eth0") in names
        assert [f["port"] for f in forwards(node)] == [7070]   # 7171, added before the refusal, was taken back
        assert in_ns(second, "ip", "link", "show", "eth0", check=False).returncode != 0
    finally:
        cni(node, "DEL", "pubc3", first)
    assert forwards(node) == []


needs_podman = pytest.mark.skipif(shutil.which("podman") is None or shutil.which("runc") is None
                                  or not Path("/bin/busybox").exists(),
                                  reason="needs podman, runc and busybox-static (CI installs them)")


@needs_podman
def test_podman_run_publish_reaches_a_client_outside_and_podman_rm_unpublishes(node, tmp_path):
    podman = Podman(tmp_path)
    network = f"pub{node.vm[-6:]}"
    install(podman, network, node.control)
    try:
        name = f"web{node.vm[-6:]}"
        podman("run", "-d", "--name", name, "--network", network, "-p", "8081:80", *ULIMITS, podman.image, "sh", "-c", "while true; do echo hi | nc -l -p 80; done")
        podman.containers.append(name)
        assert [(f["port"], f["to_port"]) for f in forwards(node)] == [(8081, 80)]
        local, seen = wait_until(lambda: _ask(node.outside, EXT, 8081), timeout=15, what="the published port")
        assert local.startswith(f"{OUTSIDE}:") and seen == "hi"
        podman("rm", "-f", "-t", "0", name)
        podman.containers.remove(name)
        assert forwards(node) == []
        assert refused(node.outside, "tcp", EXT, 8081)
    finally:
        podman.close()


def _ask(ns: str, host: str, port: int) -> tuple[str, str] | None:
    try:
        return ask_peer(ns, "tcp", host, port, timeout=2)
    except AssertionError:
        return None


def test_published_ports_come_back_with_a_live_restore(tmp_path):
    """With live restore a restart takes the container's TAP back, and its published port with it."""
    spaces = Namespaces()
    daemon = server = None
    try:
        vm, outside, container = spaces.create("vm"), spaces.create("vo"), spaces.create("vc")
        sh("ip", "-n", vm, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside)
        for ns, device in ((vm, "up0"), (outside, "eth0")):
            in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", device, "up")
        sh("ip", "-n", outside, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        control, config = tmp_path / "ctl.sock", tmp_path / "pub.toml"
        text = uplink_config("pubr", control, [], "up0", gateway=GATEWAY, ext=EXT, outside=OUTSIDE, masquerade=False)
        config.write_text(text.replace("[node]\n", f'[node]\nlive_restore = true\nstate_dir = "{tmp_path / "state"}"\n',
                                       1))
        daemon = Daemon(config, netns=vm).start()
        node = Node(daemon, control, vm, outside, spaces)
        assert cni(node, "ADD", "pubr1", container, [{"hostPort": 8088, "containerPort": 80}])[0] == 0
        server = peer_server(container, "tcp", 80)
        ask_peer(outside, "tcp", EXT, 8088)
        assert daemon.stop() == 0
        daemon = Daemon(config, netns=vm).start()
        node = Node(daemon, control, vm, outside, spaces)
        assert "took back attached port" in daemon.log
        assert [(f["port"], f["owner"]) for f in forwards(node)] == [(8088, port_name("pubr1", "eth0"))]
        ask_peer(outside, "tcp", EXT, 8088)
        assert cni(node, "DEL", "pubr1", container)[0] == 0
        assert forwards(node) == [] and refused(outside, "tcp", EXT, 8088)
    finally:
        if server is not None:
            stop(server)
        if daemon is not None:
            daemon.kill()
        spaces.cleanup()
