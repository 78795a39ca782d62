"""Ports: the shell's devices. Every kind moves batches of frames."""

from .base import (
    DEFAULT_BATCH,
    DEFAULT_MTU,
    Capabilities,
    Medium,
    Port,
    PortClosed,
    PortStatistics,
    PortWrapper,
)
from .impair import ImpairedPort, Impairment
from .memory import MemoryPort
from .pcap import PcapPort, PcapWriter

__all__ = [
    "DEFAULT_BATCH", "DEFAULT_MTU", "Capabilities", "Medium", "Port", "PortClosed", "PortStatistics", "PortWrapper",
    "ImpairedPort", "Impairment", "MemoryPort", "PcapPort", "PcapWriter",
]
