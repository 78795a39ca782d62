"""``[node] metrics``: scrapes of running daemons, checked by promtool; hostile HTTP clients cost their own
connection and nothing else."""

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
import trio
from shellkit import host
from test_cli_startup import ROOT, VSWITCH, node_config, stop, wait_for

from vswitch import config, daemon
from vswitch.cli import demo
from vswitch.control.client import daemon_listening
from vswitch.control.http import MAX_HEAD, MetricsServer
from vswitch.control.metrics import CONTENT_TYPE, exposition
from vswitch.shell.ports.udp import MemoryUnderlay
from vswitch.testing.etcd import EtcdServer, etcd_missing, free_ports

TIMEOUT = 10


async def request(port: int, raw: bytes) -> bytes:
    """Everything the server answers to ``raw`` before it closes the connection."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            answer = b""
            while data := await stream.receive_some(65536):
                answer += data
            return answer


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    answer = await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *headers = head.decode().split("\r\n")
    fields = dict(h.split(": ", 1) for h in headers)
    assert int(fields["Content-Length"]) == (len(body) if method != "HEAD" else int(fields["Content-Length"]))
    return int(status.split()[1]), fields, body


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample line."""
    return {key: float(value) for key, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                 if line and not line.startswith("#"))}


async def promtool(text: str) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package): the exposition is not checked")
    result = await trio.run_process([tool, "check", "metrics"], stdin=text.encode(), capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), "promtool's lint found problems: " + \
        (result.stdout + result.stderr).decode()


async def test_a_scrape_moves_with_traffic_over_the_overlay_and_promtool_accepts_it():
    (port,) = free_ports("127.0.0.1", 1)
    underlay = MemoryUnderlay()
    one = demo.node_config(1).replace('name = "node1"\n', f'name = "node1"\nmetrics = "127.0.0.1:{port}"\n')
    nodes = [daemon.build(config.loads(one), underlay=underlay),
             daemon.build(config.loads(demo.node_config(2)), underlay=underlay)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(daemon.serve, node)
        status, headers, body = await get(port, "/metrics")
        assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
        before = samples(body.decode())
        result = await host(nodes[0], "c1").ping("10.244.2.2", count=3, timeout=TIMEOUT)
        assert result.received == 3
        status, _, body = await get(port, "/metrics")
        text = body.decode()
        after = samples(text)
        await promtool(text)
        nursery.cancel_scope.cancel()
    c1 = 'vswitch_port_rx_frames_total{port="c1"}'
    assert after[c1] >= before[c1] + 3, "c1's host sent 3 echo requests (and ARP) into the switch"
    assert after['vswitch_port_tx_bytes_total{port="c1"}'] > before['vswitch_port_tx_bytes_total{port="c1"}']
    assert after["vswitch_overlay_encapsulated_total"] == before["vswitch_overlay_encapsulated_total"] + 3
    assert after["vswitch_overlay_decapsulated_total"] == before["vswitch_overlay_decapsulated_total"] + 3
    assert after['vswitch_peer_tx_packets_total{subnet="10.244.2.0/24"}'] == 3
    assert after["vswitch_peers"] == 1 and after["vswitch_peers_max"] == 4096
    assert after['vswitch_neighbours{interface="gw"}'] >= 1 and after['vswitch_neighbours_max{interface="gw"}'] > 0
    assert after["vswitch_fdb_entries"] >= 2 and after["vswitch_fdb_max_entries"] == 65536
    assert after["vswitch_router_forwarded_total"] >= 3
    assert after['vswitch_drops_total{reason="internal-error"}'] == 0 == after["vswitch_internal_errors_total"]
    assert after["vswitch_last_reload_success"] == 1 and after["vswitch_last_reload_timestamp_seconds"] > 1.7e9
    assert "vswitch_lease_source_connected" not in after, "static peers: no lease source to report"


async def test_healthz_head_and_the_answers_to_other_paths_and_methods():
    (port,) = free_ports("127.0.0.1", 1)
    node = daemon.build(config.loads(f'[node]\nmetrics = "127.0.0.1:{port}"\n'))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve, node)
        status, headers, body = await get(port, "/healthz")
        assert (status, headers["Connection"], body) == (200, "close", b"ok\n")
        status, headers, body = await get(port, "/metrics", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 100
        assert (await get(port, "/nope"))[0] == 404
        assert (await get(port, "/metrics?x=1"))[0] == 200
        status, headers, _ = await get(port, "/metrics", "POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"
        nursery.cancel_scope.cancel()


async def test_hostile_clients_cost_their_connection_and_nothing_else():
    node = daemon.build(config.loads("[node]\n"))
    server = MetricsServer(node, "127.0.0.1", 0, timeout=0.5, max_connections=4)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.run)
        assert (await request(port, b"\x00\xff garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await request(port, b"GET /metrics SPDY/3\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (4 * MAX_HEAD)
        assert (await request(port, huge)).startswith(b"HTTP/1.1 431 ")
        # three slowloris clients send half a head and wait: the fourth connection is still served
        slow = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        for stream in slow:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost:")
        assert (await get(port, "/healthz"))[0] == 200
        # beyond the limit a connection is closed unanswered, until the slow ones time out
        slow.append(await trio.open_tcp_stream("127.0.0.1", port))
        await trio.testing.wait_all_tasks_blocked()
        assert await request(port, b"GET /healthz HTTP/1.1\r\n\r\n") == b""
        with trio.fail_after(TIMEOUT):
            for stream in slow:
                assert await stream.receive_some(100) == b"", "timed out: closed without an answer"
                await stream.aclose()
        assert (await get(port, "/healthz"))[0] == 200
        stats = server.statistics()
        assert (stats.bad, stats.refused, stats.timed_out, stats.active) == (3, 1, 4, 0)
        nursery.cancel_scope.cancel()


def test_a_port_in_use_refuses_the_start_and_leaves_no_control_socket(tmp_path):
    control = tmp_path / "ctl.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = node_config(tmp_path, pcap=tmp_path / "p1.pcap", control=control)
        path.write_text(path.read_text().replace('name = "t1"\n', f'name = "t1"\nmetrics = "127.0.0.1:{port}"\n'))
        refused = subprocess.run([*VSWITCH, "run", "-c", str(path)], capture_output=True, text=True, timeout=30,
                                 cwd=ROOT)
    assert refused.returncode == 1
    assert f"[node] metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in refused.stderr
    assert not control.exists() and not daemon_listening(str(control))
    assert not (tmp_path / "p1.pcap").exists(), "pcap files open last: a refused start never truncated one"


def test_the_exposition_escapes_labels_and_reports_nat_and_the_lease_source():
    snap = {
        "node": 'a "quoted"\\node\nname',
        "stats": {"port_failures": 0, "drops": {"internal-error": 2}, "bridge": None, "fdb": None, "overlay": None,
                  "router": {"forwarded": 1, "delivered": 0, "neighbours": {},
                             "nat": {"connections": 5, "created": 9, "expired": 4, "early_dropped": 0,
                                     "source_limited": 1, "translated": 30}}},
        "ports": [],
        "peers": {"peers": [], "source": {"source": "etcd", "state": "disconnected", "revision": 42,
                                          "reconnects": 3}},
        "limits": {"fdb": None, "nat": 65536, "neighbours": {}, "peers": 4096},
        "reload": {"timestamp": 1.5, "success": False},
    }
    text = exposition(snap)
    assert 'vswitch_build_info{version="0.1.0",node="a \\"quoted\\"\\\\node\\nname"} 1' in text.splitlines()
    values = samples(text)
    assert values["vswitch_nat_connections"] == 5 and values["vswitch_nat_max_connections"] == 65536
    assert values["vswitch_internal_errors_total"] == 2
    assert values["vswitch_lease_source_connected"] == 0 and values["vswitch_lease_source_revision"] == 42
    assert values["vswitch_last_reload_success"] == 0
    assert "vswitch_port_up" not in text, "a family without samples is left out"
    for name in {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}:
        kind = next(line.split()[3] for line in text.splitlines() if line.startswith(f"# TYPE {name} "))
        assert name.endswith("_total") == (kind == "counter"), name


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.status, answer.read().decode()


def until(check, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


@pytest.mark.skipif(etcd_missing() is not None, reason=etcd_missing() or "")
def test_the_lease_source_state_follows_etcd_and_healthz_stays_ok(tmp_path):
    metrics, underlay = free_ports("127.0.0.1", 2)
    with EtcdServer() as etcd:
        subprocess.run([*VSWITCH, "network", "init", "--etcd", etcd.endpoint, "--prefix", "/m",
                        "--network", "10.244.0.0/16", "--port", str(underlay)], check=True, capture_output=True,
                       cwd=ROOT, timeout=30)
        path = tmp_path / "node.toml"
        path.write_text(f'[node]\nname = "n1"\nstate_dir = "{tmp_path / "state"}"\n'
                        f'metrics = "127.0.0.1:{metrics}"\n'
                        f'[overlay]\nleases = "etcd"\npublic_ip = "127.0.0.1"\n'
                        f'[etcd]\nendpoints = ["{etcd.endpoint}"]\nprefix = "/m"\n')
        proc = subprocess.Popen([*VSWITCH, "run", "-c", str(path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=ROOT)
        try:
            wait_for(proc, "running")

            def connected() -> float:
                return samples(scrape(metrics)[1])["vswitch_lease_source_connected"]

            until(lambda: connected() == 1)
            assert samples(scrape(metrics)[1])["vswitch_lease_source_revision"] > 0
            etcd.stop()
            until(lambda: connected() == 0)
            assert scrape(metrics, "/healthz") == (200, "ok\n"), "the node forwards on with the peers it last saw"
            etcd.restart()
            until(lambda: connected() == 1)
        finally:
            code, err = stop(proc)
        assert code == 0, err.decode()
