"""One container floods the NAT with new connections; the others do not notice (issue 10).

    outside ns      eth0 198.51.100.1/24 ── veth ── <uplink> (packet port) = router interface ext 198.51.100.2/24
    a, b, c, d ns   10.244.1.2 … .5/24 ─ tap ─ bridge ─ router interface gw 10.244.1.1/24

The router masquerades 10.244.0.0/16 out of ext with the default limits
(65,536 connections, 16,384 per source). An iperf3 TCP stream runs from a to
the outside host and b and c ping each other; then d writes 200,000 SYNs of
distinct connections (from every source port in turn, to 203.0.113.0/24
through the outside host, which does not forward them, so none is ever
answered) on an AF_PACKET socket as fast as it can, its device queueing what
the daemon has not read yet. d gets its share of the table and is then
refused, counted as nat-source-limit; the pings lose nothing, the stream never
stalls, the daemon keeps running, and b and c can still open connections
through the NAT (without the limit d would hold every TCP port of the
masquerade address).
"""

import json
import shutil
import subprocess
import sys
import time

import pytest
from netkit import (
    ask_peer,
    in_ns,
    link_mac,
    outside_link,
    peer_server,
    ping,
    requires_root,
    sh,
    start_in_ns,
    stop,
    unique,
    uplink_config,
)

pytestmark = [requires_root, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (CI installs it)")]

OUTSIDE, EXT, GATEWAY = "198.51.100.1", "198.51.100.2", "10.244.1.1"
A, B, C, D = "10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"
FLOOD = 200_000
PER_SOURCE = 65536 // 4   # the default share of one source
STREAM_SECONDS = 14
PINGS = 120               # 12 s, 0.1 s apart: before, during and after the flood

# Prebuilt Ethernet frames of TCP SYNs from one address, each a new connection (its own destination address and
# port), written on an AF_PACKET socket as fast as the kernel takes them. Prints how many went and how long it took.
FLOODER = r"""
import json, socket, struct, sys, time
device, dst_mac, src_mac, src, count = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), \
    socket.inet_aton(sys.argv[4]), int(sys.argv[5])

def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF

ethernet = dst_mac + src_mac + b"\x08\x00"
frames = []
for i in range(count):
    dst = bytes((203, 0, 113, 1 + i // 64512))
    sport = 1024 + i % 64512
    tcp = struct.pack("!HHIIBBHHH", sport, 80, i, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", checksum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    frames.append(ethernet + ip + tcp)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((device, 0))
refused = 0
start = time.monotonic()
for frame in frames:
    try:
        s.send(frame)
    except OSError:   # ENOBUFS: the device's queue is full; the frame is lost like any other it drops
        refused += 1
print(json.dumps({"sent": count - refused, "refused": refused, "seconds": round(time.monotonic() - start, 2)}))
"""


def _ping_loss(proc: subprocess.Popen) -> tuple[int, int, str]:
    """(transmitted, received, output) of a finished ``ping``."""
    out, err = proc.communicate(timeout=30)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    transmitted, received = (int(part.split()[0]) for part in summary.split(",")[:2])
    return transmitted, received, out + err


def _settled(daemon, *, timeout: float = 30) -> None:
    """Wait until the daemon's refusals at the source limit stop growing (what d queued has been read)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        count = daemon.show("stats")["drops"]["nat-source-limit"]
        if count == last:
            return
        assert time.monotonic() < deadline, f"the daemon was still reading d's flood after {timeout} s"
        last = count
        time.sleep(0.5)


def test_a_flooding_container_cannot_starve_the_others(tmp_path, namespaces, daemons):
    uplink = unique("u")
    try:
        outside = namespaces.create("vo")
        containers = {namespaces.create("vc"): ip for ip in (A, B, C, D)}
        a, b, c, d = containers
        taps = {ns: unique("t") for ns in containers}
        outside_link(uplink, outside, f"{OUTSIDE}/24")
        config = tmp_path / "flood.toml"
        config.write_text(uplink_config(
            "flood", tmp_path / "ctl.sock",
            [{"name": taps[ns], "netns": ns, "address": f"{ip}/24", "gateway": GATEWAY} for ns, ip in containers.items()],
            uplink, gateway=GATEWAY, ext=EXT, outside=OUTSIDE, masquerade=True,
        ))
        daemon = daemons(config)
        for ns, peer in ((a, OUTSIDE), (b, C), (c, B), (d, GATEWAY)):
            assert ping(ns, peer), f"{ns} cannot reach {peer}:\n{daemon.log[-3000:]}"
        gateway_mac = next(i["mac"] for i in daemon.show("routes")["interfaces"] if i["name"] == "gw")
        # d's device queues the whole flood for the daemon rather than dropping what the daemon has not read yet
        sh("ip", "-n", d, "link", "set", taps[d], "txqueuelen", str(FLOOD + 10_000))

        server = start_in_ns(outside, "iperf3", "-s", "-1", "--forceflush", ready="Server listening")
        stream = subprocess.Popen(
            ["ip", "netns", "exec", a, "iperf3", "-c", OUTSIDE, "-t", str(STREAM_SECONDS), "-b", "100M", "-J",
             "--connect-timeout", "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pingers = [subprocess.Popen(["ip", "netns", "exec", src, "ping", "-n", "-c", str(PINGS), "-i", "0.1", "-W", "2",
                                     dst], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for src, dst in ((b, C), (c, B))]
        time.sleep(2)   # the stream and the pings are under way before the flood

        flood = in_ns(d, sys.executable, "-c", FLOODER, taps[d], gateway_mac.replace(":", ""),
                      link_mac(d, taps[d]).replace(":", ""), D, str(FLOOD), timeout=60)
        sent = json.loads(flood.stdout)

        for proc in pingers:
            transmitted, received, output = _ping_loss(proc)
            assert transmitted == received == PINGS, f"pings lost during the flood ({sent}):\n{output}"
        out, err = stream.communicate(timeout=STREAM_SECONDS + 30)
        stop(server)
        report = json.loads(out)
        assert stream.returncode == 0 and "error" not in report, report.get("error") or err
        intervals = [round(i["sum"]["bits_per_second"] / 1e6, 1) for i in report["intervals"]]
        assert len(intervals) >= STREAM_SECONDS and min(intervals) > 0, f"the stream stalled: {intervals} Mbit/s"

        # the flood reached the daemon, which tracked d's share and refused the rest, counted
        assert daemon.proc.poll() is None, daemon.log[-3000:]
        _settled(daemon)   # d's device may still hold frames the daemon has not read: compare counts at rest
        stats = daemon.show("stats")
        nat = daemon.show("nat", "--limit", str(2 * PER_SOURCE))
        from_d = sum(1 for conn in nat["connections"] if conn["original"]["src"] == D)
        assert nat["max_per_source"] == PER_SOURCE and from_d == PER_SOURCE, (from_d, nat["statistics"])
        assert stats["drops"]["nat-source-limit"] == nat["statistics"]["source_limited"] > 0, stats["drops"]
        assert stats["drops"]["nat-table-full"] == 0 and nat["statistics"]["early_dropped"] == 0
        d_port = next(p for p in daemon.show("ports") if p["name"] == taps[d])
        assert d_port["rx"]["frames"] >= PER_SOURCE + stats["drops"]["nat-source-limit"]
        # afterwards everyone still gets through, and the others can still open connections of their own:
        # d holds a quarter of the table and of the address's TCP ports, not all of them
        assert ping(b, C, count=5) and ping(a, OUTSIDE, count=3)
        echo = peer_server(outside, "tcp", 7000)
        for ns, address in ((b, B), (c, C)):
            local, seen = ask_peer(ns, "tcp", OUTSIDE, 7000)
            assert local.startswith(f"{address}:") and seen.startswith(f"{EXT}:")
        stop(echo)
        print(f"flood: {sent}; daemon read {d_port['rx']['frames']} frames from d, refused "
              f"{stats['drops']['nat-source-limit']} at the source limit; stream {intervals} Mbit/s")
    finally:
        sh("ip", "link", "del", uplink, check=False)   # its peer in the outside namespace goes with it
