"""A small HTTP/1.1 server for ``GET /metrics`` and ``GET /healthz`` (``[node] metrics``), on Trio.

Its clients are untrusted, so everything about a request is bounded: the
head (request line and headers) to :data:`MAX_HEAD` bytes, the whole
exchange to :data:`TIMEOUT` seconds (a slowloris holds its connection that
long and no longer), and the connections open at once to
:data:`MAX_CONNECTIONS` (one more is closed at once). A body is never read;
only GET and HEAD are answered (405 otherwise), known paths only (404), one
request per connection (``Connection: close``). A client that misbehaves
costs its own connection and is counted, nothing else.

``/healthz`` answers 200 ``ok`` whenever the server runs, which it does
while the node serves (its ports up, its control socket listening). It does
not turn 503 when etcd is away: the node then forwards on with the peers it
last saw, and a liveness probe that restarted it would cost the containers
their links for nothing; ``vswitch_lease_source_connected`` says so
instead. This is what flanneld's ``--healthz-port`` does too.
"""

import logging

import attrs
import trio

from vswitch.errors import DeviceError

from .metrics import CONTENT_TYPE, exposition, snapshot
from .reports import NodeView

log = logging.getLogger(__name__)

MAX_HEAD = 8192          # bytes of request line and headers
TIMEOUT = 5.0            # seconds for a client to send its head and take the answer
MAX_LINGER = 65536       # bytes read and dropped after refusing a request, so the refusal reaches its client
MAX_CONNECTIONS = 32     # connections served at once; Prometheus needs one
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}


@attrs.define
class HttpStatistics:
    requests: int = 0            # answered, whatever the status
    bad: int = 0                 # heads that were not HTTP/1.x requests, or too large
    timed_out: int = 0
    refused: int = 0             # connections beyond MAX_CONNECTIONS, closed at once
    active: int = 0


class MetricsServer:
    """Serves a node's metrics and health at ``host``:``port`` until cancelled."""

    def __init__(self, node: NodeView, host: str, port: int, *, timeout: float = TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.node = node
        self.host, self.port = host, port
        self.timeout = timeout
        self.max_connections = max_connections
        self.stats = HttpStatistics()

    def statistics(self) -> HttpStatistics:
        return attrs.evolve(self.stats)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound (host, port) with ``task_status.started``, then serve until cancelled;
        a port that cannot be bound is a DeviceError naming it, and nothing is left listening."""
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise DeviceError(f"[node] metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") \
                from None
        bound = listeners[0].socket.getsockname()[:2]
        log.info("metrics: http://%s:%d/metrics", *bound)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, self._connection, [listener])
            task_status.started(bound)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self.stats.active >= self.max_connections:
            self.stats.refused += 1
            await trio.aclose_forcefully(stream)
            return
        self.stats.active += 1
        try:
            with trio.move_on_after(self.timeout) as scope:
                await self._exchange(stream)
            if scope.cancelled_caught:
                self.stats.timed_out += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass   # the client went away mid-answer
        finally:
            self.stats.active -= 1
            await trio.aclose_forcefully(stream)

    async def _exchange(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_HEAD:
                self.stats.bad += 1
                await self._answer(stream, 431, b"request head too large\n", linger=True)
                return
            data = await stream.receive_some(4096)
            if not data:
                return   # closed before a whole head: nothing to answer
            head += data
        request = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(request) != 3 or not request[2].startswith(b"HTTP/1."):
            self.stats.bad += 1
            await self._answer(stream, 400, b"bad request\n", linger=True)
            return
        method, target, _ = request
        if method not in (b"GET", b"HEAD"):
            await self._answer(stream, 405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n", linger=True)
            return
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            body, content_type = exposition(snapshot(self.node)).encode(), CONTENT_TYPE
            await self._answer(stream, 200, body, content_type=content_type, head_only=method == b"HEAD")
        elif path == b"/healthz":
            await self._answer(stream, 200, b"ok\n", head_only=method == b"HEAD")
        else:
            await self._answer(stream, 404, b"not found: try /metrics or /healthz\n", head_only=method == b"HEAD")

    async def _answer(self, stream: trio.SocketStream, status: int, body: bytes, *,
                      content_type: str = "text/plain; charset=utf-8", extra: bytes = b"",
                      head_only: bool = False, linger: bool = False) -> None:
        """Send the answer; with ``linger`` (a request not read to its end) read and drop up to
        :data:`MAX_LINGER` bytes more until the client closes, since closing a socket with unread input
        resets the connection and the client may never see the answer."""
        self.stats.requests += 1
        head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra + b"\r\n"
        await stream.send_all(head if head_only else head + body)
        if linger:
            await stream.send_eof()
            dropped = 0
            while dropped < MAX_LINGER and (data := await stream.receive_some(4096)):
                dropped += len(data)
