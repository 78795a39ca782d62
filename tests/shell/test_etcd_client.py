"""The etcd client against a real etcd (and, for hostile answers, against a loopback server that sends garbage)."""

import base64
import functools
import json
import secrets

import httpx
import pytest
import trio

from vswitch.overlay.shell.etcd import (
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
    prefix_end,
)
from vswitch.testing.etcd import EtcdServer, etcd_missing, free_ports

pytestmark = pytest.mark.skipif(etcd_missing(tls=True) is not None, reason=etcd_missing(tls=True) or "")


@pytest.fixture(scope="module")
def etcd():
    with EtcdServer(progress_notify=0.5) as server:  # an idle watch hears of etcd's revision twice a second
        yield server


@pytest.fixture(scope="module")
def tls_etcd():
    with EtcdServer(tls=True) as server:
        yield server


@pytest.fixture
def prefix() -> bytes:
    """Keys of one test: the module's tests share one etcd."""
    return f"/test/{secrets.token_hex(4)}/".encode()


def dead_endpoint() -> str:
    (port,) = free_ports("127.0.0.1", 1)
    return f"http://127.0.0.1:{port}"


async def next_events(watch, count: int) -> list[Event]:
    """The next ``count`` events of a watch, skipping progress notifications."""
    events: list[Event] = []
    with trio.fail_after(5):
        async for batch, _ in watch:
            events += batch
            if len(events) >= count:
                return events
    raise AssertionError("the watch ended")


# -- keys --------------------------------------------------------------------------------------


def test_prefix_end_covers_the_prefix_and_nothing_after():
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"  # every key


async def test_put_get_list_delete(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        first = await client.put(prefix + b"a", b"1")
        second = await client.put(prefix + b"b", b"\x00\xff binary")
        await client.put(prefix[:-1] + b"0", b"just after the prefix")
        assert second == first + 1

        kv = await client.get(prefix + b"b")
        assert (kv.key, kv.value, kv.lease) == (prefix + b"b", b"\x00\xff binary", 0)
        assert kv.create_revision == kv.mod_revision == second and kv.version == 1
        assert await client.get(prefix + b"missing") is None

        await client.put(prefix + b"a", b"2")
        listing = await client.list_prefix(prefix)
        assert [(kv.key, kv.value, kv.version) for kv in listing.kvs] == [(prefix + b"a", b"2", 2),
                                                                           (prefix + b"b", b"\x00\xff binary", 1)]
        assert listing.revision == second + 2
        assert (await client.list_prefix(prefix + b"nothing/")).kvs == ()

        assert await client.delete(prefix + b"a") == 1
        assert await client.delete(prefix + b"a") == 0
        assert [kv.key for kv in (await client.list_prefix(prefix)).kvs] == [prefix + b"b"]


async def test_create_only_when_the_key_does_not_exist(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        assert await client.create(prefix + b"k", b"mine") is True
        assert await client.create(prefix + b"k", b"theirs") is False
        assert (await client.get(prefix + b"k")).value == b"mine"
        await client.delete(prefix + b"k")
        assert await client.create(prefix + b"k", b"again") is True


async def test_an_etcd_error_is_no_failover(etcd, prefix):
    # etcd refusing a call is an answer: the client does not try the next endpoint (which is dead here)
    async with EtcdClient([etcd.endpoint, dead_endpoint()]) as client:
        with pytest.raises(EtcdError) as refused:
            await client.put(prefix + b"k", b"v", lease=12345)
    assert type(refused.value) is EtcdError and refused.value.code == 5
    assert "requested lease not found" in str(refused.value) and etcd.endpoint in str(refused.value)


# -- leases ------------------------------------------------------------------------------------


async def test_grant_ttl_revoke(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        lease, ttl = await client.grant(60)
        assert lease > 0 and ttl == 60
        assert 55 <= await client.time_to_live(lease) <= 60
        await client.put(prefix + b"held", b"v", lease=lease)
        assert await client.create(prefix + b"created", b"v", lease=lease)
        assert (await client.get(prefix + b"held")).lease == lease

        await client.revoke(lease)
        assert (await client.list_prefix(prefix)).kvs == ()  # the lease's keys went with it
        assert await client.time_to_live(lease) == -1
        await client.revoke(lease)  # already gone: no error


# -- watches -----------------------------------------------------------------------------------


async def test_watch_sees_puts_and_deletes_in_order(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        start = (await client.list_prefix(prefix)).revision + 1
        async with client.watch_prefix(prefix, start) as watch:
            await client.put(prefix + b"a", b"1")
            await client.put(prefix + b"b", b"2")
            await client.put(prefix[:-1] + b"0", b"outside")  # start + 2, not under the prefix
            await client.delete(prefix + b"a")
            events = await next_events(watch, 3)
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        ("PUT", prefix + b"a", b"1"), ("PUT", prefix + b"b", b"2"), ("DELETE", prefix + b"a", b"")]
    assert [e.kv.mod_revision for e in events] == [start, start + 1, start + 3]
    assert events[2].kv.create_revision == events[2].kv.version == 0  # a DELETE carries the key and revision only


async def test_watch_from_an_earlier_revision_replays_history(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        first = await client.put(prefix + b"x", b"1")
        await client.put(prefix + b"x", b"2")
        await client.delete(prefix + b"x")
        async with client.watch_prefix(prefix, first + 1) as watch:  # the first put is before the start
            events = await next_events(watch, 2)
    assert [(e.type, e.kv.value, e.kv.mod_revision) for e in events] == [("PUT", b"2", first + 1),
                                                                         ("DELETE", b"", first + 2)]


async def test_an_idle_watch_hears_the_revision(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        now = await client.put(prefix + b"busy", b"v")
        async with client.watch_prefix(prefix + b"quiet/", now + 1) as watch:
            with trio.fail_after(5):
                events, revision = await anext(watch)
    assert events == () and revision >= now


async def test_a_compacted_start_revision_raises_compacted(etcd, prefix):
    async with EtcdClient([etcd.endpoint]) as client:
        old = await client.put(prefix + b"k", b"1")
        await client.put(prefix + b"k", b"2")
        compacted = etcd.compact()
        with pytest.raises(Compacted) as gone:
            async with client.watch_prefix(prefix, old) as watch:
                with trio.fail_after(5):
                    await anext(watch)
        assert gone.value.compact_revision == compacted
        async with client.watch_prefix(prefix, compacted + 1) as watch:  # from the listing on, it works
            await client.put(prefix + b"k", b"3")
            (event,) = await next_events(watch, 1)
            assert event.kv.value == b"3"


async def test_a_stopped_etcd_breaks_the_watch_and_a_restarted_one_resumes_it(etcd, prefix):
    async with EtcdClient([etcd.endpoint], timeout=2) as client:
        revision = await client.put(prefix + b"k", b"1")
        async with client.watch_prefix(prefix, revision + 1) as watch:
            await trio.to_thread.run_sync(etcd.stop)
            with pytest.raises(EtcdUnavailable, match=etcd.endpoint), trio.fail_after(5):
                await next_events(watch, 1)
        await trio.to_thread.run_sync(etcd.start)
        await client.put(prefix + b"k", b"2")
        async with client.watch_prefix(prefix, revision + 1) as watch:
            (event,) = await next_events(watch, 1)
    assert event.kv.value == b"2"


# -- endpoints ---------------------------------------------------------------------------------


async def test_a_dead_first_endpoint_fails_over_to_the_next(etcd, prefix):
    dead = dead_endpoint()
    async with EtcdClient([dead, etcd.endpoint]) as client:
        assert client.endpoint == dead
        revision = await client.put(prefix + b"k", b"v")
        assert client.endpoint == etcd.endpoint  # and it stays there
        assert (await client.get(prefix + b"k")).value == b"v"
        async with client.watch_prefix(prefix, revision) as watch:
            (event,) = await next_events(watch, 1)
            assert event.kv.value == b"v"


async def test_no_endpoint_answering_is_unavailable_quickly_and_names_them(nursery):
    silent = await nursery.start(hostile_server, None)  # accepts, then never answers
    endpoints = [dead_endpoint(), silent]
    async with EtcdClient(endpoints, timeout=0.5) as client:
        with trio.fail_after(3):
            with pytest.raises(EtcdUnavailable) as unavailable:
                await client.get(b"k")
            with pytest.raises(EtcdUnavailable):
                async with client.watch_prefix(b"k", 1):
                    pass
    message = str(unavailable.value)
    assert all(endpoint in message for endpoint in endpoints) and "no answer within 0.5 s" in message


# -- TLS and authentication ---------------------------------------------------------------------


async def test_tls_with_the_test_ca_and_a_client_certificate(tls_etcd, prefix):
    files = {"ca_file": str(tls_etcd.ca_file), "cert_file": str(tls_etcd.cert_file),
             "key_file": str(tls_etcd.key_file)}
    async with EtcdClient([tls_etcd.endpoint], **files) as client:
        revision = await client.put(prefix + b"k", b"over tls")
        assert (await client.get(prefix + b"k")).value == b"over tls"
        async with client.watch_prefix(prefix, revision) as watch:
            (event,) = await next_events(watch, 1)
            assert event.kv.value == b"over tls"

    async with EtcdClient([tls_etcd.endpoint]) as client:  # the system's CAs do not know the test CA
        with pytest.raises(EtcdUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(prefix + b"k")
    async with EtcdClient([tls_etcd.endpoint], ca_file=files["ca_file"]) as client:  # etcd wants a client cert
        with pytest.raises(EtcdUnavailable, match=tls_etcd.endpoint):
            await client.get(prefix + b"k")


def test_unreadable_tls_files_are_a_clear_error(tmp_path):
    with pytest.raises(EtcdError, match="ca_file=.*nothing.pem"):
        EtcdClient(["https://127.0.0.1:2379"], ca_file=str(tmp_path / "nothing.pem"))


async def test_authentication_and_an_expired_token_renewed():
    with EtcdServer(auth_token_ttl=1) as etcd:  # a token unused for a second expires
        etcd.enable_auth("s3cret")
        async with EtcdClient([etcd.endpoint], username="root", password="s3cret") as client, \
                EtcdClient([etcd.endpoint], username="root", password="s3cret") as watcher:
            revision = await client.put(b"/k", b"1")
            async with watcher.watch_prefix(b"/k", revision) as watch:
                (event,) = await next_events(watch, 1)
                assert event.kv.value == b"1"

            old = await authenticate(etcd.endpoint, "root", "s3cret")  # newer than the clients' tokens
            await trio.sleep(3)  # etcd drops a token on the first second's tick after its TTL (every use renews it)
            assert "invalid auth token" in await range_with(etcd.endpoint, old)  # so the clients' are stale too
            assert (await client.get(b"/k")).value == b"1"  # so the client authenticated again
            async with watcher.watch_prefix(b"/k", revision) as watch:  # and so did the watch
                (event,) = await next_events(watch, 1)
                assert event.kv.value == b"1"

        async with EtcdClient([etcd.endpoint]) as client:
            with pytest.raises(EtcdError, match="authentication on: give a username and password"):
                await client.get(b"/k")
        async with EtcdClient([etcd.endpoint], username="root", password="wrong") as client:
            with pytest.raises(EtcdError, match="authentication failed"):
                await client.get(b"/k")


async def authenticate(endpoint: str, name: str, password: str) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{endpoint}/v3/auth/authenticate", json={"name": name, "password": password})
        return answer.json()["token"]


async def range_with(endpoint: str, token: str) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{endpoint}/v3/kv/range", json={"key": "aw=="}, headers={"Authorization": token})
        return answer.text


# -- a hostile etcd ----------------------------------------------------------------------------


async def hostile_server(answer: bytes | None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A loopback HTTP server that reads each request and sends ``answer`` as is (None: never answers)."""

    async def serve(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        head, body = request.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        if answer is None:
            await trio.sleep_forever()
        await stream.send_all(answer)
        await trio.sleep_forever()  # the client reads what it was sent; it ends the connection

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        task_status.started(f"http://127.0.0.1:{listener.socket.getsockname()[1]}")


def http_answer(body: bytes, status: str = "200 OK", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode() + body


def stream_answer(*lines: bytes) -> bytes:
    """A watch stream: chunked, never finished."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks


HEADER = {"header": {"revision": "7"}}
KV = {"key": base64.b64encode(b"k").decode(), "value": "", "mod_revision": "7"}


def watch_result(**result) -> bytes:
    return json.dumps({"result": {"header": {"revision": "7"}, **result}}).encode() + b"\n"


CREATED = watch_result(created=True)


@pytest.mark.parametrize(("answer", "message"), [
    (http_answer(b"<html>hello</html>"), "/v3/kv/range answered something that is not JSON"),
    (http_answer(b"[1, 2]"), "answered JSON that is not an object"),
    (http_answer(json.dumps({**HEADER, "kvs": "none"}).encode()), "/v3/kv/range answered kvs that is not a list"),
    (http_answer(json.dumps({**HEADER, "kvs": [{"key": "!!notbase64"}]}).encode()), "key='!!notbase64', not base64"),
    (http_answer(json.dumps({**HEADER, "kvs": [{**KV, "version": "1e3"}]}).encode()), "version='1e3', not an integer"),
    (http_answer(json.dumps({**HEADER, "kvs": [{**KV, "lease": 1.5}]}).encode()), "lease=1.5, not an integer"),
    (http_answer(json.dumps({**HEADER, "kvs": [7]}).encode()), "a key-value that is not an object"),
    (http_answer(b"x" * 70000), "the answer to /v3/kv/range is larger than 65536 bytes"),
    (http_answer(b"{", length=1 << 30), "larger than 65536 bytes"),
    (http_answer(b"<h1>Bad gateway</h1>", "502 Bad Gateway"), "answered HTTP 502 without etcd's error"),
], ids=["html", "not-an-object", "kvs-type", "base64", "int-string", "int-float", "kv-type", "oversized",
        "endless", "proxy-error"])
async def test_a_hostile_answer_is_an_etcd_error(nursery, answer, message):
    endpoint = await nursery.start(hostile_server, answer)
    async with EtcdClient([endpoint], max_response=65536, timeout=2) as client:
        with trio.fail_after(3), pytest.raises(EtcdError) as error:
            await client.get(b"k")
    assert type(error.value) is EtcdError and message in str(error.value) and endpoint in str(error.value)


@pytest.mark.parametrize(("answer", "message"), [
    (stream_answer(CREATED, b"{nope\n"), "/v3/watch answered something that is not JSON"),
    (stream_answer(CREATED, watch_result(events=[{"type": "EXPLODE", "kv": KV}])), "an event of type 'EXPLODE'"),
    (stream_answer(CREATED, watch_result(events=[{"kv": {**KV, "mod_revision": []}}])), "mod_revision=[]"),
    (stream_answer(CREATED, watch_result(events={})), "events that are not a list"),
    (stream_answer(CREATED, b"{" + b" " * 70000), "a /v3/watch message is larger than 65536 bytes"),
    (stream_answer(b'{"error": 1}\n'), "/v3/watch sent a message with no result"),
    (stream_answer(watch_result()), "did not begin with its created message"),
], ids=["json", "event-type", "revision-type", "events-type", "endless-line", "no-result", "not-created"])
async def test_a_hostile_watch_is_an_etcd_error(nursery, answer, message):
    endpoint = await nursery.start(hostile_server, answer)
    async with EtcdClient([endpoint], max_response=65536, timeout=2) as client:
        with trio.fail_after(3), pytest.raises(EtcdError) as error:
            async with client.watch_prefix(b"k", 1) as watch:
                await anext(watch)
    assert type(error.value) is EtcdError and message in str(error.value) and endpoint in str(error.value)


async def test_a_watch_that_stops_talking_is_unavailable(nursery):
    endpoint = await nursery.start(hostile_server, stream_answer(CREATED))
    async with EtcdClient([endpoint], timeout=2, watch_timeout=0.3) as client:
        async with client.watch_prefix(b"k", 1) as watch:
            with trio.fail_after(3), pytest.raises(EtcdUnavailable, match="sent nothing on the watch for 0.3 s"):
                await anext(watch)
