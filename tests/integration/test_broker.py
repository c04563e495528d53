"""The real Mosquitto of `sandbox.broker`: listeners, users, ACLs, wills, restarts."""

import base64
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sandbox import brokerconf
from sandbox.broker import BrokerError, BrokerInfo, Mosquitto
from sandbox.mqttprobe import mqtt_connect_probe
from sandbox.tlsgen import CertificateAuthority, write_pair
from tests.harness.broker import BrokerFactory

TIMEOUT_S = 5.0
NOT_AUTHORIZED = 0x87


class Peer:
    """A paho client on its own network thread, recording what it receives."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.connected = threading.Event()
        self.connack: ReasonCode | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, ReasonCode | list[ReasonCode]] = {}
        self._cond = threading.Condition()
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe

    def _on_connect(
        self,
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.ConnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.connack = rc
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        with self._cond:
            self._acks[mid] = rcs
            self._cond.notify_all()

    def _ack(self, mid: int) -> ReasonCode | list[ReasonCode]:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, TIMEOUT_S), f"no ack for {mid}"
            return self._acks.pop(mid)

    def subscribe(self, *topics: str) -> None:
        rc, mid = self.client.subscribe([(t, 1) for t in topics])
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert mid is not None
        granted = self._ack(mid)
        assert isinstance(granted, list)
        assert all(not code.is_failure for code in granted), granted

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Publish and wait for the PUBACK; return its reason code (0 = success)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        code = self._ack(info.mid)
        assert isinstance(code, ReasonCode)
        return code.value

    def expect(self, topic: str, payload: bytes | None = None) -> mqtt.MQTTMessage:
        """Wait for a message on `topic` (with `payload`, if given)."""

        def match() -> mqtt.MQTTMessage | None:
            for msg in self.messages:
                if msg.topic == topic and payload in (None, msg.payload):
                    return msg
            return None

        with self._cond:
            found = self._cond.wait_for(match, TIMEOUT_S)
        assert found is not None, f"nothing on {topic}; got {[m.topic for m in self.messages]}"
        return found

    def topics(self) -> list[str]:
        with self._cond:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def accepted(code: int) -> bool:
    # MQTT 5 section 3.4.2.1: below 0x80 is success; Mosquitto answers 0x10 "no matching
    # subscribers" when nobody is listening.
    return code < 0x80


Connect = Callable[..., Peer]


@pytest.fixture
def connect() -> Iterator[Connect]:
    peers: list[Peer] = []

    def make(
        port: int,
        username: str,
        password: str | None = None,
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        ca_file: Path | None = None,
        cert: tuple[Path, Path] | None = None,
        will: tuple[str, bytes] | None = None,
        expect_success: bool = True,
    ) -> Peer:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        client.username_pw_set(username, password)
        if ca_file is not None:
            certfile, keyfile = (str(cert[0]), str(cert[1])) if cert else (None, None)
            client.tls_set(ca_certs=str(ca_file), certfile=certfile, keyfile=keyfile)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        peer = Peer(client)
        client.connect("127.0.0.1", port, keepalive=5)
        peers.append(peer)
        client.loop_start()
        assert peer.connected.wait(TIMEOUT_S), "no CONNACK"
        assert peer.connack is not None
        if expect_success:
            assert not peer.connack.is_failure, peer.connack
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def info(broker: Mosquitto) -> BrokerInfo:
    return broker.info


@pytest.fixture
def devices(broker: Mosquitto) -> dict[str, str]:
    return broker.add_users(["pi-a", "pi-b"])


def controller(connect: Connect, info: BrokerInfo, **kwargs: object) -> Peer:
    return connect(info.port, info.controller_username, info.controller_password, **kwargs)


# --- the listeners --------------------------------------------------------------------


def test_round_trip_and_retained_on_the_plain_listener(
    connect: Connect, info: BrokerInfo, prefix: str
) -> None:
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/controller/#")
    assert accepted(ctl.publish(f"{prefix}/controller/ping", b"1"))
    ctl.expect(f"{prefix}/controller/ping", b"1")

    assert accepted(ctl.publish(f"{prefix}/controller/status", b"online", retain=True))
    late = controller(connect, info)
    late.subscribe(f"{prefix}/controller/status")
    assert late.expect(f"{prefix}/controller/status", b"online").retain


def test_last_will_is_delivered_when_the_socket_dies(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    status = f"{prefix}/devices/pi-a/status"
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/devices/+/status")
    device = connect(info.port, "pi-a", devices["pi-a"], will=(status, b"offline"))
    # Cut the connection under paho without a DISCONNECT, as a pulled plug would.
    sock = device.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    assert ctl.expect(status, b"offline").payload == b"offline"


def test_tls_round_trip_with_the_ca_file(connect: Connect, info: BrokerInfo, prefix: str) -> None:
    peer = connect(
        info.tls_port, info.controller_username, info.controller_password, ca_file=info.ca_file
    )
    peer.subscribe(f"{prefix}/tls")
    assert accepted(peer.publish(f"{prefix}/tls", b"secret"))
    peer.expect(f"{prefix}/tls", b"secret")


def test_tls_with_another_ca_is_refused(info: BrokerInfo, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.crt"
    other.write_bytes(CertificateAuthority(common_name="not the broker's").cert_pem)
    # A plain ssl handshake: paho leaks its socket when the handshake fails.
    context = ssl.create_default_context(cafile=str(other))
    with (
        socket.create_connection(("127.0.0.1", info.tls_port), timeout=TIMEOUT_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1").close()
    # ... while the broker's own CA verifies the same listener.
    context = ssl.create_default_context(cafile=str(info.ca_file))
    with (
        socket.create_connection(("127.0.0.1", info.tls_port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_wrong_password_is_refused(connect: Connect, info: BrokerInfo) -> None:
    peer = connect(info.port, info.controller_username, "wrong", expect_success=False)
    assert peer.connack is not None
    assert peer.connack.is_failure
    assert mqtt_connect_probe("127.0.0.1", info.port, username="nobody", password="x") != 0


def test_mqtt_311_connects_and_round_trips(connect: Connect, info: BrokerInfo, prefix: str) -> None:
    peer = connect(
        info.port,
        info.controller_username,
        info.controller_password,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    peer.subscribe(f"{prefix}/v311")
    assert accepted(peer.publish(f"{prefix}/v311", b"hi"))
    peer.expect(f"{prefix}/v311", b"hi")


# --- ACLs ------------------------------------------------------------------------------


def test_device_publishes_only_as_itself(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/devices/+/announce")
    a = connect(info.port, "pi-a", devices["pi-a"])
    assert a.publish(f"{prefix}/devices/pi-b/announce", b"forged") == NOT_AUTHORIZED
    assert accepted(a.publish(f"{prefix}/devices/pi-a/announce", b"mine"))
    ctl.expect(f"{prefix}/devices/pi-a/announce", b"mine")
    # Same connection, same order: had the forged one passed, it would have come first.
    assert ctl.topics() == [f"{prefix}/devices/pi-a/announce"]


def test_device_never_receives_another_devices_bundle(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    ctl = controller(connect, info)
    assert accepted(ctl.publish(f"{prefix}/devices/pi-b/bundle", b"b-retained", retain=True))
    assert accepted(ctl.publish(f"{prefix}/controller/status", b"sentinel-1", retain=True))

    a = connect(info.port, "pi-a", devices["pi-a"])
    # Mosquitto grants the SUBACK and filters on delivery (DESIGN.md), so the proof is
    # the sentinel that A may read arriving while B's bundle, queued first, does not.
    a.subscribe(f"{prefix}/devices/pi-b/bundle", f"{prefix}/controller/status")
    a.expect(f"{prefix}/controller/status", b"sentinel-1")
    assert accepted(ctl.publish(f"{prefix}/devices/pi-b/bundle", b"b-live"))
    assert accepted(ctl.publish(f"{prefix}/controller/status", b"sentinel-2"))
    a.expect(f"{prefix}/controller/status", b"sentinel-2")
    assert f"{prefix}/devices/pi-b/bundle" not in a.topics()

    b = connect(info.port, "pi-b", devices["pi-b"])
    b.subscribe(f"{prefix}/devices/pi-b/bundle")
    b.expect(f"{prefix}/devices/pi-b/bundle", b"b-retained")


def test_a_wildcard_subscription_delivers_only_the_devices_own_topics(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    a = connect(info.port, "pi-a", devices["pi-a"])
    a.subscribe(f"{prefix}/devices/+/bundle")
    ctl = controller(connect, info)
    assert accepted(ctl.publish(f"{prefix}/devices/pi-b/bundle", b"for b"))
    assert accepted(ctl.publish(f"{prefix}/devices/pi-a/bundle", b"for a"))
    a.expect(f"{prefix}/devices/pi-a/bundle", b"for a")
    assert a.topics() == [f"{prefix}/devices/pi-a/bundle"]


def test_device_reads_commands_and_writes_its_state(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    a = connect(info.port, "pi-a", devices["pi-a"])
    a.subscribe(f"{prefix}/devices/pi-a/led/set", f"{prefix}/groups/+/led/set")
    op = connect(info.port, info.operator_username, info.operator_password)
    op.subscribe(f"{prefix}/devices/+/led/state")
    assert accepted(op.publish(f"{prefix}/devices/pi-a/led/set", b"solid"))
    assert accepted(op.publish(f"{prefix}/groups/kitchen/led/set", b"blink"))
    a.expect(f"{prefix}/devices/pi-a/led/set", b"solid")
    a.expect(f"{prefix}/groups/kitchen/led/set", b"blink")
    assert accepted(a.publish(f"{prefix}/devices/pi-a/led/state", b"on", retain=True))
    op.expect(f"{prefix}/devices/pi-a/led/state", b"on")
    assert a.publish(f"{prefix}/devices/pi-b/led/state", b"on") == NOT_AUTHORIZED
    assert a.publish(f"{prefix}/devices/pi-a/bundle", b"self-made") == NOT_AUTHORIZED


def test_operator_drives_leds_but_cannot_speak_for_a_device(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    a = connect(info.port, "pi-a", devices["pi-a"])
    a.subscribe(f"{prefix}/fleet/led/set")
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/devices/+/announce")
    op = connect(info.port, info.operator_username, info.operator_password)
    assert op.publish(f"{prefix}/devices/pi-a/announce", b"forged") == NOT_AUTHORIZED
    assert op.publish(f"{prefix}/devices/pi-a/bundle", b"forged") == NOT_AUTHORIZED
    assert accepted(op.publish(f"{prefix}/fleet/led/set", b"rainbow"))
    a.expect(f"{prefix}/fleet/led/set", b"rainbow")
    assert ctl.topics() == []


def test_controller_reads_and_writes_everything(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/#")
    a = connect(info.port, "pi-a", devices["pi-a"])
    a.subscribe(f"{prefix}/devices/pi-a/enrollment")
    for topic in ("devices/pi-a/enrollment", "devices/pi-b/announce", "anything/else"):
        assert accepted(ctl.publish(f"{prefix}/{topic}", topic.encode()))
        ctl.expect(f"{prefix}/{topic}", topic.encode())
    a.expect(f"{prefix}/devices/pi-a/enrollment")
    assert accepted(a.publish(f"{prefix}/devices/pi-a/ack", b"ack"))
    ctl.expect(f"{prefix}/devices/pi-a/ack", b"ack")


def test_denials_are_silent_under_mqtt_311(
    connect: Connect, info: BrokerInfo, devices: dict[str, str], prefix: str
) -> None:
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/devices/+/announce")
    a = connect(info.port, "pi-a", devices["pi-a"], protocol=MQTTProtocolVersion.MQTTv311)
    assert a.publish(f"{prefix}/devices/pi-b/announce", b"forged") == 0  # dropped all the same
    assert accepted(a.publish(f"{prefix}/devices/pi-a/announce", b"mine"))
    ctl.expect(f"{prefix}/devices/pi-a/announce", b"mine")
    assert ctl.topics() == [f"{prefix}/devices/pi-a/announce"]


def test_mutual_tls_takes_the_username_from_the_certificate(
    broker: Mosquitto, connect: Connect, info: BrokerInfo, prefix: str
) -> None:
    cert = broker.issue_client_cert("pi-c")
    ctl = controller(connect, info)
    ctl.subscribe(f"{prefix}/devices/+/announce")
    c = connect(info.mtls_port, "ignored", ca_file=info.ca_file, cert=cert)
    assert c.publish(f"{prefix}/devices/pi-a/announce", b"forged") == NOT_AUTHORIZED
    assert accepted(c.publish(f"{prefix}/devices/pi-c/announce", b"mine"))
    ctl.expect(f"{prefix}/devices/pi-c/announce", b"mine")
    assert ctl.topics() == [f"{prefix}/devices/pi-c/announce"]


def test_mutual_tls_without_a_certificate_is_refused(info: BrokerInfo) -> None:
    # A valid MQTT 3.1.1 CONNECT (client id "test"): with a certificate it gets a CONNACK.
    connect_packet = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x0a\x00\x04test"
    context = ssl.create_default_context(cafile=str(info.ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", info.mtls_port), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            # TLS 1.3 completes the client's side of the handshake before the server
            # asks for a certificate, so the refusal may come on the first write or read.
            tls.sendall(connect_packet)
            received = tls.recv(1)
    except (ssl.SSLError, ConnectionError):
        received = b""
    assert received == b""


def test_concrete_prefix_admits_nothing_under_another_prefix(
    broker_factory: BrokerFactory, connect: Connect
) -> None:
    private = broker_factory(prefix="pimesh/v1")
    password = private.add_user("pi-a")
    a = connect(private.info.port, "pi-a", password)
    assert accepted(a.publish("pimesh/v1/devices/pi-a/announce", b"x"))
    assert a.publish("t/other/devices/pi-a/announce", b"x") == NOT_AUTHORIZED


# --- users, lifecycle ------------------------------------------------------------------


def test_add_user_replaces_the_password(broker: Mosquitto, info: BrokerInfo) -> None:
    first = broker.add_user("pi-rotated")
    second = broker.add_user("pi-rotated", "chosen-password")
    assert second == "chosen-password"
    assert mqtt_connect_probe("127.0.0.1", info.port, username="pi-rotated", password=first) != 0
    assert mqtt_connect_probe("127.0.0.1", info.port, username="pi-rotated", password=second) == 0


def test_many_users_take_one_reload(broker: Mosquitto, info: BrokerInfo) -> None:
    names = [f"pi-bulk-{i}" for i in range(200)]
    passwords = broker.add_users(names)
    assert sorted(passwords) == sorted(names)
    for name in (names[0], names[-1]):
        assert (
            mqtt_connect_probe("127.0.0.1", info.port, username=name, password=passwords[name]) == 0
        )


def test_restart_keeps_ports_and_persisted_retained_messages(
    broker_factory: BrokerFactory, connect: Connect, prefix: str
) -> None:
    private = broker_factory(persistence=True)
    before = private.info
    old_pid = private.pid
    ctl = connect(before.port, before.controller_username, before.controller_password)
    assert accepted(ctl.publish(f"{prefix}/controller/status", b"kept", retain=True))
    ctl.close()

    assert private.restart() == before
    assert private.pid != old_pid
    _assert_gone(old_pid)
    late = connect(before.port, before.controller_username, before.controller_password)
    late.subscribe(f"{prefix}/controller/status")
    late.expect(f"{prefix}/controller/status", b"kept")


def test_kill_then_start_and_close_leave_nothing_behind(broker_factory: BrokerFactory) -> None:
    private = broker_factory()
    killed = private.pid
    private.kill()
    _assert_gone(killed)
    assert not private.running
    private.start()
    pid, workdir = private.pid, private.workdir
    private.close()
    _assert_gone(pid)
    assert not workdir.exists()


def test_a_port_taken_meanwhile_fails_start_with_the_log(broker_factory: BrokerFactory) -> None:
    private = broker_factory()
    private.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", private.info.port))
        squatter.listen()
        with pytest.raises(BrokerError, match="Address already in use"):
            private.start()
    assert not private.running


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop happens only as root")
def test_as_root_the_broker_runs_as_mosquitto(broker: Mosquitto) -> None:
    status = Path(f"/proc/{broker.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) != 0
    assert broker.workdir.stat().st_uid == int(uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop happens only as root")
def test_a_workdir_the_broker_user_cannot_reach_is_refused(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir()
    tmp_path.chmod(0o700)
    with pytest.raises(BrokerError, match="cannot enter"), Mosquitto(workdir=hidden / "b"):
        pass


def test_missing_mosquitto_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandbox.broker.shutil.which", lambda *_a, **_k: None)
    with pytest.raises(BrokerError, match="Debian package 'mosquitto'"):
        Mosquitto()


# --- the pure renderers ----------------------------------------------------------------


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "alice", "s3cret"], check=True)
    name, entry = pwfile.read_text().strip().split(":", 1)
    _, kind, iterations, salt, _digest = entry.split("$")
    assert (name, kind) == ("alice", "7")
    ours = brokerconf.hash_password(
        "s3cret", salt=base64.b64decode(salt), iterations=int(iterations)
    )
    assert ours == entry


def test_acl_is_keyed_on_the_username_only() -> None:
    acl = brokerconf.render_acl("pimesh/v1")
    assert "%c" not in acl
    assert "pattern write pimesh/v1/devices/%u/announce" in acl
    assert "user _pimesh-controller\ntopic readwrite #" in acl


@pytest.mark.parametrize("bad", ["", "a/#", "a//b", "a/%u", "a b", "a/b+", "$SYS", "a\nuser x"])
def test_unusable_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        brokerconf.render_acl(bad)


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_tls_files_are_written_with_a_private_key(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    write_pair(ca.issue_client("pi-a"), cert_file=tmp_path / "c.crt", key_file=tmp_path / "c.key")
    assert (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN CERTIFICATE" in (tmp_path / "c.crt").read_bytes()
