"""tshark, an independent decoder, reads the demo's pcap cleanly: every frame the simulated hosts of both nodes sent."""

import shutil
import subprocess

import pytest
import trio

from vswitch.cli.demo import run_demo

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (CI installs it)")


def _tshark(*args: str) -> str:
    result = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def test_tshark_decodes_demo_arp_and_icmp_without_errors(tmp_path):
    pcap = tmp_path / "demo.pcap"
    with open("/dev/null", "w") as sink:
        summary = trio.run(lambda: run_demo(pcap=str(pcap), out=sink))
    assert summary["received"] == summary["sent"] > 0

    rows = _tshark("-r", str(pcap), "-T", "fields", "-e", "frame.protocols", "-e", "arp.opcode",
                   "-e", "icmp.type", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.ttl").splitlines()
    assert len(rows) == summary["pcap_frames"]
    protocols = [row.split("\t") for row in rows]
    arp_ops = {p[1] for p in protocols if p[0] == "eth:ethertype:arp"}
    icmp = [p for p in protocols if p[0] == "eth:ethertype:ip:icmp:data"]
    assert arp_ops == {"1", "2"}  # requests and replies
    assert {p[2] for p in icmp} == {"0", "8"}  # echo replies and requests
    # The hosts of both nodes are in it: requests from node1 to node2 and node2's answers, as each host sent them.
    assert ("8", "10.244.1.2", "10.244.2.2", "64") in {tuple(p[2:6]) for p in icmp}
    assert ("0", "10.244.2.2", "10.244.1.2", "64") in {tuple(p[2:6]) for p in icmp}
    # Nothing malformed, no expert errors, and IP/ICMP checksums verify.
    bad = _tshark(
        "-r", str(pcap), "-o", "ip.check_checksum:TRUE",
        "-Y", '_ws.malformed || _ws.expert.severity >= error || ip.checksum.status == "Bad"'
              ' || icmp.checksum.status == "Bad"',
    )
    assert bad.strip() == ""


def test_tshark_reads_snaplen_and_link_type(tmp_path):
    pcap = tmp_path / "demo.pcap"
    with open("/dev/null", "w") as sink:
        trio.run(lambda: run_demo(pcap=str(pcap), out=sink))
    info = subprocess.run(["capinfos", "-E", "-l", str(pcap)], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        pytest.skip("capinfos is not available")
    assert "Ethernet" in info.stdout
    assert "65535" in info.stdout
