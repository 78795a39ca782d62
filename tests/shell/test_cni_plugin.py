"""The CNI plugin driven as the spec defines: the environment and stdin in, a result or an error (JSON, exit 1) out.

These need no daemon or root: VERSION, and every error the plugin finds before or at the control socket.
The commands that link a container run against a real daemon in tests/system.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vswitch.cli.cni import SUPPORTED_VERSIONS, port_mappings, port_name

ROOT = Path(__file__).parents[2]
CONFIG = {"cniVersion": "1.0.0", "name": "vswitch", "type": "vswitch-cni"}


def plugin(env: dict[str, str], stdin: bytes | str = b"") -> tuple[int, dict]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run([sys.executable, "-m", "vswitch.cli.cni"], input=data, capture_output=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, timeout=30)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def test_version_lists_what_the_plugin_speaks():
    code, answer = plugin({"CNI_COMMAND": "VERSION"})
    assert code == 0 and answer["cniVersion"] == "1.1.0"
    assert answer["supportedVersions"] == list(SUPPORTED_VERSIONS) and "1.0.0" in SUPPORTED_VERSIONS


@pytest.mark.parametrize(("env", "says"), [
    ({}, "CNI_COMMAND is not set"),
    ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND='FROB'"),
    ({"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/1/ns/net"}, "CNI_CONTAINERID is not set"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}, "CNI_NETNS is not set"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1"}, "CNI_IFNAME is not set"),
])
def test_a_bad_environment_is_code_4(env, says, tmp_path):
    config = {**CONFIG, "control": str(tmp_path / "none.sock")}
    code, error = plugin(env, json.dumps(config))
    assert code == 1 and error["code"] == 4 and says in error["msg"], error


@pytest.mark.parametrize(("stdin", "want"), [
    ("{not json", 6), ("[1, 2]", 6), (b"\xff\xfe", 6), ("x" * (1 << 20 + 1), 6),
    ('{"name": "n"}', 7), ('{"cniVersion": "9.9.9", "name": "n"}', 1), ('{"cniVersion": "1.0.0"}', 7),
    ('{"cniVersion": "1.0.0", "name": "n", "mtu": "big"}', 7), ('{"cniVersion": "1.0.0", "name": "n", "mtu": 10}', 7),
    ('{"cniVersion": "1.0.0", "name": "n", "control": 5}', 7),
])
def test_an_undecodable_or_invalid_config_has_its_code(stdin, want):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/1/ns/net"}
    code, error = plugin(env, stdin)
    assert code == 1 and error["code"] == want, error


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_no_daemon_yet_is_try_again_later(command, tmp_path):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/1/ns/net"}
    code, error = plugin(env, json.dumps({**CONFIG, "control": str(tmp_path / "none.sock")}))
    assert code == 1 and error["code"] == 11 and "no daemon is listening" in error["msg"]
    assert error["cniVersion"] == "1.0.0"


def test_status_without_a_daemon_is_not_available(tmp_path):
    code, error = plugin({"CNI_COMMAND": "STATUS"}, json.dumps({**CONFIG, "cniVersion": "1.1.0",
                                                                  "control": str(tmp_path / "none.sock")}))
    assert code == 1 and error["code"] == 50


def test_port_names_are_stable_distinct_device_names():
    names = {port_name(f"container{i}", ifname) for i in range(200) for ifname in ("eth0", "net1")}
    assert len(names) == 400 and all(len(n) <= 15 and n.startswith("cni") for n in names)
    assert port_name("abc", "eth0") == port_name("abc", "eth0") != port_name("abc", "eth1")


def test_cni_install_writes_a_plugin_that_runs_and_a_conflist(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vswitch", "cni", "install", "--bin-dir", str(tmp_path / "bin"),
                             "--conf-dir", str(tmp_path / "net.d"), "--control", "/run/vswitch/n1.sock"],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0, result.stderr
    conflist = json.loads((tmp_path / "net.d" / "10-vswitch.conflist").read_text())
    assert conflist["name"] == "vswitch" and conflist["plugins"][0]["type"] == "vswitch-cni"
    assert conflist["plugins"][0]["control"] == "/run/vswitch/n1.sock"
    version = subprocess.run([str(tmp_path / "bin" / "vswitch-cni")], env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, text=True, timeout=30)   # no PYTHONPATH: runtimes pass none
    assert version.returncode == 0 and json.loads(version.stdout)["cniVersion"] == "1.1.0"


ADD = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/1/ns/net"}


@pytest.mark.parametrize(("mappings", "says"), [
    ({"hostPort": 8080}, "portMappings: must be a list"),
    ([8080], r"portMappings[0]: must be an object"),
    ([{"hostPort": 8080}], "portMappings[0].containerPort: must be a port between 1 and 65535, got None"),
    ([{"hostPort": 0, "containerPort": 80}], "portMappings[0].hostPort: must be a port between 1 and 65535, got 0"),
    ([{"hostPort": 70000, "containerPort": 80}], "hostPort: must be a port between 1 and 65535, got 70000"),
    ([{"hostPort": True, "containerPort": 80}], "hostPort: must be a port between 1 and 65535, got True"),
    ([{"hostPort": "8080", "containerPort": 80}], "hostPort: must be a port between 1 and 65535, got '8080'"),
    ([{"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}], "protocol: must be tcp or udp, got 'sctp'"),
    ([{"hostPort": 8080, "containerPort": 80, "hostIP": "::1"}], "hostIP: '::1' is not an IPv4 address"),
    ([{"hostPort": 8080, "containerPort": 80, "hostIP": 5}], "hostIP: must be a string, got 5"),
    ([{"hostPort": 53, "containerPort": 53, "protocol": "udp"}, {"hostPort": 53, "containerPort": 5353,
                                                                 "protocol": "UDP"}], "udp port 53 is mapped twice"),
    ([{"hostPort": 1, "containerPort": 1}] * 1025, "at most 1024 mappings, got 1025"),
])
def test_bad_port_mappings_are_code_7_before_anything_is_attached(mappings, says, tmp_path):
    """Checked before the daemon is asked anything: the socket here does not even exist."""
    config = {**CONFIG, "control": str(tmp_path / "none.sock"), "runtimeConfig": {"portMappings": mappings}}
    code, error = plugin(ADD, json.dumps(config))
    assert code == 1 and error["code"] == 7 and says in error["msg"], error


def test_port_mappings_as_podman_passes_them():
    config = {"runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "0.0.0.0", "range": 1},
        {"hostPort": 8443, "containerPort": 443, "hostIP": "192.0.2.1"},
    ]}}
    assert port_mappings(config) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "192.0.2.1"},
    ]
    assert port_mappings({}) == port_mappings({"runtimeConfig": {}}) == []
