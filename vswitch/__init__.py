"""vswitch: a userspace virtual switch and overlay daemon built on Trio.

What a test author imports, from here::

    from vswitch import Bridge, Switch, MemoryPort, Host, HostRunner

The names load on first use (PEP 562), so importing a pure part such as
:mod:`vswitch.core` never pulls in Trio through this package.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # the pure core
    "Bridge": "vswitch.core.l2.bridge",
    "Router": "vswitch.core.l3.router",
    "Nat": "vswitch.core.nat",
    "Datapath": "vswitch.core.datapath",
    "Transmit": "vswitch.core.actions",
    "Drop": "vswitch.core.actions",
    "DropReason": "vswitch.core.actions",
    "Host": "vswitch.core.host",
    # the Trio shell
    "Switch": "vswitch.shell.switch",
    "MemoryPort": "vswitch.shell.ports.memory",
    "ImpairedPort": "vswitch.shell.ports.impair",
    "Impairment": "vswitch.shell.ports.impair",
    "PcapPort": "vswitch.shell.ports.pcap",
    "PcapWriter": "vswitch.shell.ports.pcap",
    "HostRunner": "vswitch.shell.hosts",
    # configuration
    "load_config": ("vswitch.config", "load"),
    "loads_config": ("vswitch.config", "loads"),
    "ConfigError": "vswitch.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'vswitch' has no attribute {name!r}")
    module, attribute = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
