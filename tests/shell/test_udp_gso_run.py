"""A super-frame the overlay cut leaves a real UDP socket as one run of datagrams, sent with UDP GSO, and arrives
as the datagrams they are."""

import socket

import pytest
from scapy.all import IP, TCP, raw

from vswitch.core.wire.addr import Network
from vswitch.core.wire.offload import GSO_TCPV4, super_frame
from vswitch.overlay.core.gro import GSO_MAX_BYTES, DatagramRun, split_run
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.core.tunnel import Overlay
from vswitch.shell.ports.udp import UdpPort


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
        (run,) = sent.frames
        assert type(run) is DatagramRun and len(run) > GSO_MAX_BYTES   # more than one sendmsg takes
        assert port._write_some([run], 0) == 1   # sent whole, in as many GSO buffers as it takes
        datagrams = split_run(run)
        received = [receiver.recv(65535) for _ in datagrams]   # the kernel cut them apart again
        assert received == [d[8:] for d in datagrams]
        assert {len(d) for d in received[:-1]} == {run.size}
    finally:
        port._close_device()
        receiver.close()
