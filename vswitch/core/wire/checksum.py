"""The Internet checksum (RFC 1071), full and incremental (RFC 1624)."""

_FOLD = 0xFFFF


def ones_complement_sum(data: bytes, initial: int = 0) -> int:
    """The 16-bit ones' complement sum of ``data`` (zero-padded to even length).

    Summing big-endian 16-bit words with end-around carry equals the value of
    the whole buffer as one big integer modulo 0xFFFF, except that a non-zero
    buffer never sums to +0 in ones' complement: it sums to 0xFFFF (-0).
    Python's bignum arithmetic does that in C, far faster than a word loop.
    """
    if len(data) & 1:
        data = bytes(data) + b"\0"
    value = int.from_bytes(data, "big") + initial
    total = value % _FOLD
    if total == 0 and value:
        return _FOLD
    return total


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """The checksum to store in a header whose checksum field is zero in ``data``.

    ``initial`` carries a partial sum, e.g. a UDP/TCP pseudo-header.
    A buffer that already contains a correct checksum yields 0.
    """
    return ~ones_complement_sum(data, initial) & 0xFFFF


def fold(value: int) -> int:
    """``value`` (below 2**32) folded to 16 bits with the end-around carry."""
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def delta(old: bytes, new: bytes) -> int:
    """The change, in ones' complement, that turns a sum over ``old`` into one over ``new``: ``~m + m'``
    of RFC 1624 for every 16-bit word, folded. ``old`` and ``new`` have the same even length.

    Computed once and applied to many checksums: NAT works out each direction
    of a connection when it is made.
    """
    total = 0
    for i in range(0, len(old), 2):
        total += (0xFFFF - int.from_bytes(old[i:i + 2], "big")) + int.from_bytes(new[i:i + 2], "big")
    return fold(total)


def adjust(checksum: int, change: int) -> int:
    """RFC 1624 eqn. 3, the incremental update: ``HC' = ~(~HC + ~m + m')``, with ``change`` from :func:`delta`.

    It never turns a real checksum into 0xFFFF (-0), as eqn. 2 could.
    """
    return ~fold((~checksum & 0xFFFF) + change) & 0xFFFF


def update16(checksum: int, old: int, new: int) -> int:
    """The checksum after a 16-bit field changes ``old`` -> ``new``."""
    return adjust(checksum, (~old & 0xFFFF) + new)


def update32(checksum: int, old: int, new: int) -> int:
    """The checksum after a 32-bit field (an IPv4 address) changes."""
    return adjust(checksum, (~old >> 16 & 0xFFFF) + (new >> 16) + (~old & 0xFFFF) + (new & 0xFFFF))
