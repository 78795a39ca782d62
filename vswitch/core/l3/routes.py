"""Routes and the longest-prefix match behind a cache of destinations. Pure.

The table holds anything with a ``network``: the router's routes, and the
overlay's peers (a destination belongs to the peer whose subnet holds it).
"""

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

import attrs

from vswitch.core.wire.addr import Network, ip_to_str

ROUTE_CACHE = 65536          # destinations remembered by the route cache (cleared when full or when routes change)


@attrs.frozen
class Route:
    network: Network
    interface: str
    via: bytes | None = None    # None: the destination is on the link
    connected: bool = False

    def __str__(self) -> str:
        via = f" via {ip_to_str(self.via)}" if self.via else ""
        return f"{self.network}{via} dev {self.interface}{' proto kernel' if self.connected else ''}"


class Prefixed(Protocol):
    @property
    def network(self) -> Network: ...


R = TypeVar("R", bound=Prefixed)


class RouteTable(Generic[R]):
    """Longest-prefix match: one dict per prefix length, longest first, behind a cache of destinations.

    A lookup costs one dict probe when the destination was seen before, and
    at most one per distinct prefix length in the table otherwise, whatever
    the number of routes. Entries are anything with a ``network``: routes
    here, the overlay's peers.
    """

    def __init__(self, *, cache_size: int = ROUTE_CACHE) -> None:
        self._by_length: dict[int, dict[int, R]] = {}
        self._lengths: list[tuple[int, int, dict[int, R]]] = []  # (length, mask, routes), longest first
        self._cache: dict[bytes, R | None] = {}
        self._cache_size = cache_size
        self.generation = 0   # counts the changes of the routes: what caches of lookups (the router's hops) check

    def add(self, route: R) -> None:
        """Add or replace the route for ``route.network``."""
        length = route.network.prefix_len
        routes = self._by_length.setdefault(length, {})
        routes[route.network.address] = route
        self._changed()

    def remove(self, network: Network) -> R:
        routes = self._by_length[network.prefix_len]
        route = routes.pop(network.address)
        if not routes:
            del self._by_length[network.prefix_len]
        self._changed()
        return route

    def lookup(self, dst: bytes) -> R | None:
        cache = self._cache
        try:
            return cache[dst]
        except KeyError:
            pass
        value = int.from_bytes(dst, "big")
        route = None
        for _, mask, routes in self._lengths:
            route = routes.get(value & mask)
            if route is not None:
                break
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[dst] = route
        return route

    def forget_lookups(self) -> None:
        """Empty the cache of destinations, as a change of the routes does (the router's when an interface
        goes up or down)."""
        self._cache.clear()
        self.generation += 1

    def __iter__(self) -> Iterator[R]:
        return iter([r for _, _, routes in self._lengths for r in routes.values()])

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_length.values())

    def _changed(self) -> None:
        self._lengths = [
            (length, (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, routes)
            for length, routes in sorted(self._by_length.items(), reverse=True)
        ]
        self.forget_lookups()
