"""Live restore (``[node] live_restore``): containers keep their links across a daemon restart, with the same
device, MAC and address; the gap is measured. Attach by namespace path and by PID, with ``--ifname``."""

import json
import re
import signal
import subprocess
import time

import pytest
from netkit import in_ns, link_exists, requires_root, sh, unique, wait_until

pytestmark = requires_root


def _config(tmp_path, ports: list[dict]) -> str:
    lines = ["[node]", 'name = "restore"', f'control = "{tmp_path / "ctl.sock"}"',
             f'state_dir = "{tmp_path / "state"}"', "live_restore = true", ""]
    for port in ports:
        lines += ["[[ports]]", 'type = "tap"', *(f"{k} = {json.dumps(v)}" for k, v in port.items()), ""]
    lines += ["[[router.interfaces]]", 'name = "gw"', 'address = "10.78.0.1/24"', ""]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines))
    return path


def _link(netns: str, device: str) -> tuple[int, str, list[str]]:
    """ifindex, MAC and IPv4 addresses of ``device`` in ``netns`` (a name or a path)."""
    command = ["ip", "-n", netns] if not netns.startswith("/") else ["nsenter", f"--net={netns}", "ip"]
    info = json.loads(sh(*command, "-j", "addr", "show", "dev", device).stdout)[0]
    return info["ifindex"], info["address"], [f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"]
                                              if a["family"] == "inet"]


@pytest.fixture
def sleeper():
    """A process in a network namespace of its own (a container without `ip netns`)."""
    proc = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    wait_until(lambda: sh("readlink", f"/proc/{proc.pid}/ns/net").stdout != sh("readlink", "/proc/self/ns/net").stdout,
               what="the sleeper in its own namespace")
    yield proc
    proc.kill()
    proc.wait()


def test_containers_keep_their_links_across_a_restart(tmp_path, namespaces, daemons, sleeper):
    a = namespaces.create()
    port = unique("t")
    path = _config(tmp_path, [{"name": port, "netns": a, "address": "10.78.0.2/24", "gateway": "10.78.0.1"}])
    daemon = daemons(path)
    b = f"/proc/{sleeper.pid}/ns/net"
    attached = unique("p")
    result = json.loads(daemon.cli("attach", "--pid", str(sleeper.pid), "--ifname", "eth0", "--name", attached,
                                   "--json").stdout)
    assert result["netns"] == b and result["ifname"] == "eth0"
    assert result["address"] == "10.78.0.3/24" and result["gateway"] == "10.78.0.1"   # the pool, without etcd
    assert "UP" in sh("nsenter", f"--net={b}", "ip", "link", "show", "lo").stdout     # lo brought up
    assert not link_exists(None, attached)
    before = {a: _link(a, port), b: _link(b, "eth0")}
    assert before[b][1] == result["mac"]

    pinger = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-D", "-i", "0.1", "-W", "1", "10.78.0.3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        stopped = time.time()
        assert daemon.stop(signal.SIGTERM) == 0
        assert link_exists(a, port)   # persistent: SIGTERM leaves it
        restarted = daemons(path)
        restarted.wait_for(f"took back attached port {attached}")
        time.sleep(1.5)
    finally:
        pinger.send_signal(signal.SIGINT)
        output = pinger.communicate(timeout=10)[0]
    replies = [(float(t), int(s)) for t, s in re.findall(r"^\[(\d+\.\d+)\] .*icmp_seq=(\d+)", output, re.M)]
    sent = int(re.search(r"(\d+) packets transmitted", output).group(1))
    lost = sent - len(replies)
    first_after = min(t for t, _ in replies if t > stopped)
    print(f"\nlive restore gap: {lost} pings lost of {sent} at 0.1 s ({lost * 0.1:.1f} s);"
          f" SIGTERM to the first reply after: {first_after - stopped:.2f} s")
    assert first_after - stopped < 10
    assert {a: _link(a, port), b: _link(b, "eth0")} == before   # same ifindex, MAC and address
    assert in_ns(a, "ping", "-c", "1", "-W", "2", "10.78.0.1").returncode == 0

    restarted.cli("detach", attached)
    assert subprocess.run(["nsenter", f"--net={b}", "ip", "link", "show", "eth0"], capture_output=True).returncode != 0
    assert restarted.stop(signal.SIGTERM) == 0
    state = json.loads((tmp_path / "state" / "attachments.json").read_text())
    assert set(state["ports"]) == {port}


def test_vanished_namespaces_and_removed_ports_are_dropped(tmp_path, namespaces, daemons, sleeper):
    a = namespaces.create()
    port, gone = unique("t"), unique("t")
    path = _config(tmp_path, [{"name": port, "netns": a, "address": "10.78.0.2/24"},
                              {"name": gone, "netns": a, "ifname": "eth1", "mac": "02:00:00:00:00:42"}])
    daemon = daemons(path)
    assert _link(a, "eth1")[1] == "02:00:00:00:00:42"
    attached = unique("p")
    daemon.cli("attach", f"/proc/{sleeper.pid}/ns/net", "--ifname", "eth0", "--name", attached)
    assert daemon.stop(signal.SIGTERM) == 0
    sleeper.kill()
    sleeper.wait()
    _config(tmp_path, [{"name": port, "netns": a, "address": "10.78.0.2/24"}])   # `gone` left the config
    restarted = daemons(path)
    restarted.wait_for(f"attached port {attached} dropped")
    wait_until(lambda: not link_exists(a, "eth1"), what="the removed port's device deleted")
    assert link_exists(a, port)
    addresses = json.loads((tmp_path / "state" / "addresses.json").read_text())["addresses"]
    assert attached not in addresses   # its address released
    restarted.stop(signal.SIGTERM)
    assert set(json.loads((tmp_path / "state" / "attachments.json").read_text())["ports"]) == {port}


def test_a_refused_start_leaves_no_new_device(tmp_path, namespaces):
    a = namespaces.create()
    port = unique("t")
    path = _config(tmp_path, [{"name": port, "netns": a}, {"name": unique("t"), "netns": unique("nx")}])
    result = subprocess.run([*"python -m vswitch run -c".split(), str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not link_exists(a, port)


def test_a_new_address_in_the_config_replaces_the_old_on_a_device_taken_back(tmp_path, namespaces, daemons):
    a = namespaces.create()
    port = unique("t")
    daemon = daemons(_config(tmp_path, [{"name": port, "netns": a, "address": "10.78.0.2/24", "gateway": "10.78.0.1"}]))
    index, mac, addresses = _link(a, port)
    assert addresses == ["10.78.0.2/24"]
    assert daemon.stop() == 0
    daemon = daemons(_config(tmp_path, [{"name": port, "netns": a, "address": "10.78.0.9/24", "gateway": "10.78.0.1"}]))
    assert f"took back {port}" in daemon.log
    assert _link(a, port) == (index, mac, ["10.78.0.9/24"])
