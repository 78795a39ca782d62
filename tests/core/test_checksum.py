"""The Internet checksum, full (RFC 1071) and incremental (RFC 1624), against scapy."""

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scapy.all import IP, raw
from scapy.utils import checksum as scapy_checksum

from vswitch.core.wire import internet_checksum, ip_from_str, update16, update32
from vswitch.core.wire.checksum import ones_complement_sum


def test_rfc1071_example():
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


@pytest.mark.parametrize(("data", "expected"), [
    (b"", 0xFFFF),
    (b"\x00", 0xFFFF),
    (b"\x01", 0xFEFF),            # an odd byte is the high half of a padded word
    (b"\x00\x01\x02", 0xFDFE),
    (b"\xff\xff", 0x0000),
    (b"\xff\xff\xff", 0x00FF),
])
def test_small_and_odd_lengths(data, expected):
    assert internet_checksum(data) == expected
    assert scapy_checksum(data) == expected


@given(st.binary(max_size=301))
@example(b"\xff" * 7)
@example(b"\x00" * 9)
def test_matches_scapy_any_length(data):
    assert internet_checksum(data) == scapy_checksum(data)


@given(st.binary(min_size=1, max_size=300).filter(lambda d: len(d) % 2 == 1))
def test_odd_length_equals_zero_padded(data):
    assert internet_checksum(data) == internet_checksum(data + b"\0")
    assert internet_checksum(bytearray(data)) == internet_checksum(data)


@given(st.binary(max_size=64).map(lambda d: d + b"\0\0" if len(d) % 2 == 0 else d + b"\0\0\0"))
def test_inserting_the_checksum_verifies_to_zero(data):
    # data (even length) ends in a zero 16-bit field: store the checksum there
    at = len(data) - 2
    buf = bytearray(data)
    struct.pack_into("!H", buf, at, internet_checksum(data))
    assert internet_checksum(bytes(buf)) == 0


@given(st.binary(min_size=12, max_size=12), st.binary(max_size=100))
def test_initial_is_a_prefix_sum(prefix, data):
    assert internet_checksum(data, int.from_bytes(prefix, "big")) == internet_checksum(prefix + data)


# -- incremental update (RFC 1624) -------------------------------------------

def _scapy_header(src, dst, ttl, ident, tos, proto) -> bytes:
    return raw(IP(src=src, dst=dst, ttl=ttl, id=ident, tos=tos, proto=proto))


def _stored(header: bytes) -> int:
    return struct.unpack_from("!H", header, 10)[0]


def _scapy_recompute(header: bytes) -> int:
    pkt = IP(header)
    del pkt.chksum
    return IP(raw(pkt)).chksum


addresses = st.builds(lambda b: ".".join(map(str, b)), st.lists(st.integers(0, 255), min_size=4, max_size=4))
headers = st.builds(
    _scapy_header, addresses, addresses, st.integers(0, 255), st.integers(0, 0xFFFF),
    st.integers(0, 255), st.integers(0, 255),
)


def _with_ttl(header: bytes, ttl: int, checksum: int) -> bytes:
    buf = bytearray(header)
    buf[8] = ttl
    struct.pack_into("!H", buf, 10, checksum)
    return bytes(buf)


@given(headers, st.integers(0, 255))
def test_update16_after_ttl_change_equals_full_recompute(header, new_ttl):
    old_word, = struct.unpack_from("!H", header, 8)  # TTL and protocol share a word
    new_word = (new_ttl << 8) | (old_word & 0xFF)
    incremental = update16(_stored(header), old_word, new_word)
    new_header = _with_ttl(header, new_ttl, incremental)
    assert incremental == _scapy_recompute(new_header)
    assert internet_checksum(new_header) == 0


@given(headers, addresses, st.sampled_from([12, 16]))
def test_update32_after_address_change_equals_full_recompute(header, new_address, offset):
    old = int.from_bytes(header[offset:offset + 4], "big")
    new_raw = ip_from_str(new_address)
    incremental = update32(_stored(header), old, int.from_bytes(new_raw, "big"))
    buf = bytearray(header)
    buf[offset:offset + 4] = new_raw
    struct.pack_into("!H", buf, 10, incremental)
    assert incremental == _scapy_recompute(bytes(buf))
    assert internet_checksum(bytes(buf)) == 0


def _header_with_zero_checksum() -> bytes:
    """A real header whose full checksum is 0x0000 (its sum is 0xFFFF): pick the ident to make it so."""
    base = _scapy_header("10.0.0.1", "10.0.0.2", 64, 0, 0, 17)
    header = _scapy_header("10.0.0.1", "10.0.0.2", 64, _stored(base), 0, 17)
    assert _stored(header) == 0
    return header


def test_update_that_lands_on_zero_gives_0000_like_a_full_recompute():
    target = _header_with_zero_checksum()
    start = _with_ttl(target, 65, 0)
    start = _with_ttl(start, 65, _scapy_recompute(start))  # a fully computed starting checksum
    assert _stored(start) != 0
    incremental = update16(_stored(start), (65 << 8) | 17, (64 << 8) | 17)
    assert incremental == 0x0000 == _scapy_recompute(target)


@pytest.mark.parametrize("new_ttl", [63, 64, 0, 255])
def test_update_from_the_ffff_spelling_of_zero_stays_valid(new_ttl):
    # 0xFFFF and 0x0000 are both valid spellings of this header's checksum
    # (ones' complement -0 and +0); a sender may use either. Updating from
    # 0xFFFF must still give a checksum the receiver accepts, and one that
    # is the full recompute's value or its other spelling.
    header = _with_ttl(_header_with_zero_checksum(), 64, 0xFFFF)
    assert internet_checksum(header) == 0
    incremental = update16(0xFFFF, (64 << 8) | 17, (new_ttl << 8) | 17)
    new_header = _with_ttl(header, new_ttl, incremental)
    assert internet_checksum(new_header) == 0
    full = _scapy_recompute(new_header)
    assert incremental == full or {incremental, full} == {0, 0xFFFF}


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_update16_is_the_ones_complement_identity(checksum, old, new):
    # ~HC' == ~HC - m + m' in ones' complement arithmetic (mod 0xFFFF).
    result = update16(checksum, old, new)
    assert 0 <= result <= 0xFFFF
    assert ((~result & 0xFFFF) - ((~checksum & 0xFFFF) - old + new)) % 0xFFFF == 0
    # RFC 1624's point: eqn. 3 yields -0 (0xFFFF) only from an all-zero sum,
    # i.e. only when it started from 0xFFFF and removed 0xFFFF, adding 0.
    if result == 0xFFFF:
        assert (checksum, old, new) == (0xFFFF, 0xFFFF, 0)


@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_update_with_no_change_keeps_a_real_checksum(checksum, value):
    # A no-op update may only rewrite 0xFFFF as its equivalent 0x0000.
    expected = 0 if checksum == 0xFFFF else checksum
    assert update16(checksum, value & 0xFFFF, value & 0xFFFF) == expected
    assert update32(checksum, value, value) == expected
