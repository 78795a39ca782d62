"""A TUN port carries raw IP packets to and from a real kernel stack."""

import trio
from netkit import in_ns, requires_root, unique

from vswitch.core.wire import Icmp, Ipv4, build_echo, build_ipv4
from vswitch.core.wire.icmp import ECHO_REQUEST
from vswitch.core.wire.ipv4 import PROTO_ICMP
from vswitch.shell.netns import configure_link
from vswitch.shell.ports import PortClosed
from vswitch.shell.ports.tuntap import TunTapPort

pytestmark = requires_root


async def _answer_pings(port: TunTapPort, answered: list[int]) -> None:
    """Reply to every echo request that comes out of the TUN, as a host at its far end would."""
    while True:
        try:
            packets = await port.receive_batch()
        except PortClosed:
            return
        replies = []
        for packet in packets:
            if packet[0] >> 4 != 4:  # the kernel also sends IPv6 (router solicitations)
                continue
            ip = Ipv4.parse(packet)
            if ip.proto != PROTO_ICMP:
                continue
            echo = Icmp.parse(ip.payload(packet))
            if echo.type == ECHO_REQUEST:
                answered.append(echo.seq)
                reply = build_echo(echo.ident, echo.seq, echo.body, reply=True)
                replies.append(build_ipv4(ip.dst, ip.src, PROTO_ICMP, reply))
        await port.send_batch(replies)


async def test_kernel_pings_through_a_tun_port(namespaces):
    ns = namespaces.create()
    name = unique("tn")
    port = TunTapPort.open(name, kind="tun", mtu=1400)
    answered: list[int] = []
    try:
        with trio.fail_after(20):
            await configure_link(name, netns=ns, address="10.79.0.1/24", mtu=1400)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_answer_pings, port, answered)
                result = await trio.to_thread.run_sync(
                    lambda: in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.79.0.2", check=False)
                )
                nursery.cancel_scope.cancel()
    finally:
        await port.aclose()
    assert result.returncode == 0, result.stdout
    assert answered == [1, 2, 3]
    stats = port.statistics()
    assert stats.rx_frames >= 3 and stats.tx_frames == 3
