"""What one container sends cannot take the node down: the audit's crafted frames and a flood of malformed
ones, live, while the other containers ping each other."""

import subprocess
import sys
import threading

from netkit import in_ns, link_mac, ping, requires_root, tap_config, unique

pytestmark = requires_root

# Writes the audit's two frames on the container's own interface: two TCP segments of one flow whose data
# offset is 3 (12 bytes, shorter than a TCP header), the second with PSH and the sequence number that
# follows the first. A daemon that joins them for the receiving TAP (GRO's rules) used to crash on them.
CRAFTED_PAIR = r"""
import socket, sys
from scapy.all import Ether, IP, TCP, raw
device, src_mac, dst_mac = sys.argv[1:4]
def segment(seq, flags):
    return raw(Ether(src=src_mac, dst=dst_mac) / IP(src="10.77.0.1", dst="10.77.0.2")
               / TCP(sport=40000, dport=5201, seq=seq, flags=flags, dataofs=3) / (b"x" * 92))
first = segment(1000, "A")
second = segment(1000 + 100, "PA")   # the IP payload less 12 header bytes: what follows on from the first
assert len(first) == len(second) == 146
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((device, 0))
    for _ in range(500):   # a burst, so that pairs reach the daemon, and leave it, in one batch
        s.send(first)
        s.send(second)
print("sent")
"""


def test_the_audits_crafted_tcp_pair_costs_nothing_but_itself(tmp_path, namespaces, daemons):
    a, b = namespaces.create(), namespaces.create()
    ports = [{"name": unique("t"), "netns": ns, "address": f"10.77.0.{i + 1}/24"} for i, ns in enumerate((a, b))]
    path = tmp_path / "node.toml"
    path.write_text(tap_config("hostile", tmp_path / "ctl.sock", ports))
    daemon = daemons(path)
    assert ping(a, "10.77.0.2")

    sent = in_ns(a, sys.executable, "-c", CRAFTED_PAIR, ports[0]["name"], link_mac(a, ports[0]["name"]),
                 link_mac(b, ports[1]["name"]))
    assert sent.stdout.strip() == "sent"

    assert ping(a, "10.77.0.2", count=3) and ping(b, "10.77.0.1", count=3)
    assert daemon.proc.poll() is None
    stats = daemon.show("stats")
    # Nothing in the daemon raised on them (and had anything, it would have cost that batch alone).
    assert stats["faults"]["total"] == 0, stats["faults"]
    assert stats["drops"]["internal-error"] == 0
    assert stats["port_failures"] == 0


# Writes COUNT malformed frames as fast as it can: random lengths and bytes behind the sender's own source MAC,
# IPv4 headers with every IHL, total length and fragment field, TCP data offsets 0-15, VLAN tags, runts.
MALFORMED_FLOOD = r"""
import random, socket, struct, sys
device, src_mac, count = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
destinations = [bytes.fromhex(mac.replace(":", "")) for mac in sys.argv[4:]] + [b"\xff" * 6]
rng = random.Random(7)
def ipv4():
    ihl = rng.randrange(16)
    header = bytes([0x40 | ihl, 0]) + struct.pack("!HHHBB", rng.randrange(65536), rng.randrange(65536),
        rng.choice((0, 0x2000, 0x4000, rng.randrange(65536))), rng.randrange(256), rng.choice((1, 6, 17, 47)))
    header += b"\0\0" + bytes([10, 77, 0, 1, 10, 77, 0, rng.choice((2, 3, 255))])
    tcp = struct.pack("!HHIIBB", 1, 2, 3, 4, rng.randrange(16) << 4, rng.randrange(256)) + bytes(6)
    return header + tcp + rng.randbytes(rng.randrange(64))
frames = []
for _ in range(512):
    kind = rng.randrange(4)
    dst = rng.choice(destinations)
    if kind == 0:
        body = rng.randbytes(rng.randrange(0, 1500))
    elif kind == 1:
        body = b"\x08\x00" + ipv4()
    elif kind == 2:
        body = b"\x81\x00" + rng.randbytes(2) + b"\x08\x00" + ipv4()
    else:
        body = b"\x08\x06" + rng.randbytes(rng.randrange(40))
    frames.append(dst + src_mac + body)
sent = 0
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((device, 0))
    for i in range(count):
        try:
            s.send(frames[i % len(frames)])
            sent += 1
        except OSError:
            pass
print(sent)
"""


def test_a_flood_of_malformed_frames_is_counted_and_the_others_keep_talking(tmp_path, namespaces, daemons):
    spaces = [namespaces.create() for _ in range(3)]
    ports = [{"name": unique("t"), "netns": ns, "address": f"10.77.0.{i + 1}/24"} for i, ns in enumerate(spaces)]
    path = tmp_path / "node.toml"
    # a router on the bridge too, so that IPv4 and ARP to its MAC are parsed, and malformed ones counted
    path.write_text(tap_config("flooded", tmp_path / "ctl.sock", ports)
                    + '[[router.interfaces]]\nname = "gw"\naddress = "10.77.0.254/24"\n')
    daemon = daemons(path)
    gateway_mac = daemon.show("routes")["interfaces"][0]["mac"]
    attacker, b, c = spaces
    assert ping(b, "10.77.0.3") and ping(attacker, "10.77.0.2")
    before = daemon.show("stats")["drops"]

    pings: list[subprocess.CompletedProcess] = []
    pinger = threading.Thread(target=lambda: pings.append(
        in_ns(b, "ping", "-c", "40", "-i", "0.1", "-W", "2", "10.77.0.3", check=False, timeout=60)))
    pinger.start()
    flood = in_ns(attacker, sys.executable, "-c", MALFORMED_FLOOD, ports[0]["name"], link_mac(attacker, ports[0]["name"]),
                  "200000", gateway_mac, link_mac(b, ports[1]["name"]), timeout=120)
    pinger.join()
    assert int(flood.stdout) > 150_000

    (result,) = pings
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout
    assert daemon.proc.poll() is None
    stats = daemon.show("stats")
    assert stats["faults"]["total"] == 0 and stats["port_failures"] == 0
    new = {reason: n - before[reason] for reason, n in stats["drops"].items() if n > before[reason]}
    assert {"ip-header-length", "ip-length", "arp-malformed"} <= new.keys(), new   # the router's parser counted them
    assert sum(new.values()) > 5_000, new
    assert ping(attacker, "10.77.0.2") and ping(c, "10.77.0.1")
