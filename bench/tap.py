"""Containers on one daemon, against the kernel's own bridge: TCP and ping.

Two network namespaces are linked through ``vswitch run`` (TAP ports); in the
same run, two more are joined by a Linux bridge (veth pairs into a bridge in a
third namespace), the physical limit on this machine. One iperf3 TCP stream
(10 s by default; ``--duration``, whole seconds) and 20 pings each way give throughput and
round-trip time; the ratio line compares the two. Needs root, iproute2,
iperf3 and ping; every namespace is removed at the end, even on failure.
"""

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vswitch.testing import Daemon, Namespaces, ping, sh, tap_config, unique

from .common import Options, result
from .devices import iperf_seconds, iperf_tcp, rtt_ms
from .devices import unavailable as devices_unavailable

DEFAULTS = dict(duration=10.0, rounds=1, warmup=0.0)
TARGET_GBITS = 1.0
TARGET_RATIO = 0.30       # of the kernel bridge's throughput, at least
TARGET_RTT_RATIO = 3.0    # times the kernel bridge's round trip, at most
PINGS = 20


def _kernel_bridge(spaces: Namespaces) -> tuple[str, str]:
    """Two namespaces joined by veth pairs to a bridge in a third; returns the two."""
    hub, left, right = spaces.create(), spaces.create(), spaces.create()
    sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", hub, "link", "set", "br0", "up")
    for i, ns in enumerate((left, right), 1):
        outer = unique("v")
        sh("ip", "-n", hub, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", hub, "link", "set", outer, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"10.78.0.{i}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return left, right


def unavailable() -> str | None:
    """Why this suite cannot run here, or None."""
    return devices_unavailable("iperf3", "ping")


def run(options: Options = Options()) -> Iterator[dict[str, Any]]:
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"bench tap: {reason}")
    opts = options.resolve(**DEFAULTS)
    seconds = iperf_seconds(opts.duration)
    spaces = Namespaces()
    daemon = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            a, b = spaces.create(), spaces.create()
            config = workdir / "node.toml"
            config.write_text(tap_config("bench", workdir / "ctl.sock", [
                {"name": unique("t"), "netns": a, "address": "10.77.0.1/24"},
                {"name": unique("t"), "netns": b, "address": "10.77.0.2/24"},
            ]))
            daemon = Daemon(config).start()
            if not ping(a, "10.77.0.2"):
                raise RuntimeError(f"containers cannot reach each other:\n{daemon.log}")
            left, right = _kernel_bridge(spaces)
            if not ping(left, "10.78.0.2"):
                raise RuntimeError("kernel bridge namespaces cannot reach each other")

            ours_rtt, kernel_rtt = rtt_ms(a, "10.77.0.2", PINGS), rtt_ms(left, "10.78.0.2", PINGS)
            ours = iperf_tcp(a, b, "10.77.0.2", seconds, workdir)
            kernel = iperf_tcp(left, right, "10.78.0.2", seconds, workdir)
        finally:
            if daemon is not None:
                daemon.kill()
            spaces.cleanup()
    gbits = ours / 1e9
    yield result("tap.tcp", round(gbits, 3), "Gbit/s", seconds=seconds, target=TARGET_GBITS,
                 meets_target=gbits >= TARGET_GBITS)
    yield result("tap.rtt", ours_rtt, "ms", pings=PINGS)
    yield result("tap.kernel_bridge.tcp", round(kernel / 1e9, 3), "Gbit/s", seconds=seconds)
    yield result("tap.kernel_bridge.rtt", kernel_rtt, "ms", pings=PINGS)
    yield result("tap.tcp_ratio", round(ours / kernel, 4), "ratio", note="vswitch / kernel bridge",
                 target=TARGET_RATIO, meets_target=ours / kernel >= TARGET_RATIO)
    yield result("tap.rtt_ratio", round(ours_rtt / kernel_rtt, 2), "ratio", note="vswitch / kernel bridge",
                 target=TARGET_RTT_RATIO, meets_target=ours_rtt / kernel_rtt <= TARGET_RTT_RATIO)
