"""Smoke test for the benchmarks: every suite runs briefly and prints well-formed lines.

Speed targets live only in the benchmarks themselves (``python -m bench``);
nothing here asserts a rate, only that each line is JSON with a name, a
positive numeric value (non-negative for counts such as frames lost) and a unit.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench.common import Options
from vswitch.testing import sh

ROOT = Path(__file__).parents[2]
TINY = ["--duration", "0.02", "--rounds", "1", "--warmup", "0.01", "--quick"]
QUICK = Options(duration=0.02, rounds=1, warmup=0.01, quick=True)


def check_lines(text: str) -> list[dict]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "no output"
    for line in lines:
        assert isinstance(line["name"], str) and line["name"]
        assert isinstance(line["unit"], str) and line["unit"]
        value = line["value"]
        assert isinstance(value, int | float) and not isinstance(value, bool), line
        if line["unit"].endswith("/s"):
            assert value > 0, line
        else:
            assert value >= 0, line
    names = [line["name"] for line in lines]
    assert len(names) == len(set(names)), f"duplicate names: {names}"
    return lines


# nat runs its device part when it can (root): its two parts have tests of their own below; fuzz counts inputs,
# not frames per second, and has tests of its own (tests/bench/test_fuzz.py)
IN_PROCESS = sorted(set(bench.SUITES) - set(bench.UNAVAILABLE) - {"nat", "fuzz"})


@pytest.mark.parametrize("suite", IN_PROCESS)
def test_suite_prints_json_lines(suite: str) -> None:
    out = io.StringIO()
    returned = bench.run_suites([suite], Options(duration=0.02, rounds=1, warmup=0.01), out)
    lines = check_lines(out.getvalue())
    assert lines == returned
    assert all(line["name"].startswith(f"{suite}.") for line in lines)
    assert any(line["unit"] == "frames/s" for line in lines)


def test_memory_suite_reports_losses() -> None:
    out = io.StringIO()
    bench.run_suites(["memory"], Options(duration=0.02, rounds=1, warmup=0.01), out)
    lost = [line for line in check_lines(out.getvalue()) if line["name"].endswith(".lost")]
    assert len(lost) == 2
    for line in lost:
        assert line["value"] == line["sent"] - line["received"]


def test_command_line_all() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "all", *TINY], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    lines = check_lines(proc.stdout)
    runnable = {name for name in bench.SUITES if not bench.UNAVAILABLE.get(name, lambda: None)()}
    assert {line["name"].split(".")[0] for line in lines} == runnable
    for name in set(bench.SUITES) - runnable:
        assert f"skipping {name}" in proc.stderr


@pytest.mark.skipif(bool(bench.UNAVAILABLE["tap"]()), reason=str(bench.UNAVAILABLE["tap"]()))
def test_tap_suite_measures_containers_and_kernel_bridge() -> None:
    out = io.StringIO()
    lines = check_lines(bench.run_suites(["tap"], Options(duration=1), out) and out.getvalue())
    values = {line["name"]: line["value"] for line in lines}
    assert set(values) == {
        "tap.tcp", "tap.rtt", "tap.kernel_bridge.tcp", "tap.kernel_bridge.rtt", "tap.tcp_ratio", "tap.rtt_ratio",
    }
    assert values["tap.tcp"] > 0 and values["tap.kernel_bridge.tcp"] > 0


def test_nat_core_measures_router_nat_and_lookups() -> None:
    lines = check_lines("".join(json.dumps(line) + "\n" for line in bench.nat.run_core(QUICK)))
    values = {line["name"]: line["value"] for line in lines}
    assert set(values) == {
        "nat.core.routed.64B", "nat.core.routed.1500B", "nat.core.routed.scale_ratio",
        "nat.core.masquerade.64B", "nat.core.masquerade.1500B", "nat.core.masquerade.scale_ratio",
        "nat.core.lookup.hit", "nat.core.lookup.miss",
        "nat.core.new_connections.empty", "nat.core.new_connections.source_at_limit",
        "nat.core.new_connections.beside_source_at_limit", "nat.core.new_connections.ports_exhausted",
        "nat.core.new_connections.worst_ratio",
    }
    masquerade = next(line for line in lines if line["name"] == "nat.core.masquerade.64B")
    assert masquerade["connections"] == bench.nat.QUICK.connections
    assert masquerade["routes"] == bench.nat.QUICK.routes + 3  # plus the default and two connected routes
    # the large tables against the small ones, in the same run
    scale = values["nat.core.masquerade.scale_ratio"]
    line = next(line for line in lines if line["name"] == "nat.core.masquerade.scale_ratio")
    assert (line["connections"], line["small_connections"]) == (bench.nat.QUICK.connections,
                                                                bench.nat.SMALL_TABLES["connections"])
    assert abs(scale - line["us_per_packet"] / line["small_us_per_packet"]) < 0.05
    assert line["meets_target"] == (scale <= 1.10)
    # new connections: what became of them in each case, and the slowest case against the empty table
    new = {line["name"].rsplit(".", 1)[1]: line for line in lines if line["name"].startswith("nat.core.new_connections.")}
    assert {name: line["outcome"] for name, line in new.items() if "outcome" in line} == {
        "empty": "sent", "source_at_limit": "nat-source-limit", "beside_source_at_limit": "sent",
        "ports_exhausted": "nat-no-port",
    }
    assert new["source_at_limit"]["held"] == new["empty"]["per_source"] == bench.nat.QUICK.table // 4
    assert new["ports_exhausted"]["held_ports"] + new["ports_exhausted"]["reserved_ports"] == 64_512
    assert all(len(line["rounds"]) == QUICK.rounds for name, line in new.items() if name != "worst_ratio")
    worst = new["worst_ratio"]
    assert worst["worst"] in {"source_at_limit", "beside_source_at_limit", "ports_exhausted"}
    assert abs(worst["value"] - new[worst["worst"]]["value"] / new["empty"]["value"]) < 0.01
    assert worst["meets_target"] == (worst["value"] >= 0.5)


@pytest.mark.skipif(bool(bench.nat.unavailable()), reason=str(bench.nat.unavailable()))
def test_nat_devices_measure_bridged_routed_and_masqueraded_tcp() -> None:
    lines = check_lines("".join(json.dumps(line) + "\n" for line in bench.nat.run_devices(Options(duration=1))))
    values = {line["name"]: line for line in lines}
    assert set(values) == {
        "nat.bridged.tcp", "nat.routed.tcp", "nat.routed.tcp_ratio", "nat.masquerade.tcp", "nat.masquerade.tcp_ratio",
    }
    assert all(line["value"] > 0 for line in lines)
    assert values["nat.routed.tcp"]["router_forwarded"] > 0
    assert values["nat.masquerade.tcp"]["nat_translated"] > 0


def test_nat_suite_without_devices_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(bench.nat, "unavailable", lambda: "needs root (test)")
    out = io.StringIO()
    lines = check_lines(bench.run_suites(["nat"], QUICK, out) and out.getvalue())
    assert all(line["name"].startswith("nat.core.") for line in lines)
    assert "skipping the device part: needs root (test)" in capsys.readouterr().err


@pytest.mark.skipif(bool(bench.overlay.unavailable()), reason=str(bench.overlay.unavailable()))
def test_overlay_baselines_measure_kernel_vxlan_and_tinc() -> None:
    lines = check_lines("".join(json.dumps(line) + "\n" for line in bench.overlay.run_baselines(Options(duration=1))))
    values = {line["name"]: line for line in lines}
    assert set(values) == {"overlay.kernel_vxlan.tcp", "overlay.tinc.tcp"}
    assert all(line["unit"] == "Gbit/s" and line["seconds"] == 1 for line in lines)
    assert values["overlay.tinc.tcp"]["ratio_to_kernel_vxlan"] > 0


@pytest.mark.skipif(bool(bench.overlay.unavailable()), reason=str(bench.overlay.unavailable()))
def test_overlay_vswitch_part_measures_both_backends_with_ratios() -> None:
    lines = check_lines("".join(
        json.dumps(line) + "\n" for line in bench.overlay.run_vswitch(Options(duration=1), kernel_vxlan=10.0, tinc=0.5)
    ))
    assert [line["name"] for line in lines] == ["overlay.vswitch_udp.tcp", "overlay.vswitch_vxlan.tcp"]
    for line in lines:
        assert line["ratio_to_tinc"] == round(line["value"] / 0.5, 3)
        assert line["ratio_to_kernel_vxlan"] == round(line["value"] / 10.0, 4)
        assert line["meets_target"] == (line["value"] >= 3 * 0.5 and line["value"] >= 0.30 * 10.0)
    assert [line["mtu"] for line in lines] == [1472, 1450]


@pytest.mark.skipif(bool(bench.overlay.unavailable()), reason=str(bench.overlay.unavailable()))
def test_overlay_topology_and_tinc_are_removed_even_on_failure(tmp_path: Path) -> None:
    def pids(ns: str) -> list[str]:
        return sh("ip", "netns", "pids", ns).stdout.split()

    with pytest.raises(RuntimeError, match="on purpose"), bench.overlay.two_nodes(bench.overlay.cni_bridge) as topo:
        names = [name for node in topo.nodes for name in (node.vm, node.container)]
        with pytest.raises(RuntimeError, match="on purpose"), bench.overlay.tinc(topo, tmp_path):
            assert all(pids(node.vm) for node in topo.nodes)
            raise RuntimeError("on purpose")
        assert not any(pids(node.vm) for node in topo.nodes), "tincd still runs"
        raise RuntimeError("on purpose")
    listed = sh("ip", "netns", "list").stdout
    assert not [name for name in names if name in listed]


@pytest.mark.skipif(bool(bench.etcd.unavailable()), reason=str(bench.etcd.unavailable()))
def test_etcd_suite_measures_start_churn_and_forwarding_with_many_peers() -> None:
    out = io.StringIO()
    lines = check_lines(bench.run_suites(["etcd"], QUICK, out) and out.getvalue())
    values = {line["name"]: line for line in lines}
    forward = {f"etcd.forward.{backend}.{what}" for backend in ("vxlan", "udp")
               for what in ("2_peers", "1000_peers", "ratio")}
    assert set(values) == {"etcd.start", "etcd.churn.write", "etcd.churn.apply", "etcd.churn.cpu", *forward}
    start = values["etcd.start"]
    assert start["leases"] == bench.etcd.QUICK_LEASES and len(start["rounds"]) == QUICK.rounds
    assert start["value"] == start["rounds"][0] > start["prepare_rounds"][0] > 0
    churn = [values[f"etcd.churn.{what}"] for what in ("write", "apply", "cpu")]
    assert all(line["added"] == line["removed"] == bench.etcd.QUICK_LEASES for line in churn)
    assert churn[0]["value"] > 0 and churn[0]["writer_cpu"] > 0 and churn[2]["value"] > 0
    assert churn[1]["applies"] >= 1 and churn[1]["watch_reconnects"] == 0
    for backend in ("vxlan", "udp"):
        few, many, ratio = (values[f"etcd.forward.{backend}.{what}"] for what in ("2_peers", "1000_peers", "ratio"))
        assert (few["peers"], few["peers_sent_to"], many["peers"], many["peers_sent_to"]) == (2, 2, 1000, 1000)
        assert abs(ratio["value"] - many["rounds"][0] / few["rounds"][0]) < 0.01
        assert ratio["meets_target"] == (ratio["value"] >= 0.9)


def test_command_line_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    for suite in [*bench.SUITES, "all"]:
        assert suite in proc.stdout


def test_command_line_rejects_unknown_suite() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "nope"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stdout == ""


@pytest.mark.skipif(bool(bench.overlay.unavailable()), reason=str(bench.overlay.unavailable()))
def test_overlay_direct_baselines_measure_between_the_vms_with_their_cost() -> None:
    lines = check_lines("".join(json.dumps(line) + "\n" for line in bench.overlay.run_direct_baselines(Options(duration=1))))
    values = {line["name"]: line for line in lines}
    assert set(values) == {"overlay.kernel_vxlan_direct.tcp", "overlay.tinc_direct.tcp"}
    assert all(line["value"] > 0 for line in lines)
    assert values["overlay.tinc_direct.tcp"]["cpu_seconds_per_gbit"] > 0       # tincd's own time, both of them
    assert "cpu_seconds_per_gbit" not in values["overlay.kernel_vxlan_direct.tcp"]   # no daemon: the kernel's
