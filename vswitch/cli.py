"""The ``vswitch`` command."""

import argparse
import logging
import sys

import trio

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vswitch", description="A userspace virtual switch and overlay daemon.")
    parser.add_argument("--version", action="version", version=f"vswitch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground until SIGINT/SIGTERM")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="the node's TOML configuration")

    demo = commands.add_parser("demo", help="an in-memory topology with simulated hosts; needs no root")
    demo.add_argument("--pcap", metavar="FILE", help="record every frame to this pcap file")
    demo.add_argument("--hosts", type=int, default=3, metavar="N", help="how many hosts (default 3)")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return _run(args.config)
    if args.command == "demo":
        return _demo(args.pcap, args.hosts)
    parser.error(f"unknown command {args.command}")
    return 2


def _run(path: str) -> int:
    from . import config as config_mod
    from . import daemon

    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"vswitch: configuration error: {exc}", file=sys.stderr)
        return 2
    trio.run(daemon.run_until_signal, daemon.build(cfg))
    return 0


def _demo(pcap: str | None, hosts: int) -> int:
    from .demo import run_demo

    if not 2 <= hosts <= 50:
        print("vswitch demo: --hosts must be between 2 and 50", file=sys.stderr)
        return 2
    try:
        summary = trio.run(lambda: run_demo(pcap=pcap, hosts=hosts))
    except OSError as exc:
        print(f"vswitch demo: {exc}", file=sys.stderr)
        return 1
    return 0 if summary["received"] == summary["sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
