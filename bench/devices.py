"""Shared helpers for the suites that measure real devices (``tap``, ``nat``).

They run kernel tools inside network namespaces made with
:mod:`vswitch.testing`: one iperf3 TCP stream, a ping summary, and the check
that says why such a suite cannot run here. Nothing is sent outside the
namespaces a suite creates.
"""

import json
import re
import shutil
from pathlib import Path

from vswitch.testing import can_run, in_ns


def unavailable(*tools: str) -> str | None:
    """Why device suites cannot run here (not root, no iproute2, a missing tool), or None."""
    reason = can_run()
    if reason is None:
        missing = [tool for tool in tools if shutil.which(tool) is None]
        reason = f"needs {', '.join(missing)}" if missing else None
    return reason


def iperf_seconds(duration: float) -> int:
    """iperf3 counts whole seconds."""
    return max(1, round(duration))


def iperf_tcp(client: str, server: str, address: str, seconds: int, workdir: Path) -> float:
    """One TCP stream client -> server for ``seconds``; returns the bits per second the server received."""
    in_ns(server, "iperf3", "-s", "-D", "-1", "--pidfile", str(workdir / f"{server}.pid"))
    for _ in range(50):  # until the daemonised server listens
        run = in_ns(client, "iperf3", "-c", address, "-t", str(seconds), "-J", check=False, timeout=seconds + 30)
        if run.returncode == 0:
            return float(json.loads(run.stdout)["end"]["sum_received"]["bits_per_second"])
    raise RuntimeError(f"iperf3 {client} -> {address} failed: {run.stdout[-500:]}")


def rtt_ms(client: str, address: str, count: int) -> float:
    """The mean round-trip time of ``count`` pings 50 ms apart."""
    out = in_ns(client, "ping", "-c", str(count), "-i", "0.05", "-q", address, timeout=30).stdout
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    if match is None:
        raise RuntimeError(f"cannot read ping's summary: {out}")
    return float(match.group(1))
