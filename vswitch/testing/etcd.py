"""A real etcd for tests: started on free ports with its own data directory, always stopped and removed.

Optionally over TLS with a test CA made by ``openssl`` (the server's
certificate for its address, a client certificate, client certificates
required), and optionally inside a network namespace (``ip netns exec``),
bound to an address there. Needs the ``etcd`` and ``etcdctl`` commands
(Debian: etcd-server, etcd-client).
"""

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["EtcdServer", "etcd_missing", "free_ports"]


def etcd_missing(*, tls: bool = False) -> str | None:
    """None if etcd (with ``tls``, over TLS) can be started here, else the reason why not."""
    commands = {"etcd": "etcd-server", "etcdctl": "etcd-client", **({"openssl": "openssl"} if tls else {})}
    missing = [name for name in commands if shutil.which(name) is None]
    if missing:
        packages = ", ".join(commands[name] for name in missing)
        return f"needs {', '.join(missing)} (Debian: {packages})"
    return None


def free_ports(host: str, count: int) -> list[int]:
    """Ports free on ``host`` now (held open together, so they differ)."""
    sockets = [socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EtcdServer:
    """One etcd member: ``with EtcdServer() as etcd:`` gives a serving etcd at ``etcd.endpoint``.

    ``restart()`` keeps the data directory and the ports; leaving the block
    (or ``cleanup()``) stops etcd and removes the directory, however the test
    ended. ``tls=True`` serves https with a test CA (``ca_file``) and
    requires a client certificate (``cert_file``, ``key_file``).
    ``progress_notify`` sets how often etcd tells an idle watch its revision
    (etcd's default is 10 minutes), ``auth_token_ttl`` how many idle seconds
    an authentication token lives (300). In namespace ``netns``, etcd binds
    ``host`` there, on ports 2379 and 2380 unless given (a new namespace's
    ports are all free); elsewhere the ports are found free on ``host``.
    """

    def __init__(self, *, tls: bool = False, host: str = "127.0.0.1", netns: str | None = None,
                 client_port: int | None = None, peer_port: int | None = None,
                 progress_notify: float | None = None, auth_token_ttl: int | None = None) -> None:
        self.tls = tls
        self.host = host
        self.netns = netns
        if client_port is None or peer_port is None:
            found = [2379, 2380] if netns else free_ports(host, 2)
            client_port, peer_port = client_port or found[0], peer_port or found[1]
        self.client_port, self.peer_port = client_port, peer_port
        self.progress_notify = progress_notify
        self.auth_token_ttl = auth_token_ttl
        self.directory = Path(tempfile.mkdtemp(prefix="vswitch-etcd-"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "etcd.log"
        self.ca_file: Path | None = None  # with tls: the test CA, and the client's certificate and key
        self.cert_file: Path | None = None
        self.key_file: Path | None = None
        self.user: tuple[str, str] | None = None  # etcdctl's user once enable_auth() has run
        self.proc: subprocess.Popen | None = None
        if tls:
            self._make_certificates()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._address}:{self.client_port}"

    @property
    def _address(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "EtcdServer":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- running etcd ------------------------------------------------------------------------

    def start(self, *, timeout: float = 20) -> "EtcdServer":
        """Start etcd and return once it serves (``etcdctl endpoint health``)."""
        assert self.proc is None or self.proc.poll() is not None, "etcd is running"
        peer = f"http://{self._address}:{self.peer_port}"
        command = [*self._inside, "etcd", "--name", "test", "--data-dir", str(self.data_dir),
                   "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", f"test={peer}",
                   # one member: a restart waits one election timeout for its own vote, so keep it short
                   "--heartbeat-interval", "50", "--election-timeout", "250"]
        if self.tls:
            command += ["--cert-file", str(self.directory / "server.crt"),
                        "--key-file", str(self.directory / "server.key"),
                        "--trusted-ca-file", str(self.ca_file), "--client-cert-auth"]
        if self.progress_notify is not None:
            command += ["--experimental-watch-progress-notify-interval", f"{self.progress_notify:g}s"]
        if self.auth_token_ttl is not None:
            command += ["--auth-token-ttl", str(self.auth_token_ttl)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited ({self.proc.returncode}) before it served:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"etcd did not serve within {timeout}s:\n{self._log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self, *, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if etcd has not exited within ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, *, timeout: float = 20) -> None:
        """Stop and start again on the same ports and data directory: what was stored stays."""
        self.stop()
        self.start(timeout=timeout)

    def cleanup(self) -> None:
        """Stop etcd and remove its directory (data, certificates, log)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- etcdctl -----------------------------------------------------------------------------

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """``etcdctl ARGS`` (API 3) against this etcd, with its TLS files and, after enable_auth, its root user."""
        command = [*self._inside, "etcdctl", "--endpoints", self.endpoint, *self._credentials, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "ETCDCTL_API": "3"})
        if check and result.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def revision(self) -> int:
        """The store's current revision."""
        (status,) = json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout)
        return int(status["Status"]["header"]["revision"])

    def compact(self) -> int:
        """Compact the history up to the current revision; returns that revision."""
        revision = self.revision()
        self.etcdctl("compact", str(revision))
        return revision

    def enable_auth(self, password: str) -> None:
        """Add user root with ``password`` and turn authentication on; etcdctl here then logs in as root."""
        self.etcdctl("user", "add", f"root:{password}")
        self.etcdctl("auth", "enable")
        self.user = ("root", password)

    @property
    def _inside(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def _credentials(self) -> list[str]:
        flags = []
        if self.tls:
            flags += ["--cacert", str(self.ca_file), "--cert", str(self.cert_file), "--key", str(self.key_file)]
        if self.user:
            flags += ["--user", f"{self.user[0]}:{self.user[1]}"]
        return flags

    def _healthy(self) -> bool:
        result = self.etcdctl("endpoint", "health", "--dial-timeout=1s", "--command-timeout=1s", check=False)
        return result.returncode == 0

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    # -- a test CA ---------------------------------------------------------------------------

    def _make_certificates(self) -> None:
        """A CA, a server certificate for ``host`` and a client certificate, P-256 keys, valid for a day."""
        d = self.directory

        def openssl(*args: str) -> None:
            result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=d, timeout=30)
            if result.returncode != 0:
                raise AssertionError(f"openssl {args[0]} failed: {result.stderr.strip()}")

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=vswitch test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        try:
            ipaddress.ip_address(self.host)
            ip = "IP"
        except ValueError:
            ip = "DNS"
        # etcd's JSON gateway calls etcd's gRPC server with the server's certificate: it must be a client's too
        for name, usage, san in (("server", "serverAuth,clientAuth", f"subjectAltName={ip}:{self.host}\n"),
                                 ("client", "clientAuth", "")):
            (d / f"{name}.ext").write_text(f"{san}extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n"
                                           "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
            openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=vswitch test {name}")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")
        self.ca_file, self.cert_file, self.key_file = d / "ca.crt", d / "client.crt", d / "client.key"
