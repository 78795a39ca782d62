"""MAC and IPv4 address helpers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vswitch.core.wire import (
    BROADCAST_MAC,
    ZERO_MAC,
    ip_from_str,
    ip_to_str,
    is_link_local_mac,
    is_multicast_mac,
    mac_from_str,
    mac_to_str,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("02:00:00:00:00:01", b"\x02\x00\x00\x00\x00\x01"),
    ("02-00-00-00-00-01", b"\x02\x00\x00\x00\x00\x01"),
    ("AA:bb:Cc:dD:ee:FF", b"\xaa\xbb\xcc\xdd\xee\xff"),
    ("2:0:0:0:0:1", b"\x02\x00\x00\x00\x00\x01"),
    ("ff:ff:ff:ff:ff:ff", BROADCAST_MAC),
])
def test_mac_from_str_accepts(text, expected):
    assert mac_from_str(text) == expected


@pytest.mark.parametrize("text", [
    "",
    "02:00:00:00:00",
    "02:00:00:00:00:01:02",
    "02:00:00:00:00:",
    "02::00:00:00:01",
    "02:00:00:00:00:001",
    "02:00:00:00:00:0x",
    "02:00:00:00:00:0x1",
    "g2:00:00:00:00:01",
    "02:00:00:00:00:+1",
    "02:00:00:00:00: 1",
    "02:00:00:00:00:1 ",
    " 02:00:00:00:00:01",
    "02:00:00:00:00:1_",
    "\u0662:00:00:00:00:01",  # ARABIC-INDIC DIGIT TWO: int() accepts it, a MAC must not
    "0200.0000.0001",
])
def test_mac_from_str_rejects(text):
    with pytest.raises(ValueError):
        mac_from_str(text)


@given(st.binary(min_size=6, max_size=6))
def test_mac_text_round_trip(mac):
    text = mac_to_str(mac)
    assert len(text) == 17
    assert mac_from_str(text) == mac
    assert mac_from_str(text.upper().replace(":", "-")) == mac


def test_multicast_bit():
    assert is_multicast_mac(BROADCAST_MAC)
    assert is_multicast_mac(mac_from_str("01:00:5e:00:00:01"))
    assert is_multicast_mac(mac_from_str("33:33:00:00:00:01"))
    assert not is_multicast_mac(ZERO_MAC)
    assert not is_multicast_mac(mac_from_str("02:00:00:00:00:01"))
    assert not is_multicast_mac(mac_from_str("fe:ff:ff:ff:ff:ff"))


@pytest.mark.parametrize("last", range(0x00, 0x10))
def test_link_local_range(last):
    assert is_link_local_mac(bytes([0x01, 0x80, 0xC2, 0, 0, last]))


@pytest.mark.parametrize("mac", [
    "01:80:c2:00:00:10", "01:80:c2:00:00:ff", "01:80:c2:00:01:00", "01:80:c2:01:00:00",
    "03:80:c2:00:00:00", "01:80:c3:00:00:00", "00:80:c2:00:00:00", "ff:ff:ff:ff:ff:ff",
])
def test_not_link_local(mac):
    assert not is_link_local_mac(mac_from_str(mac))


def test_ip_text_round_trip():
    assert ip_from_str("192.0.2.1") == b"\xc0\x00\x02\x01"
    assert ip_to_str(b"\xc6\x33\x64\x02") == "198.51.100.2"
    for bad in ("192.0.2", "256.0.0.1", "a.b.c.d", "::1"):
        with pytest.raises(ValueError):
            ip_from_str(bad)
