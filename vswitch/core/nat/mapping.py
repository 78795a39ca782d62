"""Endpoint-independent mappings and the external ports they take. Pure.

Mappings are endpoint-independent (RFC 4787 REQ-1, RFC 5382 REQ-1): one
internal address and port keeps one external port for every destination
while any of its connections lives (the connection table counts them in
``refs``); the internal port is kept when free and otherwise a random free
one is taken (iptables ``--random-fully``). The free external ports of an
address and protocol are kept in a :class:`PortPool`, so a given, a random
or a returned port costs O(1) however full the address.
"""

import random
from array import array

import attrs

from vswitch.core.wire import ipv4

PORT_RANGE = (1024, 65535)    # external ports chosen when the internal one is taken
ICMP_RANGE = (0, 65535)       # echo identifiers chosen when the internal one is taken

# The fields of an endpoint, internal or external.
ENDPOINT_ADDRESS = slice(0, 4)
ENDPOINT_PORT = slice(4, 6)


class PortPool:
    """The free ports of one external address and protocol; taking a given port, taking a random one and giving
    one back each cost O(1), however few are left.

    The free ports of ``low..high`` (the range random choices come from) sit in no order in
    ``_free[:_count]``, and ``_where[port - low]`` is a port's place there, meaningful only while it points
    into the free part at that very port. Taking a port moves the last free one into its place and shortens
    the free part; giving one back appends it. So a random choice is uniform over the free ports, as
    iptables' ``--random-fully``. Ports outside the range (a preserved port below 1024) are never chosen at
    random: a set holds those taken. ``reserved`` ports (port forwards) are never free; a port reserved while a
mapping holds it is lent: the mapping keeps it, and its return leaves it reserved. Two ``array('H')``
    of one entry per port in the range: about 250 KiB for TCP's or UDP's, made when an address first needs one.
    """

    __slots__ = ("low", "high", "_reserved", "_lent", "_free", "_where", "_count", "_taken_outside")

    def __init__(self, low: int, high: int, reserved: frozenset[int] = frozenset()) -> None:
        if not 0 <= low <= high <= 0xFFFF:
            raise ValueError(f"port range {low}..{high} is not within 0..65535")
        self.low, self.high = low, high
        span = high - low + 1
        self._free = array("H", range(low, high + 1))
        self._where = array("H", range(span))
        self._count = span
        self._reserved: set[int] = set()
        self._lent: set[int] = set()   # reserved ports a mapping took before they were reserved
        self._taken_outside: set[int] = set()
        for port in reserved:
            self.reserve(port)

    def __len__(self) -> int:
        """Free ports in the random range."""
        return self._count

    def is_free(self, port: int) -> bool:
        if self.low <= port <= self.high:
            where = self._where[port - self.low]
            return where < self._count and self._free[where] == port
        return port not in self._taken_outside and port not in self._reserved

    def take(self, port: int) -> bool:
        """Take ``port`` if it is free; whether it was."""
        low = self.low
        if not low <= port <= self.high:
            if port in self._taken_outside or port in self._reserved:
                return False
            self._taken_outside.add(port)
            return True
        where = self._where[port - low]
        if where >= self._count or self._free[where] != port:
            return False
        self._remove_at(where)
        return True

    def take_random(self, rng: random.Random) -> int | None:
        """A free port of the range, each equally likely; None when there is none."""
        if not self._count:
            return None
        where = rng.randrange(self._count)
        port = self._free[where]
        self._remove_at(where)
        return port

    def reserve(self, port: int) -> None:
        """Never give ``port`` out again (until :meth:`unreserve`); a mapping that holds it keeps it meanwhile."""
        if port in self._reserved:
            raise ValueError(f"port {port} is reserved already")
        if not self.take(port):
            self._lent.add(port)
        self._reserved.add(port)

    def unreserve(self, port: int) -> None:
        """Make ``port`` free again, or, while a mapping still holds it, free when that mapping gives it back."""
        self._reserved.remove(port)
        if port in self._lent:
            self._lent.discard(port)
        else:
            self.give_back(port)

    def give_back(self, port: int) -> None:
        if port in self._reserved:
            if port not in self._lent:
                raise ValueError(f"port {port} was not taken")
            self._lent.discard(port)   # the mapping that held it is done; it stays reserved
            return
        if self.is_free(port):
            raise ValueError(f"port {port} was not taken")
        if not self.low <= port <= self.high:
            self._taken_outside.discard(port)
            return
        self._free[self._count] = port
        self._where[port - self.low] = self._count
        self._count += 1

    def _remove_at(self, where: int) -> None:
        last = self._count - 1
        moved = self._free[last]
        self._free[where] = moved
        self._where[moved - self.low] = where
        self._count = last


@attrs.define(slots=True, eq=False)
class Mapping:
    """An endpoint-independent mapping: internal address and port ↔ external port on ``out``'s address."""

    protocol: int
    internal: bytes   # address (4) + port (2)
    external: bytes   # address (4) + port (2)
    out: str
    refs: int = 0


class Mappings:
    """Every mapping, found by its internal endpoint and by its external one, and the pools of free ports.

    ``reserved`` are (protocol, port) pairs never given out: the ports of port forwards, which
    :meth:`reserve` and :meth:`unreserve` change at run time.
    """

    def __init__(self, *, reserved: frozenset[tuple[int, int]] = frozenset(), rng: random.Random | None = None) -> None:
        self._reserved = set(reserved)
        self._rng = rng or random.Random()
        self._by_internal: dict[bytes, Mapping] = {}   # proto + internal addr/port + external addr → mapping
        self._by_external: dict[bytes, Mapping] = {}   # proto + external addr/port → mapping
        self._pools: dict[bytes, PortPool] = {}        # proto + external addr → its free ports

    def __len__(self) -> int:
        return len(self._by_internal)

    def reserve(self, proto: int, port: int) -> None:
        """Give ``port`` to no new mapping on any address; a mapping holding it now keeps it while it lives."""
        if (proto, port) in self._reserved:
            raise ValueError(f"port {port} is reserved already")
        self._reserved.add((proto, port))
        for key, pool in self._pools.items():
            if key[0] == proto:
                pool.reserve(port)

    def unreserve(self, proto: int, port: int) -> None:
        self._reserved.remove((proto, port))
        for key, pool in self._pools.items():
            if key[0] == proto:
                pool.unreserve(port)

    def external(self, proto: int, endpoint: bytes) -> Mapping | None:
        """The mapping whose external address and port is ``endpoint``."""
        return self._by_external.get(bytes((proto,)) + endpoint)

    def map(self, proto: int, internal: bytes, address: bytes, out: str) -> Mapping | None:
        """The endpoint-independent mapping of ``internal`` (address + port) on ``address``, made if needed.

        The internal port is kept when free, otherwise a random free one is taken; None when none is left.
        """
        pkey = bytes((proto,))
        mapping = self._by_internal.get(pkey + internal + address)
        if mapping is not None:
            return mapping
        pool = self._pools.get(pkey + address)
        if pool is None:
            low, high = ICMP_RANGE if proto == ipv4.PROTO_ICMP else PORT_RANGE
            reserved = frozenset(port for protocol, port in self._reserved if protocol == proto)
            pool = self._pools[pkey + address] = PortPool(low, high, reserved)
        port = int.from_bytes(internal[ENDPOINT_PORT], "big")
        if not pool.take(port):
            port = pool.take_random(self._rng)
            if port is None:
                return None
        mapping = Mapping(proto, internal, address + port.to_bytes(2, "big"), out)
        self._by_internal[pkey + internal + address] = mapping
        self._by_external[pkey + mapping.external] = mapping
        return mapping

    def unmap(self, mapping: Mapping) -> None:
        """Forget ``mapping`` (no connection holds it any more) and free its port."""
        pkey = bytes((mapping.protocol,))
        address = mapping.external[ENDPOINT_ADDRESS]
        del self._by_internal[pkey + mapping.internal + address]
        del self._by_external[pkey + mapping.external]
        self._pools[pkey + address].give_back(int.from_bytes(mapping.external[ENDPOINT_PORT], "big"))
