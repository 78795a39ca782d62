"""flanneld's ``subnet.env``, which CNI's flannel plugin and docker's setup read: written the way flanneld writes it."""

import logging

from vswitch.config import OverlayConfig
from vswitch.core.wire.addr import ip_to_str
from vswitch.shell.state import write_atomic

log = logging.getLogger(__name__)


def subnet_env(config: OverlayConfig) -> str:
    """What flanneld writes: the network, the subnet's first usable address with its length, the MTU, ip-masq."""
    subnet = config.subnet
    return (
        f"FLANNEL_NETWORK={config.network}\n"
        f"FLANNEL_SUBNET={ip_to_str((subnet.address + 1).to_bytes(4, 'big'))}/{subnet.prefix_len}\n"
        f"FLANNEL_MTU={config.mtu}\n"
        f"FLANNEL_IPMASQ={'true' if config.ip_masq else 'false'}\n"
    )


def write_subnet_env(path: str, config: OverlayConfig) -> None:
    """Write ``path`` as flanneld does: its directory made 0755, the file 0644, replaced atomically."""
    write_atomic(path, subnet_env(config))
    log.info("wrote %s", path)


def read_subnet_env(path: str) -> dict[str, str]:
    """The ``KEY=value`` lines of a subnet.env (flanneld's or ours); {} when there is none. Untrusted: size-capped."""
    try:
        with open(path, "rb") as file:
            text = file.read(64 << 10).decode("utf-8", "replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
