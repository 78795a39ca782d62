"""A super-frame the overlay cut leaves a real UDP socket in as few sendmsg calls as UDP GSO allows."""

import socket

import pytest
from scapy.all import IP, TCP, raw

from vswitch.core.wire.addr import Network
from vswitch.core.wire.offload import GSO_TCPV4, super_frame
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.core.tunnel import Overlay
from vswitch.shell.ports.udp import GSO_MAX_BYTES, UdpPort


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_the_datagrams_of_one_super_frame_share_sendmsg_calls(backend):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.settimeout(2)
    port = UdpPort.open("underlay", "127.0.0.1", 0)
    try:
        if not port.offloads:
            pytest.skip("no UDP GRO/GSO in this kernel")
        overlay = Overlay(backend=backend, network=Network.parse("10.244.0.0/16"), subnet=Network.parse("10.244.1.0/24"),
                          port=receiver.getsockname()[1], vtep_mac=b"\x02\0\0\0\x01\xff" if backend == "vxlan" else None)
        overlay.set_leases([Lease(Network.parse("10.244.2.0/24"), socket.inet_aton("127.0.0.1"),
                                  b"\x02\0\0\0\x02\xff" if backend == "vxlan" else None)])
        payload = bytes(i & 0xFF for i in range(64000))
        packet = raw(IP(src="10.244.1.2", dst="10.244.2.2") / TCP(sport=1, dport=2, flags="PA") / payload)
        (sent,) = overlay.encapsulate([super_frame(packet, GSO_TCPV4, 1448)], 0.0)
        datagrams = sent.frames
        calls = []
        start = 0
        while start < len(datagrams):
            used = port._write_some(datagrams, start)
            calls.append(used)
            start += used
        size = len(datagrams[0]) - 8
        assert calls[0] == min(len(datagrams), GSO_MAX_BYTES // size)   # as many as one GSO buffer holds
        assert len(calls) == -(-len(datagrams) // calls[0])
        received = [receiver.recv(65535) for _ in datagrams]   # the kernel cut them apart again
        assert received == [d[8:] for d in datagrams]
    finally:
        port._close_device()
        receiver.close()
