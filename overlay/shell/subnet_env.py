"""flanneld's ``subnet.env``, which CNI's flannel plugin and docker's setup read: written the way flanneld writes it."""

import logging
import os
import tempfile
from pathlib import Path

from vswitch.config import OverlayConfig
from vswitch.core.wire.addr import ip_to_str

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
    target = Path(path)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(subnet_env(config))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)
