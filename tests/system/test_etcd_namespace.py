"""The test kit's etcd inside a network namespace, bound to an address there, reached over a veth with TLS."""

import pytest
import trio
from netkit import requires_root, sh, unique

from vswitch.overlay.shell.etcd import EtcdClient
from vswitch.testing.etcd import EtcdServer, etcd_missing

pytestmark = [requires_root,
              pytest.mark.skipif(etcd_missing(tls=True) is not None, reason=etcd_missing(tls=True) or "")]

HOST, ETCD = "198.51.100.1", "198.51.100.2"


async def test_etcd_in_a_namespace_serves_over_a_veth_with_tls(namespaces):
    ns = namespaces.create("ve")
    device = unique("ve")
    sh("ip", "link", "add", device, "type", "veth", "peer", "name", "eth0", "netns", ns)
    try:
        sh("ip", "addr", "add", f"{HOST}/24", "dev", device)
        sh("ip", "link", "set", device, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ETCD}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        with EtcdServer(netns=ns, host=ETCD, tls=True) as etcd:
            assert etcd.endpoint == f"https://{ETCD}:2379"
            etcd.etcdctl("put", "/from/etcdctl", "inside")  # etcdctl runs in the namespace too
            files = {"ca_file": str(etcd.ca_file), "cert_file": str(etcd.cert_file),
                     "key_file": str(etcd.key_file)}
            async with EtcdClient([etcd.endpoint], **files) as client:
                with trio.fail_after(10):
                    assert (await client.get(b"/from/etcdctl")).value == b"inside"
                    await client.put(b"/from/client", b"outside")
                    await trio.to_thread.run_sync(etcd.restart)  # same address, ports and data
                    assert (await client.get(b"/from/client")).value == b"outside"
    finally:
        sh("ip", "link", "del", device, check=False)
