"""A refused start touches nothing, and Ctrl-C ends any command quietly with 130, its files whole.

These run `vswitch` as a user does, in subprocesses: a second daemon on a
running one's config, a start whose device cannot be opened, Ctrl-C in the
middle of the demo and of a daemon's run.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

ROOT = Path(__file__).parents[2]
VSWITCH = [sys.executable, "-m", "vswitch"]


def node_config(tmp_path: Path, *, pcap: Path, control: Path | None, extra: str = "") -> Path:
    """Two memory ports, a host on the first pinging the second every 50 ms, recorded to ``pcap``."""
    path = tmp_path / f"node-{len(list(tmp_path.glob('node-*.toml')))}.toml"
    path.write_text(f"""
[node]
name = "t1"
{f'control = "{control}"' if control else ""}
[[ports]]
name = "p1"
type = "memory"
pcap = "{pcap}"
host = {{ address = "10.1.0.1/24", ping = ["10.1.0.2"], ping_interval = 0.05 }}
[[ports]]
name = "p2"
type = "memory"
host = {{ address = "10.1.0.2/24" }}
{extra}
""")
    return path


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([*VSWITCH, "run", "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT)


def wait_for(proc: subprocess.Popen, text: str, *, stream: str = "stderr", timeout: float = 20) -> bytes:
    """What ``proc`` wrote on ``stream`` until a line with ``text`` (fails instead of hanging)."""
    pipe = getattr(proc, stream)
    os.set_blocking(pipe.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        chunk = pipe.read()
        if chunk:
            seen += chunk
            continue
        assert proc.poll() is None, f"exited ({proc.returncode}) before {text!r}: {seen.decode()[-2000:]}"
        assert time.monotonic() < deadline, f"{text!r} not seen within {timeout} s: {seen.decode()[-2000:]}"
        time.sleep(0.02)
    return seen


def records(path: Path) -> list[bytes]:
    """Every record of a pcap file; dpkt raises on a record cut short, and the file must end on a record."""
    with open(path, "rb") as f:
        frames = [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]
    assert path.stat().st_size == 24 + sum(16 + len(f) for f in frames), "a partial record at the end"
    return frames


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, bytes]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    os.set_blocking(proc.stderr.fileno(), True)
    return code, proc.stderr.read()


def test_a_second_daemon_is_refused_before_it_touches_the_first_ones_pcap(tmp_path):
    pcap, control = tmp_path / "p1.pcap", tmp_path / "ctl.sock"
    config = node_config(tmp_path, pcap=pcap, control=control)
    first = start(config)
    try:
        wait_for(first, "p1-host: reply from 10.1.0.2")
        before = pcap.read_bytes()
        second = subprocess.run([*VSWITCH, "run", "-c", str(config)], capture_output=True, text=True,
                                timeout=30, cwd=ROOT)
        assert second.returncode == 1
        assert f"another daemon is already listening on {control}" in second.stderr
        wait_for(first, "p1-host: reply from 10.1.0.2")   # still running, still recording
        after = pcap.read_bytes()
        assert len(after) > len(before) and after.startswith(before)
        assert control.exists()
    finally:
        code, err = stop(first)
    assert code == 0, err.decode()
    assert len(records(pcap)) > 2


def test_a_pcap_another_daemon_writes_is_refused_and_left_whole(tmp_path):
    pcap = tmp_path / "p1.pcap"
    first = start(node_config(tmp_path, pcap=pcap, control=tmp_path / "one.sock"))
    try:
        wait_for(first, "p1-host: reply from 10.1.0.2")
        before = pcap.read_bytes()
        second = subprocess.run([*VSWITCH, "run", "-c", str(node_config(tmp_path, pcap=pcap, control=tmp_path / "two.sock"))],
                                capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert second.returncode == 1
        assert f"pcap {pcap} is being written by another process" in second.stderr
        assert not (tmp_path / "two.sock").exists()   # its control socket was removed again
        assert pcap.read_bytes().startswith(before)
    finally:
        code, err = stop(first)
    assert code == 0, err.decode()
    records(pcap)


def test_a_start_refused_for_a_device_leaves_files_and_sockets_untouched(tmp_path):
    pcap, control = tmp_path / "p1.pcap", tmp_path / "ctl.sock"
    pcap.write_bytes(b"an earlier capture, kept")
    config = node_config(tmp_path, pcap=pcap, control=control, extra="""
[[ports]]
name = "up"
type = "packet"
device = "vsnonexist0"
""")
    refused = subprocess.run([*VSWITCH, "run", "-c", str(config)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert refused.returncode == 1
    assert "vsnonexist0" in refused.stderr and "Traceback" not in refused.stderr
    assert pcap.read_bytes() == b"an earlier capture, kept"
    assert not control.exists()
    assert not list(tmp_path.glob("*.internal-errors.pcap"))


def test_ctrl_c_during_the_demo_exits_130_quietly_with_a_whole_pcap(tmp_path):
    pcap = tmp_path / "demo.pcap"
    # --hosts 50: every host pings every other, about ten seconds of work to interrupt
    demo = subprocess.Popen([*VSWITCH, "demo", "--hosts", "50", "--pcap", str(pcap)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(demo, "reached c51 with TTL", stream="stdout")   # the end of step 2
        time.sleep(1.0)   # well inside step 3, the mesh
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=10)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    err = demo.stderr.read().decode()
    assert code == 130
    assert err == ""   # quietly: no traceback, no exception group
    assert len(records(pcap)) > 100


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_daemon_stopped_by_a_signal_leaves_a_whole_pcap(tmp_path, sig, status):
    pcap = tmp_path / "p1.pcap"
    daemon = start(node_config(tmp_path, pcap=pcap, control=None))
    wait_for(daemon, "p1-host: reply from 10.1.0.2")
    time.sleep(0.2)
    code, err = stop(daemon, sig)
    assert code == status
    assert b"Traceback" not in err and b"stopped" in err
    assert len(records(pcap)) > 2


def test_an_empty_config_is_refused_and_a_portless_one_is_warned_about(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    refused = subprocess.run([*VSWITCH, "run", "-c", str(empty)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert refused.returncode == 2
    assert "configuration error" in refused.stderr and "config: nothing to run" in refused.stderr

    portless = tmp_path / "portless.toml"
    portless.write_text(f'[node]\ncontrol = "{tmp_path / "ctl.sock"}"\n')
    daemon = start(portless)
    try:
        seen = wait_for(daemon, "no ports yet")
    finally:
        code, _ = stop(daemon)
    assert b"vswitch attach" in seen and code == 0
