"""``vswitch network init``: write flannel's network config into etcd, as an operator would with etcdctl."""

import argparse
import sys
from typing import Any

import trio

from vswitch.config import DEFAULT_ETCD_ENDPOINT, DEFAULT_ETCD_PREFIX
from vswitch.overlay.core.backends import BACKENDS


def add_network_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    network = commands.add_parser("network", help="the cluster's network config in etcd",
                                  description="the cluster's network config in etcd")
    actions = network.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init", parents=[common], help="write <prefix>/config: the network, the subnets' length and the backend",
        description="Write flannel's network config, <prefix>/config, which every node (vswitch or flanneld) reads"
                    " its network and backend from; the same JSON `etcdctl put` would write.")
    init.add_argument("--etcd", default=DEFAULT_ETCD_ENDPOINT, metavar="URL[,URL...]",
                      help=f"etcd's client endpoints (default {DEFAULT_ETCD_ENDPOINT}; flanneld's --etcd-endpoints)")
    init.add_argument("--prefix", default=DEFAULT_ETCD_PREFIX, help=f"the key prefix (default {DEFAULT_ETCD_PREFIX})")
    init.add_argument("--network", required=True, metavar="CIDR", help="the cluster network, like 10.244.0.0/16")
    init.add_argument("--backend", choices=tuple(BACKENDS), default="udp", help="the overlay's wire format (default udp)")
    init.add_argument("--subnet-len", type=int, metavar="N",
                      help="each node's subnet length (default 24 for a /22 or wider network, else the network's + 2)")
    init.add_argument("--port", type=int, metavar="P", help="the backend's UDP port (default 8285 udp, 8472 vxlan)")
    init.add_argument("--vni", type=int, metavar="N", help="vxlan: the VNI (default 1)")
    init.add_argument("--force", action="store_true", help="replace a different config that is already there")
    for flag, help in (("--etcd-cafile", "the CA that signed etcd's certificate"),
                       ("--etcd-certfile", "our client certificate"), ("--etcd-keyfile", "its key"),
                       ("--etcd-username", "etcd's auth user"), ("--etcd-password", "its password")):
        init.add_argument(flag, metavar="VALUE", help=help)


def network_init(args: argparse.Namespace) -> int:
    from vswitch.core.wire.addr import Network
    from vswitch.overlay.core.flannel import FlannelError, network_config_json
    from vswitch.overlay.shell.etcd import EtcdClient, EtcdError
    from vswitch.overlay.shell.leases import LeaseError, write_network_config

    try:
        network = Network.parse(args.network)
        data = network_config_json(network, backend=args.backend, subnet_len=args.subnet_len, port=args.port,
                                   vni=args.vni)
    except FlannelError as exc:
        print(f"vswitch network init: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"vswitch network init: --network: {args.network!r} is not a network like 10.244.0.0/16 ({exc})",
              file=sys.stderr)
        return 2

    async def write() -> bool:
        async with EtcdClient(args.etcd.split(","), ca_file=args.etcd_cafile, cert_file=args.etcd_certfile,
                              key_file=args.etcd_keyfile, username=args.etcd_username,
                              password=args.etcd_password) as client:
            return await write_network_config(client, args.prefix, data, force=args.force)

    try:
        written = trio.run(write)
    except ValueError as exc:   # EtcdClient's refusal of an endpoint (FlannelError is one too, but comes earlier)
        print(f"vswitch network init: --etcd: {exc}", file=sys.stderr)
        return 2
    except (EtcdError, LeaseError) as exc:
        print(f"vswitch network init: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if written else 'unchanged'} {args.prefix}/config: {data.decode()}")
    return 0
