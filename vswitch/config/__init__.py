"""The node's configuration: TOML in (:mod:`.loader`), validated and parsed values out (:mod:`.model`).

``from vswitch.config import load`` is the way in; the values and limits are re-exported here.
"""

from vswitch.errors import ConfigError

from . import model
from .loader import (
    GATEWAY_INTERFACE,
    load,
    loads,
    parse,
    parse_interface,
    parse_ip,
    resolve_lease,
)
from .model import *  # noqa: F403 (the values and limits: model.__all__)

__all__ = ["GATEWAY_INTERFACE", "ConfigError", "resolve_lease", "load", "loads", "parse", "parse_interface", "parse_ip", *model.__all__]
