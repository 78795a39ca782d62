"""The daemon: where the parts are assembled — the core, the shell's ports and switch, the overlay's wiring
and the control socket — into a node that runs.

- :mod:`~vswitch.daemon.assemble`: a validated config becomes the core and its ports;
- :mod:`~vswitch.daemon.node`: the running node, its reload and attach, serving until a signal.
"""

from .assemble import (
           UNDERLAY_PORT,
           build_core,
           faults_pcap,
           open_device_port,
           stable_mac,
)
from .node import Node, build, prepare, run_until_signal, serve

__all__ = ["UNDERLAY_PORT", "Node", "build", "build_core", "faults_pcap", "open_device_port", "prepare",
           "run_until_signal", "serve", "stable_mac"]
