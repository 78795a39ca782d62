"""The README's step-by-step walkthroughs run as printed: the overlay between two namespaces, and a cluster on etcd.

Each block is taken from the README itself; only its names are made unique
(namespaces, devices, control sockets) so that it cannot meet anything else
on the machine, and `vswitch` is this checkout's.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from netkit import requires_root

from vswitch.testing import sh, unique
from vswitch.testing.etcd import etcd_missing

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- the test tests/system/test_readme_walkthrough.py runs this block -->"
NAMES = ("vm1", "vm2", "ct1", "ct2", "under1", "under2")

pytestmark = requires_root


def walkthrough(which: int = 0) -> str:
    """The README's ``which``-th marked block: 0 the overlay's, 1 the etcd cluster's."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(re.escape(MARK) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert len(blocks) == 2, "the README's two walkthrough blocks (after their markers) are not both there"
    return blocks[which]


def run(script: str, tmp_path: Path, prefix: str, namespaces: list[str]) -> str:
    """Run ``script`` with this checkout's vswitch; kill what it left running and delete ``namespaces`` after."""
    script = script.replace("/run/vswitch/", f"{tmp_path}/")
    assert "/run/vswitch" not in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vswitch").write_text(f"#!/bin/sh\nexec {sys.executable} -m vswitch \"$@\"\n")
    (bin_dir / "vswitch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for name in namespaces:
            sh("ip", "netns", "del", prefix + name, check=False)
    assert proc.returncode == 0, err
    left = sh("ip", "netns", "list").stdout
    assert prefix not in left, "the walkthrough's cleanup removes its namespaces"
    return out


def test_the_overlay_walkthrough_runs_as_printed(tmp_path):
    prefix = unique("w")                               # 7 characters: "w" and 6 hex digits
    script = walkthrough()
    for name in NAMES:
        script = re.sub(rf"\b{name}\b", prefix + name, script)
    script = re.sub(r"\b(vm|ct|under)\$n\b", rf"{prefix}\1$n", script)
    assert prefix + "vm1" in script and f"{prefix}ct$n" in script
    out = run(script, tmp_path, prefix, list(NAMES[:4]))
    assert "3 packets transmitted, 3 received" in out
    assert re.search(r"10\.244\.2\.0/24\s+10\.99\.0\.2:8472\s+02:00:00:00:02:ff\s+[1-9]", out), out
    assert re.search(r"10\.244\.1\.2 → 10\.244\.2\.2 +ICMP .*Echo \(ping\) request", out), out
    assert re.search(r"10\.244\.2\.2 → 10\.244\.1\.2 +ICMP .*Echo \(ping\) reply", out), out


@pytest.mark.skipif(etcd_missing() is not None, reason=etcd_missing() or "")
def test_the_etcd_cluster_walkthrough_runs_as_printed(tmp_path):
    prefix = unique("w")
    script = re.sub(r"\b(lan|vm|ct)(?=[\d$]|\b)", rf"{prefix}\1", walkthrough(1))
    assert f"{prefix}vm$n" in script and f"ip netns exec {prefix}ct1 ping" in script and f"{prefix}lan$n" in script
    out = run(script, tmp_path, prefix, ["lan", *(f"{kind}{n}" for kind in ("vm", "ct") for n in range(1, 5))])
    leases = re.findall(r"^[* ] (10\.244\.\d+\.0/24)\s+10\.99\.0\.(\d)\s+vxlan\s", out, re.M)
    assert sorted(n for _, n in leases) == ["1", "2", "3"] and out.count("\n* 10.244.") == 1, out
    assert out.count("2 packets transmitted, 2 received") == 3, out
    node3 = dict((n, subnet) for subnet, n in leases)["3"]
    last = out.split("leases (* this node's)")[1]   # after the listing of leases: the last `show peers`
    assert "\n2 peers\n" in last and node3 not in last, out


@pytest.mark.parametrize("name", NAMES)
def test_the_walkthrough_uses_the_names_the_test_renames(name):
    assert re.search(rf"\b{name}\b|\b{name[:-1]}\$n\b", walkthrough())
