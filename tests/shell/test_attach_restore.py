"""Attach by namespace path or PID, the attach pool without etcd, and the saved attachments read back as
untrusted input (the devices themselves: tests/system/test_live_restore.py)."""

import json

import pytest

from vswitch import config
from vswitch.config import ConfigError
from vswitch.control import protocol
from vswitch.core.wire.addr import ip_to_str
from vswitch.daemon import restore
from vswitch.daemon.lease import gateway, static_pool
from vswitch.shell.netns import missing_netns
from vswitch.shell.state import StateDir


def test_attach_takes_a_path_or_a_pid_with_an_ifname_and_a_mac():
    port = protocol.attach_port({"netns": "/var/run/netns/x", "name": "c9", "ifname": "eth0",
                                 "mac": "02:00:00:00:00:09"})
    assert (port.netns, port.ifname, port.mac) == ("/var/run/netns/x", "eth0", bytes.fromhex("020000000009"))
    assert protocol.attach_port({"pid": 4242, "name": "c9"}).netns == "/proc/4242/ns/net"
    for fields, key in [({"pid": 1, "netns": "x", "name": "c9"}, "pid"), ({"pid": 0, "name": "c9"}, "pid"),
                        ({"pid": True, "name": "c9"}, "pid"), ({"name": "c9"}, "netns"),
                        ({"netns": "x", "name": "c9", "ifname": "eth0/1"}, "ifname"),
                        ({"netns": "x", "name": "c9", "mac": "01:00:00:00:00:01"}, "mac"),
                        ({"netns": "/a\0b", "name": "c9"}, "netns"), ({"netns": "a/b", "name": "c9"}, "netns")]:
        with pytest.raises(ConfigError) as refused:
            protocol.attach_port(fields)
        assert refused.value.key == key, fields


def test_ifname_and_mac_apply_to_tap_ports_only():
    with pytest.raises(ConfigError, match="applies to tap ports only") as refused:
        config.parse({"ports": [{"name": "u", "type": "packet", "device": "eth0", "ifname": "x"}]})
    assert refused.value.key == "ports[0].ifname"


def test_a_path_never_gets_the_ip_netns_add_hint():
    assert "ip netns add" not in str(missing_netns("/proc/20205/ns/net"))
    assert "ip netns add c1" in str(missing_netns("c1"))


def _static():
    ports = [{"name": "c1", "type": "tap", "netns": "c1", "address": "10.5.0.2/24"},
             {"name": "h", "type": "memory", "host": {"address": "10.5.0.3/24"}}]
    return config.parse({"ports": ports, "router": {"interfaces": [{"name": "gw", "address": "10.5.0.1/24"}]}})


def test_without_etcd_attach_takes_the_bridge_gateway_s_network_less_what_the_config_holds():
    cfg = _static()
    pool = static_pool(cfg, None)
    assert pool is not None and str(pool.subnet) == "10.5.0.0/24"
    assert str(gateway(cfg, pool)) == "10.5.0.1"
    given = {ip_to_str(pool.allocate(f"p{i}")) for i in range(pool.capacity)}
    assert given.isdisjoint({"10.5.0.1", "10.5.0.2", "10.5.0.3", "10.5.0.0", "10.5.0.255"})
    assert len(given) == 251   # .1-.254 less the router's, the port's and the host's


def test_without_a_router_on_the_bridge_there_is_no_pool():
    assert static_pool(config.parse({"ports": [{"name": "c1", "type": "tap", "netns": "c1"}]}), None) is None


def test_saved_attachments_are_read_back_entry_by_entry(tmp_path, caplog):
    state = StateDir(str(tmp_path))
    good = restore.completed(protocol.attach_port({"pid": 77, "name": "c1", "ifname": "eth0",
                                                   "address": "10.5.0.9/24", "gateway": "10.5.0.1"}), "n1")
    restore.save(state, {"c1": restore.Attachment(good, "attach", 1234)})
    assert restore.load(state) == {"c1": restore.Attachment(good, "attach", 1234)}
    saved = json.loads((tmp_path / "attachments.json").read_text())
    saved["ports"].update({"bad-origin": {"origin": "elsewhere"}, "bad-mac": {"origin": "config", "mac": "zz"},
                           "bad-inode": {"origin": "config", "inode": "x"}, "a-name-far-too-long": {"origin": "config"},
                           "not-a-table": [1]})
    (tmp_path / "attachments.json").write_text(json.dumps(saved))
    assert list(restore.load(state)) == ["c1"]
    assert caplog.text.count("left out") == 5
    (tmp_path / "attachments.json").write_text('{"ports": 3}')
    assert restore.load(state) == {}


def test_a_port_s_mac_is_stable_and_its_own():
    port = config.parse({"ports": [{"name": "c1", "type": "tap", "netns": "c1"}]}).ports[0]
    first = restore.completed(port, "n1")
    assert first == restore.completed(port, "n1") and first.ifname == "c1"
    assert first.mac != restore.completed(port, "n2").mac and first.mac[0] & 3 == 2   # local, unicast
