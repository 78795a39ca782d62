"""`vswitch show` and `vswitch capture` as a user runs them, against `vswitch run`
in another process; tshark decodes the live capture from a pipe."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vswitch.testing import Daemon

VSWITCH = [sys.executable, "-m", "vswitch"]
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (CI installs it)")


def _config(tmp_path: Path) -> tuple[Path, Path]:
    control = tmp_path / "run" / "ctl.sock"
    path = tmp_path / "node.toml"
    path.write_text(f"""
[node]
name = "t1"
control = "{control}"
[[ports]]
name = "p1"
type = "memory"
host = {{ address = "10.1.0.1/24", mac = "{MAC1}", ping = ["10.1.0.2"], ping_interval = 0.05 }}
[[ports]]
name = "p2"
type = "memory"
host = {{ address = "10.1.0.2/24", mac = "{MAC2}" }}
""")
    return path, control


def _vswitch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VSWITCH, *args], capture_output=True, text=True, timeout=30)


@needs_tshark
def test_show_and_capture_against_a_running_daemon(tmp_path):
    config, control = _config(tmp_path)
    daemon = Daemon(config)
    capture = tshark = None
    try:
        daemon.start(ready="running")
        daemon.wait_for("p1-host: reply from 10.1.0.2")

        fdb = _vswitch("show", "fdb", "-c", str(config))
        assert fdb.returncode == 0, fdb.stderr
        rows = [line.split() for line in fdb.stdout.splitlines()]
        assert rows[0] == ["port", "mac", "type", "age"]
        assert ["p1", MAC1, "learned"] in [row[:3] for row in rows]
        assert ["p2", MAC2, "learned"] in [row[:3] for row in rows]

        ports = _vswitch("show", "ports", "--json", "-c", str(config))
        assert ports.returncode == 0, ports.stderr
        status = {p["name"]: p for p in json.loads(ports.stdout)}
        assert set(status) == {"p1", "p2"}
        assert all(p["up"] and p["type"] == "memory" and p["rx"]["frames"] > 0 for p in status.values())

        # vswitch capture p1 -w - --count 5 --control PATH | tshark -r -
        capture = subprocess.Popen([*VSWITCH, "capture", "p1", "-w", "-", "--count", "5", "--control", str(control)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tshark = subprocess.Popen(["tshark", "-r", "-", "-T", "fields", "-e", "frame.protocols"],
                                  stdin=capture.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        capture.stdout.close()  # tshark holds the pipe now
        decoded, errors = tshark.communicate(timeout=30)
        assert tshark.returncode == 0, errors
        assert capture.wait(timeout=10) == 0
        assert b"5 frames from p1" in capture.stderr.read()
        protocols = decoded.splitlines()
        assert len(protocols) == 5
        assert any(p.startswith("eth:ethertype:ip:icmp") for p in protocols)

        assert daemon.stop(signal.SIGTERM) == 0
        assert not control.exists()
    finally:
        for proc in (capture, tshark):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        daemon.kill()


@needs_tshark
def test_ctrl_c_leaves_a_valid_pcap(tmp_path):
    config, control = _config(tmp_path)
    pcap = tmp_path / "p2.pcap"
    daemon = Daemon(config)
    capture = None
    try:
        daemon.start(ready="running")
        capture = subprocess.Popen([*VSWITCH, "capture", "p2", "-w", str(pcap), "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not pcap.exists() or pcap.stat().st_size < 24 + 10 * (16 + 98):  # poll: ten echo frames
            assert time.monotonic() < deadline, "the capture wrote too little"
            assert capture.poll() is None, capture.stderr.read()
            time.sleep(0.02)
        capture.send_signal(signal.SIGINT)
        assert capture.wait(timeout=10) == 130   # Ctrl-C, quietly
        summary = capture.stderr.read()
        assert "Traceback" not in summary
        frames = int(summary.split(" frames from p2")[0].split()[-1])
        assert frames >= 10

        decoded = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.number"],
                                 capture_output=True, text=True, timeout=30)
        assert decoded.returncode == 0, decoded.stderr  # a record cut in half would be an error here
        assert len(decoded.stdout.splitlines()) == frames
    finally:
        if capture is not None and capture.poll() is None:
            capture.kill()
            capture.wait()
        daemon.kill()


def test_captures_that_never_read_do_not_lock_out_show(tmp_path):
    """The audit's case: more `capture` clients than there are capture slots, none of them reading."""
    config, control = _config(tmp_path)
    daemon = Daemon(config)
    clients = []
    try:
        daemon.start(ready="running")
        daemon.wait_for("p1-host: reply from 10.1.0.2")  # p1 has steady traffic
        for _ in range(20):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.settimeout(10)
            client.connect(str(control))
            client.sendall(b'{"command": "capture", "port": "p1"}\n')
        # Each takes its answer (and what came with it), then never reads again.
        answers = [client.recv(4096).split(b"\n", 1)[0] for client in clients]
        assert [json.loads(a)["ok"] for a in answers] == [True] * 16 + [False] * 4
        assert json.loads(answers[-1])["error"] == "too many captures at once (at most 16)"

        started = time.monotonic()
        stats = _vswitch("show", "stats", "--json", "-c", str(config))
        assert stats.returncode == 0, stats.stderr
        assert time.monotonic() - started < 5  # the answer comes at once, not after some timeout
        result = json.loads(stats.stdout)
        assert result["control"]["captures"] == {"limit": 16, "active": 16, "refused": 4}
        assert result["control"]["requests"]["refused"] == 0
        assert [c["port"] for c in result["captures"]] == ["p1"] * 16

        table = _vswitch("show", "stats", "-c", str(config))
        assert "control: 1/16 requests, 16/16 captures; refused 0 requests, 4 captures;" in table.stdout

        assert daemon.stop(signal.SIGTERM) == 0  # the open captures do not hold the shutdown up
    finally:
        for client in clients:
            client.close()
        daemon.kill()
