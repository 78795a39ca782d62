"""The errors the daemon and the CLI report to a person: each says what is wrong and what to do.

They live in one module, below every other part, so that any part can raise
them and the CLI can catch them without importing the part. Errors of the
pure core (malformed wire input) are :mod:`vswitch.core.wire.errors`: they
never reach a person, the core turns them into counted drops.
"""


class ConfigError(ValueError):
    """A config value that is missing or wrong: the message names the key and the reason."""

    def __init__(self, key: str, reason: str, *, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {reason}")


class DeviceError(OSError):
    """A device could not be opened or configured; the message says what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class PcapError(OSError):
    """A pcap file that cannot be opened; the message names it and says why."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class ControlError(Exception):
    """A request the daemon refused, or a daemon that cannot be reached."""


class DaemonNotRunning(ControlError):
    """No daemon listens on the control socket (yet): a client may try again later."""
