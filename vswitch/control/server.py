"""The server side of the control socket: a running daemon answers `vswitch show`, `capture`, `attach`,
`detach`, `forward`, `unforward`, `reload` and `trace` over a Unix stream socket (the protocol: :mod:`vswitch.control.protocol`).

Everything is bounded: the request line (``MAX_REQUEST`` bytes), the time a
client has to send it and take its answer (``CLIENT_TIMEOUT``), and each
capture's buffer (:mod:`vswitch.control.capture`). Connections come from two
pools with their own limits, so captures can never lock out ``show``: a
connection counts against the request pool (``MAX_REQUESTS``) until its
request line asks for a capture, and then against the capture pool
(``MAX_CAPTURES``). Refusals, timeouts, stalls and failures are counted
(``show stats``, ``control``).

Each connection is a bulkhead: an unexpected exception while serving one
client (a handler, the capture stream) closes that client, is counted and
logged with its traceback once per place it was raised, and never reaches the
server's task. The monitor callback a capture installs runs in a port's task,
where the switch's own containment ends it (:mod:`vswitch.shell.faults`, site
``monitor``), and the capture with it.
"""

import errno
import inspect
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from vswitch.config import SUN_PATH_MAX, PortConfig
from vswitch.core.nat import TCP, UDP, Forward
from vswitch.core.trace import parse_flow
from vswitch.core.wire.addr import ip_from_str, mac_to_str
from vswitch.errors import ConfigError, ControlError
from vswitch.overlay.core.peers import LeaseChanges
from vswitch.overlay.core.trace import trace
from vswitch.shell.faults import FirstAtSite
from vswitch.shell.forked import ForkError, in_snapshot
from vswitch.shell.ports.pcap import SNAPLEN
from vswitch.shell.switch import Monitor

from . import reports
from .capture import CAPTURE_BYTES, CAPTURE_FRAMES, STALL_TIMEOUT, CaptureSession
from .protocol import (
    CLIENT_TIMEOUT,
    MAX_REQUEST,
    Request,
    attach_port,
    field,
    parse_request,
    read_line,
    response,
)

log = logging.getLogger(__name__)

MAX_REQUESTS = 16                # concurrent connections that are not (yet) captures
MAX_CAPTURES = 16                # concurrent captures, apart from the requests
TRACE_TIMEOUT = 5.0              # seconds a trace's snapshot may take (a trace takes a few milliseconds)
SHOWS = ("ports", "fdb", "arp", "routes", "nat", "peers", "leases", "stats")   # what `show` reports


class Node(reports.NodeView, Protocol):
    """What the commands ask of a node beyond what the reports read (:class:`vswitch.daemon.Node` is one)."""

    @property
    def config_path(self) -> str | None: ...

    async def attach(self, port: PortConfig) -> PortConfig: ...

    async def detach(self, name: str) -> None: ...

    def add_forward(self, forward: Forward) -> None: ...

    def remove_forwards(self, *, owner: str | None = None, protocol: int | None = None,
                        port: int | None = None) -> tuple[Forward, ...]: ...

    async def reload_file(self, path: str | None = None) -> LeaseChanges: ...


Handler = Callable[["ControlServer", Request], Awaitable[object]]


@attrs.define
class Pool:
    """One kind of connection's share of the socket: how many now, at most, and turned away."""

    limit: int
    active: int = 0
    refused: int = 0   # turned away because ``active`` was at ``limit``


@attrs.frozen
class ControlStatistics:
    requests: Pool   # connections until their request line says they are captures
    captures: Pool
    timed_out: int   # requests not sent, or answers not taken, within the client timeout
    stalled: int     # captures ended because their client took nothing for the stall timeout
    failed: int      # clients closed by an unexpected exception (a bug; its traceback is logged)


class ControlServer:
    """Serves the control protocol for ``node`` on the Unix socket ``path``."""

    def __init__(
        self, node: Node, path: str, *, max_requests: int = MAX_REQUESTS, max_captures: int = MAX_CAPTURES,
        timeout: float = CLIENT_TIMEOUT, stall_timeout: float = STALL_TIMEOUT, max_request: int = MAX_REQUEST,
        capture_frames: int = CAPTURE_FRAMES, capture_bytes: int = CAPTURE_BYTES,
    ) -> None:
        self.node = node
        self.path = str(path)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.max_request = max_request
        self.capture_frames = capture_frames
        self.capture_bytes = capture_bytes
        self.captures: list[CaptureSession] = []
        self._request_pool = Pool(max_requests)
        self._capture_pool = Pool(max_captures)
        self._timed_out = 0
        self._stalled = 0
        self._failed = 0
        self._first_at_site = FirstAtSite()

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(attrs.evolve(self._request_pool), attrs.evolve(self._capture_pool),
                                 self._timed_out, self._stalled, self._failed)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the socket file is removed on the way out."""
        sock, identity = await self._listen()
        try:
            listener = trio.SocketListener(sock)
            async with listener, trio.open_nursery() as nursery:
                log.debug("control socket listening on %s", self.path)
                task_status.started(self.path)
                await self._accept_loop(listener, nursery)
        finally:
            self._unlink_if_ours(identity)

    async def _listen(self) -> tuple[trio.socket.SocketType, tuple[int, int]]:
        path = self.path
        size = len(os.fsencode(path))
        if size > SUN_PATH_MAX:
            raise ControlError(f"control socket path is too long ({size} bytes, at most {SUN_PATH_MAX}): {path}")
        await self._remove_stale(path)
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create {parent} for the control socket: {exc.strerror}") from None
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            # Restrict before listen(): until then a connect() is refused anyway.
            os.chmod(path, 0o600)
            info = os.stat(path)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        return sock, (info.st_dev, info.st_ino)

    async def _remove_stale(self, path: str) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.fail_after(2.0):
                await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        except trio.TooSlowError:
            pass  # a listener with a full backlog: still alive
        except OSError as exc:
            raise ControlError(f"cannot check the existing control socket {path}: {exc.strerror}") from None
        finally:
            probe.close()
        raise ControlError(f"another daemon is already listening on {path}")

    def _unlink_if_ours(self, identity: tuple[int, int]) -> None:
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove control socket %s: %s", self.path, exc.strerror)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                log.warning("control socket: %s; pausing accept for 100 ms", exc.strerror)
                await trio.sleep(0.1)  # back off while descriptors are short (as trio.serve_listeners does)
                continue
            pool = self._request_pool
            if pool.active >= pool.limit:
                pool.refused += 1
                await _refuse(stream, f"too many requests at once (at most {pool.limit})", patience=0.1)
                await stream.aclose()
                continue
            pool.active += 1
            nursery.start_soon(self._serve_client, stream)

    # -- one connection ----------------------------------------------------------

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        """One connection, from accept to close: whatever goes wrong here costs this client alone."""
        pool, what = self._request_pool, "a control client"
        try:
            async with stream:
                try:
                    with trio.fail_after(self.timeout):
                        line, _ = await read_line(stream, self.max_request, "request")
                        request = parse_request(line)
                        what = f"a control client's {request['command']!r}"
                        if request["command"] != "capture":
                            await stream.send_all(await _answer(await self._dispatch(request)))
                            return
                        if self._capture_pool.active >= self._capture_pool.limit:
                            self._capture_pool.refused += 1
                            raise ControlError(f"too many captures at once (at most {self._capture_pool.limit})")
                        pool.active -= 1
                        pool = self._capture_pool
                        pool.active += 1
                        session, monitor = await self._start_capture(stream, request)
                except ControlError as exc:
                    await _refuse(stream, str(exc))
                    return
                except trio.TooSlowError:
                    self._timed_out += 1
                    await _refuse(stream, f"timed out after {self.timeout:g} s")
                    return
                # The capture streams for as long as its client takes what it is sent.
                await self._run_capture(stream, session, monitor)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up
        except Exception as exc:  # the bulkhead: a bug costs this client, never the server or the daemon
            self._fail(what, exc)
        finally:
            pool.active -= 1

    def _fail(self, what: str, exc: Exception) -> None:
        """Count an unexpected exception; log its traceback the first time it comes from its place."""
        self._failed += 1
        if not self._first_at_site("control", exc):
            log.debug("%s failed again: %r", what, exc)
            return
        log.error("%s failed (once per place; `show stats` counts them): %r", what, exc, exc_info=exc)

    async def _dispatch(self, request: Request) -> object:
        command = request["command"]
        handler = COMMANDS.get(command)
        if handler is None:
            available = ", ".join(sorted([*COMMANDS, "capture"]))
            raise ControlError(f"unknown command {command!r} (available: {available})")
        try:
            return await handler(self, request)
        except ControlError:
            raise
        except Exception as exc:  # a bug in a handler: the client hears of it, the data path carries on
            self._fail(f"control command {command!r}", exc)
            raise ControlError(f"internal error in {command}: {exc!r}") from exc

    # -- capture -----------------------------------------------------------------

    async def _start_capture(self, stream: trio.abc.SendStream, request: Request) -> tuple[CaptureSession, Monitor]:
        port = field(request, "port", str)
        count = field(request, "count", int, required=False)
        if count is not None and count < 1:
            raise ControlError(f"count must be at least 1, got {count}")
        switch = self.node.switch
        if port not in switch.ports:
            raise ControlError(f"no port named {port!r} (ports: {', '.join(switch.ports) or 'none'})")
        session = CaptureSession.of_port(switch.ports[port], count=count, max_frames=self.capture_frames,
                                         max_bytes=self.capture_bytes)
        monitor = switch.add_monitor(port, session.push)
        try:
            await stream.send_all(response(result={"port": port, "snaplen": SNAPLEN, "linktype": session.linktype}))
        except BaseException:
            switch.remove_monitor(monitor)
            raise
        self.captures.append(session)
        log.info("capture of %s started", port)
        return session, monitor

    async def _run_capture(self, stream: trio.SocketStream, session: CaptureSession, monitor: Monitor) -> None:
        try:
            async with trio.open_nursery() as nursery:
                async def finish(fn: Callable[[], Awaitable[None]]) -> None:
                    # Whichever ends first ends the capture: count reached,
                    # client stalled or gone, port gone.
                    try:
                        await fn()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(finish, lambda: session.stream(stream, stall_timeout=self.stall_timeout))
                nursery.start_soon(finish, lambda: _wait_for_hangup(stream))
                nursery.start_soon(finish, monitor.ended.wait)
        finally:
            self.node.switch.remove_monitor(monitor)
            self.captures.remove(session)
            stalled = ""
            if session.stalled:
                self._stalled += 1
                stalled = f"; its client took nothing for {self.stall_timeout:g} s"
            log.info("capture of %s ended: %d frames written, %d dropped for a slow reader%s",
                     session.port, session.written, session.dropped, stalled)


async def _refuse(stream: trio.abc.SendStream, error: str, *, patience: float = 1.0) -> None:
    """Tell the client why, if it takes the line within ``patience`` seconds."""
    with trio.move_on_after(patience):
        try:
            await stream.send_all(response(error=error))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it already hung up


async def _wait_for_hangup(stream: trio.abc.ReceiveStream) -> None:
    """Return when the client closes its end (anything it sends is ignored)."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass


async def _answer(result: object) -> bytes:
    """The answer line for ``result``. A long listing (an FDB of a million entries is a second of work) is
    encoded in a worker thread, so that the ports go on meanwhile; ``result`` is a snapshot nothing else holds."""
    rows = result.get("connections") if isinstance(result, dict) else result
    if isinstance(rows, list) and len(rows) > reports.LISTING_SLICE:
        return await trio.to_thread.run_sync(lambda: response(result=result))
    return response(result=result)


# -- the commands ------------------------------------------------------------------------


async def _cmd_show(server: ControlServer, request: Request) -> object:
    what = field(request, "what", str)
    node = server.node
    now = trio.current_time()   # the daemon's Switch runs on trio's clock
    if what == "ports":
        return reports.show_ports(node)
    if what == "fdb":
        return await reports.show_fdb(node, now)
    if what == "stats":
        return reports.show_stats(
            node, captures=[c.summary() for c in server.captures], control=attrs.asdict(server.statistics()),
            nonzero=bool(field(request, "nonzero", bool, required=False)),
        )
    if what == "arp":
        return reports.show_arp(node, now)
    if what == "routes":
        return reports.show_routes(node)
    if what == "nat":
        limit = field(request, "limit", int, required=False)
        if limit is not None and limit < 1:
            raise ControlError(f"show: 'limit' must be at least 1, got {limit}")
        return await reports.show_nat(node, now, reports.NAT_LISTED if limit is None else limit)
    if what == "peers":
        return reports.show_peers(node)
    if what == "leases":
        return await reports.show_leases(node)
    raise ControlError(f"cannot show {what!r} (available: {', '.join(SHOWS)})")


async def _cmd_attach(server: ControlServer, request: Request) -> object:
    """A new TAP port in a network namespace; its fields are checked as the config checks a port's."""
    fields = {"name": field(request, "name", str), "pid": field(request, "pid", int, required=False)}
    for key in ("netns", "ifname", "mac", "address", "gateway"):   # no address: the next free one of the pool
        fields[key] = field(request, key, str, required=False)
    fields["mtu"] = field(request, "mtu", int, required=False)
    overlay = server.node.config.overlay
    try:
        port = attach_port(fields, default_mtu=overlay.mtu if overlay is not None else 1500)
    except ConfigError as exc:
        raise ControlError(f"attach: {exc.key}: {exc.reason}") from None
    try:
        attach = server.node.attach
    except AttributeError:
        raise ControlError("attach is not available in this version of the daemon") from None
    port = await _call(attach, {"port": port}, "attach")
    return {"name": port.name, "netns": port.netns, "ifname": port.ifname,
            "mac": mac_to_str(port.mac) if port.mac else None,
            "address": str(port.address) if port.address else None,
            "gateway": str(port.gateway) if port.gateway else None}


async def _cmd_detach(server: ControlServer, request: Request) -> object:
    name = field(request, "name", str)
    try:
        detach = server.node.detach
    except AttributeError:
        raise ControlError("detach is not available in this version of the daemon") from None
    await _call(detach, {"name": name}, "detach")
    return {"name": name}


FORWARD_PROTOCOLS = {"tcp": TCP, "udp": UDP}
MAX_OWNER = 64   # bytes in a forward's owner: a CNI port name is 15


async def _cmd_forward(server: ControlServer, request: Request) -> object:
    """A port forward at run time: ``protocol`` (tcp, the default, or udp) ``port`` on the router's addresses
    (``interface``'s alone, if given) to ``to`` (``address:port``, or ``address`` for the same port), added by
    ``owner`` (so that `unforward` removes an attachment's forwards together)."""
    protocol, port = _protocol(request), field(request, "port", int)
    to = field(request, "to", str)
    host, colon, to_port_text = to.partition(":")
    try:
        address = ip_from_str(host)
    except ValueError:
        raise ControlError(f"forward: to: {to!r} is not address:port, like 10.244.1.5:80") from None
    to_port = port
    if colon:
        if not to_port_text.isdigit() or len(to_port_text) > 5:
            raise ControlError(f"forward: to: {to!r} needs a port between 1 and 65535 after the colon")
        to_port = int(to_port_text)
    forward = Forward(protocol, port, address, to_port, field(request, "interface", str, required=False),
                      _owner(request) or "")
    try:
        add = server.node.add_forward
    except AttributeError:
        raise ControlError("forward is not available in this version of the daemon") from None
    await _call(add, {"forward": forward}, "forward")
    return {"added": [reports.forward_row(forward)]}


async def _cmd_unforward(server: ControlServer, request: Request) -> object:
    """Remove ``owner``'s port forwards, or those of ``protocol`` and ``port``; none is not an error (a CNI DEL
    comes again)."""
    owner = _owner(request)
    if owner is not None:
        if "port" in request:
            raise ControlError("unforward: by owner, or by protocol and port, not both")
        selector: dict[str, Any] = {"owner": owner}
    else:
        selector = {"protocol": _protocol(request), "port": field(request, "port", int)}
    try:
        remove = server.node.remove_forwards
    except AttributeError:
        raise ControlError("unforward is not available in this version of the daemon") from None
    removed = await _call(remove, selector, "unforward")
    return {"removed": [reports.forward_row(f) for f in removed]}


def _protocol(request: Request) -> int:
    name = field(request, "protocol", str, required=False) or "tcp"
    if name not in FORWARD_PROTOCOLS:
        raise ControlError(f"protocol: {name!r} is not one of {', '.join(FORWARD_PROTOCOLS)}")
    return FORWARD_PROTOCOLS[name]


def _owner(request: Request) -> str | None:
    owner = field(request, "owner", str, required=False)
    if owner is not None and not (0 < len(owner.encode()) <= MAX_OWNER and owner.isprintable()):
        raise ControlError(f"owner: must be 1 to {MAX_OWNER} printable bytes")
    return owner


async def _cmd_reload(server: ControlServer, request: Request) -> object:
    """Read a config file again and take its peers, as SIGHUP does (:meth:`vswitch.daemon.Node.reload_file`):
    the file the request names, which the daemon runs from then on, or else the daemon's own."""
    node = server.node
    changes: LeaseChanges = await _call(node.reload_file, {"path": field(request, "config", str, required=False)},
                                        "reload")
    return {
        "config": node.config_path, "added": [str(lease) for lease in changes.added],
        "removed": [str(lease) for lease in changes.removed], "changed": [str(lease) for lease in changes.changed],
        "unchanged": changes.kept,
    }


async def _cmd_trace(server: ControlServer, request: Request) -> object:
    """What the core would do with one packet (:mod:`vswitch.overlay.core.trace`): a copy of it takes the packet at
    trio's time, the live tables stay as they are."""
    port, spec = field(request, "in_port", str), field(request, "flow", str)
    node = server.node
    if port not in node.switch.ports:
        raise ControlError(f"trace: no port named {port!r} (ports: {', '.join(node.switch.ports) or 'none'})")
    try:
        flow = parse_flow(spec)
        known = {runner.host.ip: runner.host.mac for runner, _, _ in getattr(node, "hosts", ())}
        core, now = node.switch.core, trio.current_time()
        # In a forked snapshot of the daemon: the packet changes the snapshot's tables only, and the daemon
        # forwards on meanwhile, however large its tables are (a copy in process would hold it up).
        return await in_snapshot(lambda: trace(core, port, flow, now, known=known, in_place=True).as_dict(),
                                 timeout=TRACE_TIMEOUT)
    except ValueError as exc:
        raise ControlError(f"trace: {exc}") from None
    except ForkError as exc:
        raise ControlError(f"trace: {exc}") from None


async def _call(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
    """Call a Node method that may be sync or async; its refusals become errors for the client."""
    try:
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
    except (ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ControlError(f"{what}: {message}") from None
    return result


COMMANDS: dict[str, Handler] = {
    "show": _cmd_show, "attach": _cmd_attach, "detach": _cmd_detach, "forward": _cmd_forward,
    "unforward": _cmd_unforward, "reload": _cmd_reload, "trace": _cmd_trace,
}
