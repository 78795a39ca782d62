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


def update16(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: the checksum after a 16-bit field changes ``old`` -> ``new``.

    HC' = ~(~HC + ~m + m')
    """
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def update32(checksum: int, old: int, new: int) -> int:
    """The checksum after a 32-bit field (an IPv4 address) changes."""
    checksum = update16(checksum, old >> 16, new >> 16)
    return update16(checksum, old & 0xFFFF, new & 0xFFFF)
