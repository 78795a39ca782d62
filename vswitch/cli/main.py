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
from vswitch.overlay.core.backends import BACKENDS

from . import logs

INTERRUPTED = 128 + signal.SIGINT   # the exit status of a command stopped by Ctrl-C, as shells report it
ANSWERED = ("show", "attach", "detach", "reload", "trace")   # the commands whose answers --json prints
ATTACH_FLAGS = {"netns": "NETNS", "pid": "--pid", "name": "--name", "ifname": "--ifname", "mac": "--mac",
                "address": "--address", "gateway": "--gateway", "mtu": "--mtu"}


def main(argv: list[str] | None = None) -> int:
    """Run one ``vswitch`` command; Ctrl-C anywhere ends it quietly with status 130."""
    try:
        return _command(argv)
    except* KeyboardInterrupt:   # Ctrl-C before a command took SIGINT over (importing, loading, ...)
        pass
    return INTERRUPTED


def _command(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # The global options are the same before and after the command; absent, they are not in ``args`` at all.
    level = getattr(args, "log_level", None)
    logs.setup(level or "info", getattr(args, "log_format", "text"))
    args.json = getattr(args, "json", False)
    if args.json and args.command not in ANSWERED:
        print(f"vswitch {args.command}: --json prints the answers of {', '.join(ANSWERED)}"
              " (for log lines as JSON: --log-format json)", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(args.config)
    if args.command == "demo":
        return _demo(args, quiet=level is None)
    if args.command == "systemd-unit":
        print(systemd_unit(), end="")
        return 0
    if args.command == "network":
        from .network import network_init

        return network_init(args)
    if args.command == "cni":
        from .cni import cni_install

        return cni_install(args)
    return _talk(args)


def _parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(prog="vswitch", description="A userspace virtual switch and overlay daemon.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"vswitch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    run = command("run", "run the daemon in the foreground until SIGINT/SIGTERM")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="the node's TOML configuration")

    demo = command("demo", "two nodes joined by the overlay, with simulated hosts, all in memory; needs no root")
    demo.add_argument("--pcap", metavar="FILE", help="record every frame the simulated hosts send to this pcap file")
    demo.add_argument("--hosts", type=int, default=2, metavar="N", help="simulated hosts on each node (default 2)")
    demo.add_argument("--backend", choices=tuple(BACKENDS), default="udp",
                      help="the overlay's wire format: flannel's UDP backend (default) or VXLAN")
    demo.add_argument("--print-config", action="store_true",
                      help="print the two nodes' configurations (what `vswitch run -c` reads) and exit")

    show = command("show", "ask a running daemon: ports, fdb, arp, routes, nat, peers, leases or stats")
    show.add_argument("what", metavar="ports|fdb|arp|routes|nat|peers|leases|stats", help="what to show")
    show.add_argument("--limit", type=int, metavar="N",
                      help="nat: list at most N connections (default 1000; the counters cover them all)")
    show.add_argument("--all", action="store_true",
                      help="stats: list every drop reason, also those that counted nothing (default: only those that did)")
    _daemon_options(show)

    capture = command("capture", "record a running daemon's port to pcap (-w - streams to stdout for `tshark -r -`)")
    capture.add_argument("port", metavar="PORT", help="the port to record (both directions)")
    capture.add_argument("-w", "--write", metavar="FILE",
                         help="pcap file to write; - for stdout (default: stdout when it is not a terminal)")
    capture.add_argument("--count", type=int, metavar="N", help="stop after N frames")
    _daemon_options(capture)

    attach = command("attach", "link a container: a new TAP port in network namespace NETNS (or --pid's)")
    attach.add_argument("netns", metavar="NETNS", nargs="?",
                        help="an existing network namespace: an `ip netns` name or a path (/proc/PID/ns/net, a bind"
                             " mount such as /var/run/netns/x)")
    attach.add_argument("--pid", type=int, metavar="PID", help="the namespace of process PID, instead of NETNS")
    attach.add_argument("--name", required=True, metavar="N", help="the port's name (and the device's, by default)")
    attach.add_argument("--ifname", metavar="IF", help="the device's name inside the namespace, e.g. eth0")
    attach.add_argument("--mac", metavar="MAC", help="the device's MAC (default: derived from the node and --name)")
    attach.add_argument("--address", metavar="A/L",
                        help="address/prefix inside the namespace (default, with etcd leases: the next free address"
                             " of the node's lease, with the default route via its gateway)")
    attach.add_argument("--gateway", metavar="G", help="default route inside the namespace")
    attach.add_argument("--mtu", type=int, metavar="M", help="device MTU")
    _daemon_options(attach)

    detach = command("detach", "remove a port linked with attach (its device goes too)")
    detach.add_argument("name", metavar="N", help="the port name")
    _daemon_options(detach)

    reload = command(
        "reload", "make a running daemon read a config again and take its [[overlay.peers]], as SIGHUP does: the file"
                  " -c names, which the daemon then runs from (SIGHUP reads it too), or with --control alone its own",
    )
    _daemon_options(reload)

    trace = command("trace", "what the daemon would do with one packet arriving on PORT (a copy of its tables"
                             " takes it; nothing changes)")
    trace.add_argument("port", metavar="PORT", help="the port the packet arrives on")
    trace.add_argument("flow", metavar="FLOW", help="'tcp A:p > B:q', 'udp A:p > B:q' or 'icmp A > B'")
    _daemon_options(trace)

    command("systemd-unit", "print the systemd unit vswitch@.service (Type=notify; /etc/vswitch/NAME.toml runs as"
                            " vswitch@NAME)")

    from .cni import add_cni_parser
    from .network import add_network_parser

    add_network_parser(commands, common)
    add_cni_parser(commands, common)
    return parser


def systemd_unit() -> str:
    """The unit file that ships inside the package (contrib/vswitch@.service in the checkout)."""
    from importlib.resources import files

    return (files("vswitch") / "contrib" / "vswitch@.service").read_text()


def _global_options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. Their defaults are left out of the
    namespace (SUPPRESS), so that a command's parser cannot overwrite what came before the command."""
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("global options (before or after the command)")
    options.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                         default=argparse.SUPPRESS, help="log debug detail (--log-level debug)")
    options.add_argument("--log-level", choices=logs.LEVELS, default=argparse.SUPPRESS,
                         help="log this and above (default info; the demo: warning)")
    options.add_argument("--log-format", choices=logs.FORMATS, default=argparse.SUPPRESS,
                         help="text (default), or json: one object per line for log collectors")
    options.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help=f"{', '.join(ANSWERED)}: print the daemon's answer as JSON (stable, for scripts),"
                              " and a refusal as {\"error\": ...}")
    return common


def _run(path: str) -> int:
    """Validate the config, make sure no daemon already serves its control socket, then start.

    Both checks come before anything is opened, so a refused start touches
    no file, device or socket (the daemon then opens devices and sockets
    first and its pcap files last: :func:`vswitch.daemon.serve`).
    """
    from vswitch import config as config_mod
    from vswitch.control.client import daemon_listening
    from vswitch.errors import ControlError
    from vswitch.overlay.shell.leases import LeaseError

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
        stopped_by = trio.run(_start, cfg, path)
    except* (DeviceError, PcapError, ControlError, config_mod.ConfigError, LeaseError) as group:
        for exc in _leaves(group):
            print(f"vswitch: {exc}", file=sys.stderr)
    if stopped_by is None:
        return 1
    return INTERRUPTED if stopped_by == signal.SIGINT else 0


async def _start(cfg: Any, path: str) -> int:
    """Prepare the node (with etcd leases, take the lease first), then serve it until a signal."""
    from vswitch import daemon

    return await daemon.run_until_signal(await daemon.prepare(cfg, config_path=path))


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


# -- talking to a running daemon ----------------------------------------------


def _daemon_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_argument_group("which daemon (one of)")
    which.add_argument("-c", "--config", metavar="FILE",
                       help="the daemon's TOML configuration; its [node] control names the socket")
    which.add_argument("--control", metavar="PATH", help="the daemon's control socket")


def _control_path(args: argparse.Namespace) -> str:
    """The socket to talk to, from --control or the config's [node] control; ControlError if neither."""
    from vswitch import config as config_mod
    from vswitch.errors import ControlError

    if args.control:
        return args.control
    if not args.config:
        raise ControlError("which daemon? give its config with -c FILE or its socket with --control PATH")
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

    usage = _usage_error(args)
    if usage is not None:
        print(f"vswitch {args.command}: {usage}", file=sys.stderr)
        return 2
    status = 1
    try:
        path = _control_path(args)
        status = _capture(path, args) if args.command == "capture" else trio.run(_ask, path, args)
    except* ControlError as group:  # a capture's error comes out of its nursery in a group
        for exc in _leaves(group):
            _refused(args, str(exc))
    except* BrokenPipeError:
        _reader_gone()
        status = 0
    return status


def _reader_gone() -> None:
    """The reader of our stdout (head, less, tshark) went away: the end of the output, not an error. What is
    left to write, and Python's flush at exit, go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the command's arguments, found before any daemon is asked; None if nothing."""
    from vswitch.control.protocol import attach_port
    from vswitch.errors import ConfigError

    if args.command == "capture":
        if args.config and args.config.isdigit() and not os.path.exists(args.config):
            return f"-c names the daemon's config FILE, as in every command; for the count, use --count {args.config}"
        if args.count is not None and args.count < 1:
            return "--count must be at least 1"
    if args.command == "trace":
        from vswitch.core.trace import parse_flow

        try:
            parse_flow(args.flow)
        except ValueError as exc:
            return str(exc)
    if args.command == "show" and args.all and args.what != "stats":
        return "--all applies to show stats"
    if args.command == "attach":
        try:
            attach_port({key: getattr(args, key) for key in ATTACH_FLAGS})
        except ConfigError as exc:
            return f"{ATTACH_FLAGS[exc.key]}: {exc.reason}"
    return None


def _refused(args: argparse.Namespace, message: str) -> None:
    """Report a refusal: with --json as ``{"error": ...}`` on stdout, else on stderr after the command's name (once:
    the daemon's own refusals of attach, detach and reload begin with it already)."""
    if args.json:
        print(json.dumps({"error": message}, indent=2))
    elif message.startswith(f"{args.command}: "):
        print(f"vswitch {message}", file=sys.stderr)
    else:
        print(f"vswitch {args.command}: {message}", file=sys.stderr)


async def _ask(path: str, args: argparse.Namespace) -> int:
    from vswitch.control import client

    from .format import FORMATTERS, format_trace

    message: dict[str, Any]
    if args.command == "show":
        message = {"command": "show", "what": args.what}
        if args.limit is not None:
            message["limit"] = args.limit
        if args.what == "stats" and not args.all:
            message["nonzero"] = True
    elif args.command == "reload":
        message = {"command": "reload"}
        if args.config:   # the daemon may run elsewhere: the path it reads must not depend on our directory
            message["config"] = os.path.abspath(args.config)
    elif args.command == "attach":
        message = {"command": "attach", "name": args.name, "address": args.address}
        for key in ("netns", "pid", "ifname", "mac", "gateway", "mtu"):
            if getattr(args, key) is not None:
                message[key] = getattr(args, key)
    elif args.command == "trace":
        message = {"command": "trace", "in_port": args.port, "flow": args.flow}
    else:
        message = {"command": "detach", "name": args.name}
    result = await client.request(path, message)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "show":
        formatter = FORMATTERS.get(args.what)
        print(formatter(result) if formatter is not None else json.dumps(result, indent=2))
    elif args.command == "reload":
        print(f"reloaded {result['config']}: {len(result['added'])} peers added, {len(result['removed'])} removed,"
              f" {len(result['changed'])} changed, {result['unchanged']} unchanged")
        for kind in ("added", "removed", "changed"):
            for lease in result[kind]:
                print(f"  {kind} {lease}")
    elif args.command == "trace":
        print(format_trace(result))
    elif args.command == "attach":
        print(f"attached {result['name']} in netns {result['netns']}"
              + (f" as {result['address']}" if result.get("address") else ""))
    else:
        print(f"detached {result['name']}")
    return 0


def _capture(path: str, args: argparse.Namespace) -> int:
    from vswitch.control import client

    target = args.write
    if target is None:
        if sys.stdout.isatty():
            print("vswitch capture: refusing to write pcap to a terminal; use -w FILE, or -w - | tshark -r -",
                  file=sys.stderr)
            return 2
        target = "-"
    created = False   # a file this capture made, which it may remove again; never one that was there (/dev/null)
    try:
        if target == "-":
            out = sys.stdout.buffer
        else:
            try:
                out, created = open(target, "xb"), True
            except FileExistsError:
                out = open(target, "wb")
    except OSError as exc:
        print(f"vswitch capture: cannot write {target}: {exc.strerror}", file=sys.stderr)
        return 1

    records = client.PcapRecords()
    stopped_by = None
    try:
        # Ctrl-C / SIGTERM end the capture between records: the file stays a valid pcap.
        stopped_by = trio.run(_until_signal, lambda: client.capture(path, args.port, out, count=args.count,
                                                                    records=records))
    except* BrokenPipeError:
        _reader_gone()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
            if created and not records.started:
                os.unlink(target)  # the capture never began: leave no empty file of ours behind
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


def _demo(args: argparse.Namespace, *, quiet: bool) -> int:
    """The demo; ``quiet`` (no log level given) keeps the nodes' start-up lines from interleaving with its
    own account."""
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
    if quiet:
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
        _reader_gone()
        status = 0
    except* OSError as group:   # --pcap FILE cannot be written
        for exc in _leaves(group):
            print(f"vswitch demo: {exc}", file=sys.stderr)
    finally:
        root.setLevel(level)
    return status


if __name__ == "__main__":
    sys.exit(main())
