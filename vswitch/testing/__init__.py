"""A kit for tests of vswitch and of what is built on it.

* :mod:`vswitch.testing.actions`: read a core's actions (``transmits``,
  ``drops``, ...), one set of helpers for every core;
* :mod:`vswitch.testing.cluster`: :class:`Cluster`, cores joined by wires and
  an underlay that deliver between them by themselves (pure);
* :mod:`vswitch.testing.system`: real devices: uniquely named network
  namespaces that are always removed, a daemon run as a subprocess, commands
  inside namespaces (root and iproute2).
"""

from .actions import dropped, drops, transmits, transmitted, unreachables
from .cluster import Cluster, Delivered
from .system import (
    Daemon,
    Namespaces,
    can_run,
    in_ns,
    link_exists,
    link_mac,
    outside_link,
    ping,
    sh,
    tap_config,
    unique,
    uplink_config,
)

__all__ = [
    "Cluster", "Daemon", "Delivered", "Namespaces", "can_run", "dropped", "drops", "in_ns", "link_exists", "link_mac",
    "outside_link", "ping", "sh", "tap_config", "transmits", "transmitted", "unique", "unreachables", "uplink_config",
]
