"""The broker restarts in the middle of a 50-device enrollment.

A private persistent broker (retained messages and sessions survive the restart), the
real controller on it, and 50 light third-party devices (`tests.support.thirdparty`)
that, like the real agent, re-subscribe and re-announce whenever they reconnect.
"""

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from kubernetes import client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import SecretStr

from controller.run import Controller
from controller.settings import ControllerSettings
from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from shared.settings import MqttSettings
from tests.harness.broker import BrokerFactory
from tests.harness.controller import ISTIOD_IP, Mesh
from tests.harness.devices import list_custom, names, wait_until
from tests.support.cleanup import release
from tests.support.thirdparty import ThirdPartyDevice

pytestmark = pytest.mark.timeout(120)

FLEET = 50


def controller_on(broker: Mosquitto, *, mesh: Mesh, kubeconfig: Path, prefix: str) -> Controller:
    info = broker.info
    settings = ControllerSettings(
        namespace=mesh.namespace,
        kubeconfig=kubeconfig,
        istiod_ip=ISTIOD_IP,
        metrics_port=0,
        workers=2,
        auto_approve=["pi-*"],
    )
    mqtt_settings = MqttSettings(
        broker=info.url,
        username=info.controller_username,
        password=SecretStr(info.controller_password),
        topic_prefix=prefix,
    )
    ctl = Controller(settings, mqtt_settings, client_id=f"ctl-{mesh.namespace}")
    ctl.start()
    assert ctl.link is not None
    assert ctl.link.wait_ready(10), "controller never became ready"
    return ctl


class LightDevice(ThirdPartyDevice):
    """A third-party device that re-subscribes, says online and re-announces on reconnect."""

    def __init__(self, device_id: str, **kw: Any) -> None:
        super().__init__(device_id, **kw)
        self.connects = 0
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect

    def _on_connect(self, c: mqtt.Client, _u: object, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        c.subscribe([(self.topic("enrollment"), 1), (self.topic("bundle"), 1)])
        # Not from paho's thread: these wait for their PUBACKs.
        threading.Thread(target=self._hello, daemon=True).start()

    def _hello(self) -> None:
        try:
            self.online()
            self.announce()
        except (RuntimeError, ValueError, OSError):
            pass  # the connection dropped again; the next on_connect says hello again

    def close(self) -> None:
        # DISCONNECT first: paho's loop then ends at once instead of at its next timeout.
        self.client.disconnect()
        self.client.loop_stop()
        release(self.client)

    def enrolled(self) -> bool:
        return any(m["phase"] == "Enrolled" for m in self.received["enrollment"]) and bool(
            self.received["bundle"]
        )


@pytest.fixture
def fleet(
    broker_factory: BrokerFactory, prefix: str
) -> Iterator[tuple[Mosquitto, list[LightDevice]]]:
    private = broker_factory(persistence=True)
    ids = [f"pi-{uuid.uuid4().hex[:6]}-{i}" for i in range(FLEET)]
    passwords = private.add_users(ids)
    info = private.info
    devices = [
        LightDevice(i, host=info.host, port=info.port, password=passwords[i], prefix=prefix)
        for i in ids
    ]
    yield private, devices
    for dev in devices:
        dev.close()


def retained(broker: Mosquitto, pattern: str, *, expected: int) -> dict[str, dict[str, Any]]:
    """Retained messages on `pattern`, read by a late subscriber as the controller user."""
    info = broker.info
    got: dict[str, dict[str, Any]] = {}
    cond = threading.Condition()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            with cond:
                got[msg.topic] = json.loads(msg.payload)
                cond.notify_all()

    reader = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"late-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    reader.username_pw_set(info.controller_username, info.controller_password)
    reader.on_message = on_message
    reader.connect(info.host, info.port)
    reader.loop_start()
    try:
        reader.subscribe(pattern, 1)
        with cond:
            cond.wait_for(lambda: len(got) >= expected, 10)
    finally:
        reader.disconnect()
        reader.loop_stop()
        release(reader)
    return dict(got)


def test_broker_restart_mid_enrollment_enrolls_everyone_exactly_once(
    fleet: tuple[Mosquitto, list[LightDevice]],
    mesh: Mesh,
    kubeconfig: Path,
    kube_api: KubeApiServer,
    prefix: str,
) -> None:
    private, devices = fleet
    ctl = controller_on(private, mesh=mesh, kubeconfig=kubeconfig, prefix=prefix)
    try:
        for dev in devices[: FLEET // 2]:
            dev.online()
            dev.announce()
        wait_until(lambda: any(d.enrolled() for d in devices), what="the first enrollments")
        private.restart()  # SIGTERM: wills sent, persistence saved; same ports
        for dev in devices[FLEET // 2 :]:
            wait_until(lambda d=dev: d.client.is_connected(), what="reconnected")  # type: ignore[misc]
        wait_until(lambda: all(d.connects >= 1 for d in devices), what="every device reconnected")
        for dev in devices[FLEET // 2 :]:
            dev.announce()
        wait_until(
            lambda: all(d.enrolled() for d in devices), timeout=60, what="every device enrolled"
        )
        assert ctl.alive()
    finally:
        ctl.stop()

    ids = sorted(d.device_id for d in devices)
    edge = list_custom(mesh, "pimesh.io", "v1alpha1", "edgedevices")
    assert names(edge) == ids
    assert all(o["status"]["phase"] == "Enrolled" for o in edge)
    assert names(list_custom(mesh, "networking.istio.io", "v1", "workloadentries")) == ids
    core: Any = client.CoreV1Api(mesh.api)  # the generated models type every field Optional
    accounts = [
        sa.metadata.name for sa in core.list_namespaced_service_account(mesh.namespace).items
    ]
    assert sorted(a for a in accounts if a.startswith("pi-")) == ids, "one SA each, no duplicates"

    generations = {o["metadata"]["name"]: o["status"]["generation"] for o in edge}
    assert set(generations.values()) == {1}, "one bundle each: nobody enrolled twice"
    issued = [t.service_account for t in kube_api.issued_tokens if t.namespace == mesh.namespace]
    assert sorted(issued) == ids, "one token each"
    bundles = retained(private, f"{prefix}/devices/+/bundle", expected=FLEET)
    assert len(bundles) == FLEET, "a retained bundle per device survived the restart"
    for topic, bundle in bundles.items():
        device_id = topic.split("/")[-2]
        assert bundle["generation"] == generations[device_id]
    statuses = retained(private, f"{prefix}/devices/+/status", expected=FLEET)
    assert {t.split("/")[-2] for t in statuses} == set(ids)
    assert all(s["state"] == "online" for s in statuses.values())
    controller = retained(private, f"{prefix}/controller/status", expected=1)
    assert [s["state"] for s in controller.values()] == ["offline"], "said offline on stop"
