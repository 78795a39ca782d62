"""The control protocol, both sides of it: one JSON line each way, with limits.

The client sends one JSON object on one line, e.g.
``{"command": "show", "what": "fdb"}``; the daemon answers one line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``, and
closes the connection. ``capture`` is the one exception: after its
``{"ok": true, ...}`` line the daemon streams a classic pcap file
(:mod:`vswitch.control.capture`).

This module frames and checks lines and fields and does no more I/O than
reading one line from a stream it is given; the server and the client are
:mod:`vswitch.control.server` and :mod:`vswitch.control.client`.
"""

import json
from typing import Any

import trio

from vswitch import config
from vswitch.errors import ConfigError, ControlError

MAX_REQUEST = 16 * 1024          # bytes in a request line
MAX_RESPONSE = 64 * 1024 * 1024  # bytes in a response line (an FDB of 65536 entries is ~6 MB)
CLIENT_TIMEOUT = 10.0            # seconds to send a request and take the answer

Request = dict[str, Any]   # a parsed request line: "command" is a string, the other fields are the command's


async def read_line(stream: trio.abc.ReceiveStream, limit: int, what: str) -> tuple[bytes, bytes]:
    """One ``\\n``-terminated line (without it) and whatever followed it.

    At end of stream the partial line is returned as is (``nc`` without a
    final newline still works).
    """
    buffer = bytearray()
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(buffer), b""
        start = len(buffer)
        buffer += chunk
        end = buffer.find(b"\n", start)
        if end > limit or (end < 0 and len(buffer) > limit):
            raise ControlError(f"{what} too long (more than {limit} bytes)")
        if end >= 0:
            return bytes(buffer[:end]), bytes(buffer[end + 1:])


def encode(message: dict[str, Any]) -> bytes:
    """One line: a request, or (through :func:`response`) an answer."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def response(*, result: object = None, error: str | None = None) -> bytes:
    return encode({"ok": False, "error": error} if error is not None else {"ok": True, "result": result})


def parse_request(line: bytes) -> Request:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"malformed request: not a JSON line ({exc})") from None
    if not isinstance(request, dict):
        raise ControlError("malformed request: expected a JSON object like {\"command\": \"show\", \"what\": \"fdb\"}")
    if not isinstance(request.get("command"), str):
        raise ControlError("malformed request: \"command\" (a string) is required")
    return request


def parse_response(line: bytes, path: str) -> Any:
    """The result of the daemon's answer line, or ControlError with its refusal."""
    if not line:
        raise ControlError(f"the daemon on {path} closed the connection without answering")
    try:
        answer = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError(f"the daemon on {path} sent a malformed answer: {line[:200]!r}") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"the daemon on {path} sent a malformed answer: {line[:200]!r}")
    if not answer["ok"]:
        raise ControlError(str(answer.get("error", "the daemon refused without saying why")))
    return answer.get("result")


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def field(request: Request, key: str, type_: type, *, required: bool = True) -> Any:
    """``request[key]``, checked to be a ``type_``; None if it is optional and absent."""
    if key not in request or request[key] is None:
        if required:
            raise ControlError(f"{request['command']}: {key!r} is required")
        return None
    value = request[key]
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise ControlError(f"{request['command']}: {key!r} must be {_TYPE_NAMES[type_]}, got {value!r}")
    return value


def attach_port(fields: dict[str, Any], *, default_mtu: int = 1500) -> config.PortConfig:
    """An attach's fields (netns or pid, name, ifname, mac, address, gateway, mtu; None: absent) as the tap port
    they ask for, parsed as the config parses a ``[[ports]]`` entry, so that a bad address or name is refused before
    iproute2 sees it: the server checks them for every client, the command line before it asks. ``netns`` is an
    `ip netns` name or a namespace file's path; ``pid`` stands for ``/proc/PID/ns/net``. ConfigError's key is the
    field's."""
    port = {"type": "tap", "mtu": default_mtu, **{key: value for key, value in fields.items() if value is not None}}
    pid = port.pop("pid", None)
    if pid is not None:
        if "netns" in port:
            raise ConfigError("pid", "give a netns or a pid, not both")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 22:   # the kernel's PID_MAX_LIMIT
            raise ConfigError("pid", f"must be a process ID (1 to {(1 << 22) - 1}), got {pid!r}")
        port["netns"] = f"/proc/{pid}/ns/net"
    elif "netns" not in port:
        raise ConfigError("netns", "a network namespace (a name or a path) or a pid is required")
    try:
        return config.parse({"ports": [port]}).ports[0]
    except ConfigError as exc:
        raise ConfigError(exc.key.removeprefix("ports[0]."), exc.reason) from None
