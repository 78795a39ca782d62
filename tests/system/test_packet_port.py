"""An AF_PACKET port bridges an existing interface (a veth) to the containers."""

import json
import shutil

import pytest
from netkit import in_ns, link_mac, ping, requires_root, sh, unique

pytestmark = requires_root


@pytest.fixture
def uplink(namespaces):
    """A veth pair: one end (returned) in this namespace for the daemon, the other as eth0 of an outside host."""
    outside = namespaces.create()
    end = unique("u")
    sh("ip", "link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", outside)
    try:
        sh("ip", "link", "set", end, "up")
        sh("ip", "-n", outside, "addr", "add", "10.77.0.50/24", "dev", "eth0")
        sh("ip", "-n", outside, "link", "set", "eth0", "up")
        yield end, outside
    finally:
        sh("ip", "link", "del", end, check=False)  # also removes the peer


def _config(tmp_path, container, end):
    tap = unique("t")
    path = tmp_path / "node.toml"
    path.write_text(f"""
[node]
name = "pk"
control = "{tmp_path / 'ctl.sock'}"
[[ports]]
name = "{tap}"
type = "tap"
netns = "{container}"
address = "10.77.0.1/24"
[[ports]]
name = "up"
type = "packet"
device = "{end}"
""")
    return path, tap


def test_packet_port_links_outside_host_without_echo(tmp_path, namespaces, daemons, uplink):
    end, outside = uplink
    container = namespaces.create()
    path, tap = _config(tmp_path, container, end)
    daemon = daemons(path)
    assert ping(container, "10.77.0.50", count=3) and ping(outside, "10.77.0.1", count=3)

    fdb = {e["mac"]: e["port"] for e in daemon.show("fdb")}
    assert fdb[link_mac(container, tap)] == tap  # never re-learned from our own transmissions on the uplink
    assert fdb[link_mac(outside, "eth0")] == "up"
    stats = daemon.show("stats")
    assert stats["fdb"]["moved"] == 0
    assert stats["drops"].get("same-port", 0) == 0


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (CI installs it)")
def test_tcp_from_a_kernel_stack_crosses_the_packet_port(tmp_path, namespaces, daemons, uplink):
    """The outside host's kernel hands veth frames with offloaded (partial) checksums;
    the container's kernel must still accept them."""
    end, outside = uplink
    container = namespaces.create()
    path, _ = _config(tmp_path, container, end)
    daemons(path)
    assert ping(outside, "10.77.0.1")
    in_ns(container, "iperf3", "-s", "-D", "-1", "--pidfile", str(tmp_path / "s.pid"))
    for _ in range(20):
        run = in_ns(outside, "iperf3", "-c", "10.77.0.1", "-t", "2", "-J", "--connect-timeout", "3000",
                    check=False, timeout=30)
        if run.returncode == 0:
            break
    assert run.returncode == 0, run.stdout[-1500:]
    report = json.loads(run.stdout)
    assert "error" not in report, report.get("error")
    assert report["end"]["sum_received"]["bytes"] > 1_000_000
