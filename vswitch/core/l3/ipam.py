"""The addresses a node hands its containers: one subnet (the node's lease), one address per owner. Pure.

It behaves as CNI's host-local plugin does: the next free address after
the last one given, wrapping around, so an address just released is not
handed straight to the next container, whose peers may still hold its
predecessor's MAC in their ARP caches. Asking again for the same owner
(a port's name, a container's ID) gives the same address, and the
allocations survive a restart through :meth:`AddressPool.state` and
:meth:`AddressPool.restore`, whose input is a file on disk and so is
checked entry by entry.
"""

from collections.abc import Iterable, Mapping

from vswitch.core.wire.addr import Network, ip_to_str


class PoolExhausted(ValueError):
    """Every address of the subnet is given out."""


class AddressPool:
    def __init__(self, subnet: Network, *, reserved: Iterable[bytes] = ()) -> None:
        """``subnet``'s usable addresses, less ``reserved`` (the gateway, addresses the config gives ports)."""
        if subnet.prefix_len > 30:
            raise ValueError(f"{subnet} has no room for containers (at most /30)")
        self.subnet = subnet
        self._first = subnet.address + 1
        self._last = subnet.address + (~subnet.mask & 0xFFFFFFFF) - 1   # the broadcast address is not usable
        self._reserved = {int.from_bytes(ip, "big") for ip in reserved}
        self._by_owner: dict[str, int] = {}
        self._owners: dict[int, str] = {}
        self._cursor = self._first - 1    # the last address given; the search starts after it

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1 - sum(1 for a in self._reserved if self._first <= a <= self._last)

    def allocate(self, owner: str) -> bytes:
        """The address of ``owner``: the one it has, else the next free one; PoolExhausted when none is."""
        if (address := self._by_owner.get(owner)) is not None:
            return address.to_bytes(4, "big")
        size = self._last - self._first + 1
        for step in range(1, size + 1):
            candidate = self._first + (self._cursor - self._first + step) % size
            if candidate not in self._owners and candidate not in self._reserved:
                self._give(owner, candidate)
                self._cursor = candidate
                return candidate.to_bytes(4, "big")
        raise PoolExhausted(f"all {self.capacity} addresses of {self.subnet} are given out")

    def release(self, owner: str) -> bytes | None:
        """Free ``owner``'s address; the address, or None if it had none."""
        address = self._by_owner.pop(owner, None)
        if address is None:
            return None
        del self._owners[address]
        return address.to_bytes(4, "big")

    def owner(self, address: bytes) -> str | None:
        return self._owners.get(int.from_bytes(address, "big"))

    @property
    def allocations(self) -> dict[str, bytes]:
        return {owner: address.to_bytes(4, "big") for owner, address in self._by_owner.items()}

    def state(self) -> dict[str, object]:
        """What to save: the subnet, the last address given, each owner's address (JSON's types)."""
        return {"subnet": str(self.subnet), "last": ip_to_str(self._cursor.to_bytes(4, "big")),
                "addresses": {owner: ip_to_str(a.to_bytes(4, "big")) for owner, a in sorted(self._by_owner.items())}}

    def restore(self, state: Mapping[str, object]) -> list[str]:
        """Take back what :meth:`state` saved, if it was saved for this subnet; the entries refused, with why
        (another subnet's file, an address outside the subnet, reserved or given twice, a malformed entry)."""
        if state.get("subnet") != str(self.subnet):
            return [f"saved for {state.get('subnet')!r}, not {self.subnet}: starting afresh"]
        refused = []
        addresses = state.get("addresses")
        for owner, text in (addresses.items() if isinstance(addresses, dict) else ()):
            address = _parse(text)
            if not isinstance(owner, str) or not owner or address is None:
                refused.append(f"{owner!r}: {text!r} is not an IPv4 address")
            elif not self._first <= address <= self._last or address in self._reserved:
                refused.append(f"{owner}: {text} is not a free address of {self.subnet}")
            elif address in self._owners or owner in self._by_owner:
                refused.append(f"{owner}: {text} is given twice")
            else:
                self._give(owner, address)
        last = _parse(state.get("last"))
        if last is not None and self._first <= last <= self._last:
            self._cursor = last
        return refused

    def _give(self, owner: str, address: int) -> None:
        self._by_owner[owner] = address
        self._owners[address] = owner


def _parse(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        return None
    return int.from_bytes(bytes(int(p) for p in parts), "big")
