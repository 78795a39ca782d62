"""System-test helpers: the shared ones live in vswitch.testing."""

import pytest

from vswitch.testing import (  # noqa: F401  (re-exported for the tests)
    Daemon, Namespaces, can_run, in_ns, link_exists, link_mac, ping, sh, tap_config, unique,
)

requires_root = pytest.mark.skipif(can_run() is not None, reason=can_run() or "")
