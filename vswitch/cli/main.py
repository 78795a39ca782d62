"""The ``vswitch`` command."""

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from vswitch import __version__
from vswitch.errors import DeviceError, PcapError

INTERRUPTED = 128 + signal.SIGINT   # the exit status of a command stopped by Ctrl-C, as shells report it


def main(argv: list[str] | None = None) -> int:
    """Run one ``vswitch`` command; Ctrl-C anywhere ends it quietly with status 130."""
    try:
        return _command(argv)
    except* KeyboardInterrupt:   # Ctrl-C before a command took SIGINT over (importing, loading, ...)
        pass
    return INTERRUPTED


def _command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="vswitch", description="A userspace virtual switch and overlay daemon.")
    parser.add_argument("--version", action="version", version=f"vswitch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground until SIGINT/SIGTERM")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="the node's TOML configuration")

    demo = commands.add_parser(
        "demo", help="two nodes joined by the overlay, with simulated hosts, all in memory; needs no root"
    )
    demo.add_argument("--pcap", metavar="FILE", help="record every frame the simulated hosts send to this pcap file")
    demo.add_argument("--hosts", type=int, default=2, metavar="N", help="simulated hosts on each node (default 2)")
    demo.add_argument("--backend", choices=("udp", "vxlan"), default="udp",
                      help="the overlay's wire format: flannel's UDP backend (default) or VXLAN")
    demo.add_argument("--print-config", action="store_true",
                      help="print the two nodes' configurations (what `vswitch run -c` reads) and exit")

    show = commands.add_parser("show", help="ask a running daemon: ports, fdb, arp, routes, nat, peers or stats")
    show.add_argument("what", metavar="ports|fdb|arp|routes|nat|peers|stats", help="what to show")
    show.add_argument("--json", action="store_true", help="print the daemon's answer as JSON (stable, for scripts)")
    show.add_argument("--limit", type=int, metavar="N",
                      help="nat: list at most N connections (default 1000; the counters cover them all)")
    _daemon_options(show, config_flags=("-c", "--config"))

    capture = commands.add_parser(
        "capture", help="record a running daemon's port to pcap (-w - streams to stdout for `tshark -r -`)"
    )
    capture.add_argument("port", metavar="PORT", help="the port to record (both directions)")
    capture.add_argument("-w", "--write", metavar="FILE",
                         help="pcap file to write; - for stdout (default: stdout when it is not a terminal)")
    capture.add_argument("-c", "--count", type=int, metavar="N", help="stop after N frames")
    _daemon_options(capture, config_flags=("--config",))

    attach = commands.add_parser("attach", help="link a container: a new TAP port in network namespace NETNS")
    attach.add_argument("netns", metavar="NETNS", help="an existing network namespace")
    attach.add_argument("--name", required=True, metavar="N", help="the port and device name")
    attach.add_argument("--address", required=True, metavar="A/L", help="address/prefix inside the namespace")
    attach.add_argument("--gateway", metavar="G", help="default route inside the namespace")
    attach.add_argument("--mtu", type=int, metavar="M", help="device MTU")
    _daemon_options(attach, config_flags=("-c", "--config"))

    detach = commands.add_parser("detach", help="remove a port linked with attach (its device goes too)")
    detach.add_argument("name", metavar="N", help="the port name")
    _daemon_options(detach, config_flags=("-c", "--config"))

    reload = commands.add_parser(
        "reload", help="make a running daemon read its config again and take its [[overlay.peers]] (as SIGHUP does)"
    )
    _daemon_options(reload, config_flags=("-c", "--config"))

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return _run(args.config)
    if args.command == "demo":
        return _demo(args)
    if args.command in ("show", "capture", "attach", "detach", "reload"):
        return _talk(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _run(path: str) -> int:
    """Validate the config, make sure no daemon already serves its control socket, then start.

    Both checks come before anything is opened, so a refused start touches
    no file, device or socket (the daemon then opens devices and sockets
    first and its pcap files last: :func:`vswitch.daemon.serve`).
    """
    from vswitch import config as config_mod
    from vswitch import daemon
    from vswitch.control import daemon_listening
    from vswitch.errors import ControlError

    try:
        cfg = config_mod.load(path)
        cfg.check_runnable()
    except config_mod.ConfigError as exc:
        print(f"vswitch: configuration error: {exc}", file=sys.stderr)
        return 2
    if cfg.node.control and daemon_listening(cfg.node.control):
        print(f"vswitch: another daemon is already listening on {cfg.node.control}", file=sys.stderr)
        return 1
    # Start-up failures surface from the daemon's nurseries inside exception groups.
    stopped_by = None
    try:
        stopped_by = trio.run(daemon.run_until_signal, daemon.build(cfg, config_path=path))
    except* (DeviceError, PcapError, ControlError, config_mod.ConfigError) as group:
        for exc in _leaves(group):
            print(f"vswitch: {exc}", file=sys.stderr)
    if stopped_by is None:
        return 1
    return INTERRUPTED if stopped_by == signal.SIGINT else 0


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


# -- talking to a running daemon ----------------------------------------------


def _daemon_options(parser: argparse.ArgumentParser, *, config_flags: tuple[str, ...]) -> None:
    which = parser.add_argument_group("which daemon (one of)")
    which.add_argument(*config_flags, dest="config", metavar="FILE",
                       help="the daemon's TOML configuration; its [node] control names the socket")
    which.add_argument("--control", metavar="PATH", help="the daemon's control socket")


def _control_path(args: argparse.Namespace) -> str:
    """The socket to talk to, from --control or the config's [node] control; ControlError if neither."""
    from vswitch import config as config_mod
    from vswitch.errors import ControlError

    if args.control:
        return args.control
    if not args.config:
        raise ControlError("which daemon? give its config with -c FILE (--config FILE for capture) "
                           "or its socket with --control PATH")
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        raise ControlError(f"configuration error: {exc}") from None
    if not cfg.node.control:
        raise ControlError(f"{args.config} sets no control socket: add `control = \"/run/vswitch/NAME.sock\"` "
                           "to its [node] section, or use --control PATH")
    return cfg.node.control


def _talk(args: argparse.Namespace) -> int:
    from vswitch.errors import ControlError

    status = 1
    try:
        path = _control_path(args)
        status = _capture(path, args) if args.command == "capture" else trio.run(_ask, path, args)
    except* ControlError as group:  # a capture's error comes out of its nursery in a group
        for exc in _leaves(group):
            print(f"vswitch {args.command}: {exc}", file=sys.stderr)
    return status


async def _ask(path: str, args: argparse.Namespace) -> int:
    from vswitch import control

    message: dict[str, Any]
    if args.command == "show":
        message = {"command": "show", "what": args.what}
        if args.limit is not None:
            message["limit"] = args.limit
    elif args.command == "reload":
        message = {"command": "reload"}
    elif args.command == "attach":
        message = {"command": "attach", "netns": args.netns, "name": args.name, "address": args.address}
        if args.gateway:
            message["gateway"] = args.gateway
        if args.mtu is not None:
            message["mtu"] = args.mtu
    else:
        message = {"command": "detach", "name": args.name}
    result = await control.request(path, message)
    if args.command == "show":
        formatter = control.FORMATTERS.get(args.what)
        if args.json or formatter is None:
            print(json.dumps(result, indent=2))
        else:
            print(formatter(result))
    elif args.command == "reload":
        print(f"reloaded {result['config']}: {len(result['added'])} peers added, {len(result['removed'])} removed,"
              f" {len(result['changed'])} changed, {result['unchanged']} unchanged")
        for kind in ("added", "removed", "changed"):
            for lease in result[kind]:
                print(f"  {kind} {lease}")
    elif args.command == "attach":
        print(f"attached {result['name']} in netns {result['netns']}"
              + (f" as {result['address']}" if result.get("address") else ""))
    else:
        print(f"detached {result['name']}")
    return 0


def _capture(path: str, args: argparse.Namespace) -> int:
    from vswitch import control

    if args.count is not None and args.count < 1:
        print("vswitch capture: -c must be at least 1", file=sys.stderr)
        return 2
    target = args.write
    if target is None:
        if sys.stdout.isatty():
            print("vswitch capture: refusing to write pcap to a terminal; use -w FILE, or -w - | tshark -r -",
                  file=sys.stderr)
            return 2
        target = "-"
    try:
        out = sys.stdout.buffer if target == "-" else open(target, "wb")
    except OSError as exc:
        print(f"vswitch capture: cannot write {target}: {exc.strerror}", file=sys.stderr)
        return 1

    records = control.PcapRecords()
    stopped_by = None
    try:
        # Ctrl-C / SIGTERM end the capture between records: the file stays a valid pcap.
        stopped_by = trio.run(_until_signal, lambda: control.capture(path, args.port, out, count=args.count,
                                                                     records=records))
    except* BrokenPipeError:
        # The reader (tshark, head) went away: the end of a capture, not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if out is not sys.stdout.buffer:
            started = out.tell() > 0  # at least the pcap header came
            out.close()
            if not started:
                os.unlink(target)  # the capture never began: leave no empty file behind
    print(f"vswitch capture: {records.records} frames from {args.port}", file=sys.stderr)
    return INTERRUPTED if stopped_by == signal.SIGINT else 0


async def _until_signal(work: Callable[[], Awaitable[object]]) -> int | None:
    """Run ``work`` until it returns or SIGINT/SIGTERM arrives; returns that signal, or None.

    The signal cancels ``work`` at its next checkpoint, never in the middle
    of writing a record, so what it wrote stays whole.
    """
    stopped_by = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                nonlocal stopped_by
                async for signum in signals:
                    stopped_by = signum
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await work()
            nursery.cancel_scope.cancel()
    return stopped_by


def _demo(args: argparse.Namespace) -> int:
    from .demo import node_config, run_demo

    if not 2 <= args.hosts <= 50:
        print("vswitch demo: --hosts must be between 2 and 50", file=sys.stderr)
        return 2
    if args.print_config:
        for n in (1, 2):
            print(node_config(n, backend=args.backend, hosts=args.hosts))
        return 0
    root = logging.getLogger()
    level = root.level
    if not args.verbose:   # the nodes' start-up lines would interleave with the demo's own account
        root.setLevel(logging.WARNING)
    status = 1
    summary: dict[str, Any] = {}

    async def demo() -> None:
        summary.update(await run_demo(pcap=args.pcap, hosts=args.hosts, backend=args.backend))

    try:
        stopped_by = trio.run(_until_signal, demo)
        if stopped_by is not None:
            return 128 + stopped_by   # 130 after Ctrl-C; the pcap so far is whole: the demo closes it on its way out
        status = 0 if summary["received"] == summary["sent"] else 1
    except* BrokenPipeError:
        # The reader (head, less) went away: not the demo's failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    except* OSError as group:   # --pcap FILE cannot be written
        for exc in _leaves(group):
            print(f"vswitch demo: {exc}", file=sys.stderr)
    finally:
        root.setLevel(level)
    return status


if __name__ == "__main__":
    sys.exit(main())
