"""Field offsets: the convention of the header modules, and :func:`at`.

Each header module names the offsets of its fields from the start of the
header, as smoltcp's ``mod field`` does: an int for a one-byte field
(``ipv4.TTL``), a slice for a wider one (``ipv4.SRC``). A header that starts
at 0 is read with the names themselves; one inside a bigger buffer (the
transport header after IPv4 options, a packet quoted in an ICMP error) is
read at its start plus the offset: ``packet[base + tcp.FLAGS]``, or
``packet[at(base, ipv4.SRC)]`` for a wider field. A fast path whose base is
fixed binds the shifted offsets once, as module-level constants.
"""


def at(base: int, field: slice) -> slice:
    """``field`` of a header that starts at ``base``."""
    return slice(base + field.start, base + field.stop)
