"""Reading a core's actions in a test: one set of helpers for every kind of core.

A core returns a flat list of :class:`~vswitch.core.actions.Transmit`,
:class:`~vswitch.core.actions.Drop` and (from a tunnel)
:class:`~vswitch.core.actions.Unreachable` values. These turn it into what a
test asserts on.
"""

from collections.abc import Iterable

from vswitch.core.actions import Drop, DropReason, Transmit, Unreachable


def transmitted(actions: Iterable[object]) -> dict[str, list[bytes]]:
    """Every frame sent, per port, in order (several Transmits to one port are joined)."""
    out: dict[str, list[bytes]] = {}
    for action in actions:
        if type(action) is Transmit:
            out.setdefault(action.port, []).extend(action.frames)
    return out


def transmits(actions: Iterable[object]) -> dict[str, list[bytes]]:
    """Like :func:`transmitted`, and asserts the bridge's promise: at most one Transmit per port per call."""
    out: dict[str, list[bytes]] = {}
    for action in actions:
        if type(action) is Transmit:
            assert action.port not in out, f"two Transmits to port {action.port!r} in one call"
            out[action.port] = list(action.frames)
    return out


def drops(actions: Iterable[object]) -> list[tuple[str, DropReason]]:
    """(port, reason) of every Drop, in order."""
    return [(a.port, a.reason) for a in actions if type(a) is Drop]


def dropped(actions: Iterable[object]) -> list[tuple[str, DropReason, bytes]]:
    """(port, reason, frame) of every Drop, in order."""
    return [(a.port, a.reason, a.frame) for a in actions if type(a) is Drop]


def unreachables(actions: Iterable[object]) -> list[tuple[int, int, bytes]]:
    """(ICMP type, code, packet) of every ICMP error a tunnel says is owed."""
    return [(a.type, a.code, a.packet) for a in actions if type(a) is Unreachable]
