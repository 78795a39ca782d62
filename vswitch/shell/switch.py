"""The daemon shell: moves batches between ports and the pure core.

One nursery holds, per port, an rx task (receive a batch, hand it to the core
in one call, queue the resulting frames) and a tx task (drain that port's
bounded queue in batches), plus one timer task driven by the core's
``poll_at()``. Trio switches tasks only at ``await``, so every task calls the
core directly, with no locks.

The switch is the bulkhead between the outside and the daemon: each task
catches what it expects by name (:class:`PortClosed`), and any other
exception while one batch is received, passed through the core, sent,
timed or monitored costs that batch alone (:mod:`vswitch.shell.faults`: counted
as ``internal-error``, logged once per site, the frames kept), never the
task or the daemon.
"""

import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from vswitch.core.actions import Action, Drop, DropReason, Transmit
from vswitch.core.wire import ethernet
from vswitch.core.wire.offload import cut_super_frames
from vswitch.overlay.core.gro import datagrams

from .faults import Faults
from .ports.base import DEFAULT_BATCH, Medium, Port, PortClosed, PortStatistics

log = logging.getLogger(__name__)

DEFAULT_TX_QUEUE = 1024  # frames per port
SHUTDOWN_TIMEOUT = 2.0   # seconds to close devices once cancelled
RECENT_DROPS = 64
RECENT_FAULT_FRAMES = 4  # frames of one contained fault shown among the recent drops
TIMER_FAULT_BACKOFF = 0.1  # seconds before a timer that raised runs again


class Core(Protocol):
    """What the shell needs of the core: the bridge alone, the datapath, or drop-in mode's overlay.

    A port's change of state may send or drop frames (a router interface
    going down drops the packets held for its neighbours): the port-state
    calls return those actions, or None when a core never has any.
    """

    def add_port(self, name: str) -> list[Action] | None: ...
    def remove_port(self, name: str) -> list[Action] | None: ...
    def set_port_up(self, name: str, up: bool) -> list[Action] | None: ...
    def is_port_up(self, name: str) -> bool: ...
    def handle_frames(self, port: str, frames: Sequence[bytes], now: float) -> list[Action]: ...
    def poll_at(self) -> float | None: ...
    def handle_timer(self, now: float) -> list[Action]: ...


@attrs.define(eq=False)
class Monitor:
    """A live tap on one port (see :meth:`Switch.add_monitor`).

    ``ended`` is set when the port leaves the switch or fails, so a capture
    waiting for frames knows none will come.
    """

    port: str
    callback: Callable[[list[bytes]], None]
    ended: trio.Event = attrs.Factory(trio.Event)


@attrs.define(slots=True)
class TxStatistics:
    queued: int = 0      # frames in the queue now
    sent_batches: int = 0
    tail_dropped: int = 0


class _PortRunner:
    """A port with its bounded egress queue and the scope its tasks run in."""

    def __init__(self, port: Port, queue_limit: int, batch_size: int) -> None:
        capabilities = port.capabilities
        self.port = port
        self.batch = min(batch_size, capabilities.max_batch or batch_size)   # frames per receive and per send
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit
        self.wakeup = trio.Event()
        self.scope = trio.CancelScope()
        self.stats = TxStatistics()
        self.closed = False
        self.monitors: list[Monitor] = []  # usually empty: one falsy check per batch
        self.sending = False               # the send task has a batch in flight
        self.tso = capabilities.tso        # takes super-frames whole; otherwise they are cut before queueing
        self.ip_at = 0 if capabilities.medium is Medium.IP else ethernet.HEADER_LEN   # where a cut finds IP
        # an underlay without GSO (the memory underlay) takes the overlay's runs of datagrams one by one
        self.split_runs = capabilities.medium is Medium.UDP and not capabilities.udp_offloads
        self.send_nowait: Callable[[Sequence[bytes]], int] | None = (
            port.send_nowait if capabilities.send_nowait else None  # type: ignore[attr-defined]
        )

    def end_monitors(self) -> None:
        for monitor in self.monitors:
            monitor.ended.set()

    def enqueue(self, frames: list[bytes]) -> int:
        """Queue what fits; tail-drop the rest. Returns how many were dropped."""
        room = self.queue_limit - len(self.queue)
        if len(frames) <= room:
            self.queue.extend(frames)
            dropped = 0
        else:
            self.queue.extend(frames[:room])
            dropped = len(frames) - room
            self.stats.tail_dropped += dropped
        self.wakeup.set()
        return dropped


@attrs.frozen
class PortStatus:
    name: str
    up: bool
    closed: bool
    device: PortStatistics
    tx: TxStatistics


class Switch:
    def __init__(
        self,
        core: Core,
        *,
        batch_size: int = DEFAULT_BATCH,
        tx_queue: int = DEFAULT_TX_QUEUE,
        clock: Callable[[], float] = trio.current_time,
        faults: Faults | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if tx_queue < batch_size:
            raise ValueError(f"tx_queue ({tx_queue}) must hold at least one batch ({batch_size} frames)")
        self.core = core
        self.batch_size = batch_size
        self.tx_queue = tx_queue
        self._clock = clock
        self._runners: dict[str, _PortRunner] = {}
        self._nursery: trio.Nursery | None = None
        self._timer_scope = trio.CancelScope()
        self._drops: Counter[DropReason] = Counter()
        self.port_failures = 0  # ports taken down because their device or link failed
        self.recent_drops: deque[Drop] = deque(maxlen=RECENT_DROPS)
        self.faults = faults if faults is not None else Faults()

    # -- ports ------------------------------------------------------------

    def add_port(self, port: Port) -> None:
        """Attach ``port`` to the core; its tasks start now if the switch runs."""
        if port.name in self._runners:
            raise ValueError(f"port {port.name!r} already exists")
        actions = self.core.add_port(port.name)
        runner = self._runners[port.name] = _PortRunner(port, self.tx_queue, self.batch_size)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_port, runner)
        self._port_changed(actions)

    async def remove_port(self, name: str) -> Port:
        """Detach a port: stop its tasks, forget its addresses, close it."""
        runner = self._runners.pop(name)
        runner.scope.cancel()
        runner.end_monitors()
        self._port_changed(self.core.remove_port(name))
        await self._close(runner)
        return runner.port

    def set_port_up(self, name: str, up: bool) -> None:
        """Administratively enable or disable a port (down flushes its addresses)."""
        if up and self._runners[name].closed:
            raise ValueError(f"port {name!r} has failed and is closed; remove it and add it again")
        self._port_changed(self.core.set_port_up(name, up))

    def _port_changed(self, actions: list[Action] | None) -> None:
        """Send and count what a port's change of state sent or dropped (the packets held for the neighbours of
        a router interface that went down), and bring the timer forward if it must (one that came up announces
        itself at once)."""
        if actions:
            self.dispatch(actions)
        self._wake_timer()
    def add_monitor(self, port: str, callback: Callable[[list[bytes]], None]) -> Monitor:
        """Call ``callback(frames)`` with every batch ``port`` receives or sends.

        The callback runs inside the port's rx/tx task: it must neither block
        nor raise, and must copy what it keeps. Remove it with
        :meth:`remove_monitor`.
        """
        monitor = Monitor(port, callback)
        runner = self._runners[port]  # an unknown port is misuse: KeyError
        runner.monitors.append(monitor)
        if runner.closed:
            monitor.ended.set()
        return monitor

    def remove_monitor(self, monitor: Monitor) -> None:
        """Stop calling ``monitor``; harmless if its port is already gone."""
        runner = self._runners.get(monitor.port)
        if runner is not None and monitor in runner.monitors:
            runner.monitors.remove(monitor)

    @property
    def ports(self) -> dict[str, Port]:
        return {name: r.port for name, r in self._runners.items()}

    # -- running ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled, then close every port within SHUTDOWN_TIMEOUT."""
        if self._nursery is not None:
            raise RuntimeError("switch is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for runner in self._runners.values():
                    nursery.start_soon(self._run_port, runner)
                nursery.start_soon(self._run_timer)
                task_status.started(self)
        finally:
            self._nursery = None
            await self.aclose()

    async def aclose(self) -> None:
        """Close every port within SHUTDOWN_TIMEOUT (``run`` does this on its way out; a start that fails
        before the switch runs calls it itself)."""
        # Close concurrently: one wedged device must not keep the others open.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_TIMEOUT):
            async with trio.open_nursery() as closing:
                for runner in self._runners.values():
                    closing.start_soon(self._close, runner)
        self.faults.close()

    async def _run_port(self, runner: _PortRunner) -> None:
        with runner.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._rx_loop, runner)
                nursery.start_soon(self._tx_loop, runner)

    async def _rx_loop(self, runner: _PortRunner) -> None:
        port, name, core = runner.port, runner.port.name, self.core
        while True:
            try:
                frames = await port.receive_batch(runner.batch)
            except PortClosed as exc:
                self._port_failed(runner, exc)
                return
            except Exception as exc:   # a bug in the port's decoding: that batch is lost
                self._contain("receive", name, exc, ())
                await trio.lowlevel.checkpoint()
                continue
            if runner.monitors:
                self._notify(runner, frames)
            try:
                actions = core.handle_frames(name, frames, self._clock())
            except Exception as exc:   # a bug in the core: the batch is lost, forwarding carries on
                self._contain("core", name, exc, frames)
                continue
            self.dispatch(actions)
            self._wake_timer()

    async def _tx_loop(self, runner: _PortRunner) -> None:
        port, name, queue, limit = runner.port, runner.port.name, runner.queue, runner.batch
        while True:
            while not queue:
                runner.wakeup = trio.Event()
                await runner.wakeup.wait()
            if len(queue) <= limit:
                batch = list(queue)
                queue.clear()
            else:
                batch = [queue.popleft() for _ in range(limit)]
            runner.sending = True
            try:
                await port.send_batch(batch)
            except PortClosed as exc:
                self._port_failed(runner, exc)
                return
            except Exception as exc:   # a bug in the port's encoding: what was not written is lost
                self._contain("send", name, exc, batch)
                continue
            finally:
                runner.sending = False
            runner.stats.sent_batches += 1
            if runner.monitors:
                self._notify(runner, batch)

    async def _run_timer(self) -> None:
        while True:
            try:
                deadline = self.core.poll_at()
            except Exception as exc:
                self._contain("timer", "", exc, ())
                deadline = self._clock() + TIMER_FAULT_BACKOFF
            self._timer_scope = trio.CancelScope(deadline=math.inf if deadline is None else deadline)
            with self._timer_scope:
                await trio.sleep_forever()
            try:
                actions = self.core.handle_timer(self._clock())
            except Exception as exc:
                self._contain("timer", "", exc, ())
                # Whatever raised may raise again at once: give the ports the CPU for a moment.
                await trio.sleep(TIMER_FAULT_BACKOFF)
                continue
            self.dispatch(actions)

    def _wake_timer(self) -> None:
        """Bring the timer task forward if the batch just handled set an earlier deadline."""
        try:
            deadline = self.core.poll_at()
        except Exception as exc:
            self._contain("timer", "", exc, ())
            return
        if deadline is not None and deadline < self._timer_scope.deadline:
            self._timer_scope.deadline = deadline

    def _notify(self, runner: _PortRunner, frames: list[bytes]) -> None:
        """Give a batch to the port's monitors; a monitor that raises is ended (its capture stops)."""
        for monitor in list(runner.monitors):
            try:
                monitor.callback(frames)
            except Exception as exc:   # the frames themselves go on: only the monitor is lost
                self.faults.record("monitor", runner.port.name, exc, frames)
                runner.monitors.remove(monitor)
                monitor.ended.set()

    def _contain(self, site: str, port: str, exc: Exception, frames: Sequence[bytes]) -> None:
        """Count, log once per site and keep a batch lost to an unexpected exception (:mod:`vswitch.shell.faults`)."""
        lost = self.faults.record(site, port, exc, frames)
        self._drops[DropReason.INTERNAL_ERROR] += len(lost)
        for frame in lost[:RECENT_FAULT_FRAMES]:
            self.recent_drops.append(Drop(port, DropReason.INTERNAL_ERROR, frame))

    def dispatch(self, actions: list[Action]) -> None:
        """Send or queue the core's transmissions; count its drops.

        A port that takes no super-frames (its capabilities lack ``tso``) gets
        every one cut into its segments here, at the hand-over: the core passes
        them whole wherever they go. When a port has a fast path (its
        capabilities say ``send_nowait``), its queue is empty and nothing is in
        flight, the frames are written at once without waiting, which saves a
        task switch per batch; whatever the device does not take is queued,
        in order.
        """
        runners = self._runners
        for action in actions:
            if type(action) is Transmit:
                runner = runners.get(action.port)
                if runner is None or runner.closed:
                    self._drops[DropReason.PORT_DOWN] += len(action.frames)
                    continue
                frames = action.frames
                if not runner.tso:
                    frames, malformed = cut_super_frames(frames, runner.ip_at)
                    if malformed:
                        self._drops[DropReason.SUPER_FRAME_MALFORMED] += malformed
                if runner.split_runs:
                    frames = datagrams(frames)
                if runner.send_nowait is not None and not runner.queue and not runner.sending:
                    try:
                        done = runner.send_nowait(frames)
                    except PortClosed as exc:
                        self._port_failed(runner, exc)
                        self._drops[DropReason.PORT_DOWN] += len(frames)
                        continue
                    except Exception as exc:   # a bug in the port's encoding: these frames are lost
                        self._contain("send", action.port, exc, frames)
                        continue
                    if done:
                        runner.stats.sent_batches += 1
                        if runner.monitors:
                            self._notify(runner, frames[:done])
                        if done == len(frames):
                            continue
                        frames = frames[done:]
                dropped = runner.enqueue(frames)
                if dropped:
                    self._drops[DropReason.TX_QUEUE_FULL] += dropped
            else:
                self._drops[action.reason] += 1
                self.recent_drops.append(action)

    def _port_failed(self, runner: _PortRunner, exc: Exception) -> None:
        if runner.closed:
            return
        runner.closed = True
        runner.queue.clear()
        runner.end_monitors()
        self.port_failures += 1
        log.warning("port %s failed, taking it down: %s", runner.port.name, exc)
        if runner.port.name in self._runners:
            self._port_changed(self.core.set_port_up(runner.port.name, False))
        runner.scope.cancel()

    async def _close(self, runner: _PortRunner) -> None:
        runner.closed = True
        try:
            await runner.port.aclose()
        except OSError as exc:
            log.warning("closing port %s: %s", runner.port.name, exc)
        except Exception as exc:   # a bug while closing one port must not leave the others open
            self._contain("close", runner.port.name, exc, ())

    # -- introspection ------------------------------------------------------

    def port_status(self) -> list[PortStatus]:
        return [
            PortStatus(
                name,
                not r.closed and self.core.is_port_up(name),
                r.closed,
                r.port.statistics(),
                attrs.evolve(r.stats, queued=len(r.queue)),
            )
            for name, r in self._runners.items()
        ]

    def drop_counts(self) -> dict[DropReason, int]:
        """Drops seen by the shell: the core's reasons plus tail drops."""
        return dict(self._drops)
