"""The command line on etcd leases, as a user runs it: `network init`, a node on etcd, and the starts it refuses."""

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vswitch.testing.etcd import EtcdServer, etcd_missing, free_ports

pytestmark = pytest.mark.skipif(etcd_missing() is not None, reason=etcd_missing() or "")

ROOT = Path(__file__).parents[2]
VSWITCH = [sys.executable, "-m", "vswitch"]


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


def vswitch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*VSWITCH, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def init(etcd: EtcdServer, prefix: str, *args: str) -> subprocess.CompletedProcess:
    return vswitch("network", "init", "--etcd", etcd.endpoint, "--prefix", prefix, *args)


def node_config(tmp_path: Path, endpoint: str, prefix: str, overlay: str = "") -> Path:
    """A node with no ports (containers come by attach), its underlay on loopback."""
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nname = "n1"\ncontrol = "{tmp_path / "n1.sock"}"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[overlay]\nleases = "etcd"\npublic_ip = "127.0.0.1"\n{overlay}\n'
                    f'[etcd]\nendpoints = ["{endpoint}"]\nprefix = "{prefix}"\n')
    return path


def test_network_init_writes_flannels_config_once(etcd):
    written = init(etcd, "/cli/a", "--network", "10.244.0.0/16", "--backend", "vxlan", "--vni", "4")
    assert written.returncode == 0, written.stderr
    stored = etcd.etcdctl("get", "/cli/a/config", "--print-value-only").stdout.strip()
    assert json.loads(stored) == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}}
    assert written.stdout.startswith("wrote /cli/a/config: ")
    assert init(etcd, "/cli/a", "--network", "10.244.0.0/16", "--backend", "vxlan", "--vni", "4").stdout.startswith(
        "unchanged")
    other = init(etcd, "/cli/a", "--network", "10.10.0.0/16")
    assert other.returncode == 1 and "--force" in other.stderr
    assert init(etcd, "/cli/a", "--network", "10.10.0.0/16", "--force").returncode == 0
    assert json.loads(etcd.etcdctl("get", "/cli/a/config", "--print-value-only").stdout)["Network"] == "10.10.0.0/16"


@pytest.mark.parametrize(("args", "says"), [
    (["--network", "10.244.0.0/33"], "--network"),
    (["--network", "10.244.0.0/16", "--subnet-len", "8"], "SubnetLen"),
])
def test_network_init_names_what_is_wrong(etcd, args, says):
    result = init(etcd, "/cli/bad", *args)
    assert result.returncode == 2 and says in result.stderr
    assert etcd.etcdctl("get", "/cli/bad/config").stdout == ""


def test_network_init_says_when_etcd_cannot_be_reached():
    result = vswitch("network", "init", "--etcd", "http://127.0.0.1:9", "--network", "10.244.0.0/16")
    assert result.returncode == 1 and "127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


def test_a_node_without_etcd_and_without_a_saved_lease_refuses_to_start_and_touches_nothing(tmp_path):
    config = node_config(tmp_path, "http://127.0.0.1:9", "/cli/none")
    result = vswitch("run", "-c", str(config))
    assert result.returncode == 1 and "no earlier lease to start from" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.toml"]   # no state dir, no control socket


def test_a_local_key_that_contradicts_etcd_is_refused_before_a_lease_is_taken(etcd, tmp_path):
    init(etcd, "/cli/c", "--network", "10.244.0.0/16", "--backend", "vxlan")
    result = vswitch("run", "-c", str(node_config(tmp_path, etcd.endpoint, "/cli/c", 'backend = "udp"')))
    assert result.returncode == 1 and "overlay.backend" in result.stderr and "/cli/c/config" in result.stderr
    assert etcd.etcdctl("get", "--prefix", "/cli/c/subnets/").stdout == ""


def test_a_node_runs_on_its_lease_and_keeps_it_across_a_restart(etcd, tmp_path):
    (port,) = free_ports("127.0.0.1", 1)
    init(etcd, "/cli/d", "--network", "10.244.0.0/16", "--port", str(port))
    config = node_config(tmp_path, etcd.endpoint, "/cli/d")
    subnets = []
    for _ in range(2):
        proc = subprocess.Popen([*VSWITCH, "run", "-c", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            for line in proc.stderr:
                if "running" in line:
                    break
            leases = json.loads(vswitch("show", "leases", "--json", "-c", str(config)).stdout)
            peers = json.loads(vswitch("show", "peers", "--json", "-c", str(config)).stdout)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        (ours,) = leases
        assert ours["ours"] and ours["public_ip"] == "127.0.0.1" and ours["backend"] == "udp"
        assert peers["lease"]["subnet"] == ours["subnet"] and peers["lease"]["port"] == port
        assert peers["source"]["source"] == "etcd" and peers["source"]["state"] == "connected"
        subnets.append(ours["subnet"])
    assert subnets[0] == subnets[1]
    saved = json.loads((tmp_path / "state" / "lease.json").read_text())
    assert saved["subnet"] == subnets[0] and json.loads(saved["network_config"])["Network"] == "10.244.0.0/16"


def test_show_leases_on_a_static_node_says_where_its_leases_are(tmp_path):
    config = ROOT / "config" / "overlay-node1.toml"
    proc = subprocess.Popen([*VSWITCH, "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        for line in proc.stderr:
            if "running" in line:
                break
        result = vswitch("show", "leases", "-c", str(config))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert result.returncode == 1 and "static" in result.stderr and "show peers" in result.stderr
