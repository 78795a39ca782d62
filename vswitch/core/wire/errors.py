"""Errors raised by the wire layer.

Inside the core these never escape: a frame that raises one becomes a counted
``Drop``. They subclass ``ValueError`` so misuse from API callers reads naturally.
"""


class WireError(ValueError):
    """A buffer does not hold a valid header."""


class Truncated(WireError):
    """The buffer is shorter than the header (or the length it declares)."""


class Malformed(WireError):
    """The header is long enough but a field holds an impossible value."""
