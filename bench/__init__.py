"""Benchmarks: ``python -m bench <suite>`` prints one JSON line per measurement.

Each line is ``{"name": ..., "value": ..., "unit": ...}`` plus suite-specific
keys (``target`` and ``meets_target`` where a target exists, per-round figures,
...). To add a suite, write a module with ``run(options) -> Iterator[dict]``
and register it in :data:`SUITES`.
"""

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from . import core, etcd, fuzz, memory, nat, overlay, tap
from .common import Options

Suite = Callable[[Options], Iterable[dict[str, Any]]]

# suite name -> run(options)
SUITES: dict[str, Suite] = {
    "core": core.run,
    "memory": memory.run,
    "tap": tap.run,  # needs root: real namespaces and iperf3
    "nat": nat.run,  # the router's core always; its device part needs root and iperf3 (skipped with a note)
    "overlay": overlay.run,  # needs root, iperf3 and tincd: two VM namespaces, kernel vxlan and tinc baselines
    "fuzz": fuzz.run,  # mutated input through every core and port-side transform; --count, --seed
    "etcd": etcd.run,  # needs etcd: a node's start and a churn with 1,000 leases, forwarding with 1,000 peers
}
# suite name -> why it cannot run on this machine (None when it can)
UNAVAILABLE: dict[str, Callable[[], str | None]] = {
    "tap": tap.unavailable, "overlay": overlay.unavailable, "etcd": etcd.unavailable,
}


def run_suites(names: Sequence[str], options: Options = Options(), out: TextIO | None = None) -> list[dict[str, Any]]:
    """Run the named suites, writing each line as soon as it is measured."""
    out = sys.stdout if out is None else out
    lines = []
    for name in names:
        for line in SUITES[name](options):
            out.write(json.dumps(line) + "\n")
            out.flush()
            lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="vswitch benchmarks; prints one JSON line per measurement: "
        '{"name": ..., "value": ..., "unit": ..., ...}.',
    )
    parser.add_argument("suite", choices=[*SUITES, "all"], help="which suite to run ('all' runs every suite in turn)")
    parser.add_argument("--duration", type=float, help="seconds per measured round (default: per suite; core 0.5, memory 0.7, "
                        "tap 10, nat and overlay 5 for iperf3 (whole seconds), nat 0.5 for its core)")
    parser.add_argument("--rounds", type=int, help="measured rounds, best reported (default: 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before measuring (default: core 0.2, memory 0.5)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each measured part to stderr")
    parser.add_argument("--quick", action="store_true",
                        help="smaller set-ups where a suite has them (nat: 1,000 routes, 4,000 connections; fuzz: 2,000"
                        " inputs); for smoke tests")
    parser.add_argument("--core-only", action="store_true",
                        help="nat: only its in-core part (nat.core.*), no devices, as on a machine that is not quiet")
    parser.add_argument("--count", type=int, help="fuzz: how many inputs to feed (default: 1,000,000)")
    parser.add_argument("--seed", type=int, help=f"fuzz: the random seed; a seed gives the same inputs every run"
                        f" (default: {fuzz.DEFAULT_SEED})")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    if args.suite == "all":
        names = []
        for name in SUITES:
            reason = UNAVAILABLE.get(name, lambda: None)()
            if reason:
                print(f"bench: skipping {name}: {reason}", file=sys.stderr)
            else:
                names.append(name)
    else:
        names = [args.suite]
    options = Options(
        duration=args.duration, rounds=args.rounds, warmup=args.warmup, profile=args.profile, quick=args.quick,
        count=args.count, seed=args.seed, core_only=args.core_only,
    )
    run_suites(names, options)
    return 0
