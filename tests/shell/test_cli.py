"""The command line: `vswitch demo` and `vswitch run` as a user runs them."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from vswitch import config
from vswitch.cli.demo import run_demo
from vswitch.cli.main import main

ROOT = Path(__file__).parents[2]


def test_demo_pings_across_the_bridge_and_the_overlay(capsys, tmp_path):
    pcap = tmp_path / "demo.pcap"
    assert main(["demo", "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert "c1: who has 10.244.1.3? tell 10.244.1.2" in lines                 # ARP on node1's bridge
    assert "c1: 10.244.1.3 is at 02:00:00:00:01:03" in lines
    assert "node1 bridge: learned 02:00:00:00:01:03 on port c2" in lines
    assert "c1: who has 10.244.1.1? tell 10.244.1.2" in lines                 # the gateway, for node2
    path = lines.index("path: c1 → node1 bridge → node1 router (gw 10.244.1.1)")
    assert lines[path + 1:path + 3] == ["→ overlay: udp datagrams to 10.99.0.2:8285, the peer holding 10.244.2.0/24",
                                        "→ node2 router → node2 bridge → c3"]
    assert ("seen on the ports: 3 requests left node1 as udp datagrams, 3 arrived at node2,") in lines
    assert any(line.startswith("and reached c3 with TTL 60 ") for line in lines)
    assert "3. Every host pings every other: 12/12 replies (4 on a bridge, 8 across the overlay)" in lines
    assert "c1 sends a frame with a multicast source address: node1's bridge drops it (invalid-source = 1)" in lines
    assert ("10.99.0.66, not a peer, sends a well-formed datagram: node1's overlay drops it"
            " (overlay-unknown-peer = 1)") in lines
    assert any(line.startswith("then c1 pings c3 again: 1/1 replies") for line in lines)
    assert "node1 drops: invalid-source=1, overlay-unknown-peer=1" in lines
    assert "refused: 1 overlay-unknown-peer" in lines                           # node1's peers table
    assert "19/19 echo replies received." in lines
    assert pcap.stat().st_size > 24  # more than the pcap global header


def _peer_row(out: str, subnet: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [subnet])


@pytest.mark.parametrize("backend, port, size", [("udp", 8285, 84), ("vxlan", 8472, 84 + 8 + 14)])
def test_demo_summary_counts_what_crossed_the_overlay(backend, port, size):
    out = io.StringIO()
    summary = trio.run(lambda: run_demo(backend=backend, out=out))
    assert summary["received"] == summary["sent"] == 3 + 3 + 12 + 1
    # Across: the 3-ping exchange, 8 of the mesh, and the one after the bad input.
    assert summary["overlay_pings"] == {"sent": 12, "received": 12}
    for node, other in (("node1", "10.244.2.0/24"), ("node2", "10.244.1.0/24")):
        (peer,) = summary["peers"][node]
        assert (peer["subnet"], peer["port"]) == (other, port)
        # Each node sends 6 requests and 6 replies to the other; node1 also answers nothing from the stranger.
        assert peer["tx_packets"] == peer["rx_packets"] == 12
        assert peer["tx_bytes"] == peer["rx_bytes"] == 12 * size
        assert peer["rx_dropped"] == 0
        assert _peer_row(out.getvalue(), other)[3:] == ["12", str(12 * size), "12", str(12 * size), "0"]
    assert summary["invalid_source_drops"] == 1
    assert summary["unknown_peer_drops"] == 1
    assert summary["drops"] == {"node1": {"invalid-source": 1, "overlay-unknown-peer": 1}, "node2": {}}
    ttl = {"udp": 60, "vxlan": 62}[backend]
    assert f"and reached c3 with TTL {ttl} " in out.getvalue()


def test_demo_hosts_per_node(capsys):
    assert main(["demo", "--hosts", "3", "--backend", "vxlan"]) == 0
    out = capsys.readouterr().out
    assert "c6         10.244.2.4/24" in out
    assert "3. Every host pings every other: 30/30 replies (12 on a bridge, 18 across the overlay)" in out
    assert "37/37 echo replies received." in out
    assert "→ overlay: vxlan datagrams to 10.99.0.2:8472, the peer holding 10.244.2.0/24" in out


def test_demo_rejects_bad_host_count(capsys):
    assert main(["demo", "--hosts", "1"]) == 2
    assert "--hosts must be between 2 and 50" in capsys.readouterr().err


def test_demo_print_config_prints_the_configs_it_runs(capsys):
    assert main(["demo", "--print-config", "--backend", "vxlan"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("\n\n# vswitch demo, node2")
    node1, node2 = config.loads(first), config.loads("# vswitch demo, node2" + second)
    assert (node1.node.name, node2.node.name) == ("node1", "node2")
    assert node1.overlay.backend == node2.overlay.backend == "vxlan"
    assert [p.subnet for p in node1.overlay.peers] == [node2.overlay.subnet]
    assert [p.vtep_mac for p in node2.overlay.peers] == [node1.overlay.vtep_mac]


def test_demo_unwritable_pcap_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--pcap", str(tmp_path / "missing" / "demo.pcap")]) == 1
    err = capsys.readouterr().err
    assert f"vswitch demo: cannot write pcap {tmp_path / 'missing' / 'demo.pcap'}: No such file or directory" in err


def test_run_reports_config_error_with_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[bridge]\nageing = -5\n")
    assert main(["run", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bridge.ageing" in err and "positive" in err


def _wait_for(stream, text: str, timeout: float) -> str:
    """Read lines from a subprocess stream until one contains ``text``."""
    deadline = time.monotonic() + timeout
    os.set_blocking(stream.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline:
        chunk = stream.read()
        if chunk:
            buffer += chunk
            if text.encode() in buffer:
                return buffer.decode()
        else:
            time.sleep(0.05)
    raise AssertionError(f"{text!r} not seen within {timeout}s; got:\n{buffer.decode()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_pings_then_stops_cleanly_on_signal(tmp_path, signum):
    cfg = tmp_path / "node.toml"
    pcap = tmp_path / "p1.pcap"
    cfg.write_text(f"""
[node]
name = "t1"
[[ports]]
name = "p1"
type = "memory"
pcap = "{pcap}"
host = {{ address = "10.1.0.1/24", ping = ["10.1.0.2"], ping_interval = 0.2 }}
[[ports]]
name = "p2"
type = "memory"
host = {{ address = "10.1.0.2/24" }}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vswitch", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        _wait_for(proc.stderr, "p1-host: reply from 10.1.0.2", timeout=20)
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == (130 if signum == signal.SIGINT else 0)   # Ctrl-C: as shells expect
        rest = proc.stderr.read() or b""
        assert b"shutting down" in rest and b"node t1 stopped" in rest and b"Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert pcap.stat().st_size > 24


def _free_udp_port(*addresses: str) -> int:
    """A UDP port free on every one of ``addresses`` right now."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((addresses[0], 0))
            port = first.getsockname()[1]
            others = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in addresses[1:]]
            try:
                for sock, address in zip(others, addresses[1:]):
                    sock.bind((address, port))
                return port
            except OSError:
                continue
            finally:
                for sock in others:
                    sock.close()
    pytest.skip(f"no UDP port free on all of {addresses}")


def test_the_overlay_example_pair_runs_over_real_udp_on_loopback(tmp_path):
    """config/overlay-node{1,2}.toml as the comments say to run them: two processes, UDP on 127.0.0.1 and .2."""
    port = _free_udp_port("127.0.0.1", "127.0.0.2")
    procs, sockets = [], []
    try:
        for n in (1, 2):
            text = (ROOT / "config" / f"overlay-node{n}.toml").read_text()
            control = tmp_path / f"node{n}.sock"
            text = text.replace(f'"/tmp/vswitch-overlay-node{n}.sock"', f'"{control}"')
            text = text.replace("\n[[overlay.peers]]", f"\nport = {port}\n\n[[overlay.peers]]", 1)
            (tmp_path / f"node{n}.toml").write_text(text)
            sockets.append(control)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vswitch", "run", "-c", str(tmp_path / f"node{n}.toml")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
            ))
        _wait_for(procs[0].stderr, "c1-host: reply from 10.244.2.2", timeout=20)
        _wait_for(procs[1].stderr, "c3-host: reply from 10.244.1.2", timeout=20)
        show = subprocess.run(
            [sys.executable, "-m", "vswitch", "show", "peers", "--json", "--control", str(sockets[0])],
            capture_output=True, text=True, timeout=20, cwd=ROOT, check=True,
        )
        peers = json.loads(show.stdout)
        assert peers["lease"]["public_ip"] == "127.0.0.1" and peers["lease"]["port"] == port
        (peer,) = peers["peers"]
        assert (peer["subnet"], peer["public_ip"]) == ("10.244.2.0/24", "127.0.0.2")
        assert peer["tx_packets"] > 0 and peer["rx_packets"] > 0
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=10) for proc in procs] == [0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
