"""The client side of the control socket: what `vswitch show`, `capture`, `attach`, `detach` and `reload` send.

Each call opens its own connection, sends one request line and takes the
answer; a capture then reads the pcap stream that follows its answer,
passing on only whole records (:class:`PcapRecords`), so a capture cut
short still leaves a valid file.
"""

import socket
import struct
from typing import Any, BinaryIO

import trio

from vswitch.errors import ControlError, DaemonNotRunning

from .protocol import (
    CLIENT_TIMEOUT,
    MAX_REQUEST,
    MAX_RESPONSE,
    Request,
    encode,
    parse_response,
    read_line,
)


def not_listening(path: str) -> str:
    return f"no daemon is listening on {path} (is `vswitch run` running? is [node] control set?)"


def daemon_listening(path: str, *, timeout: float = 2.0) -> bool:
    """Whether a daemon accepts connections on the control socket ``path``: the check a start makes before
    it opens anything (blocking; no Trio)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except TimeoutError:
            return True    # a listener with a full backlog: still alive
        except OSError:
            return False   # nothing there, a stale socket, or a path the server will report on itself
    return True


async def connect(path: str) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonNotRunning(not_listening(path)) from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: the control socket belongs to the daemon's user; "
                           "run this as root (sudo)") from None
    except OSError as exc:
        raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None


async def request(path: str, message: Request, *, timeout: float = CLIENT_TIMEOUT) -> Any:
    """Send one request to the daemon on ``path``; its result, or ControlError with its message."""
    try:
        with trio.fail_after(timeout):
            stream = await connect(path)
            async with stream:
                try:
                    await stream.send_all(encode(message))
                    line, _ = await read_line(stream, MAX_RESPONSE, "response")
                except trio.BrokenResourceError as exc:
                    raise ControlError(f"the daemon on {path} hung up: {exc}") from None
    except trio.TooSlowError:
        raise ControlError(f"the daemon on {path} did not answer within {timeout:g} s") from None
    return parse_response(line, path)


class PcapRecords:
    """Splits a pcap byte stream at record boundaries, so a capture that is
    cut short still leaves a file whose every record is whole."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._record_header: struct.Struct | None = None
        self.records = 0

    def feed(self, data: bytes) -> bytes:
        """Append ``data``; return the complete part (header and whole records) not returned before."""
        buffer = self._buffer
        buffer += data
        out = bytearray()
        if self._record_header is None:
            if len(buffer) < 24:
                return b""
            magic = buffer[:4]
            if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                self._record_header = struct.Struct("<IIII")
            elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                self._record_header = struct.Struct(">IIII")
            else:
                raise ControlError(f"the daemon sent something that is not a pcap stream: {bytes(magic)!r}")
            out += buffer[:24]
            del buffer[:24]
        header = self._record_header
        offset = 0
        while len(buffer) - offset >= 16:
            incl_len = header.unpack_from(buffer, offset)[2]
            end = offset + 16 + incl_len
            if end > len(buffer):
                break
            offset = end
            self.records += 1
        out += buffer[:offset]
        del buffer[:offset]
        return bytes(out)

    @property
    def started(self) -> bool:
        """Whether the pcap header has been released (a capture that never started released nothing)."""
        return self._record_header is not None


async def capture(
    path: str, port: str, out: BinaryIO, *, count: int | None = None, records: PcapRecords | None = None,
) -> int:
    """Stream ``port``'s frames as pcap into ``out`` (flushed per chunk); returns the records written.

    Ends when the daemon closes the stream (``count`` reached, port gone,
    daemon stopped); cancel it to stop early. ``out`` only ever receives
    whole records; ``records.records`` counts them, also after a cancel.
    """
    message: Request = {"command": "capture", "port": port}
    if count is not None:
        message["count"] = count
    records = records if records is not None else PcapRecords()
    try:
        with trio.fail_after(CLIENT_TIMEOUT):
            stream = await connect(path)
    except trio.TooSlowError:
        raise ControlError(f"the daemon on {path} did not accept within {CLIENT_TIMEOUT:g} s") from None
    async with stream:
        try:
            try:
                with trio.fail_after(CLIENT_TIMEOUT):
                    await stream.send_all(encode(message))
                    line, rest = await read_line(stream, MAX_REQUEST, "response")
            except trio.TooSlowError:
                raise ControlError(f"the daemon on {path} did not answer within {CLIENT_TIMEOUT:g} s") from None
            parse_response(line, path)
            data = rest
            while True:
                complete = records.feed(data)
                if complete:
                    out.write(complete)
                    out.flush()
                data = await stream.receive_some(65536)
                if not data:
                    break
        except trio.BrokenResourceError:
            pass  # the daemon went away: what was written is whole
    return records.records
