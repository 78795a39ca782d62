"""An etcd v3 client over etcd's JSON gateway (``POST /v3/...`` on the client port), with httpx under Trio.

grpcio has no Trio support and the Python etcd clients are asyncio-only or
unmaintained; the gateway, on by default since etcd 3.4, carries everything a
lease source needs: ranges, puts, a transaction guarded on a key's version,
leases, and a streaming watch (newline-delimited JSON).

Everything etcd sends is untrusted: an answer is read up to ``max_response``
bytes (a watch message up to the same), and JSON, base64 or a field of the
wrong type is an :class:`EtcdError` naming the call, never another exception.
Every call has a deadline (``timeout`` per endpoint tried); a watch has one to
open and then waits for etcd's progress notifications, which come every 10
minutes by default (``--experimental-watch-progress-notify-interval``): a
watch silent for longer than ``watch_timeout`` is broken. TCP keepalives find
a peer that vanished (a partition, a crashed VM) within about 30 s anyway.

Failover: a call that cannot reach an endpoint (refused, timed out, TLS
failure, or etcd answering that it is unavailable, as a member cut off from
its leader does) tries the next one, once around, and the endpoint that
answered stays the one in use. A call that timed out after it was sent may
have been applied: ``put`` is harmless twice, and ``create`` may then report
``False`` for its own key, which a caller sees as a key holding its own value.
"""

import base64
import binascii
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

import attrs
import httpx
import trio

# gRPC status codes that etcd's errors carry (google.golang.org/grpc/codes)
NOT_FOUND = 5
UNAVAILABLE = 14
UNAUTHENTICATED = 16

WATCH_TIMEOUT = 660.0  # etcd's default progress notification interval (10 min), and a minute to spare

# dead peers: the first probe after 15 s of silence, then every 5 s, given up after 3 unanswered
KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 15),
             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)]

INT64 = re.compile(r"-?[0-9]{1,19}")

T = TypeVar("T")


class EtcdError(Exception):
    """etcd answered with an error, or with something that is not etcd's JSON; the message says which call and why.

    ``code`` is the gRPC status code of etcd's error answer (5 not found, 14 unavailable, ...), None otherwise.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered (refused, timed out, TLS failure), or a watch's stream broke: try again later."""


class Compacted(EtcdError):
    """A watch's start revision was compacted away: list again, then watch from the listing's revision + 1."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


@attrs.frozen
class KeyValue:
    key: bytes
    value: bytes
    lease: int  # 0: the key is attached to no lease
    create_revision: int
    mod_revision: int
    version: int


@attrs.frozen
class Event:
    type: str  # "PUT" | "DELETE"
    kv: KeyValue  # a DELETE's kv has the key and mod_revision only


@attrs.frozen
class Listing:
    kvs: tuple[KeyValue, ...]
    revision: int  # the store's revision when listed: watch from revision + 1 to miss nothing


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range or a watch cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdClient:
    """One etcd cluster reached over its JSON gateway, with failover between ``endpoints``.

    ``endpoint`` is the endpoint in use: the last one that answered.
    """

    def __init__(self, endpoints: Sequence[str], *, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, username: str | None = None, password: str | None = None,
                 timeout: float = 5.0, max_response: int = 64 << 20, watch_timeout: float = WATCH_TIMEOUT) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise ValueError("endpoints: a list of at least one URL such as http://127.0.0.1:2379")
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        for endpoint in self.endpoints:
            if not re.fullmatch(r"https?://[^/\s]+", endpoint):
                raise ValueError(f"etcd endpoint {endpoint!r}: expected http://HOST:PORT or https://HOST:PORT")
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        self.timeout = timeout
        self.max_response = max_response
        self.watch_timeout = watch_timeout
        self._current = 0
        self._credentials = None if username is None else {"name": username, "password": password}
        self._token: str | None = None
        # trust_env off: no proxy, netrc or SSL_CERT_FILE from the environment decides where cluster state comes from
        # (plain http needs no context: loading the system's CAs costs some 40 ms of a node's start)
        tls = any(endpoint.startswith("https://") for endpoint in self.endpoints)
        transport = httpx.AsyncHTTPTransport(verify=tls_context(ca_file, cert_file, key_file) if tls else False,
                                             socket_options=KEEPALIVE, trust_env=False)
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False,
                                       headers={"Accept-Encoding": "identity"})  # read as sent: no decompression bomb

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "EtcdClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the calls ---------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        kvs = await self._call("/v3/kv/range", {"key": b64(key)}, _kvs)
        return kvs[0] if kvs else None

    async def list_prefix(self, prefix: bytes) -> Listing:
        body = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        return await self._call("/v3/kv/range", body, lambda answer: Listing(_kvs(answer), _revision(answer)))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Set ``key``; the store's new revision."""
        return await self._call("/v3/kv/put", _put(key, value, lease), _revision)

    async def create(self, key: bytes, value: bytes, *, lease: int = 0) -> bool:
        """Set ``key`` only if it does not exist (a Txn guarded on ``version(key) == 0``): False if it does."""
        body = {"compare": [{"key": b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}],
                "success": [{"request_put": _put(key, value, lease)}]}
        return await self._call("/v3/kv/txn", body, _succeeded)

    async def delete(self, key: bytes) -> int:
        """Delete ``key``; how many keys were deleted (0 or 1)."""
        return await self._call("/v3/kv/deleterange", {"key": b64(key)}, lambda answer: _int(answer, "deleted"))

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: (its id, the TTL etcd granted)."""
        return await self._call("/v3/lease/grant", {"TTL": str(ttl)},
                                lambda answer: (_int(answer, "ID", required=True), _int(answer, "TTL")))

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys; a lease already gone (expired, revoked) is no error."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, lambda answer: None)
        except EtcdError as error:
            if error.code != NOT_FOUND:
                raise

    async def time_to_live(self, lease_id: int) -> int:
        """The seconds a lease has left; -1 when it is gone."""
        return await self._call("/v3/lease/timetolive", {"ID": str(lease_id)}, lambda answer: _int(answer, "TTL"))

    @asynccontextmanager
    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator["Watch"]:
        """Watch every key under ``prefix`` from ``start_revision`` on: ``async for events, revision in watch``.

        Each watch response is ``(events, revision)``, where everything up to
        ``revision`` has been delivered: after a break, watch again from
        ``revision + 1``. An idle watch yields ``((), revision)`` now and then
        (etcd's progress notifications). Entering returns once etcd has made
        the watch. :class:`Compacted` (on entering or later) says the start
        revision is gone; :class:`EtcdUnavailable` says the stream broke, and
        the caller reconnects with backoff: nothing here retries forever.
        """
        path = "/v3/watch"
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        timeout = httpx.Timeout(self.timeout, read=self.watch_timeout)
        async with AsyncExitStack() as stack:

            async def attempt(endpoint: str, headers: dict) -> Watch:
                async with AsyncExitStack() as opening:
                    response = await opening.enter_async_context(
                        self._http.stream("POST", endpoint + path, json=body, headers=headers, timeout=timeout))
                    watch = Watch(endpoint, response, self.max_response, self.watch_timeout)
                    await watch.created()
                    await stack.enter_async_context(opening.pop_all())  # open until the caller leaves
                    return watch

            yield await self._authenticated(path, attempt)

    # -- one call, over the endpoints --------------------------------------------------------

    async def _call(self, path: str, body: dict, parse: Callable[[dict], T]) -> T:
        answer = await self._authenticated(path, lambda endpoint, headers: self._post(endpoint, path, body, headers))
        try:
            return parse(answer)
        except Malformed as error:
            raise EtcdError(f"etcd at {self.endpoint}: {path} answered {error}") from None

    async def _authenticated(self, path: str, attempt: Callable[[str, dict], Awaitable[T]]) -> T:
        """``attempt(endpoint, headers)`` with a token when there are credentials; once more with a fresh token."""
        try:
            return await self._reach_with_token(path, attempt)
        except EtcdError as error:
            if error.code != UNAUTHENTICATED or not self._credentials:
                raise
        self._token = None  # expired (unused for etcd's --auth-token-ttl): authenticate again
        return await self._reach_with_token(path, attempt)

    async def _reach_with_token(self, path: str, attempt: Callable[[str, dict], Awaitable[T]]) -> T:
        if self._credentials and self._token is None:
            self._token = await self._authenticate()
        headers = {"Authorization": self._token} if self._token else {}
        return await self._reach(path, lambda endpoint: attempt(endpoint, headers))

    async def _authenticate(self) -> str:
        path = "/v3/auth/authenticate"
        answer = await self._reach(path, lambda endpoint: self._post(endpoint, path, self._credentials, {}))
        token = answer.get("token")
        if not isinstance(token, str) or not token or not (token.isascii() and token.isprintable()) \
                or len(token) > 4096:
            raise EtcdError(f"etcd at {self.endpoint}: {path} answered no usable token")
        return token

    async def _reach(self, path: str, attempt: Callable[[str], Awaitable[T]]) -> T:
        """``await attempt(endpoint)`` at each endpoint in turn, from the one in use, until one answers."""
        tried = []
        for step in range(len(self.endpoints)):
            index = (self._current + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                with trio.fail_after(self.timeout):
                    answer = await attempt(endpoint)
            except trio.TooSlowError:
                tried.append((endpoint, f"no answer within {self.timeout:g} s"))
            except httpx.TransportError as error:
                tried.append((endpoint, _describe(error)))
            except EtcdError as error:  # a watch's stream closed before it began, or etcd cannot serve now
                if error.code != UNAVAILABLE and not isinstance(error, EtcdUnavailable):
                    raise
                tried.append((endpoint, str(error)))
            else:
                self._current = index
                return answer
        names = ", ".join(endpoint for endpoint, _ in tried)
        raise EtcdUnavailable(f"no etcd endpoint answered {path} (tried {names}); "
                              f"{tried[-1][0]}: {tried[-1][1]}")

    async def _post(self, endpoint: str, path: str, body: dict, headers: dict) -> dict:
        async with self._http.stream("POST", endpoint + path, json=body, headers=headers) as response:
            return await _answer(response, endpoint, path, self.max_response)


class Watch:
    """One watch's stream of responses, read a line at a time (``EtcdClient.watch_prefix`` makes it)."""

    def __init__(self, endpoint: str, response: httpx.Response, max_line: int, idle: float) -> None:
        self.endpoint = endpoint
        self._response = response
        self._idle = idle
        self._chunks = response.aiter_raw()
        self._buffer = bytearray()
        self._scanned = 0  # the buffer has no newline before this
        self._max_line = max_line

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> tuple[tuple[Event, ...], int]:
        result = await self._next_result()
        try:
            return _watch_response(result)
        except Malformed as error:
            raise EtcdError(f"etcd at {self.endpoint}: /v3/watch sent {error}") from None

    async def created(self) -> None:
        """Read the first message, which says that the watch was made (or why not)."""
        if self._response.status_code != 200:
            await _answer(self._response, self.endpoint, "/v3/watch", self._max_line)  # raises etcd's error
        result = await self._next_result()
        if not result.get("created"):
            raise EtcdError(f"etcd at {self.endpoint}: /v3/watch did not begin with its created message")

    async def _next_result(self) -> dict:
        message = _json(await self._line(), self.endpoint, "/v3/watch")
        result = message.get("result")
        if not isinstance(result, dict):
            error = message.get("error")
            if isinstance(error, dict):  # the gateway's word that the stream failed
                raise EtcdUnavailable(f"etcd at {self.endpoint} ended the watch: {_text(error.get('message'))}")
            raise EtcdError(f"etcd at {self.endpoint}: /v3/watch sent a message with no result")
        if result.get("canceled"):
            try:
                compacted = _int(result, "compact_revision")
            except Malformed as error:
                raise EtcdError(f"etcd at {self.endpoint}: /v3/watch sent {error}") from None
            if compacted:
                raise Compacted(f"etcd at {self.endpoint} compacted away the watch's start revision "
                                f"(compacted up to {compacted}): list again", compacted)
            reason = _text(result.get("cancel_reason")) or "no reason given"
            code = UNAUTHENTICATED if "invalid auth token" in reason else None
            raise EtcdError(f"etcd at {self.endpoint} canceled the watch: {reason}", code=code)
        return result

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                if line.strip():
                    return line
                continue
            self._scanned = len(self._buffer)
            if len(self._buffer) > self._max_line:
                raise EtcdError(f"etcd at {self.endpoint}: a /v3/watch message is larger than {self._max_line} bytes")
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                raise EtcdUnavailable(f"etcd at {self.endpoint} closed the watch stream") from None
            except httpx.ReadTimeout:
                raise EtcdUnavailable(f"etcd at {self.endpoint} sent nothing on the watch for {self._idle:g} s, "
                                      f"longer than its progress notifications allow") from None
            except httpx.TransportError as error:
                raise EtcdUnavailable(f"the watch stream from etcd at {self.endpoint} broke: "
                                      f"{_describe(error)}") from None
            self._buffer += chunk


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """Verify the server against ``ca_file`` (the system's CAs without it); present a client certificate if given."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise EtcdError(f"etcd TLS files (ca_file={ca_file}, cert_file={cert_file}, key_file={key_file}): "
                        f"{error}") from None
    return context


def _put(key: bytes, value: bytes, lease: int) -> dict:
    body = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def _describe(error: BaseException) -> str:
    """httpx's error with its causes (the refusal, the certificate problem), which its own text often leaves out."""
    texts: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(texts) < 5:
        text = str(cause)
        if text and not any(text in seen for seen in texts):
            texts.append(text)
        cause = cause.__cause__ or cause.__context__
    return ": ".join(texts) or type(error).__name__


# -- reading answers: every field checked ---------------------------------------------------


class Malformed(ValueError):
    """A field of an answer is missing or of the wrong type; the message says which (the caller adds who and what)."""


async def _answer(response: httpx.Response, endpoint: str, path: str, limit: int) -> dict:
    """The JSON object of an answer read up to ``limit`` bytes; etcd's error answer raised as :class:`EtcdError`."""
    too_large = EtcdError(f"etcd at {endpoint}: the answer to {path} is larger than {limit} bytes")
    declared = response.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > limit:  # h11 has checked that it is a number
        raise too_large
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) > limit:
            raise too_large
    if response.status_code == 200:
        return _json(bytes(data), endpoint, path)
    try:
        answer = json.loads(data)
        message, code = answer.get("message") or answer.get("error"), answer.get("code")
    except (UnicodeDecodeError, ValueError, RecursionError, AttributeError):
        message = code = None
    if not isinstance(message, str) or not isinstance(code, int) or isinstance(code, bool):
        raise EtcdError(f"etcd at {endpoint}: {path} answered HTTP {response.status_code} without etcd's error")
    hint = "; this etcd has authentication on: give a username and password" if "user name is empty" in message \
        else ""
    raise EtcdError(f"etcd at {endpoint} refused {path}: {_text(message)} (HTTP {response.status_code}, "
                    f"code {code}){hint}", code=code)


def _json(data: bytes, endpoint: str, path: str) -> dict:
    try:
        answer = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise EtcdError(f"etcd at {endpoint}: {path} answered something that is not JSON ({error})") from None
    if not isinstance(answer, dict):
        raise EtcdError(f"etcd at {endpoint}: {path} answered JSON that is not an object")
    return answer


def _text(value: object) -> str:
    """An untrusted string for a message: printable and short."""
    text = value if isinstance(value, str) else ""
    return "".join(c if c.isprintable() else "?" for c in text[:300])


def _int(fields: dict, name: str, *, required: bool = False) -> int:
    """An int64 field: a decimal string (or a number); 0 when left out, as etcd leaves out zeros."""
    value = fields.get(name)
    if value is None and not required:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and INT64.fullmatch(value):
        return int(value)
    raise Malformed(f"{name}={_text(repr(value))}, not an integer")


def _bytes(fields: dict, name: str) -> bytes:
    value = fields.get(name, "")  # left out when empty
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise Malformed(f"{name}={_text(repr(value))}, not base64")


def _revision(answer: dict) -> int:
    header = answer.get("header")
    if not isinstance(header, dict):
        raise Malformed("no header")
    return _int(header, "revision", required=True)


def _succeeded(answer: dict) -> bool:
    succeeded = answer.get("succeeded", False)  # left out when false
    if not isinstance(succeeded, bool):
        raise Malformed(f"succeeded={_text(repr(succeeded))}, not a boolean")
    return succeeded


def _kv(fields: object) -> KeyValue:
    if not isinstance(fields, dict):
        raise Malformed("a key-value that is not an object")
    return KeyValue(key=_bytes(fields, "key"), value=_bytes(fields, "value"), lease=_int(fields, "lease"),
                    create_revision=_int(fields, "create_revision"), mod_revision=_int(fields, "mod_revision"),
                    version=_int(fields, "version"))


def _kvs(answer: dict) -> tuple[KeyValue, ...]:
    kvs = answer.get("kvs", [])  # left out when there are none
    if not isinstance(kvs, list):
        raise Malformed("kvs that is not a list")
    return tuple(_kv(fields) for fields in kvs)


def _watch_response(result: dict) -> tuple[tuple[Event, ...], int]:
    """The events, and the revision up to which everything has been delivered.

    That is the last event's revision, not the header's: etcd 3.4 sends a
    watcher that is catching up its events in batches of 1,000 revisions,
    each with the store's current revision in the header, so resuming after
    the header's revision could skip events.
    """
    raw = result.get("events", [])  # left out when there are none
    if not isinstance(raw, list):
        raise Malformed("events that are not a list")
    events = []
    for fields in raw:
        if not isinstance(fields, dict):
            raise Malformed("an event that is not an object")
        kind = fields.get("type", "PUT")  # PUT is zero: left out
        if kind not in ("PUT", "DELETE"):
            raise Malformed(f"an event of type {_text(repr(kind))}")
        events.append(Event(kind, _kv(fields.get("kv"))))
    return tuple(events), events[-1].kv.mod_revision if events else _revision(result)
