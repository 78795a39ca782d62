"""Telling systemd how the daemon is doing (``sd_notify``), without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a Unix datagram
socket (a path, or an abstract name when it starts with ``@``), and waits
for ``READY=1`` before it counts the unit as started; ``STOPPING=1`` says
the shutdown is ours, ``STATUS=`` is what ``systemctl status`` shows, and
with ``WatchdogSec=`` it restarts a daemon that stops sending
``WATCHDOG=1`` within ``$WATCHDOG_USEC``. The protocol is one datagram of
``KEY=value`` lines per message (systemd's ``sd_notify(3)``).

Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing. A
send that fails is logged once and never stops the daemon: systemd being
away or restarted must not cost the containers their network.
"""

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``sd_notify`` messages to one notify socket; ``address`` None sends nothing."""

    def __init__(self, address: str | None) -> None:
        self.address: str | None = None
        if address:
            # An abstract socket's name starts with a NUL byte, which systemd writes as '@'.
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "Notifier":
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=value`` lines (``notify(READY=1, STATUS="serving")``); True if it went."""
        if self.address is None:
            return False
        # one line per field: a value's own line breaks (an error message's) would start a bogus field
        message = "".join(f"{key}={' '.join(str(value).splitlines())}\n" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)   # a full socket loses this message rather than stall the event loop
                sock.sendto(message, self.address)
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("cannot notify systemd at %s: %s (logged once; the daemon carries on)",
                            self.address.replace("\0", "@"), exc)
            return False
        self.sent += 1
        return True

    async def watchdog(self, interval: float, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Send ``WATCHDOG=1`` every ``interval`` seconds from the event loop, so a loop that stops turning stops
        them too and systemd restarts the daemon."""
        task_status.started()
        while True:
            self.notify(WATCHDOG=1)
            await trio.sleep(interval)


def watchdog_interval(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, as ``sd_watchdog_enabled(3)`` advises;
    None when systemd asks for no watchdog, or asks another process (``$WATCHDOG_PID`` is not ours)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
