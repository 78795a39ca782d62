"""The lease source on a real etcd: acquire, reuse, renew and watch as flanneld does, in flannel's layout."""

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vswitch.config import EtcdConfig
from vswitch.core.wire.addr import Network, ip_from_str
from vswitch.overlay.core.flannel import LeaseAttrs, network_config_json
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.shell.etcd import EtcdClient
from vswitch.overlay.shell.leases import (
    EtcdLeases,
    LeaseError,
    LeaseLost,
    write_network_config,
)
from vswitch.shell.state import StateDir
from vswitch.testing.etcd import EtcdServer, etcd_missing

pytestmark = pytest.mark.skipif(etcd_missing() is not None, reason=etcd_missing() or "")

NETWORK = Network.parse("10.244.0.0/16")


@pytest.fixture(scope="module")
def server() -> Iterator[EtcdServer]:
    with EtcdServer() as etcd:
        yield etcd


@pytest.fixture
def prefix(server, request) -> str:
    """A prefix of the test's own, holding a udp network config."""
    name = f"/t/{request.node.name.replace('[', '-').replace(']', '')}"
    server.etcdctl("put", f"{name}/config", network_config_json(NETWORK).decode())
    return name


def settings(server: EtcdServer, prefix: str, **changes) -> EtcdConfig:
    return EtcdConfig((server.endpoint,), prefix, **changes)


def udp(public_ip: str):
    return lambda config: LeaseAttrs(ip_from_str(public_ip), "", None, None)


def source(server: EtcdServer, prefix: str, public_ip: str, state: Path, **changes) -> EtcdLeases:
    return EtcdLeases(settings(server, prefix, **changes), public_ip=ip_from_str(public_ip),
                      state=StateDir(str(state / public_ip)))


def value(server: EtcdServer, key: str) -> dict:
    kvs = json.loads(server.etcdctl("get", key, "-w", "json").stdout).get("kvs", [])
    return kvs[0] if kvs else {}


class Peers:
    """What ``run`` hands on, kept for the test to wait on."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []
        self.changed = trio.Event()

    async def __call__(self, leases: list[Lease]) -> None:
        self.leases = leases
        self.changed.set()

    async def until(self, predicate, timeout: float = 5) -> None:
        with trio.fail_after(timeout):
            while not predicate(self.leases):
                self.changed = trio.Event()
                await self.changed.wait()

    @property
    def subnets(self) -> set[str]:
        return {str(lease.subnet) for lease in self.leases}


async def test_a_node_takes_a_lease_in_flannels_layout_and_takes_it_again_after_a_restart(server, prefix, tmp_path):
    first = source(server, prefix, "10.99.0.1", tmp_path)
    acquired = await first.acquire(udp("10.99.0.1"))
    assert acquired.config.network == NETWORK and acquired.subnet.prefix_len == 24 and acquired.lease_id
    key = f"{prefix}/subnets/{str(acquired.subnet).replace('/', '-')}"
    kv = value(server, key)
    assert base64.b64decode(kv["value"]) == b'{"PublicIP":"10.99.0.1","PublicIPv6":null}'
    ttl = json.loads(server.etcdctl("lease", "timetolive", format(int(kv["lease"]), "x"), "-w", "json").stdout)
    assert 86000 < int(ttl["granted-ttl"]) <= 86400
    again = await source(server, prefix, "10.99.0.1", tmp_path).acquire(udp("10.99.0.1"))
    assert again.subnet == acquired.subnet and again.lease_id != acquired.lease_id
    other = await source(server, prefix, "10.99.0.2", tmp_path).acquire(udp("10.99.0.2"))
    assert other.subnet != acquired.subnet


async def test_a_reservation_is_reused_and_stays_a_reservation(server, prefix, tmp_path):
    server.etcdctl("put", f"{prefix}/subnets/10.244.99.0-24", '{"PublicIP":"10.99.0.3","PublicIPv6":null}')
    acquired = await source(server, prefix, "10.99.0.3", tmp_path).acquire(udp("10.99.0.3"))
    assert str(acquired.subnet) == "10.244.99.0/24" and acquired.lease_id == 0 and acquired.expires is None
    assert "lease" not in value(server, f"{prefix}/subnets/10.244.99.0-24")


async def test_the_previous_subnet_in_subnet_env_is_taken_when_free(server, prefix, tmp_path):
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.42.1/24\nFLANNEL_MTU=1472\n")
    leases = EtcdLeases(settings(server, prefix), public_ip=ip_from_str("10.99.0.4"),
                        state=StateDir(str(tmp_path / "s")), subnet_env=str(env))
    assert str((await leases.acquire(udp("10.99.0.4"))).subnet) == "10.244.42.0/24"


async def test_peers_come_and_go_with_the_watch_and_other_backends_are_ignored(server, prefix, tmp_path):
    node = source(server, prefix, "10.99.0.1", tmp_path)
    await node.acquire(udp("10.99.0.1"))
    peers = Peers()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run, peers)
        other = await source(server, prefix, "10.99.0.2", tmp_path).acquire(udp("10.99.0.2"))
        await peers.until(lambda leases: [str(lease.subnet) for lease in leases] == [str(other.subnet)])
        server.etcdctl("put", f"{prefix}/subnets/10.244.250.0-24", '{"PublicIP":"10.99.0.9","PublicIPv6":null,'
                       '"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}}')
        server.etcdctl("put", f"{prefix}/subnets/10.244.251.0-24", "not json")
        with trio.fail_after(5):
            while sum(node.describe()["ignored"].values()) < 2:
                await trio.sleep(0.02)
        assert peers.subnets == {str(other.subnet)}
        server.etcdctl("del", f"{prefix}/subnets/{str(other.subnet).replace('/', '-')}")
        await peers.until(lambda leases: not leases)
        status = node.describe()
        assert status["state"] == "connected" and status["revision"] >= server.revision() - 1
        nursery.cancel_scope.cancel()


async def test_an_expired_lease_is_taken_again_and_a_deleted_one_stops_the_node(server, prefix, tmp_path):
    node = source(server, prefix, "10.99.0.1", tmp_path)
    acquired = await node.acquire(udp("10.99.0.1"))
    key = f"{prefix}/subnets/{str(acquired.subnet).replace('/', '-')}"
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run, Peers())
            server.etcdctl("lease", "revoke", format(acquired.lease_id, "x"))   # as if it had run out
            with trio.fail_after(5):
                while node.acquired.lease_id == acquired.lease_id:
                    await trio.sleep(0.02)
            assert value(server, key)["lease"] == node.acquired.lease_id
            server.etcdctl("del", key)
            await trio.sleep(5)
            raise AssertionError("deleting our lease did not stop the source")
    assert info.group_contains(LeaseLost, match="was deleted from etcd")


async def test_the_lease_is_renewed_before_it_expires(server, prefix, tmp_path):
    node = source(server, prefix, "10.99.0.1", tmp_path, lease_ttl=12, renew_margin=10.5)
    acquired = await node.acquire(udp("10.99.0.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run, Peers())
        with trio.fail_after(8):
            while node.acquired.lease_id == acquired.lease_id:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert node.acquired.expires > acquired.expires and node.acquired.subnet == acquired.subnet


async def test_with_etcd_away_a_node_starts_from_its_state_dir_and_not_without_one(server, prefix, tmp_path):
    node = source(server, prefix, "10.99.0.1", tmp_path)
    acquired = await node.acquire(udp("10.99.0.1"))
    await source(server, prefix, "10.99.0.2", tmp_path).acquire(udp("10.99.0.2"))
    dead = EtcdConfig(("http://127.0.0.1:9",), prefix)
    cached = EtcdLeases(dead, public_ip=ip_from_str("10.99.0.1"), state=StateDir(str(tmp_path / "10.99.0.1")))
    # the saved peers: those of the listing the lease was taken with (10.99.0.2 came later: not among them)
    started = await cached.acquire(udp("10.99.0.1"))
    assert started.subnet == acquired.subnet and cached.describe()["state"] == "cached"
    fresh = EtcdLeases(dead, public_ip=ip_from_str("10.99.0.5"), state=StateDir(str(tmp_path / "none")))
    with pytest.raises(LeaseError, match="no earlier lease to start from"):
        await fresh.acquire(udp("10.99.0.5"))


async def test_a_missing_network_config_says_how_to_write_one(server, tmp_path):
    with pytest.raises(LeaseError, match="vswitch network init"):
        await source(server, "/t/nothing-here", "10.99.0.1", tmp_path).acquire(udp("10.99.0.1"))


async def test_network_init_writes_once_and_refuses_a_different_config_without_force(server):
    async with EtcdClient([server.endpoint]) as client:
        data = network_config_json(NETWORK, backend="vxlan")
        assert await write_network_config(client, "/t/init", data)
        assert not await write_network_config(client, "/t/init", data)
        other = network_config_json(Network.parse("10.245.0.0/16"))
        with pytest.raises(LeaseError, match="--force"):
            await write_network_config(client, "/t/init", other)
        assert await write_network_config(client, "/t/init", other, force=True)
        assert (await client.get(b"/t/init/config")).value == other



@pytest.mark.skipif(etcd_missing(tls=True) is not None, reason=etcd_missing(tls=True) or "")
async def test_leases_over_tls_with_a_client_certificate(tmp_path):
    with EtcdServer(tls=True) as secure:
        secure.etcdctl("put", "/tls/config", network_config_json(NETWORK).decode())
        files = {"ca_file": str(secure.ca_file), "cert_file": str(secure.cert_file), "key_file": str(secure.key_file)}
        node = EtcdLeases(EtcdConfig((secure.endpoint,), "/tls", **files), public_ip=ip_from_str("10.99.0.1"),
                          state=StateDir(str(tmp_path / "a")))
        acquired = await node.acquire(udp("10.99.0.1"))
        assert acquired.subnet.network in NETWORK and acquired.lease_id
        unverified = EtcdLeases(EtcdConfig((secure.endpoint,), "/tls"), public_ip=ip_from_str("10.99.0.2"),
                                state=StateDir(str(tmp_path / "b")))
        with pytest.raises(LeaseError, match="no earlier lease"):
            await unverified.acquire(udp("10.99.0.2"))


async def test_a_lease_that_expired_while_etcd_was_away_is_taken_back(server, prefix, tmp_path):
    node = source(server, prefix, "10.99.0.1", tmp_path)
    acquired = await node.acquire(udp("10.99.0.1"))
    server.stop()
    away = source(server, prefix, "10.99.0.1", tmp_path)   # a restart while etcd is away: from the state dir
    assert (await away.acquire(udp("10.99.0.1"))).subnet == acquired.subnet
    assert away.describe()["state"] == "cached"
    server.start()
    server.etcdctl("lease", "revoke", format(acquired.lease_id, "x"))   # it ran out meanwhile
    async with trio.open_nursery() as nursery:
        await nursery.start(away.run, Peers())
        with trio.fail_after(10):
            while away.describe()["state"] != "connected" or away.acquired.lease_id == acquired.lease_id:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert away.acquired.subnet == acquired.subnet
    assert value(server, f"{prefix}/subnets/{str(acquired.subnet).replace('/', '-')}")["lease"] == away.acquired.lease_id


async def test_a_failure_to_apply_the_peers_costs_that_change_not_the_watch(server, prefix, tmp_path):
    class Failing(Peers):
        async def __call__(self, leases: list[Lease]) -> None:
            if not self.leases and leases and not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("a bug in the node")
            await super().__call__(leases)

    node = source(server, prefix, "10.99.0.1", tmp_path)
    await node.acquire(udp("10.99.0.1"))
    peers = Failing()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run, peers)
        first = await source(server, prefix, "10.99.0.2", tmp_path).acquire(udp("10.99.0.2"))
        with trio.fail_after(5):
            while not node.describe()["apply_failures"]:
                await trio.sleep(0.02)
        second = await source(server, prefix, "10.99.0.3", tmp_path).acquire(udp("10.99.0.3"))
        await peers.until(lambda leases: len(leases) == 2)
        assert peers.subnets == {str(first.subnet), str(second.subnet)}
        assert node.describe()["state"] == "connected"
        nursery.cancel_scope.cancel()
