"""vswitch: a userspace virtual switch and overlay daemon built on Trio."""

__version__ = "0.1.0"
