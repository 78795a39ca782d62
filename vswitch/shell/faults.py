"""Containment: an unexpected exception while the shell handles one batch
costs that batch, never a task or the daemon.

The switch is the bulkhead. Its tasks catch what they expect by name
(``PortClosed``, ``OSError``); anything else raised while a batch is being
received, passed through the core, sent, timed or monitored is handed to
:meth:`Faults.record`, and the task carries on with the next batch. Each
fault is:

* counted per site and port (``show stats``: ``faults`` counts the
  incidents, the ``internal-error`` drop reason the frames lost with them;
  a monitor's fault loses none: the frames go on, the monitor ends);
* logged with its traceback the first time its code site (the line that
  raised) is seen, and only counted after that;
* kept for a bug report: the newest faults in memory, with the head of the
  first offending frame, and every offending frame (up to
  :data:`MAX_PCAP_FRAMES`) in a pcap file that is opened at the first fault
  and that ``show stats`` names.

Sites: ``receive`` (a port reading and decoding), ``core`` (the core's
``handle_frames``), ``send`` (a port encoding and writing), ``timer`` (the
core's ``handle_timer``/``poll_at``), ``monitor`` (a capture's callback) and
``close`` (a port being closed).
"""

import logging
import os
import time
import traceback
from collections import Counter, deque
from collections.abc import Sequence

import attrs

from .ports.base import PortFault
from .ports.pcap import PcapWriter

log = logging.getLogger(__name__)

RECENT_FAULTS = 16       # faults kept in memory for `show stats`
MAX_PCAP_FRAMES = 1024   # offending frames written to the pcap, at most
MAX_SITES = 256          # distinct code sites remembered as logged (beyond: counted, not logged)
HEAD_BYTES = 64          # bytes of the first offending frame kept with each fault


class FirstAtSite:
    """Whether an exception is the first from its code site (the line that raised it), for logging its
    traceback once and only counting the rest; at most ``limit`` sites are remembered, and exceptions from
    sites beyond them are only counted, so a stream of new bugs cannot flood the log."""

    def __init__(self, limit: int = MAX_SITES) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._limit = limit

    def __call__(self, site: str, exc: BaseException) -> bool:
        key = (site, where(exc))
        if key in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        return True


@attrs.frozen
class Fault:
    """One contained exception."""

    time: float          # wall clock
    site: str            # receive, core, send, timer, monitor
    port: str            # the port whose batch it was ("" for the timer)
    error: str           # the exception, as repr() shows it
    where: str           # file:line (function) that raised
    frames: int          # frames lost with the batch
    head: bytes          # the start of the first of them

    def describe(self) -> dict[str, object]:
        return {"time": round(self.time, 6), "site": self.site, "port": self.port, "error": self.error,
                "where": self.where, "frames": self.frames, "head": self.head.hex()}


class Faults:
    """Counts, logs and keeps the exceptions the switch contains.

    ``pcap`` is where the offending frames go (None: kept in memory only);
    the file is created at the first fault, so a daemon that never has one
    leaves none behind.
    """

    def __init__(self, pcap: str | None = None, *, clock=time.time) -> None:
        self.pcap = pcap
        self._clock = clock
        self.counts: Counter[tuple[str, str]] = Counter()   # (site, port) -> faults
        self.recent: deque[Fault] = deque(maxlen=RECENT_FAULTS)
        self._first = FirstAtSite()
        self._writer: PcapWriter | None = None
        self.pcap_frames = 0
        self.pcap_error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, site: str, port: str, exc: BaseException, frames: Sequence[bytes]) -> list[bytes]:
        """Count, log (once per code site) and keep one contained exception.

        ``frames`` is the batch being handled; a :class:`PortFault` carries
        its own (the device's bytes that broke the decoding or encoding).
        Returns the frames the fault cost.
        """
        if isinstance(exc, PortFault):
            frames = exc.frames
            cause = exc.__cause__ or exc
        else:
            cause = exc
        frames = list(frames)
        self.counts[site, port] += 1
        self.recent.append(Fault(self._clock(), site, port, repr(cause), where(cause), len(frames),
                                 bytes(frames[0][:HEAD_BYTES]) if frames else b""))
        if self._first(site, cause):
            log.error("internal error (%s, port %s): %r; %d frame(s) dropped and kept%s; this site is now only"
                      " counted (show stats)", site, port or "-", cause, len(frames),
                      f" in {self.pcap}" if self.pcap else "", exc_info=cause)
        self._keep(frames)
        return frames

    def _keep(self, frames: list[bytes]) -> None:
        room = MAX_PCAP_FRAMES - self.pcap_frames
        if self.pcap is None or room <= 0 or not frames or self.pcap_error is not None:
            return
        try:
            if self._writer is None:
                self._writer = PcapWriter.open(self.pcap)
            self._writer.write(frames[:room])
        except OSError as exc:
            self.pcap_error = f"cannot write {self.pcap}: {exc.strerror or exc}"
            log.warning("internal errors: %s; their frames are kept in memory only", self.pcap_error)
            return
        self.pcap_frames += min(room, len(frames))

    def describe(self) -> dict[str, object]:
        """What `show stats` reports."""
        return {
            "total": self.total,
            "by_site": [{"site": site, "port": port, "faults": n} for (site, port), n in sorted(self.counts.items())],
            "recent": [f.describe() for f in self.recent],
            "pcap": self.pcap if self.pcap_frames else None,
            "pcap_frames": self.pcap_frames,
            "pcap_error": self.pcap_error,
        }

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def where(exc: BaseException) -> str:
    """The line that raised: ``file:line (function)``, the innermost frame of the traceback (of a group's
    first exception)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno} ({last.name})"
