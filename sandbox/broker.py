"""A real Mosquitto as a child process, for `pimesh sandbox` and the test suite.

`Mosquitto` owns one broker: a work directory with a generated configuration (rendered
by `sandbox.brokerconf`), a private CA and server certificate (`sandbox.tlsgen`), free
loopback ports for a plain, a TLS and a mutual-TLS listener, and the process itself. It
starts only once a real MQTT CONNECT succeeds, stops with SIGTERM (SIGKILL if that is
ignored), restarts on the same ports and work directory, and adds users with one SIGHUP
reload per batch.

Run as root, Mosquitto 2.0 drops to user `mosquitto` right after reading its
configuration (`drop_privileges` in its `main`), before it opens its log, database,
password and ACL files or TLS key, and it re-reads all of them as that user on SIGHUP. So
the work directory and everything in it are handed to that user.
"""

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from sandbox import brokerconf
from sandbox.mqttprobe import mqtt_connect_probe
from sandbox.tlsgen import CertificateAuthority, write_pair
from shared import DEFAULT_TOPIC_PREFIX
from shared.errors import PimeshError

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "mosquitto"
MOSQUITTO_ENV = "PIMESH_MOSQUITTO"
"""Names the Mosquitto executable to run instead of looking for it."""
_LOOPBACK = "127.0.0.1"
_POLL_S = 0.02
_PORT_ATTEMPTS = 3
_PROBE_TIMEOUT_S = 0.5  # a probe that times out is simply retried until the deadline


_Children = list[tuple["subprocess.Popen[bytes]", IO[bytes]]]
"""The broker processes started (normally at most one) with their stdout/stderr file."""


class BrokerError(PimeshError):
    """Mosquitto is missing, would not start, or did not take a reload in time."""


@dataclass(frozen=True)
class BrokerInfo:
    """How to reach a running broker; passwords are left out of `repr`."""

    host: str
    port: int
    tls_port: int
    mtls_port: int
    ca_file: Path
    prefix: str
    controller_username: str
    controller_password: str = field(repr=False)
    operator_username: str
    operator_password: str = field(repr=False)

    @property
    def url(self) -> str:
        """The plain listener, as `--broker` takes it."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        """The TLS listener (server certificate signed by `ca_file`)."""
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def mtls_url(self) -> str:
        """The listener that requires a client certificate (its CN is the username)."""
        return f"mqtts://{self.host}:{self.mtls_port}"


def find_mosquitto() -> Path:
    """Locate the `mosquitto` executable or raise `BrokerError` naming the package.

    `$PIMESH_MOSQUITTO` names the executable outright (a build of one's own, or a path
    that does not exist, to see what a machine without Mosquitto is told); otherwise it
    is looked up on PATH, then in /usr/sbin and /sbin, where Debian installs it.
    """
    hint = f"install the Debian package '{DEBIAN_PACKAGE}' (apt-get install {DEBIAN_PACKAGE})"
    override = os.environ.get(MOSQUITTO_ENV)
    if override:
        found = shutil.which(override)
        if found is None:
            raise BrokerError(f"mosquitto not found at {override} ({MOSQUITTO_ENV}): {hint}")
        return Path(found)
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if found is None:
        raise BrokerError(f"mosquitto not found on PATH or in /usr/sbin: {hint}")
    return Path(found)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _drop_user() -> pwd.struct_passwd | None:
    """The account Mosquitto will drop to when we are root (None when we are not)."""
    if os.geteuid() != 0:
        return None
    for name in ("mosquitto", "nobody"):  # Mosquitto's own fallback order
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise BrokerError("neither user 'mosquitto' nor 'nobody' exists to run the broker as")


def _check_reachable(path: Path, account: pwd.struct_passwd) -> None:
    """Fail early, by name, if `account` cannot reach `path` through its parents."""
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == account.pw_uid or st.st_mode & 0o001:
            continue
        if st.st_gid == account.pw_gid and st.st_mode & 0o010:
            continue
        raise BrokerError(
            f"user {account.pw_name!r} cannot enter {parent}: put the broker's work "
            "directory somewhere every user can traverse (e.g. /tmp)"
        )


def _reap(holder: _Children, timeout_s: float) -> None:
    """Terminate every process in `holder` (SIGTERM, then SIGKILL after `timeout_s`)."""
    while holder:
        proc, out = holder.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        out.close()


class Mosquitto:
    """One Mosquitto child process with generated TLS material, users and ACLs.

    Use as a context manager (start on enter; stop and remove an owned work directory on
    exit) or call `start`, `stop` and `close` yourself. Ports are chosen at the first
    start and kept across `stop`/`start`/`restart`, like the work directory.

    Args:
        prefix: the topic prefix of the ACL: concrete (`pimesh/v1`) or a pattern of `+`
            levels (`+/+` serves every two-level prefix, as the tests use).
        persistence: keep retained messages and sessions in the work directory across
            restarts (Mosquitto writes them on a clean stop).
        workdir: where to keep files (run as root, it is handed to the broker's user,
            so every parent must be traversable by that user); by default a new
            directory under the system temporary directory, removed by `close`.
        start_timeout_s: how long to wait for the broker to accept a CONNECT.
    """

    def __init__(
        self,
        *,
        prefix: str = DEFAULT_TOPIC_PREFIX,
        persistence: bool = False,
        workdir: Path | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self._prefix = brokerconf.check_prefix(prefix)
        self._persistence = persistence
        self._given_workdir = workdir
        self._start_timeout_s = start_timeout_s
        self._executable = find_mosquitto()
        self._account = _drop_user()
        self._lock = threading.RLock()
        self._users = {
            brokerconf.CONTROLLER_USERNAME: secrets.token_urlsafe(24),
            brokerconf.OPERATOR_USERNAME: secrets.token_urlsafe(24),
        }
        self._workdir: Path | None = None
        self._ca: CertificateAuthority | None = None
        self._ports: tuple[int, int, int] | None = None
        self._holder: _Children = []
        # Replaced in _prepare once there is a work directory to clean up as well.
        self._finalizer = weakref.finalize(self, _cleanup, self._holder, None)
        self._closed = False

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def workdir(self) -> Path:
        """The broker's directory (config, password/ACL files, certificates, log, data)."""
        if self._workdir is None:
            raise BrokerError("the broker has not been started yet")
        return self._workdir

    @property
    def log_file(self) -> Path:
        """Mosquitto's own log (`log_dest file`)."""
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return bool(self._holder) and self._holder[-1][0].poll() is None

    @property
    def pid(self) -> int:
        """The process id of the running broker."""
        if not self._holder:
            raise BrokerError("the broker is not running")
        return self._holder[-1][0].pid

    @property
    def info(self) -> BrokerInfo:
        """Connection details; valid from the first start on, unchanged by restarts."""
        if self._ports is None or self._workdir is None:
            raise BrokerError("the broker has not been started yet")
        port, tls_port, mtls_port = self._ports
        return BrokerInfo(
            host=_LOOPBACK,
            port=port,
            tls_port=tls_port,
            mtls_port=mtls_port,
            ca_file=self._workdir / "ca.crt",
            prefix=self._prefix,
            controller_username=brokerconf.CONTROLLER_USERNAME,
            controller_password=self._users[brokerconf.CONTROLLER_USERNAME],
            operator_username=brokerconf.OPERATOR_USERNAME,
            operator_password=self._users[brokerconf.OPERATOR_USERNAME],
        )

    def start(self) -> BrokerInfo:
        """Start the broker (no-op if running) and wait until it accepts a CONNECT."""
        with self._lock:
            if self._closed:
                raise BrokerError("the broker was closed; make a new one")
            if self.running:
                return self.info
            if self._workdir is None:
                self._prepare()
            if self._ports is not None:
                self._launch(self._ports)
                return self.info
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                ports = (_free_port(_LOOPBACK), _free_port(_LOOPBACK), _free_port(_LOOPBACK))
                try:
                    self._launch(ports)
                    break
                except BrokerError as exc:
                    # Another process may take a port between our probe and Mosquitto's
                    # bind; only a fresh set of ports can help then.
                    if "Address already in use" not in exc.reason or attempt == _PORT_ATTEMPTS:
                        raise
            self._ports = ports
            return self.info

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop the broker with SIGTERM (publishing wills, saving persistence); kill if stuck."""
        with self._lock:
            _reap(self._holder, timeout_s)

    def kill(self) -> None:
        """Kill the broker with SIGKILL: a crash, with no wills sent and nothing saved."""
        with self._lock:
            for proc, _ in self._holder:
                if proc.poll() is None:
                    proc.kill()
            self.stop()

    def restart(self) -> BrokerInfo:
        """Stop and start again on the same ports and work directory."""
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        """Stop the broker and remove the work directory if this object made it."""
        with self._lock:
            self.stop()
            self._closed = True
            self._finalizer()  # removes an owned work directory, once

    def reload(self) -> None:
        """Ask the running broker to re-read its configuration, users and ACL (SIGHUP)."""
        with self._lock:
            if not self.running:
                raise BrokerError("the broker is not running")
            os.kill(self.pid, signal.SIGHUP)

    def add_user(self, name: str, password: str | None = None) -> str:
        """Add or replace one user and return its password (random when not given)."""
        return self.add_users({name: password})[name]

    def add_users(self, users: Iterable[str] | Mapping[str, str | None]) -> dict[str, str]:
        """Add or replace users with one reload; return username -> password.

        `users` is a list of names (random passwords) or a mapping to given passwords
        (None for random). Returns once the broker accepts the new credentials.
        """
        wanted = dict(users) if isinstance(users, Mapping) else dict.fromkeys(users)
        if not wanted:
            return {}
        chosen = {
            brokerconf.check_username(name): pw or secrets.token_urlsafe(18)
            for name, pw in wanted.items()
        }
        with self._lock:
            self._users.update(chosen)
            if self._workdir is None:
                return chosen  # written at the first start
            self._write("passwd", brokerconf.render_password_file(self._users).encode(), mode=0o600)
            if self.running:
                self.reload()
                name, password = next(iter(chosen.items()))
                self._await_credentials(name, password, deadline=time.monotonic() + 10.0)
        return chosen

    def issue_client_cert(self, common_name: str) -> tuple[Path, Path]:
        """Issue a client certificate (CN = the MQTT username) and return (cert, key) paths.

        The files belong to the caller, not to the broker; the key is 0600.
        """
        with self._lock:
            if self._ca is None or self._workdir is None:
                raise BrokerError("the broker has not been started yet")
            clients = self._workdir / "clients"
            clients.mkdir(mode=0o700, exist_ok=True)
            cert_file = clients / f"{brokerconf.check_username(common_name)}.crt"
            key_file = clients / f"{common_name}.key"
            write_pair(self._ca.issue_client(common_name), cert_file=cert_file, key_file=key_file)
            return cert_file, key_file

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Mosquitto's stdout/stderr and of its log, for error reports."""
        parts = []
        for name in ("mosquitto.out", "mosquitto.log"):
            path = self.workdir / name
            if path.exists():
                with path.open("rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                    tail = f.read().decode(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _prepare(self) -> None:
        """Make the work directory, TLS material, password and ACL files (first start)."""
        owned = self._given_workdir is None
        if self._given_workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="pimesh-mosquitto-"))
        else:
            workdir = self._given_workdir
            workdir.mkdir(parents=True, exist_ok=True)
        self._workdir = workdir
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self._holder, workdir if owned else None)
        if self._account is not None:
            _check_reachable(workdir, self._account)
        workdir.chmod(0o700)
        self._hand_over(workdir)
        self._ca = CertificateAuthority()
        server = self._ca.issue_server([_LOOPBACK, "localhost", "::1"])
        self._write("ca.crt", self._ca.cert_pem, mode=0o644)
        self._write("server.crt", server.cert_pem, mode=0o644)
        self._write("server.key", server.key_pem, mode=0o600)
        self._write("passwd", brokerconf.render_password_file(self._users).encode(), mode=0o600)
        self._write("acl", brokerconf.render_acl(self._prefix).encode(), mode=0o600)
        if self._persistence:
            (workdir / "data").mkdir(mode=0o700, exist_ok=True)
            self._hand_over(workdir / "data")

    def _hand_over(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _write(self, name: str, data: bytes, *, mode: int) -> None:
        """Replace `name` in the work directory atomically, readable by the broker's user."""
        target = self.workdir / name
        tmp = target.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), mode)  # the umask may have narrowed it
        self._hand_over(tmp)
        tmp.replace(target)

    def _config(self, ports: tuple[int, int, int]) -> brokerconf.BrokerConfig:
        wd = self.workdir
        return brokerconf.BrokerConfig(
            password_file=wd / "passwd",
            acl_file=wd / "acl",
            bind_address=_LOOPBACK,
            port=ports[0],
            tls_port=ports[1],
            mtls_port=ports[2],
            tls=brokerconf.TlsFiles(
                ca_file=wd / "ca.crt", cert_file=wd / "server.crt", key_file=wd / "server.key"
            ),
            log_file=self.log_file,
            persistence_dir=wd / "data" if self._persistence else None,
            run_as_user=self._account.pw_name if self._account is not None else None,
        )

    def _launch(self, ports: tuple[int, int, int]) -> None:
        """Start the process on `ports` and wait for it; on failure leave nothing running."""
        config = brokerconf.render_config(self._config(ports))
        self._write("mosquitto.conf", config.encode(), mode=0o600)
        out = (self.workdir / "mosquitto.out").open("ab")
        proc = subprocess.Popen(
            [str(self._executable), "-c", str(self.workdir / "mosquitto.conf")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for the sandbox must not kill the broker
            # before the components have said goodbye through it.
            start_new_session=True,
        )
        self._holder.append((proc, out))
        try:
            self._wait_ready(proc, port=ports[0])
        except BaseException:
            self.stop()
            raise
        log.info("mosquitto %d listening on %s ports %s", proc.pid, _LOOPBACK, ports)

    def _wait_ready(self, proc: "subprocess.Popen[bytes]", *, port: int) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        controller = brokerconf.CONTROLLER_USERNAME
        while True:
            if proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with status {proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                code: int | None = mqtt_connect_probe(
                    _LOOPBACK,
                    port,
                    username=controller,
                    password=self._users[controller],
                    timeout_s=_PROBE_TIMEOUT_S,
                )
            except OSError:
                code = None  # not listening yet
            if code == 0:
                return
            if code is not None:
                raise BrokerError(
                    f"mosquitto refused {controller} (CONNACK {code}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept a CONNECT within {self._start_timeout_s} s:\n"
                    + self.log_tail()
                )
            time.sleep(_POLL_S)

    def _await_credentials(self, name: str, password: str, *, deadline: float) -> None:
        """Wait until a reload has taken effect: `name` can log in with `password`."""
        port = self.info.port
        while True:
            try:
                probe = mqtt_connect_probe
                if (
                    probe(
                        _LOOPBACK,
                        port,
                        username=name,
                        password=password,
                        timeout_s=_PROBE_TIMEOUT_S,
                    )
                    == 0
                ):
                    return
            except OSError:
                pass  # the broker is mid-reload; try again
            if not self.running:
                raise BrokerError(f"mosquitto died while reloading:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not accept the new user {name!r} after a reload")
            time.sleep(_POLL_S)


def _cleanup(holder: _Children, workdir: Path | None) -> None:
    """Finalizer: never leave a broker running or an owned work directory behind."""
    _reap(holder, 5.0)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
