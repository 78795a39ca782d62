"""Where leases come from: a :class:`LeaseSource`.

The embedded default, :class:`StaticLeases`, reads them from the config
(``[overlay]`` for this node, ``[[overlay.peers]]`` for the others) and is
read again on SIGHUP or ``vswitch reload``; the next source keeps them in
etcd under flannel's ``/coreos.com/network`` prefix (:class:`EtcdLeases`).
Either feeds the peer table through one path, the one reload uses.
"""

import datetime
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from vswitch.config import EtcdConfig, OverlayConfig
from vswitch.core.wire.addr import Network, ip_to_str, mac_to_str
from vswitch.overlay.core.flannel import (
    FlannelError,
    LeaseAttrs,
    LeaseBook,
    NetworkConfig,
    Reuse,
    Stale,
    lease_value,
    network_config_json,
    parse_lease_value,
    parse_network_config,
    parse_subnet_key,
    plan_acquire,
    subnet_key,
    subnets_prefix,
)
from vswitch.overlay.core.peers import Lease
from vswitch.overlay.shell.etcd import (
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
)
from vswitch.overlay.shell.subnet_env import read_subnet_env
from vswitch.shell.state import StateDir

log = logging.getLogger(__name__)


class LeaseSource(Protocol):
    """Where leases come from: the config (:class:`StaticLeases`), or etcd (:class:`EtcdLeases`)."""

    async def own_lease(self) -> Lease:
        """This node's lease (acquired, or renewed)."""
        ...

    async def peer_leases(self) -> list[Lease]:
        """Every other node's lease, as it stands now."""
        ...


class StaticLeases:
    """Leases written in the config: this node's ``[overlay]``, the others' ``[[overlay.peers]]``."""

    def __init__(self, config: OverlayConfig, vtep_mac: bytes | None) -> None:
        self.config = config
        self.vtep_mac = vtep_mac

    async def own_lease(self) -> Lease:
        return Lease(self.config.subnet, self.config.public_ip.packed, self.vtep_mac)

    async def peer_leases(self) -> list[Lease]:
        return config_leases(self.config)


def config_leases(config: OverlayConfig) -> list[Lease]:
    """The peers' leases written in ``[[overlay.peers]]``."""
    return [Lease(p.subnet, p.public_ip.packed, p.vtep_mac) for p in config.peers]


# -- etcd: flannel's leases ----------------------------------------------------------------

ACQUIRE_ATTEMPTS = 10        # flannel's: a subnet taken between our listing and our create is tried again
WATCH_BACKOFF = (0.1, 5.0)   # the watch reconnects after 100 ms, doubling to 5 s
WATCH_CHECK = 10.0           # while watching, etcd is asked this often whether it still answers (see _watch)
RENEW_RETRY = 60.0           # flannel retries a failed renewal every minute
SAVE_INTERVAL = 1.0          # the lease state is saved at most this often while leases churn
TTL_BUDGET = 3.0             # `show leases` asks etcd each lease's time left for at most this long (of 10 s a request has)
APPLY_INTERVAL = 0.05        # the peers are handed on at most this often: a churn of events costs a few applies


class LeaseError(Exception):
    """The node cannot hold a lease: no network config, a full network, etcd unreachable with nothing cached."""


class LeaseLost(LeaseError):
    """Our own lease was deleted (not expired) in etcd: as flanneld does, the node stops."""


@attrs.frozen
class Acquired:
    """This node's lease, and the network config it was taken under."""

    config: NetworkConfig
    config_json: bytes          # <prefix>/config as etcd holds it (saved, to start with while etcd is away)
    subnet: Network
    lease_id: int               # 0: a reservation, which no etcd lease expires
    expires: float | None       # wall-clock seconds; None for a reservation


@attrs.define
class SourceStatus:
    """What ``show peers`` says of the lease source."""

    state: str = "connecting"             # connecting, connected, disconnected, cached (started from the state dir)
    since: float = attrs.Factory(time.time)
    endpoint: str = ""
    revision: int = 0
    last_error: str | None = None
    reconnects: int = 0
    relists: int = 0                      # full listings after a compaction
    apply_failures: int = 0               # peer sets the node could not take (a bug: logged with its traceback)

    def enter(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        if error is not None:
            self.last_error = error


class EtcdLeases:
    """flanneld's subnet manager on etcd: acquire, renew and watch leases under ``<prefix>/subnets``.

    :meth:`acquire` comes first (the daemon cannot build its router before
    it knows its subnet); :meth:`run` then renews and watches until
    cancelled, handing every change of the peers to ``apply``. The lease is
    kept on shutdown, so that a restart finds it again (by our public IP).
    """

    def __init__(self, settings: EtcdConfig, *, public_ip: bytes, state: StateDir, subnet_env: str | None = None,
                 backend: str | None = None) -> None:
        self.settings = settings
        self.public_ip = public_ip
        self.state = state
        self.subnet_env = subnet_env
        self.backend = backend                     # [overlay] backend, if written: enough to start from subnet.env
        self.client = EtcdClient(
            settings.endpoints, ca_file=settings.ca_file, cert_file=settings.cert_file, key_file=settings.key_file,
            username=settings.username, password=settings.password)
        self.rng = random.Random()   # which of the free subnets, as flannel picks: at random
        self.status = SourceStatus(endpoint=self.client.endpoint)
        self.config_key = f"{settings.prefix}/config".encode()
        self.subnets = subnets_prefix(settings.prefix)
        self.acquired: Acquired | None = None
        self.book: LeaseBook | None = None
        self._attrs: LeaseAttrs | None = None      # our lease's value ...
        self._value = b""                          # ... as put
        self._dirty = trio.Event()                 # set when there is something new to save
        self._changed = trio.Event()               # set when the peers changed and are not yet handed on

    # -- the LeaseSource protocol --

    async def own_lease(self) -> Lease:
        assert self.acquired is not None, "acquire first"
        assert self._attrs is not None
        return Lease(self.acquired.subnet, self.public_ip, self._attrs.vtep_mac)

    async def peer_leases(self) -> list[Lease]:
        return self.book.peers() if self.book is not None else []

    # -- acquiring --

    async def acquire(self, lease_attrs: Callable[[NetworkConfig], LeaseAttrs]) -> Acquired:
        """Take our lease as flanneld does, or, with etcd unreachable, the one the state dir (or subnet.env)
        remembers; LeaseError says why neither is possible."""
        try:
            acquired = await self._acquire(lease_attrs)
        except EtcdUnavailable as exc:
            self.status.enter("disconnected", str(exc))
            acquired = self._cached(lease_attrs)
            if acquired is None:
                raise LeaseError(f"{exc}; and no earlier lease to start from ({self.state.path / 'lease.json'}"
                                 f"{' or ' + self.subnet_env if self.subnet_env else ''})") from None
            log.warning("etcd unreachable (%s): starting with the lease %s and %d peer(s) saved in %s; retrying",
                        exc, acquired.subnet, len(self.book.peers()) if self.book else 0, self.state.path)
            self.status.enter("cached")
        except EtcdError as exc:   # etcd answered, but not what a lease can be taken with
            raise LeaseError(f"etcd: {exc}") from None
        self.acquired = acquired
        try:
            self.save(strict=True)
        except OSError as exc:
            raise LeaseError(f"cannot save the lease in {self.state.path} ({exc.strerror}): set [node] state_dir to"
                             " a directory the daemon can write") from None
        return acquired

    async def _acquire(self, lease_attrs: Callable[[NetworkConfig], LeaseAttrs]) -> Acquired:
        kv = await self.client.get(self.config_key)
        where = self.config_key.decode()
        if kv is None:
            raise LeaseError(f"etcd at {self.client.endpoint} has no network config at {where}: write one with"
                             f" `vswitch network init --etcd {self.client.endpoint} --network 10.244.0.0/16`")
        try:
            config = parse_network_config(kv.value)
        except FlannelError as exc:
            raise LeaseError(f"{where}: {exc}") from None
        self._our_value(lease_attrs(config))
        previous = self._previous_subnet()
        for _ in range(ACQUIRE_ATTEMPTS):
            listing = await self.client.list_prefix(self.subnets)
            book = self._book(config)
            book.replace((kv.key, kv.value, kv.lease, kv.mod_revision) for kv in listing.kvs)
            plan = plan_acquire(config, book.records.values(), self.public_ip, previous, self.rng.choice,
                                occupied=book.unreadable)
            if isinstance(plan, Stale):
                log.info("the lease %s holds our address but not the network config's shape: deleting it",
                         plan.record.subnet)
                await self.client.delete(subnet_key(self.settings.prefix, plan.record.subnet))
                continue
            if isinstance(plan, Reuse):
                subnet, lease_id, expires = plan.record.subnet, 0, None
                if plan.record.lease_id:   # a lease; a reservation is put again without one, as flannel does
                    lease_id, expires = await self._grant()
                await self.client.put(subnet_key(self.settings.prefix, subnet), self._value, lease=lease_id)
                log.info("reusing the %s %s for %s", "lease" if lease_id else "reservation", subnet,
                         ip_to_str(self.public_ip))
            else:
                subnet = plan.subnet
                lease_id, expires = await self._grant()
                if not await self.client.create(subnet_key(self.settings.prefix, subnet), self._value, lease=lease_id):
                    await self.client.revoke(lease_id)
                    log.info("%s was taken meanwhile: trying again", subnet)
                    continue
                log.info("acquired the lease %s", subnet)
            book.own = subnet
            book.put(subnet_key(self.settings.prefix, subnet), self._value, lease_id, listing.revision)   # for show
            self.book = book
            self.status.revision = listing.revision
            self.status.enter("connected")
            return Acquired(config, kv.value, subnet, lease_id, expires)
        raise LeaseError(f"no lease after {ACQUIRE_ATTEMPTS} attempts: other nodes took each subnet we tried")

    def _our_value(self, attrs: LeaseAttrs) -> None:
        self._attrs, self._value = attrs, lease_value(attrs)

    def _book(self, config: NetworkConfig) -> LeaseBook:
        assert self._attrs is not None
        return LeaseBook(self.settings.prefix, config, public_ip=self.public_ip, vtep_mac=self._attrs.vtep_mac)

    async def _grant(self) -> tuple[int, float]:
        lease_id, ttl = await self.client.grant(self.settings.lease_ttl)
        return lease_id, time.time() + ttl

    def _previous_subnet(self) -> Network | None:
        """The subnet we held before: the state dir's, else subnet.env's FLANNEL_SUBNET (as flanneld reads it)."""
        saved = self.state.read("lease")
        text = saved.get("subnet") if saved else None
        if not isinstance(text, str) and self.subnet_env:
            text = read_subnet_env(self.subnet_env).get("FLANNEL_SUBNET")
        try:
            return Network.parse(str(ipaddress.IPv4Interface(text).network)) if isinstance(text, str) else None
        except ValueError:
            return None

    def _cached(self, lease_attrs: Callable[[NetworkConfig], LeaseAttrs]) -> Acquired | None:
        """The lease the state dir remembers, with its peers; else subnet.env's, with none."""
        saved = self.state.read("lease")
        try:
            if saved is not None:
                config_json = str(saved["network_config"]).encode()
                config = parse_network_config(config_json)
                subnet = Network.parse(str(saved["subnet"]))
                expires = saved.get("expires")
                acquired = Acquired(config, config_json, subnet, int(saved.get("lease_id") or 0),
                                    float(expires) if expires is not None else None)
                peers = saved.get("peers") or []
                records = [(str(p["key"]).encode(), str(p["value"]).encode(), int(p.get("lease") or 0),
                            int(p.get("mod_revision") or 0)) for p in peers]
                revision = int(saved.get("revision") or 0)
            else:
                env = read_subnet_env(self.subnet_env) if self.subnet_env else {}
                if "FLANNEL_NETWORK" not in env or "FLANNEL_SUBNET" not in env or self.backend is None:
                    return None
                network = Network.parse(env["FLANNEL_NETWORK"])
                subnet = Network.parse(str(ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network))
                config_json = network_config_json(network, backend=self.backend, subnet_len=subnet.prefix_len)
                config = parse_network_config(config_json)
                acquired, records, revision = Acquired(config, config_json, subnet, 0, None), [], 0
        except (AttributeError, KeyError, TypeError, ValueError) as exc:   # FlannelError is a ValueError
            log.warning("the saved lease cannot be used (%s)", exc)
            return None
        self._our_value(lease_attrs(config))
        self.book = self._book(config)
        self.book.replace(records)
        self.book.own = acquired.subnet
        self.status.revision = revision
        return acquired

    def save(self, *, strict: bool = False) -> None:
        """Remember the lease and the peers in the state dir, to start with should etcd be away next time; an
        OSError is raised with ``strict`` (at the start), logged otherwise."""
        acquired, book = self.acquired, self.book
        if acquired is None or book is None:
            return
        (self.state.write if strict else self.state.keep)("lease", {
            "network_config": acquired.config_json.decode(), "subnet": str(acquired.subnet),
            "lease_id": acquired.lease_id, "expires": acquired.expires, "public_ip": ip_to_str(self.public_ip),
            "revision": self.status.revision,
            "peers": [{"key": subnet_key(self.settings.prefix, r.subnet).decode(), "value": lease_value(r.attrs).decode(),
                       "lease": r.lease_id, "mod_revision": r.mod_revision} for r in book.records.values()],
        })

    # -- keeping it: renew, watch, save --

    async def run(self, apply: Callable[[list[Lease]], Awaitable[object]], *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Renew our lease and watch everyone's until cancelled, handing each new set of peers to ``apply``
        (the path a reload takes). LeaseLost ends it when our own lease is deleted."""
        assert self.acquired is not None and self.book is not None, "acquire first"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew_loop)
                nursery.start_soon(self._save_loop)
                nursery.start_soon(self._apply_loop, apply)
                nursery.start_soon(self._watch_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()
            self.save()   # what the last second of changes brought; the lease itself stays in etcd

    async def _watch_loop(self) -> None:
        delay = WATCH_BACKOFF[0]
        resync = self.status.state == "cached"   # started without etcd: check our lease and list once it answers
        while True:
            try:
                if resync:
                    await self._resync()
                    resync = False
                await self._watch()
            except Compacted as exc:
                log.info("the watch's revision %d was compacted (etcd kept from %d): listing again",
                         self.status.revision + 1, exc.compact_revision)
                self.status.relists += 1
                resync = True
            except EtcdError as exc:   # EtcdUnavailable too: the forwarding goes on with the peers we have
                if self.status.state == "connected":   # it was working: try again soon
                    delay = WATCH_BACKOFF[0]
                if self.status.state != "disconnected":
                    log.warning("etcd: %s; forwarding with the %d peer(s) known, reconnecting", exc,
                                len(self.book.records) - 1 if self.book else 0)
                self.status.enter("disconnected", str(exc))
                self.status.reconnects += 1
                resync = resync or self.status.revision == 0
                await trio.sleep(delay)
                delay = min(delay * 2, WATCH_BACKOFF[1])

    async def _watch(self) -> None:
        """Follow the subnets from the revision after the last seen until the stream breaks.

        An idle watch hears nothing from etcd for minutes (its progress notices
        come every ten by default), and a path to etcd that silently drops
        packets would leave it waiting for ever; so beside it, every
        WATCH_CHECK seconds, a cheap request asks whether etcd still answers,
        and when it does not, the watch ends with its error.
        """
        failure: list[EtcdError | LeaseError] = []   # raised here, not out of the nursery in a group

        async def check(scope: trio.CancelScope) -> None:
            while True:
                await trio.sleep(WATCH_CHECK)
                try:
                    await self.client.get(self.config_key)
                except EtcdError as exc:
                    failure.append(exc)
                    scope.cancel()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(check, nursery.cancel_scope)
            try:
                async with self.client.watch_prefix(self.subnets, self.status.revision + 1) as stream:
                    self.status.endpoint = self.client.endpoint
                    self.status.enter("connected")
                    async for events, revision in stream:
                        changed = False
                        for event in events:
                            changed |= await self._on_event(event)
                            self.status.revision = max(self.status.revision, event.kv.mod_revision)
                        if not events:   # a progress notice: everything up to `revision` has been seen
                            self.status.revision = max(self.status.revision, revision)
                        if changed:
                            self._changed.set()
            except (EtcdError, LeaseError) as exc:
                failure.append(exc)
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        raise EtcdUnavailable(f"the watch on {self.client.endpoint} ended")

    async def _on_event(self, event: Event) -> bool:
        """Apply one watch event to the book; whether the peers changed."""
        assert self.book is not None and self.acquired is not None
        if event.type == "DELETE" and parse_subnet_key(self.settings.prefix, event.kv.key) == self.acquired.subnet:
            await self._own_deleted()
            return False
        if event.type == "DELETE":
            return self.book.delete(event.kv.key) is not None
        reason = self.book.put(event.kv.key, event.kv.value, event.kv.lease, event.kv.mod_revision)
        if reason is not None:
            self._log_ignored(event.kv.key, reason)
        return True   # an ignored put may have replaced a usable lease: the peer table sorts out what changed

    def _log_ignored(self, key: bytes, reason: str) -> None:
        log.info("ignoring the lease %s: %s", key.decode("utf-8", "replace")[:200], reason)

    async def _own_deleted(self) -> None:
        """Our key is gone: expired (our etcd lease ran out while we could not renew it), which we mend by taking
        the subnet again, or deleted by someone, which stops the node as it stops flanneld."""
        assert self.acquired is not None
        subnet = self.acquired.subnet
        if self.acquired.lease_id and await self.client.time_to_live(self.acquired.lease_id) < 0:
            log.warning("our lease %s expired: taking it again", subnet)
            await self._reclaim()
            return
        raise LeaseLost(f"our lease {subnet} was deleted from etcd ({subnet_key(self.settings.prefix, subnet).decode()}):"
                        " stopping, as flanneld does; a restart takes a lease again")

    async def _reclaim(self) -> None:
        """Put our lease back under the same subnet, if no other node has taken it meanwhile (else LeaseLost: a
        running router cannot change its subnet)."""
        assert self.acquired is not None
        subnet = self.acquired.subnet
        lease_id, expires = await self._grant()
        if not await self.client.create(subnet_key(self.settings.prefix, subnet), self._value, lease=lease_id):
            await self.client.revoke(lease_id)
            raise LeaseLost(f"our subnet {subnet} was taken by another node while we could not reach etcd:"
                            " stopping; a restart takes a new lease")
        self.acquired = attrs.evolve(self.acquired, lease_id=lease_id, expires=expires)
        self._dirty.set()

    async def _resync(self) -> None:
        """List everything again (after a compaction, or once etcd answers after a start from the state dir),
        check that our lease is still ours, and hand on the difference."""
        assert self.book is not None and self.acquired is not None
        listing = await self.client.list_prefix(self.subnets)
        mine = subnet_key(self.settings.prefix, self.acquired.subnet)
        own = next((kv for kv in listing.kvs if kv.key == mine), None)
        if own is None:
            if self.status.state == "cached" or not self.acquired.lease_id \
                    or await self.client.time_to_live(self.acquired.lease_id) < 0:
                await self._reclaim()
            else:
                await self._own_deleted()
        elif not self._holds(own.value):
            raise LeaseLost(f"our subnet {self.acquired.subnet} is now held by another node"
                            f" ({own.value.decode('utf-8', 'replace')[:200]}): stopping; a restart takes a new lease")
        elif own.lease != self.acquired.lease_id:
            left = await self.client.time_to_live(own.lease) if own.lease else -1
            self.acquired = attrs.evolve(self.acquired, lease_id=own.lease,
                                         expires=time.time() + left if left >= 0 else None)
        self.book.replace((kv.key, kv.value, kv.lease, kv.mod_revision) for kv in listing.kvs)
        self.status.revision = listing.revision
        self._changed.set()

    def _holds(self, value: bytes) -> bool:
        """Whether a lease's value is ours: our public IP (flannel's test; the rest of it we put again on renewal)."""
        try:
            return parse_lease_value(value).public_ip == self.public_ip
        except FlannelError:
            return False

    async def _apply_loop(self, apply: Callable[[list[Lease]], Awaitable[object]]) -> None:
        """Hand the peers on when they have changed, at most every APPLY_INTERVAL: a churn of a thousand events
        costs the node a few dozen applies (each a pass over the whole peer table), not a thousand.

        A failure there (a bug: the book hands on only a set the peer table
        takes) costs that change, logged and counted, not the watch: the next
        change tries again.
        """
        assert self.book is not None
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            try:
                changes = await apply(self.book.peers())
            except Exception:
                self.status.apply_failures += 1
                log.exception("applying the peers from etcd failed; the peer table stays as it was")
            else:
                if changes:
                    log.info("peers from etcd: %s", changes)
                self._dirty.set()
            await trio.sleep(APPLY_INTERVAL)

    async def _renew_loop(self) -> None:
        while True:
            assert self.acquired is not None
            if self.acquired.expires is None:   # a reservation: nothing expires
                await trio.sleep(RENEW_RETRY)
                continue
            wait = self.acquired.expires - self.settings.renew_margin - time.time()
            if wait > 0:
                await trio.sleep(min(wait, RENEW_RETRY))   # again after a reclaim, which moves the expiry
                continue
            try:
                lease_id, expires = await self._grant()
                await self.client.put(subnet_key(self.settings.prefix, self.acquired.subnet), self._value,
                                      lease=lease_id)
            except EtcdError as exc:
                retry = min(RENEW_RETRY, self.settings.renew_margin / 4)
                log.warning("renewing the lease %s failed (%s): trying again in %g s", self.acquired.subnet, exc, retry)
                self.status.last_error = str(exc)
                await trio.sleep(retry)
                continue
            self.acquired = attrs.evolve(self.acquired, lease_id=lease_id, expires=expires)
            log.info("renewed the lease %s until %s", self.acquired.subnet, _when(expires))
            self._dirty.set()

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            self.save()
            await trio.sleep(SAVE_INTERVAL)

    # -- what `show` reports --

    def describe(self) -> dict[str, object]:
        """The source's state, for ``show peers``."""
        acquired, book = self.acquired, self.book
        return {
            "source": "etcd", **attrs.asdict(self.status), "since": _when(self.status.since),
            "prefix": self.settings.prefix,
            "ignored": {reason: n for reason, n in sorted(book.ignored.items()) if n} if book else {},
            "lease_id": acquired.lease_id if acquired else None,
            "expires": _when(acquired.expires) if acquired and acquired.expires else None,
        }

    async def leases(self) -> list[dict[str, object]]:
        """Every lease in the cluster as last listed or watched, with its time left (asked of etcd), ours marked."""
        assert self.book is not None and self.acquired is not None
        records = sorted(self.book.records.values(), key=lambda r: r.subnet.address)
        left: dict[int, int | None] = {}
        limiter = trio.CapacityLimiter(16)

        async def ask(lease_id: int) -> None:
            async with limiter:
                try:
                    left[lease_id] = await self.client.time_to_live(lease_id)
                except EtcdError:
                    left[lease_id] = None   # etcd away: the listing stands, the expiry is unknown

        with trio.move_on_after(TTL_BUDGET):   # thousands of leases: those not asked in time show no expiry
            async with trio.open_nursery() as nursery:
                for lease_id in {r.lease_id for r in records if r.lease_id}:
                    nursery.start_soon(ask, lease_id)
        rows = []
        for r in records:
            seconds = left.get(r.lease_id)
            rows.append({
                "subnet": str(r.subnet), "public_ip": ip_to_str(r.attrs.public_ip), "backend": r.attrs.backend or "udp",
                "vtep_mac": mac_to_str(r.attrs.vtep_mac) if r.attrs.vtep_mac else None,
                "lease_id": r.lease_id, "reservation": not r.lease_id,
                "expires_in": seconds if seconds is None or seconds >= 0 else 0,
                "ours": r.subnet == self.acquired.subnet,
            })
        return rows


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


async def write_network_config(client: EtcdClient, prefix: str, data: bytes, *, force: bool = False) -> bool:
    """Put flannel's network config at ``<prefix>/config``, as an operator does with ``etcdctl put``; whether it
    was written (False: the same config is there already). A different one is replaced only with ``force``:
    the leases taken under it may not fit the new one."""
    key = f"{prefix}/config".encode()
    wanted = parse_network_config(data)
    if await client.create(key, data):
        return True
    current = await client.get(key)
    if current is not None:
        try:
            if parse_network_config(current.value) == wanted:
                return False
        except FlannelError:
            pass   # a broken config is different, and replaced with force
        if not force:
            raise LeaseError(f"{key.decode()} already holds a different network config"
                             f" ({current.value.decode('utf-8', 'replace')[:300]}): add --force to replace it")
    await client.put(key, data)
    return True
