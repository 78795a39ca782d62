"""The README's step-by-step overlay between two namespaces runs as printed.

The block is taken from the README itself; only its names are made unique
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

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- the test tests/system/test_readme_walkthrough.py runs this block -->"
NAMES = ("vm1", "vm2", "ct1", "ct2", "under1", "under2")

pytestmark = requires_root


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(MARK) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert block, "the README's walkthrough block (after its marker) is gone"
    return block.group(1)


def test_the_overlay_walkthrough_runs_as_printed(tmp_path):
    prefix = unique("w")                               # 7 characters: "w" and 6 hex digits
    script = walkthrough()
    for name in NAMES:
        script = re.sub(rf"\b{name}\b", prefix + name, script)
    script = re.sub(r"\b(vm|ct|under)\$n\b", rf"{prefix}\1$n", script)
    script = script.replace("/run/vswitch/", f"{tmp_path}/")
    assert prefix + "vm1" in script and f"{prefix}ct$n" in script and "/run/vswitch" not in script
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
        for name in NAMES[:4]:
            sh("ip", "netns", "del", prefix + name, check=False)
    assert proc.returncode == 0, err
    assert "3 packets transmitted, 3 received" in out
    assert re.search(r"10\.244\.2\.0/24\s+10\.99\.0\.2:8472\s+02:00:00:00:02:ff\s+[1-9]", out), out
    assert re.search(r"10\.244\.1\.2 → 10\.244\.2\.2 +ICMP .*Echo \(ping\) request", out), out
    assert re.search(r"10\.244\.2\.2 → 10\.244\.1\.2 +ICMP .*Echo \(ping\) reply", out), out
    left = sh("ip", "netns", "list").stdout
    assert prefix not in left, "the walkthrough's cleanup removes its namespaces"


@pytest.mark.parametrize("name", NAMES)
def test_the_walkthrough_uses_the_names_the_test_renames(name):
    assert re.search(rf"\b{name}\b|\b{name[:-1]}\$n\b", walkthrough())
