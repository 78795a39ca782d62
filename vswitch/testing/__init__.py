"""A kit for tests of vswitch and of what is built on it.

* :mod:`vswitch.testing.actions`: read a core's actions (``transmits``,
  ``drops``, ...), one set of helpers for every core;
* :mod:`vswitch.testing.cluster`: :class:`Cluster`, cores joined by wires and
  an underlay that deliver between them by themselves (pure);
* :mod:`vswitch.testing.system`: real devices: uniquely named network
  namespaces that are always removed, a daemon run as a subprocess, commands
  inside namespaces (root and iproute2);
* :mod:`vswitch.testing.etcd`: :class:`EtcdServer`, a real etcd on free
  ports with its own data directory (optionally TLS with a test CA, or inside
  a namespace), always stopped and removed.
"""

from . import etcd, system
from .actions import dropped, drops, transmits, transmitted, unreachables
from .cluster import Cluster, Delivered
from .etcd import *  # noqa: F403 (a real etcd: etcd.__all__)
from .system import *  # noqa: F403 (real devices: system.__all__)

__all__ = ["Cluster", "Delivered", "dropped", "drops", "transmits", "transmitted", "unreachables",
           *system.__all__, *etcd.__all__]
