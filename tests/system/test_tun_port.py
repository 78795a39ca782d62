"""TUN and TAP ports carry raw IP packets and Ethernet frames to and from a real kernel stack."""

import json
import logging

import trio
from netkit import in_ns, requires_root, unique
from scapy.all import ARP, Ether, raw

from vswitch.core.actions import Transmit
from vswitch.core.l2.bridge import Bridge
from vswitch.core.wire import Icmp, Ipv4, build_echo, build_ipv4
from vswitch.core.wire.icmp import ECHO_REQUEST
from vswitch.core.wire.ipv4 import PROTO_ICMP
from vswitch.shell.netns import configure_link, limit_gso_segments
from vswitch.shell.ports import (
    Capabilities,
    Medium,
    MemoryPort,
    PcapPort,
    PcapWriter,
    PortClosed,
)
from vswitch.shell.ports.tuntap import TunTapPort
from vswitch.shell.switch import Switch

pytestmark = requires_root
HOST_MAC = "02:00:00:00:79:02"


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


async def test_a_tap_recorded_to_pcap_keeps_its_fast_path(namespaces, tmp_path):
    ns = namespaces.create()
    name = unique("tp")
    tap = TunTapPort.open(name, kind="tap")
    writer = PcapWriter.open(str(tmp_path / "tap.pcap"))
    port = PcapPort(tap, writer)
    assert port.capabilities == Capabilities(Medium.ETHERNET, send_nowait=True, vnet_header=True, tso=True)
    switch = Switch(Bridge())
    try:
        with trio.fail_after(20):
            await configure_link(name, netns=ns, address="10.79.1.1/24")
            switch.add_port(port)
            host, far = MemoryPort.pair("host")
            switch.add_port(host)
            async with trio.open_nursery() as nursery:
                await nursery.start(switch.run)
                who_has = raw(Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
                    hwsrc=HOST_MAC, psrc="10.79.1.2", pdst="10.79.1.1"))
                switch.dispatch([Transmit(name, [who_has])])   # as from a receiving task: no await before the checks
                status = next(s for s in switch.port_status() if s.name == name)
                assert status.tx.queued == 0 and status.tx.sent_batches == 1   # written at once, not queued
                assert writer.frames == 1 and tap.statistics().tx_frames == 1
                answer = None
                while answer is None:   # the kernel's answer comes back through the switch (with its IPv6 chatter)
                    answer = next((Ether(f) for f in await far.receive_batch() if ARP in Ether(f)), None)
                assert (answer[ARP].op, answer[ARP].psrc, answer.dst) == (2, "10.79.1.1", HOST_MAC)
                nursery.cancel_scope.cancel()
    finally:
        await port.aclose()   # the tap and the pcap (the switch closed them already if it ran)


async def test_a_device_s_gso_max_segs_is_set_and_a_refusal_is_only_logged(namespaces, caplog):
    """The overlay asks a container's device for super-frames that fit one UDP GSO send; where the kernel
    will not (here: no such device), the device is left as it is and the start goes on, with a warning."""
    caplog.set_level(logging.DEBUG, logger="vswitch.shell.netns")
    ns = namespaces.create()
    name = unique("tg")
    port = TunTapPort.open(name, kind="tap", mtu=1450)
    try:
        with trio.fail_after(20):
            await configure_link(name, netns=ns, mtu=1450, gso_max_segs=44)
        (link,) = json.loads(in_ns(ns, "ip", "-d", "-j", "link", "show", "dev", name).stdout)
        assert (link["gso_max_segs"], link["mtu"], "UP" in link["flags"]) == (44, 1450, True)
        with trio.fail_after(20):
            await limit_gso_segments(unique("gone"), 44, netns=ns)
    finally:
        await port.aclose()
    assert any(record.levelname in ("WARNING", "DEBUG") and "keeps its super-frames' size" in record.message
               for record in caplog.records)
