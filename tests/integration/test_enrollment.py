"""A device written from PROTOCOL.md alone enrolls through the real controller.

Real Mosquitto (ACLs on), the Kubernetes API over HTTP, the controller as it runs in
production; the device is `tests.support.thirdparty`, which shares no code with pimesh.
"""

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from tests.harness.controller import ISTIOD_IP, ControllerFactory, Mesh
from tests.harness.devices import (
    DeviceFactory,
    approve,
    counter,
    devices_on,
    get_device,
    get_istio,
    wait_until,
)
from tests.support.schemas import validate_manifest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def device_factory(broker: Mosquitto, prefix: str) -> Iterator[DeviceFactory]:
    yield from devices_on(broker, prefix)


def test_pending_then_approved_then_enrolled(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    controller_factory()
    dev = device_factory()
    dev.controller_key()
    dev.announce()

    pending = dev.wait_phase("Pending")
    dev.verify_controller(pending)
    assert f"pimesh approve {dev.device_id}" in pending["reason"]
    obj = get_device(mesh, dev.device_id)
    assert obj["status"]["phase"] == "Pending"
    assert obj["status"]["keys"]["sign"] == dev.announce_body()["keys"]["sign"]
    assert obj["spec"] == {"app": "led-pi", "groups": ["kitchen"], "labels": {"floor": "1"}}
    assert not dev.received["bundle"], "no credential may leave before approval"

    approve(mesh, dev.device_id)
    enrolled = dev.wait_phase("Enrolled")
    dev.verify_controller(enrolled)
    bundle = dev.wait_for("bundle", lambda m: m["generation"] == 1)
    dev.verify_controller(bundle)
    content = dev.open_bundle(bundle)

    issued = [t for t in kube_api.issued_tokens if t.namespace == mesh.namespace]
    assert len(issued) == 1
    assert content["token"] == issued[0].token
    assert issued[0].audiences == ("istio-ca",)
    assert content["root_cert"] == mesh.root_cert
    assert content["identity"] == f"spiffe://cluster.local/ns/{mesh.namespace}/sa/{dev.device_id}"
    assert content["hosts"] == [{"ip": ISTIOD_IP, "names": ["istiod.istio-system.svc"]}]
    env = content["ztunnel_env"]
    assert env["PROXY_WORKLOAD_INFO"] == f"{mesh.namespace}/{dev.device_id}/{dev.device_id}"
    assert env["INSTANCE_IP"] == dev.address
    assert "NODE_NAME" not in env
    assert f"SERVICE_ACCOUNT='{dev.device_id}'" in content["cluster_env"]

    status = get_device(mesh, dev.device_id)["status"]
    assert status["generation"] == 1
    assert status["phase"] == "Enrolled"
    dev.ack(1)
    wait_until(
        lambda: get_device(mesh, dev.device_id)["status"].get("ackedGeneration") == 1, what="ack"
    )


def test_objects_match_the_protocol(
    controller_factory: ControllerFactory, device_factory: DeviceFactory, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["pi-*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_phase("Enrolled")
    ns, name = mesh.namespace, dev.device_id
    core = client.CoreV1Api(mesh.api)
    device_uid = get_device(mesh, name)["metadata"]["uid"]

    sa = core.read_namespaced_service_account(name, ns).to_dict()
    assert sa["metadata"]["owner_references"][0]["uid"] == device_uid

    we = get_istio(mesh, "workloadentries", name)
    assert we["metadata"]["annotations"]["ambient.istio.io/redirection"] == "enabled"
    assert we["spec"]["address"] == dev.address
    assert we["spec"]["serviceAccount"] == name
    assert we["spec"]["labels"]["pimesh.io/online"] in {"true", "false"}
    assert we["spec"]["labels"]["pimesh.io/group.kitchen"] == "true"
    assert we["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pimesh"

    wg = get_istio(mesh, "workloadgroups", "led-pi")
    assert [o["uid"] for o in wg["metadata"]["ownerReferences"]] == [device_uid]
    svc = core.read_namespaced_service("led-pi", ns).to_dict()
    assert svc["spec"]["selector"] == {"app": "led-pi", "pimesh.io/online": "true"}
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http-pi", 8080)]

    namespace = core.read_namespace(ns).to_dict()
    assert namespace["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    for manifest in (we, wg):
        validate_manifest({k: v for k, v in manifest.items() if k != "status"})


def test_reannounce_changes_nothing_and_address_change_updates_entry(
    controller_factory: ControllerFactory, device_factory: DeviceFactory, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_for("bundle", lambda m: m["generation"] == 1)
    before = get_device(mesh, dev.device_id)["status"]

    for _ in range(3):
        dev.announce()
    wait_until(
        lambda: (
            get_device(mesh, dev.device_id)["status"]["lastAnnounceTs"] >= before["lastAnnounceTs"]
        ),
        what="re-announce absorbed",
    )
    time.sleep(0.5)  # give a wrong extra generation the chance to appear
    assert get_device(mesh, dev.device_id)["status"]["generation"] == 1

    dev.announce(addresses=["192.168.1.200"])

    def address() -> str:
        return str(get_istio(mesh, "workloadentries", dev.device_id)["spec"]["address"])

    wait_until(lambda: address() == "192.168.1.200", what="WorkloadEntry address")
    # The mesh address is inside the bundle (INSTANCE_IP), so the device gets a new one.
    bundle = dev.wait_for("bundle", lambda m: m["generation"] == 2)
    assert dev.open_bundle(bundle)["ztunnel_env"]["INSTANCE_IP"] == "192.168.1.200"


def test_liveness_follows_status_and_last_will(
    controller_factory: ControllerFactory, device_factory: DeviceFactory, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_for("bundle", lambda m: m["generation"] == 1)
    dev.online(generation=1)

    def online_label() -> str:
        we = get_istio(mesh, "workloadentries", dev.device_id)
        return str(we["spec"]["labels"]["pimesh.io/online"])

    wait_until(lambda: online_label() == "true", what="online")
    assert get_device(mesh, dev.device_id)["status"]["online"] is True
    dev.kill()
    wait_until(lambda: online_label() == "false", timeout=20, what="offline after last will")
    assert get_device(mesh, dev.device_id)["status"]["online"] is False


def test_key_mismatch_is_rejected_without_touching_the_real_device(
    controller_factory: ControllerFactory, device_factory: DeviceFactory, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_phase("Enrolled")

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.support.thirdparty import b64, raw_public

    impostor_key = Ed25519PrivateKey.generate()
    body = dev.announce_body(
        keys={"sign": b64(raw_public(impostor_key)), "kx": b64(raw_public(dev.kx_key))}
    )
    dev.publish("announce", dev.signed(body, key=impostor_key))
    rejected = dev.wait_phase("Rejected")
    assert "key mismatch" in rejected["reason"]
    assert f"pimesh rekey {dev.device_id}" in rejected["reason"]
    obj = get_device(mesh, dev.device_id)
    assert obj["status"]["phase"] == "Enrolled"
    assert obj["status"]["keys"]["sign"] == b64(raw_public(dev.sign_key))
    assert any(c["type"] == "KeyMismatch" for c in obj["status"]["conditions"])
    assert obj["status"]["generation"] == 1


def test_bad_signature_and_replay_get_no_answer(
    controller_factory: ControllerFactory, device_factory: DeviceFactory, mesh: Mesh
) -> None:
    ctl = controller_factory()
    dev = device_factory()
    dev.controller_key()
    msg = dev.announce()
    dev.wait_phase("Pending")
    count = len(dev.received["enrollment"])

    forged = dict(msg, hostname="evil")  # signature no longer covers the content
    dev.publish("announce", forged)
    dev.publish("announce", msg)  # exact replay
    dev.publish("announce", b"not json")
    wait_until(
        lambda: counter(ctl, "bad_signature") >= 1 and counter(ctl, "invalid") >= 1,
        what="drops counted",
    )
    wait_until(lambda: counter(ctl, "rejected") >= 1, what="replay refused")
    assert len(dev.received["enrollment"]) == count
    assert get_device(mesh, dev.device_id)["status"]["hostname"] == dev.device_id


def test_the_generation_in_a_signed_status_counts_as_its_ack(
    controller_factory: ControllerFactory, device_factory: DeviceFactory, mesh: Mesh
) -> None:
    """An ack the broker dropped must not leave the device unacked for good."""
    controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_for("bundle", lambda m: m["generation"] == 1)
    assert get_device(mesh, dev.device_id)["status"].get("ackedGeneration", 0) == 0
    dev.online(generation=1)  # no ack: only the status naming the installed generation
    wait_until(
        lambda: get_device(mesh, dev.device_id)["status"].get("ackedGeneration") == 1,
        what="generation 1 acked through the status",
    )
    status = get_device(mesh, dev.device_id)["status"]
    assert status["ackedTokenExpiresAt"] == status["tokenExpiresAt"]
