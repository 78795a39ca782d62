"""`vswitch run` under systemd's notify protocol, against a real ``NOTIFY_SOCKET`` datagram listener; the unit file
that ships, checked by systemd-analyze."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_startup import ROOT, VSWITCH, node_config, stop

from vswitch.cli.main import systemd_unit
from vswitch.control.client import daemon_listening
from vswitch.shell.systemd import Notifier, watchdog_interval

UNIT = ROOT / "contrib" / "vswitch@.service"


def listener(address: str) -> socket.socket:
    """systemd's side: a datagram socket at ``address`` (a path, or '@name' for an abstract one)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(20)
    return sock


def messages(sock: socket.socket, until: str) -> list[dict[str, str]]:
    """The messages received up to and including the first with the field ``until``."""
    got = []
    while True:
        data = sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines())
        got.append(fields)
        if until in fields:
            return got


def run_notified(tmp_path: Path, address: str, **env: str) -> tuple[subprocess.Popen, Path]:
    control = tmp_path / "ctl.sock"
    config = node_config(tmp_path, pcap=tmp_path / "p1.pcap", control=control)
    proc = subprocess.Popen([*VSWITCH, "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "NOTIFY_SOCKET": address, **env})
    return proc, control


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_once_the_control_socket_answers_watchdog_repeatedly_stopping_on_sigterm(tmp_path, abstract):
    address = f"@vswitch-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    with listener(address) as sock:
        proc, control = run_notified(tmp_path, address, WATCHDOG_USEC="200000")
        try:
            before = messages(sock, "READY")
            assert daemon_listening(str(control), timeout=0.5), "READY=1 came before the control socket listened"
            assert before[-1]["READY"] == "1" and "serving 2 port(s)" in before[-1]["STATUS"]
            assert before[-1]["MAINPID"] == str(proc.pid)
            started = time.monotonic()
            pings = [m for _ in range(5) for m in messages(sock, "WATCHDOG")]
            elapsed = time.monotonic() - started
            assert sum("WATCHDOG" in m for m in pings) == 5
            assert 0.3 < elapsed < 2.0, f"5 pings every 0.1 s took {elapsed:.2f} s"
            proc.send_signal(signal.SIGTERM)
            last = messages(sock, "STOPPING")[-1]
            assert last["STOPPING"] == "1" and last["STATUS"] == "SIGTERM: shutting down"
            proc.wait(timeout=10)   # a second SIGTERM (stop's) would find the default handler back
        finally:
            code, err = stop(proc)
        assert code == 0, err.decode()


def test_without_a_notify_socket_or_a_watchdog_nothing_is_sent(tmp_path):
    assert not Notifier(None).notify(READY=1)
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None, "not ours"
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_a_notify_socket_that_is_gone_is_logged_once_and_the_daemon_serves_on(tmp_path):
    proc, control = run_notified(tmp_path, str(tmp_path / "nobody-listens"), WATCHDOG_USEC="100000")
    try:
        deadline = time.monotonic() + 20
        while not daemon_listening(str(control), timeout=0.5):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)   # a few watchdog periods, each failing
        assert proc.poll() is None
    finally:
        code, err = stop(proc)
    assert code == 0
    assert err.decode().count("cannot notify systemd") == 1, err.decode()


def test_a_status_with_line_breaks_stays_one_field(tmp_path):
    with listener(str(tmp_path / "n")) as sock:
        assert Notifier(str(tmp_path / "n")).notify(STATUS="reload refused:\nbad peer")
        assert sock.recv(100) == b"STATUS=reload refused: bad peer\n"


def test_the_unit_ships_in_the_package_and_systemd_accepts_it(tmp_path):
    text = systemd_unit()
    assert text == UNIT.read_text()
    for line in ("Type=notify", "ExecStart=/usr/local/bin/vswitch run -c /etc/vswitch/%i.toml",
                 "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "WatchdogSec=30",
                 "RuntimeDirectory=vswitch", "StateDirectory=vswitch", "DeviceAllow=/dev/net/tun rw"):
        assert line in text.splitlines()
    printed = subprocess.run([*VSWITCH, "systemd-unit"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert printed.stdout == text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not checked")
    # verify wants an instance and an ExecStart that exists here
    unit = tmp_path / "vswitch@node1.service"
    unit.write_text(text.replace("/usr/local/bin/vswitch", sys.executable))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr and "Unknown lvalue" not in result.stderr, result.stderr


def test_a_start_that_fails_says_stopping_with_its_reason(tmp_path):
    """A node that cannot serve (here its metrics port is taken) tells systemd why, instead of leaving it waiting
    for READY=1 until the start times out."""
    address = str(tmp_path / "notify")
    with listener(address) as sock, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        control = tmp_path / "ctl.sock"
        config = node_config(tmp_path, pcap=tmp_path / "p1.pcap", control=control)
        config.write_text(config.read_text().replace('name = "t1"',
                                                     f'name = "t1"\nmetrics = "127.0.0.1:{taken.getsockname()[1]}"'))
        result = subprocess.run([*VSWITCH, "run", "-c", str(config)], capture_output=True, cwd=ROOT, timeout=30,
                                env={**os.environ, "NOTIFY_SOCKET": address})
        assert result.returncode == 1
        [last] = messages(sock, "STOPPING")
        assert last["STOPPING"] == "1" and last["STATUS"].startswith("stopped: [node] metrics: cannot listen"), last
