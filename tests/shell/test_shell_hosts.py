"""Simulated hosts on one switch: ARP and ping end to end over memory links."""

import itertools

import trio
from scapy.layers.l2 import ARP, Ether
from shellkit import mac, recv, start_switch

from vswitch.core.host import Host
from vswitch.core.wire.addr import ip_from_str
from vswitch.shell.hosts import HostRunner
from vswitch.shell.ports import MemoryPort

ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


async def start_hosts(nursery, rig) -> list[HostRunner]:
    runners = []
    for i, (name, address) in enumerate(zip(rig.peers, ADDRESSES), start=1):
        host = Host(f"h{i}", mac(i), f"{address}/24")
        runners.append(await nursery.start(HostRunner(host, rig.peers[name]).run))
    return runners


async def test_every_pair_pings_and_fdb_learns_every_host(nursery):
    rig = await start_switch(nursery, ["p1", "p2", "p3", "p4"])
    runners = await start_hosts(nursery, rig)

    for a, b in itertools.permutations(runners, 2):
        result = await a.ping(str(b.host.interface.ip), count=2, timeout=2.0)
        assert (result.sent, result.received) == (2, 2), (a.host, b.host)
        assert all(rtt >= 0 for rtt in result.rtts)

    for runner in runners:
        host = runner.host
        others = {r.host.ip: r.host.mac for r in runners if r is not runner}
        assert host.neighbours == others
        assert host.stats.echo_requests == 2 * 3  # answered two pings from each other host
        assert host.stats.echo_replies == 2 * 3
        # one ARP request per neighbour it pinged first; the later pings found them cached
        assert host.stats.arp_requests <= 3
    assert rig.fdb() == {mac(i): f"p{i}" for i in range(1, 5)}
    stats = rig.bridge.statistics()
    assert stats.flooded >= 1          # ARP requests are broadcast
    assert stats.unicast > stats.flooded
    assert not rig.switch.drop_counts()


async def test_arp_request_is_answered_with_the_hosts_mac(nursery):
    """A raw ARP request (built by scapy) gets a reply that scapy parses."""
    rig = await start_switch(nursery, ["p1", "p2"])
    host = Host("h2", mac(2), "10.0.0.2/24")
    await nursery.start(HostRunner(host, rig.peers["p2"]).run)

    request = bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01")
        / ARP(op="who-has", hwsrc="02:00:00:00:00:01", psrc="10.0.0.1", pdst="10.0.0.2")
    )
    await rig.send("p1", request)
    (reply,) = await recv(rig.peers["p1"])
    parsed = Ether(reply)
    assert parsed.dst == "02:00:00:00:00:01"
    assert parsed[ARP].op == 2  # is-at
    assert parsed[ARP].hwsrc == "02:00:00:00:00:02"
    assert parsed[ARP].psrc == "10.0.0.2"
    assert host.neighbours == {ip_from_str("10.0.0.1"): mac(1)}


async def test_ping_to_an_absent_address_is_lost(nursery, autojump_clock):
    rig = await start_switch(nursery, ["p1", "p2"])
    runners = await start_hosts(nursery, rig)
    result = await runners[0].ping("10.0.0.99", count=3, timeout=0.3)
    assert (result.sent, result.received, result.loss) == (3, 0, 1.0)
    # requests for an unresolved address are rate-limited to one per ARP_RETRY
    assert runners[0].host.stats.arp_requests == 1
    result = await runners[0].ping("10.0.0.99", timeout=1.0)  # 0.9 s later: not yet
    assert runners[0].host.stats.arp_requests == 1
    result = await runners[0].ping("10.0.0.99", timeout=1.0)  # 1.9 s later: retried
    assert runners[0].host.stats.arp_requests == 2
    assert runners[1].host.stats.ignored == 2  # saw both broadcasts, neither for it


async def test_host_runner_returns_when_its_link_closes_before_it_can_reply():
    """The peer sends an ARP request then hangs up; the reply cannot be sent.
    A closed link ends the runner (as on receive); it must not crash its nursery."""
    port, peer = MemoryPort.pair("h1")
    request = bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:09")
        / ARP(op="who-has", hwsrc="02:00:00:00:00:09", psrc="10.0.0.9", pdst="10.0.0.1")
    )
    await peer.send_batch([request])
    await peer.aclose()
    host = Host("h1", mac(1), "10.0.0.1/24")
    with trio.fail_after(2):
        await HostRunner(host, port).run()
    assert host.stats.arp_replies == 1


async def test_stopping_the_switch_ends_the_host_runners(nursery):
    rig = await start_switch(nursery, ["p1", "p2"])
    runners, finished = [], []
    for i, name in enumerate(rig.peers, start=1):
        runner = HostRunner(Host(f"h{i}", mac(i), f"10.0.0.{i}/24"), rig.peers[name])
        done = trio.Event()

        async def run(runner=runner, done=done, task_status=trio.TASK_STATUS_IGNORED):
            await runner.run(task_status=task_status)
            done.set()

        await nursery.start(run)
        runners.append(runner)
        finished.append(done)
    assert (await runners[0].ping("10.0.0.2")).received == 1
    assert not any(done.is_set() for done in finished)
    await rig.stop()
    with trio.fail_after(1):
        for done in finished:
            await done.wait()
