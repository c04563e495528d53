"""Hostile clients: an announce flood, fuzzed intake, and bundles forged to an agent.

The flood and the broker-level fuzz run the real controller against the real broker
(ACLs on) and the API emulator; the hypothesis fuzz drives `Intake` directly, as paho's
thread would, so it can try thousands of payloads and topics in seconds.
"""

import base64
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from controller.inbox import Inbox
from controller.intake import AnnounceLimiter, Intake
from controller.metrics import ControllerMetrics
from controller.workqueue import WorkQueue
from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from shared.codec import decode_as, encode
from shared.messages import Announce, Bundle
from shared.mqtt import Incoming
from shared.signing import sign_message, verify_message
from shared.timestamps import now_utc
from shared.topics import Topics
from tests.harness.agents import AgentRig, rig_fixture
from tests.harness.controller import ControllerFactory, Mesh
from tests.harness.devices import (
    DeviceFactory,
    Devices,
    counter,
    get_device,
    list_custom,
    names,
    wait_until,
)
from tests.support.cleanup import release
from tests.support.thirdparty import ThirdPartyDevice

pytestmark = pytest.mark.timeout(90)
rig = rig_fixture


@pytest.fixture
def device_factory(broker: Mosquitto, prefix: str) -> Iterator[DeviceFactory]:
    devices = Devices(broker, prefix)
    yield devices
    devices.close()
    for dev in devices.made:
        release(dev.client)


def tokens_for(kube_api: KubeApiServer, mesh: Mesh, name: str | None = None) -> int:
    return sum(
        t.namespace == mesh.namespace and name in (None, t.service_account)
        for t in kube_api.issued_tokens
    )


# the limiter itself -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = AnnounceLimiter(burst=5, rate_per_s=1.0, clock=clock)
    assert [limiter.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("b"), "another device has its own bucket"
    clock.now += 0.5
    assert not limiter.allow("a")
    clock.now += 0.6
    assert limiter.allow("a")
    assert not limiter.allow("a")
    clock.now += 60
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False], "refill caps at burst"


def test_limiter_map_is_bounded_and_forgets_the_least_recent() -> None:
    clock = FakeClock()
    limiter = AnnounceLimiter(burst=1, rate_per_s=0.001, max_devices=3, clock=clock)
    assert limiter.allow("a")
    assert not limiter.allow("a")
    for other in ("b", "c", "d"):
        assert limiter.allow(other)
    assert len(limiter) == 3
    assert limiter.allow("a"), "a was forgotten, so it starts with a full bucket"
    assert len(limiter) == 3


def test_limiter_refuses_nonsense_settings() -> None:
    for kwargs in ({"burst": 0}, {"rate_per_s": 0.0}, {"max_devices": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            AnnounceLimiter(**kwargs)


def announce_payload(dev: ThirdPartyDevice) -> bytes:
    return json.dumps(dev.signed(dev.announce_body())).encode()


def test_intake_drops_and_counts_announces_beyond_the_burst() -> None:
    prefix = f"t/{uuid.uuid4().hex[:12]}"
    metrics, inbox, queue = ControllerMetrics(), Inbox(), WorkQueue[str]()
    intake = Intake(Topics(prefix), inbox=inbox, queue=queue, metrics=metrics)
    dev = ThirdPartyDevice.__new__(ThirdPartyDevice)  # keys and signing only, no broker
    dev.device_id, dev.prefix, dev.address = "pi-flood", prefix, "192.168.1.178"
    dev.sign_key, dev.kx_key = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    for _ in range(20):
        intake(Incoming(dev.topic("announce"), announce_payload(dev), retain=False))
    outcomes = {
        s.labels["outcome"]: s.value
        for m in metrics.messages.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert outcomes == {"queued": 5.0, "rate_limited": 15.0}
    assert len(inbox.take("pi-flood")) == 5


# a flood through the real broker -----------------------------------------------------------


def flood(dev: ThirdPartyDevice, count: int, *, done: threading.Event) -> None:
    payloads = [announce_payload(dev) for _ in range(count)]
    last = None
    for payload in payloads:
        last = dev.client.publish(dev.topic("announce"), payload, qos=0)
    if last is not None:
        last.wait_for_publish(10)
    done.set()


def test_announce_flood_does_not_starve_other_devices(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["pi-*"])
    flooder = device_factory(f"pi-a{uuid.uuid4().hex[:6]}")
    flooder.controller_key()
    flooder.announce()
    flooder.wait_phase("Enrolled")
    peak = {"inbox": 0, "queue": 0}
    done = threading.Event()
    sender = threading.Thread(target=flood, args=(flooder, 2000), kwargs={"done": done})
    sender.start()
    try:
        wait_until(lambda: counter(ctl, "rate_limited", kind="announce") > 0, what="limiting")
        other = device_factory(f"pi-b{uuid.uuid4().hex[:6]}")
        other.controller_key()
        started = time.monotonic()
        other.announce()
        while not other.received["enrollment"] or not any(
            m["phase"] == "Enrolled" for m in other.received["enrollment"]
        ):
            peak["inbox"] = max(peak["inbox"], len(ctl.inbox))
            peak["queue"] = max(peak["queue"], len(ctl.queue))
            assert time.monotonic() - started < 15, "B was starved by A's flood"
            time.sleep(0.02)
        other.wait_for("bundle", lambda m: m["generation"] == 1)
    finally:
        sender.join(30)
    assert done.is_set(), "the flood never finished sending"
    wait_until(
        lambda: counter(ctl, "rate_limited", kind="announce") + counter(ctl, "queued") >= 2000,
        what="every flooded announce counted",
    )
    # A backlog of 16 per device and a deduplicating queue: bounded whatever A sends.
    assert peak["inbox"] <= 2 * 16
    assert peak["queue"] <= 2
    assert counter(ctl, "rate_limited", kind="announce") >= 1900
    assert ctl.alive()
    flooder_status = get_device(mesh, flooder.device_id)["status"]
    assert flooder_status["generation"] == 1, "the flood made no new bundle"
    assert tokens_for(kube_api, mesh, flooder.device_id) == 1
    assert names(list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")) == sorted(
        [flooder.device_id, other.device_id]
    )


# fuzzing the intake directly ---------------------------------------------------------------

FUZZ_PREFIX = "t/fuzz"
LEAVES = ["announce", "ack", "status", "bundle", "enrollment", "led", "led-state", "x"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_FUZZ_KEY = Ed25519PrivateKey.generate()


def _valid_announce_dict() -> dict[str, Any]:
    dev = ThirdPartyDevice.__new__(ThirdPartyDevice)
    dev.device_id, dev.prefix, dev.address = "pi-fuzz", FUZZ_PREFIX, "192.168.1.178"
    dev.sign_key, dev.kx_key = _FUZZ_KEY, X25519PrivateKey.generate()
    return dev.signed(dev.announce_body())


VALID = _valid_announce_dict()


@st.composite
def mutated_announce(draw: st.DrawFn) -> bytes:
    body = dict(VALID)
    key = draw(st.sampled_from(sorted(body)))
    body[key] = draw(json_values)
    return json.dumps(body).encode()


@st.composite
def flipped_announce(draw: st.DrawFn) -> bytes:
    raw = bytearray(json.dumps(VALID).encode())
    index = draw(st.integers(0, len(raw) - 1))
    raw[index] ^= 1 << draw(st.integers(0, 7))
    return bytes(raw)


topics = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda device, leaf: f"{FUZZ_PREFIX}/devices/{device}/{leaf}",
        st.sampled_from(["pi-fuzz", "", "+", "#", "pi fuzz", "a" * 300]) | st.text(max_size=12),
        st.sampled_from(LEAVES),
    ),
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_announce(),
    flipped_announce(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=payloads, retain=st.booleans())
def test_intake_survives_any_input_and_files_only_verified_messages(
    topic: str, payload: bytes, retain: bool
) -> None:
    metrics, inbox, queue = ControllerMetrics(), Inbox(), WorkQueue[str]()
    intake = Intake(Topics(FUZZ_PREFIX), inbox=inbox, queue=queue, metrics=metrics)
    intake(Incoming(topic, payload, retain=retain))  # must never raise
    filed = inbox.take("pi-fuzz")
    for message in filed:
        assert topic == f"{FUZZ_PREFIX}/devices/pi-fuzz/{message.kind}"
        if isinstance(message, Announce):
            verify_message(message, message.keys.sign)
            assert payload_equals_valid(payload), "a mutated announce still verified"
    assert len(inbox) == 0 or topic.startswith(f"{FUZZ_PREFIX}/devices/")


def payload_equals_valid(payload: bytes) -> bool:
    try:
        return bool(json.loads(payload) == VALID)
    except ValueError:
        return False


# fuzzing through the real broker ----------------------------------------------------------


def mutations(rng: random.Random, dev: ThirdPartyDevice, count: int) -> Iterator[bytes]:
    for _ in range(count):
        valid = dev.signed(dev.announce_body())
        raw = bytearray(json.dumps(valid).encode())
        choice = rng.randrange(4)
        if choice == 0:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif choice == 1:
            raw = raw[: rng.randrange(len(raw))]
        elif choice == 2:
            field = rng.choice(sorted(valid))
            valid[field] = rng.choice([None, 0, -1, "", "x" * 5000, [], {}, 1e300, True])
            raw = bytearray(json.dumps(valid).encode())
        else:
            raw = bytearray(rng.randbytes(rng.randrange(1, 400)))
        try:
            if json.loads(raw) == json.loads(json.dumps(valid)) and choice != 2:
                continue  # the mutation changed nothing that matters
        except ValueError:
            pass
        yield bytes(raw)


def test_fuzzed_payloads_through_the_broker_give_nothing_away(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["pi-*"])
    fuzzer = device_factory(f"pi-f{uuid.uuid4().hex[:6]}")
    fuzzer.controller_key()
    rng = random.Random(20261126)
    tokens_before = tokens_for(kube_api, mesh)
    sent = 0
    for payload in mutations(rng, fuzzer, 300):
        leaf = rng.choice(["announce", "ack", "status"])
        fuzzer.client.publish(fuzzer.topic(leaf), payload, qos=1).wait_for_publish(5)
        sent += 1
    assert sent > 250
    counted = ("invalid", "bad_signature", "bad_topic")
    wait_until(
        lambda: sum(counter(ctl, outcome) for outcome in counted) >= sent * 0.9,
        what="the fuzz counted as dropped",
    )
    assert ctl.alive()
    assert counter(ctl, "queued", kind="announce") == 0, "a mutated announce was accepted"
    assert tokens_for(kube_api, mesh) == tokens_before, "fuzz produced a credential"
    assert not fuzzer.received["bundle"]
    assert not fuzzer.received["enrollment"]
    assert names(list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")) == []

    valid = device_factory(f"pi-v{uuid.uuid4().hex[:6]}")
    valid.announce()
    valid.wait_phase("Enrolled")
    valid.wait_for("bundle", lambda m: m["generation"] == 1)


# forged bundles to an agent ------------------------------------------------------------------


def controller_client(broker: Mosquitto) -> mqtt.Client:
    info = broker.info
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"forger-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(info.controller_username, info.controller_password)
    client.connect(info.host, info.port)
    client.loop_start()
    return client


def test_agent_ignores_bundles_signed_by_another_key(
    controller_factory: ControllerFactory,
    rig: AgentRig,
    broker: Mosquitto,
    prefix: str,
    mesh: Mesh,
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller_factory(auto_approve=["pi-*"])
    agent = rig.start(f"pi-{uuid.uuid4().hex[:8]}")
    wait_until(lambda: agent.bundles.record is not None, what="first bundle installed")
    wait_until(
        lambda: get_device(mesh, agent.device_id).get("status", {}).get("ackedGeneration") == 1,
        what="acked",
    )
    record = agent.bundles.record
    assert record is not None
    token_file = agent.settings.root / "var/lib/istio/ztunnel/istio-token"
    token_before = token_file.read_bytes()

    forged_key = Ed25519PrivateKey.generate()
    forged = sign_message(
        Bundle(
            device_id=agent.device_id,
            ts=now_utc(),
            generation=record.generation + 1,
            sealed=base64.b64encode(b"\x00" * 64).decode(),
        ),
        forged_key,
    )
    caplog.set_level(logging.WARNING, logger="device.agent")
    client = controller_client(broker)
    try:
        topic = Topics(prefix).bundle(agent.device_id)
        client.publish(topic, encode(forged), qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
        release(client)
    wait_until(
        lambda: any("not signed by the controller" in r.getMessage() for r in caplog.records),
        what="the agent's trust check to drop the forgery",
    )
    assert agent.bundles.record is not None
    assert agent.bundles.record.generation == record.generation
    assert token_file.read_bytes() == token_before
    status = get_device(mesh, agent.device_id)["status"]
    assert status["ackedGeneration"] == record.generation
    assert decode_as(encode(forged), Bundle).generation == record.generation + 1
