"""The command line's flags as a user types them, against `vswitch run` in another process: one meaning for
each flag (-c is the config everywhere), global options before or after the command, log levels and JSON
logs, reload of the file -c names, attach checked before iproute2, one error prefix, and text and --json
telling the same facts."""

import io
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from vswitch.cli import logs
from vswitch.core.actions import DropReason
from vswitch.testing import Daemon

ROOT = Path(__file__).parents[2]
VSWITCH = [sys.executable, "-m", "vswitch"]


def vswitch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}   # this checkout's vswitch, from whatever directory
    return subprocess.run([*VSWITCH, *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=env)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def routed_config(control: Path, port: int, *, peers: tuple[int, ...] = (2,)) -> str:
    """A node with a router, NAT and the overlay (UDP on loopback), whose host c1 pings, every 0.1 s, the outside
    through the NAT, an address no route reaches (the router drops it) and one no lease holds (the overlay does)."""
    text = f"""
[node]
name = "flags"
control = "{control}"

[[ports]]
name = "c1"
type = "memory"
[ports.host]
address = "10.244.1.2/24"
gateway = "10.244.1.1"
ping = ["198.51.100.1", "203.0.113.1", "10.244.7.1"]
ping_interval = 0.1

[[ports]]
name = "uplink"
type = "memory"
[ports.host]
address = "198.51.100.1/24"

[[router.interfaces]]
name = "gw"
address = "10.244.1.1/24"

[[router.interfaces]]
name = "ext"
port = "uplink"
address = "198.51.100.2/24"

[[nat.masquerade]]
source = "10.244.0.0/16"
out = "ext"
exclude = ["10.244.0.0/16"]

[[nat.forward]]
protocol = "tcp"
port = 8080
to = "10.244.1.2:80"

[overlay]
backend = "udp"
network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
public_ip = "127.0.0.1"
port = {port}
"""
    for n in peers:
        text += f'\n[[overlay.peers]]\nsubnet = "10.244.{n}.0/24"\npublic_ip = "127.0.0.{n}"\n'
    return text


def bridge_config(control: Path) -> str:
    """A bridge alone (no router, no NAT); h1 pings h2 (replies: info) and 10.1.0.9, which nobody holds (a
    warning each time)."""
    return f"""
[node]
name = "bridge"
control = "{control}"
[[ports]]
name = "p1"
type = "memory"
host = {{ address = "10.1.0.1/24", ping = ["10.1.0.2", "10.1.0.9"], ping_interval = 0.1 }}
[[ports]]
name = "p2"
type = "memory"
host = {{ address = "10.1.0.2/24" }}
"""


@pytest.fixture(scope="module")
def routed(tmp_path_factory) -> Iterator[tuple[Path, Daemon]]:
    """The routed node, running, once its host has been answered through the NAT."""
    tmp = tmp_path_factory.mktemp("routed")
    path = tmp / "node.toml"
    path.write_text(routed_config(tmp / "ctl.sock", free_udp_port()))
    daemon = Daemon(path)
    try:
        daemon.start()
        daemon.wait_for("c1-host: reply from 198.51.100.1")
        yield path, daemon
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def bridged(tmp_path_factory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("bridged")
    path = tmp / "node.toml"
    path.write_text(bridge_config(tmp / "ctl.sock"))
    daemon = Daemon(path)
    try:
        daemon.start()
        daemon.wait_for("p1-host: reply from 10.1.0.2")
        yield path
    finally:
        daemon.kill()


# -- -c FILE is the config in every command; capture counts with --count --------------------------------


def test_capture_takes_the_config_with_c_and_the_count_with_count(routed, tmp_path):
    path, _ = routed
    pcap = tmp_path / "c1.pcap"
    done = vswitch("capture", "c1", "-w", str(pcap), "-c", str(path), "--count", "3")   # as the README writes it
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "vswitch capture: 3 frames from c1"
    with open(pcap, "rb") as f:
        assert len(list(dpkt.pcap.Reader(f))) == 3


def test_capture_with_the_old_count_spelling_says_what_c_means_now(tmp_path):
    done = vswitch("capture", "c1", "-w", str(tmp_path / "x.pcap"), "-c", "5")
    assert done.returncode == 2
    assert done.stderr.strip() == ("vswitch capture: -c names the daemon's config FILE, as in every command;"
                                   " for the count, use --count 5")
    assert not (tmp_path / "x.pcap").exists()


# -- global options before or after the command ---------------------------------------------------------


@pytest.mark.parametrize("before, after", [
    (["--json"], []), ([], ["--json"]), (["-v", "--json"], ["--log-level", "error"]), ([], ["--json", "-v"]),
])
def test_global_options_go_before_or_after_the_command(routed, before, after):
    path, _ = routed
    done = vswitch(*before, "show", "ports", *after, "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert [p["name"] for p in json.loads(done.stdout)] == ["c1", "uplink", "underlay"]


def test_json_is_for_the_commands_that_answer(tmp_path):
    done = vswitch("--json", "demo")
    assert done.returncode == 2
    assert "--json prints the answers of show, attach, detach, reload" in done.stderr
    assert "--log-format json" in done.stderr


def test_an_unknown_log_level_is_a_usage_error():
    done = vswitch("--log-level", "loud", "demo")
    assert done.returncode == 2
    assert "invalid choice: 'loud'" in done.stderr


# -- logging: levels, and JSON lines for collectors ---------------------------------------------------


def test_run_logs_json_lines_at_the_level_asked(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(bridge_config(tmp_path / "ctl.sock"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*VSWITCH, "--log-format", "json", "run", "-c", str(path), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        first = proc.stderr.readline()   # blocks until the first line the level lets through
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=10)
        rest = proc.stderr.read()
    assert status == 0, rest
    entries = [json.loads(line) for line in [first, *rest.splitlines()]]   # every line is one JSON object
    assert set(entries[0]) == {"time", "level", "logger", "message"}
    # h1 pings h2 (answered: info) before 10.1.0.9 (unanswered: a warning): only the warning came through
    assert (entries[0]["level"], entries[0]["logger"], entries[0]["message"]) == (
        "warning", "vswitch.daemon.node", "p1-host: no reply from 10.1.0.9")
    assert {entry["level"] for entry in entries} == {"warning"}   # no info line, not even "shutting down"
    assert entries[0]["time"].endswith("+00:00")


def test_a_json_log_line_carries_the_exception():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("vswitch.test-json-log")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            log.error("lookup failed: %s", "twice", exc_info=exc)
        log.warning("plain")
    finally:
        log.removeHandler(handler)
    failed, plain = map(json.loads, out.getvalue().splitlines())
    assert (failed["level"], failed["logger"], failed["message"]) == ("error", "vswitch.test-json-log",
                                                                      "lookup failed: twice")
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("KeyError: 'missing'")
    assert "exception" not in plain


# -- reload: the file -c names -------------------------------------------------------------------------


def test_reload_reads_the_file_the_client_names(tmp_path):
    control, port = tmp_path / "ctl.sock", free_udp_port()
    own, other = tmp_path / "node.toml", tmp_path / "other.toml"
    own.write_text(routed_config(control, port))
    other.write_text(routed_config(control, port, peers=(2, 3)))
    daemon = Daemon(own)
    try:
        daemon.start()
        # a relative path, from another directory than the daemon's: the daemon reads what the client meant
        done = vswitch("reload", "-c", "other.toml", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [f"reloaded {other}: 1 peers added, 0 removed, 0 changed, 1 unchanged",
                                            "  added 10.244.3.0/24 at 127.0.0.3"]
        assert [p["subnet"] for p in daemon.show("peers")["peers"]] == ["10.244.2.0/24", "10.244.3.0/24"]

        # the daemon runs from that file now: a reload naming no file (--control alone) reads it, as SIGHUP does
        other.write_text(routed_config(control, port, peers=(3,)))
        done = vswitch("reload", "--json", "--control", str(control))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"config": str(other), "added": [], "removed": ["10.244.2.0/24 at 127.0.0.2"],
                                           "changed": [], "unchanged": 1}
        other.write_text(routed_config(control, port, peers=(3, 4, 5)))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("reloaded leases: 2 added, 0 removed, 0 changed, 1 unchanged")
        running = ["10.244.3.0/24", "10.244.4.0/24", "10.244.5.0/24"]
        assert [p["subnet"] for p in daemon.show("peers")["peers"]] == running

        # a file for another daemon is refused, naming what differs, and nothing changes
        stranger = tmp_path / "stranger.toml"
        stranger.write_text(routed_config(control, port + 1))
        done = vswitch("reload", "-c", str(stranger))
        assert done.returncode == 1
        assert done.stderr == "vswitch reload: overlay.port changed: a restart takes those (peers reload alone)\n"
        assert [p["subnet"] for p in daemon.show("peers")["peers"]] == running
        assert daemon.stop() == 0
    finally:
        daemon.kill()


# -- attach: checked as the config checks a port, before iproute2 -------------------------------------


@pytest.mark.parametrize("flags, error", [
    (["--address", "10.0.0.5"], "--address: '10.0.0.5' needs a prefix length, like 10.0.0.1/24"),
    (["--address", "10.0.0.500/24"], "--address: '10.0.0.500/24' is not an IPv4 address with prefix"),
    (["--address", "10.0.0.5/24", "--gateway", "10.0.0"], "--gateway: '10.0.0' is not an IPv4 address"),
    (["--address", "10.0.0.5/24", "--mtu", "20"], "--mtu: must be between 68 and 65535, got 20"),
])
def test_attach_refuses_what_the_config_would_before_asking_the_daemon(tmp_path, flags, error):
    # no daemon is listening: the flag is refused before any connection is tried
    done = vswitch("attach", "c9", "--name", "c9", *flags, "--control", str(tmp_path / "none.sock"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"vswitch attach: {error}")
    assert "no daemon is listening" not in done.stderr


def test_attach_refuses_a_bad_device_name_naming_the_flag(tmp_path):
    done = vswitch("attach", "c9", "--name", "eth0:1", "--address", "10.0.0.5/24", "--control", str(tmp_path / "x"))
    assert (done.returncode, done.stderr.split(": ", 2)[:2]) == (2, ["vswitch attach", "--name"])


# -- one error prefix -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, error", [
    (["attach", "c9", "--name", "c1", "--address", "10.244.1.9/24"], "vswitch attach: port 'c1' already exists"),
    (["detach", "zz"], "vswitch detach: no port named 'zz'"),
    (["show", "nat", "--limit", "0"], "vswitch show: 'limit' must be at least 1, got 0"),
    (["show", "lease"], "vswitch show: cannot show 'lease' (available: ports, fdb, arp, routes, nat, peers, leases, stats)"),
    (["capture", "p9", "-w", "-"], "vswitch capture: no port named 'p9' (ports: c1, uplink, underlay)"),
])
def test_an_error_names_its_command_once(routed, args, error):
    path, _ = routed
    done = vswitch(*args, "-c", str(path))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == error


def test_a_refusal_with_json_is_json(bridged):
    done = vswitch("show", "nat", "--json", "-c", str(bridged))
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"error": "this daemon has no router: add [[router.interfaces]] to its config"}
    assert done.stderr == ""


# -- text and --json tell the same facts ------------------------------------------------------------------


def test_show_nat_lists_its_rules_in_the_table_as_in_json(routed):
    path, _ = routed
    rules = json.loads(vswitch("show", "nat", "--json", "-c", str(path)).stdout)["rules"]
    assert rules == {
        "masquerade": [{"source": "10.244.0.0/16", "out": "ext", "exclude": ["10.244.0.0/16"]}],
        "forward": [{"protocol": "tcp", "port": 8080, "to": "10.244.1.2", "to_port": 80, "interface": None}],
    }
    lines = vswitch("show", "nat", "-c", str(path)).stdout.splitlines()
    assert lines[:2] == ["masquerade 10.244.0.0/16 out ext except to 10.244.0.0/16",
                         "forward tcp port 8080 to 10.244.1.2:80"]
    assert lines[2].split()[:3] == ["proto", "state", "nat"]


def test_show_stats_lists_the_drops_that_counted_unless_all(routed):
    path, daemon = routed
    daemon.wait_for("c1-host: no reply from 10.244.7.1")   # both drops have happened
    counted = json.loads(vswitch("show", "stats", "--json", "-c", str(path)).stdout)
    assert {"no-route", "overlay-no-lease"} <= set(counted["drops"])
    assert all(n > 0 for n in counted["drops"].values())
    assert "truncated" not in counted["drops"]
    every = json.loads(vswitch("show", "stats", "--json", "--all", "-c", str(path)).stdout)
    assert list(every["drops"]) == [str(reason) for reason in DropReason]
    assert every["drops"]["truncated"] == 0

    text = vswitch("show", "stats", "-c", str(path)).stdout.splitlines()
    start = text.index("drops:") + 2   # after the table's header
    rows = [line.split() for line in itertools.takewhile(lambda line: line.startswith("  "), text[start:])]
    assert {reason for reason, _ in rows} >= set(counted["drops"])   # (taken a moment later)
    assert all(int(n) > 0 for _, n in rows)
    text_all = vswitch("show", "stats", "--all", "-c", str(path)).stdout.splitlines()
    assert any(line.split() == ["truncated", "0"] for line in text_all)


def test_show_stats_shows_the_routers_own_drops(routed):
    path, daemon = routed
    daemon.wait_for("c1-host: no reply from 203.0.113.1")
    stats = json.loads(vswitch("show", "stats", "--json", "-c", str(path)).stdout)
    router = stats["router"]["drops"]
    assert set(router) == {"no-route"}   # the overlay's no-lease drops are not the router's
    assert 0 < router["no-route"] <= stats["drops"]["no-route"]
    text = vswitch("show", "stats", "-c", str(path)).stdout
    assert "  dropped by the router: " in text and " no-route" in text.split("dropped by the router: ")[1]


def test_a_reader_that_stops_early_is_no_error(routed):
    path, _ = routed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(f"{sys.executable} -m vswitch show stats --all --json -c {path} | head -1", shell=True,
                          capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    assert done.stdout == "{\n"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr

