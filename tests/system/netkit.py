"""System-test helpers: the shared ones live in vswitch.testing."""

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from vswitch.testing.system import *  # noqa: F403 (re-exported for the tests)
from vswitch.testing.system import can_run, in_ns

requires_root = pytest.mark.skipif(can_run() is not None, reason=can_run() or "")


def wait_until(predicate: Callable[[], object], *, timeout: float = 10, interval: float = 0.1, what: str = "") -> object:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {what or predicate}")
        time.sleep(interval)


def start_in_ns(ns: str, *command: str, ready: str, timeout: float = 15, stream: str = "stdout") -> subprocess.Popen:
    """Start a long-running ``command`` in ``ns`` and return once it prints ``ready`` on ``stream``.

    The caller stops it (``stop``); deleting the namespace with
    :meth:`Namespaces.cleanup` kills it too.
    """
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *command], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(pipe, selectors.EVENT_READ)
        while ready.encode() not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                stop(proc)
                raise AssertionError(f"{command[0]} did not print {ready!r} within {timeout}s: {seen!r}")
            data = os.read(pipe.fileno(), 4096)  # unbuffered: select() knows nothing of Python's buffers
            if not data:
                stop(proc)
                raise AssertionError(f"{command[0]} exited ({proc.returncode}) before {ready!r}: {seen!r}")
            seen += data
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5) -> tuple[str, str]:
    """Terminate ``proc`` (kill if it lingers); what is left on its stdout and stderr."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


# A TCP or UDP server that answers every client with the address it saw: "ip:port".
PEER_SERVER = r"""
import socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        with c:
            c.sendall(f"{peer[0]}:{peer[1]}".encode())
"""

# Its client: prints "local-ip:port peer-ip:port", what it used and what the server saw.
PEER_CLIENT = r"""
import socket, sys
kind, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.settimeout(0.5)
    for _ in range(int(timeout / 0.5) or 1):  # UDP: retry a lost datagram
        s.send(b"who am I?")
        try:
            seen = s.recv(200).decode()
            break
        except socket.timeout:
            continue
    else:
        sys.exit("no answer")
else:
    s = socket.create_connection((host, port), timeout=timeout)
    seen = s.recv(200).decode()
local = s.getsockname()
print(f"{local[0]}:{local[1]} {seen}")
"""


def peer_server(ns: str, kind: str, port: int) -> subprocess.Popen:
    """A :data:`PEER_SERVER` for ``kind`` (tcp or udp) on ``port`` in ``ns``, listening when this returns."""
    return start_in_ns(ns, sys.executable, "-c", PEER_SERVER, kind, str(port), ready="ready")


def ask_peer(ns: str, kind: str, host: str, port: int, *, timeout: float = 5) -> tuple[str, str]:
    """From ``ns``, ask a :func:`peer_server` who we are: (our address:port, the address:port it saw)."""
    result = in_ns(ns, sys.executable, "-c", PEER_CLIENT, kind, host, str(port), str(timeout),
                   check=False, timeout=timeout + 10)
    assert result.returncode == 0, f"{kind} to {host}:{port} from {ns} failed: {result.stderr.strip()[-500:]}"
    local, seen = result.stdout.split()
    return local, seen
