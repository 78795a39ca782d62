"""Drop-in mode: the overlay between a flannel device and the underlay, as two switch ports."""

import pytest
from overlaykit import (
    drops,
    from_peer,
    ip,
    ip_checksum_ok,
    make_overlay,
    packet,
    pod,
    public,
    transmitted,
    ttl_less,
    vtep,
    vxlan_payload,
)
from scapy.all import ARP, ICMP, IP, Ether, raw
from scapy.layers.vxlan import VXLAN

from vswitch.core.actions import DropReason
from vswitch.overlay.core.dropin import DeviceOverlay

R = DropReason
DEVICE, UNDERLAY = "flannel0", "underlay"


def make_device(backend: str = "udp") -> DeviceOverlay:
    overlay = make_overlay(backend, inside="ethernet" if backend == "vxlan" else "ip")
    device = DeviceOverlay(overlay, "flannel.1" if backend == "vxlan" else DEVICE, UNDERLAY)
    device.add_port(device.device)
    device.add_port(UNDERLAY)
    return device


def test_device_to_underlay_and_back():
    device = make_device()
    out = raw(packet(ttl=20))
    actions = device.handle_frames(DEVICE, [out], 0.0)
    (datagram,) = transmitted(actions)[UNDERLAY]
    assert list(transmitted(actions)) == [UNDERLAY] and not drops(actions)
    assert datagram[:4] == ip(public(2)) and datagram[8:] == ttl_less(IP(out))
    back = packet(src=pod(2), dst=pod(1), ttl=20)
    actions = device.handle_frames(UNDERLAY, [from_peer(2, raw(back))], 0.0)
    assert transmitted(actions) == {DEVICE: [ttl_less(back)]} and not drops(actions)


def test_icmp_errors_for_device_packets_go_back_into_the_device():
    device = make_device()
    lost = packet(src="10.244.1.0", dst="10.244.77.7")           # the host, from flannel0's address
    expired = packet(src=pod(1, 5), dst=pod(2), ttl=1)
    fine = packet()
    actions = device.handle_frames(DEVICE, [raw(lost), raw(expired), raw(fine)], 0.0)
    sent = transmitted(actions)
    assert len(sent[UNDERLAY]) == 1
    assert drops(actions) == [(DEVICE, R.NO_LEASE), (DEVICE, R.TTL_EXCEEDED)]
    errors = [IP(e) for e in sent[DEVICE]]
    assert [(e[ICMP].type, e[ICMP].code, e.dst) for e in errors] == [(3, 0, "10.244.1.0"), (11, 0, pod(1, 5))]
    for error, about in zip(errors, (lost, expired)):
        assert ip_checksum_ok(raw(error)) and raw(error[ICMP])[8:] == raw(about)[:28]
        # Not flannel0's own address: the host kernel would drop that as a martian (see overlay/dropin.py).
        assert error.src == "10.244.0.0"


def test_ttl_expired_arrival_is_answered_through_the_underlay():
    device = make_device()
    expired = packet(src=pod(2, 9), dst=pod(1), ttl=1)
    actions = device.handle_frames(UNDERLAY, [from_peer(2, raw(expired))], 0.0)
    assert drops(actions) == [(UNDERLAY, R.TTL_EXCEEDED)]
    (datagram,) = transmitted(actions)[UNDERLAY]
    assert list(transmitted(actions)) == [UNDERLAY]
    assert datagram[:8] == ip(public(2)) + (8285).to_bytes(2, "big") + b"\0\0"
    error = IP(datagram[8:])
    assert (error.src, error.dst, error.ttl) == ("10.244.1.0", pod(2, 9), 63)   # from our overlay address, encapsulated
    assert (error[ICMP].type, error[ICMP].code) == (11, 0)
    assert raw(error[ICMP])[8:] == raw(expired)[:28] and ip_checksum_ok(datagram[8:])


def test_errors_are_rate_limited():
    device = make_device()
    lost = [raw(packet(src=pod(1, 5), dst="10.244.77.7", sport=i)) for i in range(60)]
    actions = device.handle_frames(DEVICE, lost, 0.0)
    assert len(transmitted(actions)[DEVICE]) == 50
    assert drops(actions) == [(DEVICE, R.NO_LEASE)] * 60
    assert device.overlay.statistics().icmp_rate_limited == 10


@pytest.mark.parametrize("down", [DEVICE, UNDERLAY])
def test_frames_while_a_port_is_down_are_dropped(down):
    device = make_device()
    device.set_port_up(down, False)
    assert not device.is_port_up(down)
    for port, frame in ((DEVICE, raw(packet())), (UNDERLAY, from_peer(2, raw(packet(src=pod(2), dst=pod(1)))))):
        actions = device.handle_frames(port, [frame, frame], 0.0)
        assert drops(actions) == [(port, R.PORT_DOWN)] * 2 and not transmitted(actions)
    device.set_port_up(down, True)
    assert transmitted(device.handle_frames(DEVICE, [raw(packet())], 0.0))


def test_half_a_tunnel_carries_nothing():
    overlay = make_overlay("udp")
    device = DeviceOverlay(overlay, DEVICE, UNDERLAY)
    device.add_port(DEVICE)
    assert drops(device.handle_frames(DEVICE, [raw(packet())], 0.0)) == [(DEVICE, R.PORT_DOWN)]
    assert not device.is_port_up(UNDERLAY)
    device.add_port(UNDERLAY)
    assert transmitted(device.handle_frames(DEVICE, [raw(packet())], 0.0))
    device.remove_port(UNDERLAY)
    assert drops(device.handle_frames(DEVICE, [raw(packet())], 0.0)) == [(DEVICE, R.PORT_DOWN)]


def test_ports_are_the_two_named():
    device = DeviceOverlay(make_overlay("udp"), DEVICE, UNDERLAY)
    with pytest.raises(ValueError, match="two ports"):
        device.add_port("eth0")
    device.add_port(DEVICE)
    with pytest.raises(ValueError, match="already exists"):
        device.add_port(DEVICE)
    assert device.poll_at() is None and device.handle_timer(0.0) == []


def test_vxlan_device_frames_both_ways():
    device = make_device("vxlan")
    frame = raw(Ether(src=vtep(1), dst=vtep(3)) / packet(dst=pod(3)))
    arp = raw(Ether(src=vtep(1), dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=pod(3)))
    actions = device.handle_frames("flannel.1", [arp, frame], 0.0)
    assert drops(actions) == [("flannel.1", R.NO_FLOODING)]
    (datagram,) = transmitted(actions)[UNDERLAY]
    assert datagram[:4] == ip(public(3)) and raw(VXLAN(datagram[8:])[Ether]) == frame
    inner = packet(src=pod(2), dst=pod(1), ttl=1)
    actions = device.handle_frames(UNDERLAY, [from_peer(2, vxlan_payload(inner), "vxlan", sport=33333)], 0.0)
    assert transmitted(actions) == {"flannel.1": [raw(Ether(dst=vtep(1), src=vtep(2)) / inner)]}
    assert not drops(actions)
