"""The daemon links real containers: TAP devices in network namespaces, the
kernel's own ARP, ping and TCP on both ends."""

import json
import shutil
import signal
import sys

import pytest
from netkit import (
    in_ns,
    link_exists,
    link_mac,
    ping,
    requires_root,
    sh,
    tap_config,
    unique,
)

pytestmark = requires_root
VSWITCH = (sys.executable, "-m", "vswitch")


def _node(tmp_path, namespaces, count, *, pcap_first=False):
    """A config with ``count`` containers, each a namespace with one TAP on the bridge."""
    spaces = [namespaces.create() for _ in range(count)]
    ports = []
    for i, ns in enumerate(spaces):
        port = {"name": unique("t"), "netns": ns, "address": f"10.77.0.{i + 1}/24"}
        if pcap_first and i == 0:
            port["pcap"] = str(tmp_path / "c0.pcap")
        ports.append(port)
    control = tmp_path / "ctl.sock"
    path = tmp_path / "node.toml"
    path.write_text(tap_config("sys", control, ports))
    return path, spaces, ports


def test_two_containers_ping_and_fdb_shows_them(tmp_path, namespaces, daemons):
    path, (a, b), ports = _node(tmp_path, namespaces, 2)
    daemon = daemons(path)
    assert ping(a, "10.77.0.2") and ping(b, "10.77.0.1")

    fdb = {entry["mac"]: entry["port"] for entry in daemon.show("fdb")}
    assert fdb[link_mac(a, ports[0]["name"])] == ports[0]["name"]
    assert fdb[link_mac(b, ports[1]["name"])] == ports[1]["name"]
    human = daemon.cli("show", "fdb").stdout
    assert link_mac(a, ports[0]["name"]) in human


def test_four_containers_every_pair_pings(tmp_path, namespaces, daemons):
    path, spaces, _ = _node(tmp_path, namespaces, 4)
    daemons(path)
    failures = [
        (i, j) for i, ns in enumerate(spaces) for j in range(4)
        if i != j and not ping(ns, f"10.77.0.{j + 1}", count=1)
    ]
    assert failures == []


@pytest.mark.skipif(shutil.which("iperf3") is None or shutil.which("tshark") is None,
                    reason="needs iperf3 and tshark (CI installs them)")
def test_iperf3_tcp_between_containers_and_tshark_reads_the_capture(tmp_path, namespaces, daemons):
    path, (a, b), configured = _node(tmp_path, namespaces, 2, pcap_first=True)
    daemon = daemons(path)
    server = in_ns(b, "iperf3", "-s", "-D", "-1", "--pidfile", str(tmp_path / "iperf3.pid"))
    assert server.returncode == 0
    result = None
    for _ in range(20):  # the daemonised server may need a moment to listen
        # paced, so the capture stays small for tshark; `python -m bench tap` measures speed
        result = in_ns(a, "iperf3", "-c", "10.77.0.2", "-t", "2", "-b", "100M", "-J", check=False, timeout=30)
        if result.returncode == 0:
            break
    assert result is not None and result.returncode == 0, result.stdout[-2000:]
    report = json.loads(result.stdout)
    received = report["end"]["sum_received"]
    assert received["bytes"] > 1_000_000 and received["bits_per_second"] > 0
    # the client's stack handed over TSO super-frames, and the server's TAP took them whole
    ports = {p["name"]: p for p in json.loads(sh(*VSWITCH, "show", "ports", "--json", "-c", str(path)).stdout)}
    client, server_port = (ports[p["name"]] for p in configured)
    assert client["tso"] and server_port["tso"]
    assert client["rx"]["super_frames"] > 0 and server_port["tx"]["super_frames"] > 0

    daemon.stop()
    pcap = tmp_path / "c0.pcap"
    tcp = sh("tshark", "-r", str(pcap), "-Y", "tcp.port == 5201", "-T", "fields", "-e", "frame.number",
             timeout=120).stdout
    assert len(tcp.splitlines()) > 100
    # The capture holds what the wire would: the super-frames cut into segments of the MTU at most, every
    # IP and TCP checksum valid (tshark checks them when asked). iperf3's payload is random bytes: decode it
    # as data, or heuristic dissectors guess protocols in it.
    checked = ("-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-d", "tcp.port==5201,data")
    bad = sh("tshark", "-r", str(pcap), *checked,
             "-Y", "_ws.malformed || _ws.expert.severity >= error || ip.checksum.status == 0 "
                   "|| tcp.checksum.status == 0 || frame.len > 1514", timeout=120).stdout
    assert bad.strip() == ""


def test_station_move_to_another_port_is_followed(tmp_path, namespaces, daemons):
    a, b = namespaces.create(), namespaces.create()
    first, second, other = unique("t"), unique("t"), unique("t")
    control = tmp_path / "ctl.sock"
    path = tmp_path / "node.toml"
    path.write_text(tap_config("sys", control, [
        {"name": first, "netns": a, "address": "10.77.0.1/24"},
        {"name": second, "netns": a},
        {"name": other, "netns": b, "address": "10.77.0.2/24"},
    ]))
    daemon = daemons(path)
    assert ping(b, "10.77.0.1")
    mac = link_mac(a, first)
    assert {e["mac"]: e["port"] for e in daemon.show("fdb")}[mac] == first

    # The container's address and MAC move to its other link; the first goes down.
    sh("ip", "-n", a, "link", "set", first, "down")
    sh("ip", "-n", a, "addr", "flush", "dev", first)
    sh("ip", "-n", a, "link", "set", second, "address", mac)
    sh("ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", second)

    assert ping(a, "10.77.0.2")  # frames from the new port teach the bridge
    assert ping(b, "10.77.0.1")
    assert {e["mac"]: e["port"] for e in daemon.show("fdb")}[mac] == second
    assert daemon.show("stats")["fdb"]["moved"] >= 1


def test_deleting_a_container_device_leaves_the_others_working(tmp_path, namespaces, daemons):
    path, (a, b, c), ports = _node(tmp_path, namespaces, 3)
    daemon = daemons(path)
    assert ping(a, "10.77.0.3")
    sh("ip", "-n", c, "link", "del", ports[2]["name"])
    daemon.wait_for(f"port {ports[2]['name']} failed")
    assert ping(a, "10.77.0.2") and ping(b, "10.77.0.1")
    status = {p["name"]: p for p in daemon.show("ports")}
    assert status[ports[2]["name"]]["up"] is False
    assert status[ports[0]["name"]]["up"] is True
    assert daemon.show("stats")["port_failures"] == 1
    assert daemon.log.count(f"port {ports[2]['name']} failed") == 1  # logged once


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_devices(tmp_path, namespaces, daemons, sig):
    path, spaces, ports = _node(tmp_path, namespaces, 2)
    daemon = daemons(path)
    assert all(link_exists(ns, p["name"]) for ns, p in zip(spaces, ports))
    assert daemon.stop(sig) == (130 if sig == signal.SIGINT else 0)
    assert "stopped" in daemon.log
    assert not any(link_exists(ns, p["name"]) for ns, p in zip(spaces, ports))
    assert not (tmp_path / "ctl.sock").exists()


def test_attach_and_detach_at_run_time(tmp_path, namespaces, daemons):
    path, (a,), _ = _node(tmp_path, namespaces, 1)
    daemon = daemons(path)
    b = namespaces.create()
    name = unique("t")
    daemon.cli("attach", b, "--name", name, "--address", "10.77.0.9/24")
    assert link_exists(b, name)
    assert ping(b, "10.77.0.1")
    assert name in {p["name"] for p in daemon.show("ports")}
    daemon.cli("detach", name)
    assert not link_exists(b, name)
    assert not ping(a, "10.77.0.9", count=1, wait=1)


def test_missing_namespace_is_a_clear_error(tmp_path):
    path = tmp_path / "node.toml"
    missing = unique("nx")
    path.write_text(tap_config("sys", tmp_path / "ctl.sock", [{"name": unique("t"), "netns": missing}]))
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "vswitch", "run", "-c", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"network namespace '{missing}' does not exist" in result.stderr
    assert "ip netns add" in result.stderr
    assert "Traceback" not in result.stderr
