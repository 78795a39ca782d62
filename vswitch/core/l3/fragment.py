"""IPv4 fragmentation (RFC 791), for a packet bigger than the next hop's MTU whose DF bit is clear. Pure.

The router only fragments; it never reassembles (a fragment for the router
itself is dropped).
"""

from vswitch.core.wire import ipv4


def fragment(packet: bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most ``mtu`` bytes (RFC 791).

    Later fragments carry only the options whose copied flag is set. A packet
    that is itself a fragment keeps its offset and its more-fragments flag.
    """
    ihl = (packet[ipv4.VER_IHL] & 0x0F) * 4
    header, payload = packet[:ihl], packet[ihl:]
    flags_offset = int.from_bytes(packet[ipv4.FRAGMENT], "big")
    base = (flags_offset & ipv4.OFFSET_MASK) * 8
    last_more = flags_offset & ipv4.FLAG_MF
    later_options = _copied_options(header[ipv4.MIN_HEADER_LEN:])
    pieces = []
    position = 0
    options = header[ipv4.MIN_HEADER_LEN:]
    while position < len(payload):
        room = (mtu - ipv4.MIN_HEADER_LEN - len(options)) & ~7
        if room <= 0:
            raise ValueError(f"mtu {mtu} cannot carry a fragment with {len(options)} bytes of options")
        chunk = payload[position:position + room]
        more = position + len(chunk) < len(payload)
        field = ((base + position) // 8) | (ipv4.FLAG_MF if more or last_more else 0)
        pieces.append(ipv4.build_ipv4(
            packet[ipv4.SRC], packet[ipv4.DST], packet[ipv4.PROTOCOL], chunk, ttl=packet[ipv4.TTL],
            ident=int.from_bytes(packet[ipv4.IDENT], "big"), tos=packet[ipv4.TOS], flags_offset=field, options=options,
        ))
        position += len(chunk)
        options = later_options
    return pieces


def _copied_options(options: bytes) -> bytes:
    """The options with the copied flag, padded to a multiple of four bytes."""
    kept = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:       # end of options
            break
        if kind == 1:       # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break           # malformed: keep what was whole
        length = options[i + 1]
        if kind & 0x80:
            kept += options[i:i + length]
        i += length
    kept += b"\0" * (-len(kept) % 4)
    return bytes(kept)
