"""The command line: `vswitch demo` and `vswitch run` as a user runs them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vswitch.cli import main

ROOT = Path(__file__).parents[2]


def test_demo_reports_arp_learning_and_pings(capsys, tmp_path):
    pcap = tmp_path / "demo.pcap"
    assert main(["demo", "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    assert "h1: who has 10.0.0.2? tell 10.0.0.1" in out
    assert "h1: 10.0.0.2 is at 02:00:00:00:00:02" in out
    assert "switch: learned 02:00:00:00:00:03 on port p3" in out
    assert "10/10 echo replies received." in out
    assert "invalid-source=1" in out
    assert pcap.stat().st_size > 24  # more than the pcap global header


def test_demo_rejects_bad_host_count(capsys):
    assert main(["demo", "--hosts", "1"]) == 2
    assert "--hosts must be between 2 and 50" in capsys.readouterr().err


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
        assert proc.wait(timeout=10) == 0
        rest = proc.stderr.read() or b""
        assert b"shutting down" in rest and b"node t1 stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert pcap.stat().st_size > 24
