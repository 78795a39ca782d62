"""Run a function on a snapshot of the whole process, at once: a forked child, which the kernel copies page by
page only as either side writes (the way Redis saves a snapshot of its data).

What the child does (a trace running a packet through the core, which learns
and tracks connections as it goes) changes its copy only; the daemon goes on
forwarding meanwhile, however large its tables. The child runs plain Python,
no Trio, and ends with ``os._exit``: no finalizer, buffer flush or atexit
hook of the daemon's runs twice.
"""

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import trio

MAX_ANSWER = 16 << 20   # what a child may send back (a trace is a few KB)


class ForkError(Exception):
    """The child failed (a bug in what it ran: it exited without an answer), or took too long."""


async def in_snapshot(fn: Callable[[], Any], *, timeout: float) -> Any:
    """``fn()`` run in a forked child, its result passed back as JSON; a ValueError it raises is raised here
    with its message (a refusal), anything else is a ForkError."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: no await, no Trio, and out through os._exit whatever happens
        status = 1
        try:
            os.close(read)
            try:
                answer = {"result": fn()}
            except ValueError as exc:
                answer = {"refused": str(exc)}
            data = memoryview(json.dumps(answer).encode())
            while data:
                data = data[os.write(write, data):]
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    received = bytearray()
    try:
        with trio.move_on_after(timeout) as late:
            async with trio.lowlevel.FdStream(read) as stream:   # closes the read end
                while chunk := await stream.receive_some(65536):
                    received += chunk
                    if len(received) > MAX_ANSWER:
                        raise ForkError(f"the snapshot's answer is over {MAX_ANSWER} bytes")
        if late.cancelled_caught:
            raise ForkError(f"the snapshot did not answer within {timeout:g} s")
    finally:
        await _reap(pid)
    try:
        answer = json.loads(received)
    except ValueError:
        raise ForkError("the snapshot ended without an answer (an internal error: see the daemon's log)") from None
    if "refused" in answer:
        raise ValueError(answer["refused"])
    return answer["result"]


async def _reap(pid: int) -> None:
    """Collect the child (killed first if it is still running), so no zombie is left behind."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(os.waitpid, pid, 0)
