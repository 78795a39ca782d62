"""What the core asks the shell to do: small frozen values.

The core turns a batch of received frames into a list of actions: at most one
:class:`Transmit` per egress port (carrying every frame of the batch bound for
that port, in order) and one :class:`Drop` per discarded frame. Flooding is
expanded in the core, which knows which ports are up, so the shell only moves
bytes.
"""

import enum

import attrs


class DropReason(enum.Enum):
    """Every cause of a discarded frame; each is a counter in ``show stats``."""

    TRUNCATED = "truncated"            # shorter than an Ethernet header
    INVALID_SOURCE = "invalid-source"  # multicast, broadcast or all-zero source MAC
    LINK_LOCAL = "link-local"          # 01:80:C2:00:00:0X is never forwarded
    SAME_PORT = "same-port"            # destination lives on the ingress port
    PORT_DOWN = "port-down"            # ingress or egress port is administratively down
    NO_EGRESS = "no-egress"            # flooded, but no other port is up
    TX_QUEUE_FULL = "tx-queue-full"    # the shell's bounded egress queue was full (tail drop)

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Transmit:
    """Send ``frames`` (unchanged ``bytes``) out of ``port``, in order."""

    port: str
    frames: list[bytes]


@attrs.frozen
class Drop:
    """A frame that arrived on ``port`` was discarded for ``reason``."""

    port: str
    reason: DropReason
    frame: bytes = attrs.field(repr=lambda f: f"<{len(f)} bytes>")


Action = Transmit | Drop
