"""``vswitch-cni``: the CNI plugin that container runtimes (podman, containerd, Kubernetes) call.

It implements the CNI spec 1.0.0 (ADD, DEL, CHECK, VERSION) and answers
1.1.0's STATUS and GC. A runtime runs it with the ``CNI_*`` environment and
the network config on stdin; it asks the node's daemon over its control
socket (``"control"`` in the config) to link the container, and prints the
spec's result, or its error JSON and a non-zero exit. The daemon does the
work (a TAP in the container's namespace, an address from the node's lease,
the default route, ``lo`` up), so the plugin is a thin, stateless client:
everything it keeps is in the daemon and its state dir.

Everything a runtime passes is checked: the environment, the config's
JSON and types, with the spec's codes for what is wrong.

Port publishing (the ``portMappings`` capability, ``podman run -p 8080:80``):
each of ``runtimeConfig.portMappings`` becomes a port forward on the node's
router, from ``hostPort`` on its addresses (``hostIP``'s interface alone, if
given) to the container's address and ``containerPort``, owned by the
attachment's port, so that DEL (and a detach) removes them together. A
mapping the daemon refuses undoes the whole ADD.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import trio

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MAX_CONFIG = 1 << 20         # a network config is a few hundred bytes; a megabyte is not one
DEFAULT_CONTROL = "/run/vswitch/vswitch.sock"
PORT_PREFIX = "cni"          # the daemon's name for a CNI attachment: cni + 12 hex digits of (container, ifname)
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
MAX_PORT_MAPPINGS = 1024     # a container publishing more ports than this is not one runtime's request
ALL_ADDRESSES = ("", "0.0.0.0")   # a hostIP that publishes on every address of the node

# The spec's well-known error codes; 100 and up are the plugin's own.
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, BAD_ENVIRONMENT = 1, 2, 3, 4
IO_FAILURE, UNDECODABLE, INVALID_CONFIG, TRY_AGAIN_LATER = 5, 6, 7, 11
NOT_AVAILABLE = 50           # STATUS: the plugin cannot serve ADD now
DAEMON_REFUSED = 100         # the daemon refused the request; its message says why
CHECK_FAILED = 101           # CHECK: the attachment is not (or no longer) what ADD made


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def port_name(container_id: str, ifname: str) -> str:
    """The switch port of one attachment: stable for (container, interface), a valid device name (15 bytes)."""
    return PORT_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:12]


def main() -> int:
    """Run one CNI command as the spec defines: stdin and the environment in, a result or an error on stdout."""
    env = os.environ
    version = SPEC_VERSION
    try:
        command = _env(env, "CNI_COMMAND", ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"))
        if command == "VERSION":
            print(json.dumps({"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}))
            return 0
        config = read_config(sys.stdin.buffer)
        version = config["cniVersion"]
        result = trio.run(run, command, config, env)
    except CniError as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        print(json.dumps(error))
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0


def read_config(stdin: Any) -> dict[str, Any]:
    """The network config on stdin: JSON (6 if not), with the keys we read of the types we need (7 if not)."""
    data = stdin.read(MAX_CONFIG + 1)
    if len(data) > MAX_CONFIG:
        raise CniError(UNDECODABLE, f"the network config is over {MAX_CONFIG} bytes")
    try:
        config = json.loads(data)
    except ValueError as exc:   # JSONDecodeError, UnicodeDecodeError
        raise CniError(UNDECODABLE, "the network config on stdin is not JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(UNDECODABLE, "the network config on stdin is not a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str):
        raise CniError(INVALID_CONFIG, "cniVersion: missing, or not a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}")
    for key, kind in (("name", str), ("type", str), ("control", str), ("mtu", int), ("runtimeConfig", dict),
                      ("prevResult", dict), ("dns", dict)):
        if key in config and (not isinstance(config[key], kind) or isinstance(config[key], bool)):
            raise CniError(INVALID_CONFIG, f"{key}: must be {'an integer' if kind is int else kind.__name__}")
    if not config.get("name"):
        raise CniError(INVALID_CONFIG, "name: the network's name is required")
    if "mtu" in config and not 68 <= config["mtu"] <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu: must be between 68 and 65535, got {config['mtu']}")
    return config


def _env(env: Mapping[str, str], name: str, allowed: tuple[str, ...] | None = None) -> str:
    value = env.get(name, "")
    if not value:
        raise CniError(BAD_ENVIRONMENT, f"{name} is not set")
    if allowed is not None and value not in allowed:
        raise CniError(BAD_ENVIRONMENT, f"{name}={value!r} is not one of {', '.join(allowed)}")
    if len(value) > 4096 or "\0" in value:
        raise CniError(BAD_ENVIRONMENT, f"{name} is not a usable value")
    return value


async def run(command: str, config: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any] | None:
    control = config.get("control", DEFAULT_CONTROL)
    if command == "STATUS":
        await _ask(control, {"command": "show", "what": "ports"}, unavailable=NOT_AVAILABLE)
        return None
    if command == "GC":
        return await _gc(control, config)
    container, ifname = _env(env, "CNI_CONTAINERID"), _env(env, "CNI_IFNAME")
    name = port_name(container, ifname)
    if command == "DEL":
        await _ask(control, {"command": "unforward", "owner": name})   # none is no error: DEL is idempotent
        try:
            await _ask(control, {"command": "detach", "name": name})
        except CniError as exc:
            if exc.code != DAEMON_REFUSED or "no port named" not in exc.msg:   # gone already: DEL is idempotent
                raise
        return None
    netns = _env(env, "CNI_NETNS")
    if command == "CHECK":
        await _check(control, name, netns, config)
        return None
    mappings = port_mappings(config)
    interfaces = await _host_interfaces(control, mappings) if any(m["hostIP"] for m in mappings) else {}
    request: dict[str, Any] = {"command": "attach", "name": name, "netns": netns, "ifname": ifname}
    if "mtu" in config:
        request["mtu"] = config["mtu"]
    port = await _ask(control, request)
    try:
        await _publish(control, name, port, mappings, interfaces)
    except BaseException:
        with trio.CancelScope(shield=True):
            await _undo(control, name)
        raise
    return result(config, port, netns)


def port_mappings(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``runtimeConfig.portMappings`` checked (7 if wrong): each with ``hostPort``, ``containerPort`` (1..65535),
    ``protocol`` (tcp or udp, tcp if absent) and ``hostIP`` ("" for every address). Other keys are left alone."""
    raw = config.get("runtimeConfig", {}).get("portMappings", [])
    where = "runtimeConfig.portMappings"
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, f"{where}: must be a list")
    if len(raw) > MAX_PORT_MAPPINGS:
        raise CniError(INVALID_CONFIG, f"{where}: at most {MAX_PORT_MAPPINGS} mappings, got {len(raw)}")
    mappings, seen = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, f"{where}[{i}]: must be an object")
        for key in ("hostPort", "containerPort"):
            value = item.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise CniError(INVALID_CONFIG, f"{where}[{i}].{key}: must be a port between 1 and 65535, got {value!r}")
        protocol = item.get("protocol", "tcp")
        if not isinstance(protocol, str) or protocol.lower() not in ("tcp", "udp"):
            raise CniError(INVALID_CONFIG, f"{where}[{i}].protocol: must be tcp or udp, got {protocol!r}")
        host_ip = item.get("hostIP", "")
        if not isinstance(host_ip, str):
            raise CniError(INVALID_CONFIG, f"{where}[{i}].hostIP: must be a string, got {host_ip!r}")
        if host_ip not in ALL_ADDRESSES:
            try:
                ipaddress.IPv4Address(host_ip)
            except ValueError:
                raise CniError(INVALID_CONFIG, f"{where}[{i}].hostIP: {host_ip!r} is not an IPv4 address") from None
        mapping = {"hostPort": item["hostPort"], "containerPort": item["containerPort"],
                   "protocol": protocol.lower(), "hostIP": "" if host_ip in ALL_ADDRESSES else host_ip}
        key = (mapping["protocol"], mapping["hostPort"])
        if key in seen:
            raise CniError(INVALID_CONFIG, f"{where}[{i}]: {key[0]} port {key[1]} is mapped twice")
        seen.add(key)
        mappings.append(mapping)
    return mappings


async def _host_interfaces(control: str, mappings: list[dict[str, Any]]) -> dict[str, str]:
    """The router interface of each mapping's ``hostIP`` (7 naming it if the node has no such address)."""
    routes = await _ask(control, {"command": "show", "what": "routes"})
    by_address = {i["address"].partition("/")[0]: i["name"] for i in routes["interfaces"]}
    for m in mappings:
        if m["hostIP"] and m["hostIP"] not in by_address:
            raise CniError(INVALID_CONFIG, f"runtimeConfig.portMappings: hostIP {m['hostIP']} is not an address of "
                                           f"this node's router (its addresses: {', '.join(by_address) or 'none'})")
    return by_address


async def _publish(control: str, name: str, port: Mapping[str, Any], mappings: list[dict[str, Any]],
                   interfaces: Mapping[str, str]) -> None:
    """A port forward per mapping to the container's address, owned by its port."""
    if not mappings:
        return
    if not port.get("address"):
        raise CniError(INVALID_CONFIG, "runtimeConfig.portMappings: the container got no address to forward to")
    address = port["address"].partition("/")[0]
    for m in mappings:
        request = {"command": "forward", "protocol": m["protocol"], "port": m["hostPort"],
                   "to": f"{address}:{m['containerPort']}", "owner": name}
        if m["hostIP"]:
            request["interface"] = interfaces[m["hostIP"]]
        await _ask(control, request)


async def _undo(control: str, name: str) -> None:
    """Take back a failed ADD: its forwards and its port (a failure here is left to the runtime's DEL)."""
    for request in ({"command": "unforward", "owner": name}, {"command": "detach", "name": name}):
        try:
            await _ask(control, request)
        except CniError:
            pass


def result(config: Mapping[str, Any], port: Mapping[str, Any], netns: str) -> dict[str, Any]:
    """The spec's ADD result for the port the daemon made."""
    answer: dict[str, Any] = {
        "cniVersion": config["cniVersion"],
        "interfaces": [{"name": port.get("ifname") or port["name"], "mac": port.get("mac"), "sandbox": netns}],
        "ips": [],
        "routes": [],
    }
    if port.get("address"):
        ip = {"address": port["address"], "interface": 0}
        if port.get("gateway"):
            ip["gateway"] = port["gateway"]
            answer["routes"].append({"dst": "0.0.0.0/0", "gw": port["gateway"]})
        if config["cniVersion"].startswith("0."):
            ip["version"] = "4"
        answer["ips"].append(ip)
    if config.get("dns"):
        answer["dns"] = config["dns"]
    return answer


async def _check(control: str, name: str, netns: str, config: Mapping[str, Any]) -> None:
    ports = await _ask(control, {"command": "show", "what": "ports"})
    port = next((p for p in ports if p.get("name") == name), None)
    if port is None:
        raise CniError(CHECK_FAILED, f"no attachment {name} on this node")
    if port.get("netns") != netns:
        raise CniError(CHECK_FAILED, f"attachment {name} is in {port.get('netns')!r}, not {netns!r}")
    expected = [ip.get("address") for ip in config.get("prevResult", {}).get("ips", []) if isinstance(ip, dict)]
    if expected and port.get("address") not in expected:
        raise CniError(CHECK_FAILED, f"attachment {name} has {port.get('address')}, not {', '.join(map(str, expected))}")
    mappings = port_mappings(config)
    if mappings:
        await _check_published(control, name, port, mappings)


async def _check_published(control: str, name: str, port: Mapping[str, Any], mappings: list[dict[str, Any]]) -> None:
    """Each of the runtime's port mappings is a forward of this attachment's, to its address and port."""
    try:
        nat = await _ask(control, {"command": "show", "what": "nat", "limit": 1})
    except CniError as exc:
        if exc.code != DAEMON_REFUSED:
            raise
        nat = {}   # a router without NAT: no forward at all
    forwards = {(f["protocol"], f["port"]): f for f in nat.get("rules", {}).get("forward", []) if f.get("owner") == name}
    address = str(port.get("address") or "").partition("/")[0]
    for m in mappings:
        forward = forwards.get((m["protocol"], m["hostPort"]))
        if forward is None or (forward["to"], forward["to_port"]) != (address, m["containerPort"]):
            raise CniError(CHECK_FAILED, f"attachment {name}: {m['protocol']} port {m['hostPort']} is not forwarded"
                                         f" to {address}:{m['containerPort']}")


async def _gc(control: str, config: Mapping[str, Any]) -> None:
    """Remove the attachments of this plugin that are not among the runtime's valid ones."""
    valid = config.get(VALID_ATTACHMENTS, [])
    if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
        raise CniError(INVALID_CONFIG, f"{VALID_ATTACHMENTS}: must be a list of objects")
    keep = {port_name(str(a.get("containerID", "")), str(a.get("ifname", ""))) for a in valid}
    ports = await _ask(control, {"command": "show", "what": "ports"})
    for port in ports:
        name = port.get("name", "")
        if name.startswith(PORT_PREFIX) and port.get("attached") and name not in keep:
            await _ask(control, {"command": "detach", "name": name})
    return None


async def _ask(control: str, message: dict[str, Any], *, unavailable: int = TRY_AGAIN_LATER) -> Any:
    from vswitch.control.client import request
    from vswitch.errors import ControlError, DaemonNotRunning

    try:
        return await request(control, message)
    except DaemonNotRunning as exc:
        raise CniError(unavailable, str(exc)) from None
    except ControlError as exc:
        raise CniError(DAEMON_REFUSED, str(exc)) from None


# -- `vswitch cni install`: the plugin and its config where runtimes look ------------------------------


def install(*, bin_dir: str, conf_dir: str, control: str, network: str = "vswitch") -> tuple[str, str]:
    """Write the plugin into ``bin_dir`` (as ``vswitch-cni``, running this Python and vswitch) and a ``.conflist`` for
    ``network`` into ``conf_dir``; the two paths. Both are replaced whole (shell.state.write_atomic)."""
    import vswitch
    from vswitch.shell.state import write_atomic

    # The plugin runs this Python and this vswitch, wherever it is installed (runtimes pass plugins no PYTHONPATH).
    home = os.path.dirname(os.path.dirname(os.path.abspath(vswitch.__file__)))
    plugin = os.path.join(bin_dir, "vswitch-cni")
    write_atomic(plugin, f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {home!r})\n"
                         "from vswitch.cli.cni import main\nraise SystemExit(main())\n", mode=0o755)
    conflist = os.path.join(conf_dir, f"10-{network}.conflist")
    write_atomic(conflist, json.dumps({
        "cniVersion": "1.0.0", "name": network,
        "plugins": [{"type": "vswitch-cni", "control": control, "capabilities": {"portMappings": True}}],
    }, indent=2) + "\n")
    return plugin, conflist


def add_cni_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cni = commands.add_parser("cni", help="the CNI plugin that container runtimes call",
                              description="the CNI plugin that container runtimes call")
    actions = cni.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser(
        "install", parents=[common], help="write the plugin and a .conflist where runtimes look for them",
        description="Write the plugin (vswitch-cni) into --bin-dir and a network config list into --conf-dir, so"
                    " that podman, containerd or the kubelet link their containers through this node's daemon.")
    install.add_argument("--bin-dir", default="/opt/cni/bin", help="where runtimes look for plugins (default /opt/cni/bin)")
    install.add_argument("--conf-dir", default="/etc/cni/net.d",
                         help="where runtimes look for network configs (default /etc/cni/net.d)")
    install.add_argument("--control", default="/run/vswitch/vswitch.sock", metavar="PATH",
                         help="the daemon's control socket, its [node] control (default /run/vswitch/vswitch.sock)")
    install.add_argument("--network", default="vswitch", metavar="NAME", help="the network's name (default vswitch)")


def cni_install(args: argparse.Namespace) -> int:
    try:
        plugin, conflist = install(bin_dir=args.bin_dir, conf_dir=args.conf_dir, control=args.control,
                                   network=args.network)
    except OSError as exc:
        print(f"vswitch cni install: {exc.filename}: {exc.strerror} (run as root?)", file=sys.stderr)
        return 1
    print(f"wrote {plugin}\nwrote {conflist}")
    return 0


if __name__ == "__main__":   # python -m vswitch.cli.cni: the plugin from a checkout, as the tests run it
    raise SystemExit(main())
