"""The controller under bad input, Kubernetes API faults, a crash, and devices that pry.

Real Mosquitto (ACLs on), the Kubernetes API emulator over HTTP and the controller as
it runs in production; devices are `tests.support.thirdparty` (no pimesh code). Every
controller here auto-approves every id, so a message that wrongly got through would
show up as an EdgeDevice, a TokenRequest or a bundle.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.run import Controller
from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from tests.harness.broker import BrokerFactory
from tests.harness.controller import ISTIOD_IP, ControllerFactory, Mesh
from tests.harness.devices import (
    DeviceFactory,
    Devices,
    counter,
    devices_on,
    get_device,
    get_istio,
    list_custom,
    names,
    wait_until,
)
from tests.support.cleanup import release
from tests.support.thirdparty import ThirdPartyDevice, b64, raw_public

pytestmark = pytest.mark.timeout(60)

NOT_AUTHORIZED = 0x87


@pytest.fixture
def device_factory(broker: Mosquitto, prefix: str) -> Iterator[Devices]:
    yield from devices_on(broker, prefix)


def tokens_for(kube_api: KubeApiServer, mesh: Mesh, name: str) -> list[str]:
    return [
        t.token
        for t in kube_api.issued_tokens
        if t.namespace == mesh.namespace and t.service_account == name
    ]


def api_errors(ctl: Controller, status: str) -> float:
    for metric in ctl.metrics.api_errors.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == status:
                return sample.value
    return 0.0


def service_accounts(mesh: Mesh) -> list[str]:
    core: Any = client.CoreV1Api(mesh.api)  # the generated models type every field Optional
    return sorted(
        sa.metadata.name for sa in core.list_namespaced_service_account(mesh.namespace).items
    )


def enroll_healthy(device_factory: DeviceFactory, kube_api: KubeApiServer, mesh: Mesh) -> None:
    """A well-behaved device still enrolls: the controller kept serving."""
    good = device_factory()
    good.controller_key()
    good.announce()
    good.wait_phase("Enrolled")
    bundle = good.wait_for("bundle", lambda m: m["generation"] == 1)
    assert good.open_bundle(bundle)["token"] in tokens_for(kube_api, mesh, good.device_id)


# bad input -------------------------------------------------------------------------------


def _payload(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode()


def _forged(dev: ThirdPartyDevice) -> bytes:
    msg = dev.signed(dev.announce_body())
    msg["hostname"] = "evil"  # the signature no longer covers the content
    return _payload(msg)


def _skewed(seconds: int) -> Callable[[ThirdPartyDevice], bytes]:
    def build(dev: ThirdPartyDevice) -> bytes:
        # Microseconds: truncated to the second, "301 s ahead" could land within 300 s.
        moment = datetime.now(UTC) + timedelta(seconds=seconds)
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return _payload(dev.signed({**dev.announce_body(), "ts": stamp}))

    return build


def _announcing(**overrides: Any) -> Callable[[ThirdPartyDevice], bytes]:
    def build(dev: ThirdPartyDevice) -> bytes:
        return _payload(dev.signed(dev.announce_body(**overrides)))

    return build


def _other_id(dev: ThirdPartyDevice) -> bytes:
    return _payload(dev.signed({**dev.announce_body(), "device_id": f"{dev.device_id}-x"}))


def _oversized(dev: ThirdPartyDevice) -> bytes:
    data = _payload(dev.signed(dev.announce_body(boot_id="b" * 65_600)))
    assert len(data) > 65_536
    return data


def _with_float(dev: ThirdPartyDevice) -> bytes:
    # The signature is made over the float form; only the float makes it invalid.
    ports = [{"name": "http-pi", "port": 8080.0, "protocol": "TCP"}]
    return _payload(dev.signed(dev.announce_body(ports=ports)))


def _duplicate_keys(dev: ThirdPartyDevice) -> bytes:
    text = json.dumps(dev.signed(dev.announce_body()))
    return ('{"kind": "announce", ' + text[1:]).encode()


def _unknown_kind(dev: ThirdPartyDevice) -> bytes:
    return _payload(dev.signed({**dev.announce_body(), "kind": "telemetry"}))


@dataclass(frozen=True)
class BadCase:
    name: str
    build: Callable[[ThirdPartyDevice], bytes]
    kind: str = "announce"
    outcome: str = "invalid"
    device_id: str | None = None


BAD_ANNOUNCES = (
    BadCase("bad signature", _forged, outcome="bad_signature"),
    BadCase("timestamp 301 s ahead", _skewed(301), outcome="rejected"),
    BadCase("timestamp 301 s behind", _skewed(-301), outcome="rejected"),
    BadCase("payload names another device than the topic", _other_id),
    BadCase("oversized payload", _oversized),
    BadCase("not JSON", lambda dev: b"\xffnot json"),
    BadCase("a float", _with_float),
    BadCase("a null", _announcing(os=None)),
    BadCase("duplicate keys", _duplicate_keys),
    BadCase("unknown kind", _unknown_kind),
    BadCase("reserved label key", _announcing(labels={"pimesh.io/device": "other"})),
    BadCase("invalid label value", _announcing(labels={"floor": "-not valid-"})),
    BadCase("invalid IP", _announcing(addresses=["192.168.1.300"])),
    BadCase("no address", _announcing(addresses=[])),
    BadCase("invalid group", _announcing(groups=["Kitchen!"])),
    BadCase(
        "invalid device id",
        _announcing(),
        kind="unknown",
        outcome="bad_topic",
        device_id=f"Pi_{uuid.uuid4().hex[:6]}",
    ),
)


def send_and_count(ctl: Controller, dev: ThirdPartyDevice, case: BadCase) -> None:
    before = counter(ctl, case.outcome, kind=case.kind)
    dev.publish("announce", case.build(dev))
    wait_until(
        lambda: counter(ctl, case.outcome, kind=case.kind) >= before + 1,
        timeout=5,
        what=f"{case.name}: counted as {case.kind}/{case.outcome}",
    )
    assert counter(ctl, case.outcome, kind=case.kind) == before + 1, case.name


def test_bad_announces_are_dropped_counted_and_give_nothing_away(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    bad: list[ThirdPartyDevice] = []
    for case in BAD_ANNOUNCES:
        dev = device_factory(case.device_id)
        bad.append(dev)
        send_and_count(ctl, dev, case)

    enroll_healthy(device_factory, kube_api, mesh)
    bad_ids = {dev.device_id for dev in bad}
    devices = names(list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices"))
    assert not bad_ids & set(devices), "a bad announce created an EdgeDevice"
    assert not bad_ids & {t.service_account for t in kube_api.issued_tokens}
    for dev in bad:
        assert not dev.received["bundle"], dev.device_id
        assert not dev.received["enrollment"], f"{dev.device_id} got an answer"
    assert counter(ctl, "created") == 1


def test_replayed_announce_and_forged_ack_change_nothing(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    first = dev.announce()
    dev.wait_for("bundle", lambda m: m["generation"] == 1)
    dev.announce(addresses=["192.168.1.200"])
    dev.wait_for("bundle", lambda m: m["generation"] == 2)
    tokens = tokens_for(kube_api, mesh, dev.device_id)
    assert len(tokens) == 2

    rejected = counter(ctl, "rejected", kind="announce")
    dev.publish("announce", first)  # the old address, word for word
    wait_until(
        lambda: counter(ctl, "rejected", kind="announce") == rejected + 1, what="replay refused"
    )
    impostor = Ed25519PrivateKey.generate()
    forged_ack = dev.signed({"kind": "ack", "generation": 2, "result": "applied"}, key=impostor)
    dev.publish("ack", forged_ack)
    wait_until(lambda: counter(ctl, "rejected", kind="ack") == 1, what="forged ack refused")

    status = get_device(mesh, dev.device_id)["status"]
    assert status["addresses"] == ["192.168.1.200"]
    assert status["generation"] == 2
    assert status.get("ackedGeneration", 0) == 0
    we = get_istio(mesh, "workloadentries", dev.device_id)
    assert we["spec"]["address"] == "192.168.1.200"
    assert tokens_for(kube_api, mesh, dev.device_id) == tokens
    assert {m["generation"] for m in dev.received["bundle"]} == {1, 2}


def retained(broker: Mosquitto, topic: str) -> dict[str, Any]:
    """The retained message on `topic`, read as the controller user (it may read all)."""
    info = broker.info
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        got.append(message)
        arrived.set()

    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:8]}")
    reader.username_pw_set(info.controller_username, info.controller_password)
    reader.on_message = on_message
    reader.connect(info.host, info.port)
    reader.loop_start()
    try:
        reader.subscribe(topic, 1)
        assert arrived.wait(5), f"nothing retained on {topic}"
    finally:
        reader.loop_stop()
        reader.disconnect()
        release(reader)
    assert got[0].retain
    loaded: dict[str, Any] = json.loads(got[0].payload)
    return loaded


def test_key_change_is_a_non_retained_rejection(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
    broker: Mosquitto,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_phase("Enrolled")
    dev.wait_for("bundle", lambda m: m["generation"] == 1)

    impostor = Ed25519PrivateKey.generate()
    keys = {"sign": b64(raw_public(impostor)), "kx": b64(raw_public(dev.kx_key))}
    dev.publish("announce", dev.signed(dev.announce_body(keys=keys), key=impostor))
    rejected = dev.wait_phase("Rejected")
    dev.verify_controller(rejected)
    assert "key mismatch" in rejected["reason"]
    assert counter(ctl, "key_mismatch", kind="announce") == 1

    assert retained(broker, dev.topic("enrollment"))["phase"] == "Enrolled"
    status = get_device(mesh, dev.device_id)["status"]
    assert status["phase"] == "Enrolled"
    assert status["keys"]["sign"] == b64(raw_public(dev.sign_key))
    assert status["generation"] == 1
    assert len(tokens_for(kube_api, mesh, dev.device_id)) == 1
    assert [m["generation"] for m in dev.received["bundle"]] == [1]
    events = client.CoreV1Api(mesh.api).list_namespaced_event(mesh.namespace).items
    assert any(
        e.reason == "KeyMismatch" and e.involved_object.name == dev.device_id for e in events
    )
    enroll_healthy(device_factory, kube_api, mesh)


# Kubernetes API faults ----------------------------------------------------------------------


def test_api_errors_during_enrollment_are_retried_without_duplicates(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    name = f"pi-{uuid.uuid4().hex[:8]}"
    ns = f"/namespaces/{mesh.namespace}"
    faults = [
        kube_api.inject(method="POST", path_regex=f"{ns}/edgedevices$", status=500),
        kube_api.inject(method="PATCH", path_regex=f"{ns}/edgedevices/{name}/status$", status=500),
        kube_api.inject(method="PATCH", path_regex=f"{ns}/serviceaccounts/{name}$", status=500),
        kube_api.inject(method="PATCH", path_regex=f"{ns}/workloadentries/{name}$", status=409),
        kube_api.inject(method="PATCH", path_regex=f"{ns}/workloadgroups/led-pi$", status=500),
        kube_api.inject(
            method="POST", path_regex=f"{ns}/serviceaccounts/{name}/token$", status=500
        ),
    ]
    dev = device_factory(name)
    dev.controller_key()
    dev.announce()

    dev.wait_phase("Enrolled")
    bundle = dev.wait_for("bundle", lambda m: m["generation"] == 1)
    assert [f.hits for f in faults] == [f.times for f in faults], "a fault was never hit"
    tokens = tokens_for(kube_api, mesh, name)
    assert len(tokens) == 1
    assert dev.open_bundle(bundle)["token"] == tokens[0]
    assert [m["generation"] for m in dev.received["bundle"]] == [1]
    status = get_device(mesh, name)["status"]
    assert (status["phase"], status["generation"]) == ("Enrolled", 1)
    assert status["keys"]["sign"] == b64(raw_public(dev.sign_key))
    assert names(list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")) == [name]
    assert names(list_custom(mesh, "networking.istio.io", "v1", "workloadentries")) == [name]
    assert names(list_custom(mesh, "networking.istio.io", "v1", "workloadgroups")) == ["led-pi"]
    assert service_accounts(mesh) == [name]
    assert api_errors(ctl, "500") >= 5
    assert api_errors(ctl, "409") >= 1


def test_join_token_admission_survives_api_errors(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    controller_factory()
    name = f"pi-{uuid.uuid4().hex[:8]}"
    ns = f"/namespaces/{mesh.namespace}"
    core: Any = client.CoreV1Api(mesh.api)
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name=f"join-{name}", labels={"pimesh.io/join-token": "true"}),
        string_data={"token": "join-0123456789abcdef"},
    )
    core.create_namespaced_secret(mesh.namespace, secret)
    faults = [
        kube_api.inject(method="GET", path_regex=f"{ns}/secrets$", status=500),
        # The approval after the token was spent: the retry must not ask for it again.
        kube_api.inject(method="PATCH", path_regex=f"{ns}/edgedevices/{name}$", status=500),
    ]
    dev = device_factory(name)
    dev.controller_key()
    dev.announce(join_token="join-0123456789abcdef")

    dev.wait_phase("Enrolled")
    assert [f.hits for f in faults] == [1, 1]
    assert not any(m["phase"] == "Rejected" for m in dev.received["enrollment"])
    assert get_device(mesh, name)["spec"]["approved"] is True
    assert not [
        s
        for s in core.list_namespaced_secret(mesh.namespace).items
        if s.metadata.name == f"join-{name}"
    ]
    assert len(tokens_for(kube_api, mesh, name)) == 1


def test_too_many_requests_waits_for_retry_after(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    name = f"pi-{uuid.uuid4().hex[:8]}"
    token_path = f"/namespaces/{mesh.namespace}/serviceaccounts/{name}/token"
    kube_api.inject(method="POST", path_regex=f"{token_path}$", status=429, retry_after=1)
    dev = device_factory(name)
    dev.controller_key()
    started = time.monotonic()
    dev.announce()
    dev.wait_phase("Enrolled")
    # The 429 came after the announce and the retry at least Retry-After later.
    assert time.monotonic() - started >= 1.0
    calls = [r.status for r in kube_api.requests if r.path.endswith(token_path)]
    assert calls == [429, 201]
    assert api_errors(ctl, "429") == 1
    assert len(tokens_for(kube_api, mesh, name)) == 1
    assert [m["generation"] for m in dev.received["bundle"]] == [1]


# a crash mid-enrollment ---------------------------------------------------------------------


@dataclass
class ControllerProcess:
    """`python -m cli controller run` as a child process that a test can SIGKILL."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: "subprocess.Popen[bytes] | None" = None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def controller_process(
    broker_factory: BrokerFactory, mesh: Mesh, kubeconfig: Path, prefix: str, tmp_path: Path
) -> Iterator[tuple[ControllerProcess, Mosquitto]]:
    # A private broker: the child uses the production client id (the host name) with a
    # persistent session, which must not meet another test's session.
    private = broker_factory()
    info = private.info
    args = [
        sys.executable, "-m", "cli", "controller", "run",
        "--namespace", mesh.namespace, "--kubeconfig", str(kubeconfig),
        "--istiod-ip", ISTIOD_IP, "--auto-approve", "pi-*", "--metrics-port", "0",
        "--broker", info.url, "--username", info.controller_username,
        "--topic-prefix", prefix,
    ]  # fmt: skip
    env = {**os.environ, "PIMESH_PASSWORD": info.controller_password}
    ctl = ControllerProcess(args, env, tmp_path / "controller.log")
    yield ctl, private
    ctl.stop()


def test_killed_controller_finishes_enrollment_after_restart(
    controller_process: tuple[ControllerProcess, Mosquitto],
    mesh: Mesh,
    kube_api: KubeApiServer,
    prefix: str,
) -> None:
    ctl, private = controller_process
    name = f"pi-{uuid.uuid4().hex[:8]}"
    token_path = f"/namespaces/{mesh.namespace}/serviceaccounts/{name}/token$"
    slow_token = kube_api.inject(method="POST", path_regex=token_path, status=None, delay_s=3)
    devices = Devices(private, prefix)
    try:
        dev = devices(name)
        ctl.start()
        dev.controller_key()
        dev.announce()
        wait_until(lambda: slow_token.hits == 1, what="the token request in flight")
        ctl.kill()
        assert not dev.received["bundle"], "the bundle came before the kill"
        online_before = sum(m["state"] == "online" for m in dev.received["controller"])

        ctl.start()
        dev.wait_for(
            "controller",
            lambda _: (
                sum(m["state"] == "online" for m in dev.received["controller"]) > online_before
            ),
        )
        # The announce died with the controller; as PROTOCOL.md asks, a device announces
        # again when the controller's status turns online.
        dev.announce()
        enrolled = dev.wait_phase("Enrolled", timeout=20)
        dev.verify_controller(enrolled)
        bundle = dev.wait_for("bundle", lambda m: m["generation"] == 1)
        dev.verify_controller(bundle)
        content = dev.open_bundle(bundle)
        assert content["token"] in tokens_for(kube_api, mesh, name)
    finally:
        devices.close()
    assert [m["generation"] for m in dev.received["bundle"]] == [1]
    status = get_device(mesh, name)["status"]
    assert (status["phase"], status["generation"]) == ("Enrolled", 1)
    assert names(list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")) == [name]
    assert names(list_custom(mesh, "networking.istio.io", "v1", "workloadentries")) == [name]
    group = list_custom(mesh, "networking.istio.io", "v1", "workloadgroups")
    assert names(group) == ["led-pi"]
    assert len(group[0]["metadata"]["ownerReferences"]) == 1
    assert service_accounts(mesh) == [name]


# devices prying on each other -------------------------------------------------------------


class Acks:
    """Reason codes of a paho client's SUBACKs and PUBACKs, by message id."""

    def __init__(self, client: mqtt.Client) -> None:
        self._client = client
        self._cond = threading.Condition()
        self._acks: dict[int, list[ReasonCode]] = {}
        client.on_subscribe = self._on_ack
        client.on_publish = self._on_publish

    def _on_ack(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        with self._cond:
            self._acks[mid] = rcs
            self._cond.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self._on_ack(_c, _u, mid, [rc], _p)

    def _wait(self, mid: int | None) -> int:
        assert mid is not None
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, 5), f"no ack for {mid}"
            return self._acks[mid][0].value

    def subscribe(self, topic: str) -> int:
        _, mid = self._client.subscribe(topic, 1)
        return self._wait(mid)

    def publish(self, topic: str, payload: bytes) -> int:
        return self._wait(self._client.publish(topic, payload, qos=1).mid)


@pytest.fixture
def second_connection(broker: Mosquitto) -> Iterator[Callable[[str, str], mqtt.Client]]:
    """Open more MQTT 5 connections with a device's credentials."""
    opened: list[mqtt.Client] = []

    def connect(username: str, password: str) -> mqtt.Client:
        info = broker.info
        extra = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{username}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        extra.username_pw_set(username, password)
        extra.connect(info.host, info.port, keepalive=5)
        extra.loop_start()
        opened.append(extra)
        return extra

    yield connect
    for extra in opened:
        extra.loop_stop()
        extra.disconnect()
        release(extra)


def test_devices_cannot_read_or_speak_for_each_other(
    controller_factory: ControllerFactory,
    device_factory: Devices,
    second_connection: Callable[[str, str], mqtt.Client],
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    a, b = device_factory(), device_factory()
    b.controller_key()
    b.announce()
    b_bundle = b.wait_for("bundle", lambda m: m["generation"] == 1)
    a_acks = Acks(a.client)

    # A cannot read B's (retained) bundle: Mosquitto 2.0 grants the subscription and
    # checks read access on delivery. Re-subscribing to A's own controller topic is a
    # barrier: anything the first subscription let through would have come before.
    assert a_acks.subscribe(b.topic("bundle")) in {1, NOT_AUTHORIZED}
    seen = len(a.received["controller"])
    assert a_acks.subscribe(f"{a.prefix}/controller/status") == 1
    a.wait_for("controller", lambda _: len(a.received["controller"]) > seen)
    assert not a.received["bundle"]

    # A's credentials on B's announce topic: refused by the broker (PUBACK 0x87), never
    # reaching the controller (a forwarded publish is queued to the controller before
    # its PUBACK, so it would be counted before A's announces below). A second
    # connection of A's sends it: Mosquitto may drop a connection after a refusal.
    forged = b.signed(b.announce_body(addresses=["10.9.9.9"]))
    intruder = Acks(second_connection(a.device_id, device_factory.passwords[a.device_id]))
    assert intruder.publish(b.topic("announce"), _payload(forged)) == NOT_AUTHORIZED
    # A announcing as B through its own topic, with its own keys: a topic/payload mismatch.
    assert a_acks.publish(a.topic("announce"), _other(a, b.device_id)) == 0
    wait_until(lambda: counter(ctl, "invalid", kind="announce") == 1, what="mismatch refused")
    a.announce()
    a_bundle = a.wait_for("bundle", lambda m: m["generation"] == 1)

    assert counter(ctl, "accepted", kind="announce") == 0
    assert counter(ctl, "created", kind="announce") == 2
    status = get_device(mesh, b.device_id)["status"]
    assert status["addresses"] == [b.address]
    assert status["keys"]["sign"] == b64(raw_public(b.sign_key))
    assert status["generation"] == 1
    assert len(tokens_for(kube_api, mesh, b.device_id)) == 1
    assert all(m["device_id"] == a.device_id for m in a.received["bundle"])
    assert all(m["device_id"] == b.device_id for m in b.received["bundle"])
    assert b.open_bundle(b_bundle)["service_account"] == b.device_id
    assert a.open_bundle(a_bundle)["service_account"] == a.device_id


def _other(dev: ThirdPartyDevice, other_id: str) -> bytes:
    return _payload(dev.signed({**dev.announce_body(), "device_id": other_id}))


# health and metrics ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the response, and so the connection
            return exc.code, exc.read().decode()


def test_health_and_metrics_endpoints(
    controller_factory: ControllerFactory, device_factory: DeviceFactory
) -> None:
    port = _free_port()
    ctl = controller_factory(metrics_port=port)
    assert ctl.health is not None
    assert ctl.health.port == port
    assert _get(port, "/healthz")[0] == 200
    wait_until(lambda: _get(port, "/readyz")[0] == 200, what="ready")
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_phase("Pending")

    status, body = _get(port, "/metrics")
    assert status == 200
    assert 'pimesh_device_messages_total{kind="announce",outcome="created"} 1.0' in body
    assert "pimesh_reconcile_seconds_count" in body
    assert "pimesh_reconcile_seconds_bucket" in body
    assert _get(port, "/nope")[0] == 404
