"""Who may enroll, and how operators take it back: admission, revoke, forget and rekey.

Real Mosquitto, the Kubernetes API emulator over HTTP and the controller as it runs in
production; devices are `tests.support.thirdparty` (no pimesh code). Operators act the
way kubectl does: Secrets for join tokens, patches of the EdgeDevice, a delete.
"""

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from tests.harness.controller import ControllerFactory, Mesh
from tests.harness.devices import (
    DeviceFactory,
    approve,
    counter,
    custom,
    devices_on,
    get_device,
    get_istio,
    patch_device,
    wait_until,
)
from tests.support.thirdparty import ThirdPartyDevice, b64, raw_public

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def device_factory(broker: Mosquitto, prefix: str) -> Iterator[DeviceFactory]:
    yield from devices_on(broker, prefix)


def core(mesh: Mesh) -> Any:
    # The generated client types every model field as Optional; tests read it loosely.
    return client.CoreV1Api(mesh.api)


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def tokens_for(kube_api: KubeApiServer, mesh: Mesh, name: str) -> list[str]:
    return [
        t.token
        for t in kube_api.issued_tokens
        if t.namespace == mesh.namespace and t.service_account == name
    ]


def events_for(mesh: Mesh, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about EdgeDevice `name`."""
    listed = core(mesh).list_namespaced_event(mesh.namespace).items
    return [
        (e.type, e.reason, e.message)
        for e in listed
        if e.involved_object.kind == "EdgeDevice" and e.involved_object.name == name
    ]


def join_token(
    mesh: Mesh, value: str, *, glob: str | None = None, expires: datetime | None = None
) -> str:
    """Create a join-token Secret as an operator would; returns its name."""
    name = unique("join")
    annotations = {}
    if glob is not None:
        annotations["pimesh.io/device-glob"] = glob
    if expires is not None:
        annotations["pimesh.io/expires"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name, labels={"pimesh.io/join-token": "true"}, annotations=annotations or None
        ),
        data={"token": base64.b64encode(value.encode()).decode()},
    )
    core(mesh).create_namespaced_secret(mesh.namespace, secret)
    return name


def secret_exists(mesh: Mesh, name: str) -> bool:
    try:
        core(mesh).read_namespaced_secret(name, mesh.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def exists(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def resubscribe_barrier(dev: ThirdPartyDevice, leaf: str) -> None:
    """Subscribe to `leaf` again, then wait for the retained enrollment that follows it.

    Whatever is retained on `leaf` is delivered before the broker handles the second
    SUBSCRIBE, so once the enrollment arrives, `leaf` has shown all it holds.
    """
    seen = len(dev.received["enrollment"])
    dev.client.subscribe(dev.topic(leaf), 1)
    dev.client.subscribe(dev.topic("enrollment"), 1)
    dev.wait_for("enrollment", lambda _: len(dev.received["enrollment"]) > seen)


# approval ---------------------------------------------------------------------------------


def test_auto_approve_glob_admits_matching_ids_only(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    controller_factory(auto_approve=["kitchen-*", "hall-?"])
    inside, outside = device_factory(unique("kitchen")), device_factory(unique("garage"))
    for dev in (inside, outside):
        dev.controller_key()
        dev.announce()

    inside.wait_phase("Enrolled")
    assert get_device(mesh, inside.device_id)["spec"]["approved"] is True
    pending = outside.wait_phase("Pending")
    outside.verify_controller(pending)
    assert f"pimesh approve {outside.device_id}" in pending["reason"]
    obj = get_device(mesh, outside.device_id)
    assert obj["status"]["phase"] == "Pending"
    assert f"pimesh approve {outside.device_id}" in obj["status"]["reason"]
    assert not obj["spec"].get("approved")
    wait_until(
        lambda: ("Normal", "Pending") in [e[:2] for e in events_for(mesh, outside.device_id)],
        what="Pending event",
    )
    assert len(tokens_for(kube_api, mesh, inside.device_id)) == 1
    assert not tokens_for(kube_api, mesh, outside.device_id)
    assert not outside.received["bundle"]


def test_join_token_admits_one_device_and_is_consumed(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    controller_factory()
    secret = join_token(mesh, "let-me-in-0123456789")
    first, second = device_factory(), device_factory()
    first.controller_key()
    first.announce(join_token="let-me-in-0123456789")

    first.wait_phase("Enrolled")
    first.wait_for("bundle", lambda m: m["generation"] == 1)
    assert get_device(mesh, first.device_id)["spec"]["approved"] is True
    assert not secret_exists(mesh, secret)
    assert any(
        reason == "Approved" and secret in message
        for _, reason, message in events_for(mesh, first.device_id)
    )

    second.controller_key()
    second.announce(join_token="let-me-in-0123456789")
    rejected = second.wait_phase("Rejected")
    second.verify_controller(rejected)
    assert "join token" in rejected["reason"]
    obj = get_device(mesh, second.device_id)
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Rejected", rejected["reason"])
    assert not obj["spec"].get("approved")
    wait_until(
        lambda: "Rejected" in [e[1] for e in events_for(mesh, second.device_id)],
        what="Rejected event",
    )
    assert not tokens_for(kube_api, mesh, second.device_id)
    assert not second.received["bundle"]


def test_join_token_glob_and_expiry_are_enforced(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    controller_factory()
    door_secret = join_token(mesh, "door-token-0123456789", glob="door-*")
    past = datetime.now(UTC) - timedelta(minutes=1)
    old_secret = join_token(mesh, "old-token-0123456789", expires=past)
    window, door, late = (device_factory(unique(s)) for s in ("window", "door", "late"))

    window.controller_key()
    window.announce(join_token="door-token-0123456789")
    rejected = window.wait_phase("Rejected")
    assert f"not valid for device id {window.device_id}" in rejected["reason"]
    assert secret_exists(mesh, door_secret), "a refused device must not use the token up"

    late.controller_key()
    late.announce(join_token="old-token-0123456789")
    assert "expired" in late.wait_phase("Rejected")["reason"]
    assert secret_exists(mesh, old_secret)

    door.controller_key()
    door.announce(join_token="door-token-0123456789")
    door.wait_phase("Enrolled")
    assert not secret_exists(mesh, door_secret)
    for refused in (window, late):
        assert get_device(mesh, refused.device_id)["status"]["phase"] == "Rejected"
        assert not tokens_for(kube_api, mesh, refused.device_id)
        assert not refused.received["bundle"]
    wait_until(
        lambda: "Rejected" in [e[1] for e in events_for(mesh, late.device_id)],
        what="Rejected event",
    )


def test_join_token_counts_only_on_an_accepted_announce(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
) -> None:
    ctl = controller_factory()
    secret = join_token(mesh, "only-for-the-real-one-0123")
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_phase("Pending")

    # Someone with another key (self-signed, so it passes intake) brings a valid token
    # and then a wrong one: neither may admit nor reject the device pinned to its key.
    impostor = Ed25519PrivateKey.generate()
    keys = {"sign": b64(raw_public(impostor)), "kx": b64(raw_public(dev.kx_key))}
    for token in ("only-for-the-real-one-0123", "wrong-token-0123456789"):
        body = dev.announce_body(keys=keys, join_token=token)
        dev.publish("announce", dev.signed(body, key=impostor))
    wait_until(lambda: counter(ctl, "key_mismatch", kind="announce") == 2, what="impostors")

    obj = get_device(mesh, dev.device_id)
    assert obj["status"]["phase"] == "Pending"
    assert not obj["spec"].get("approved")
    assert secret_exists(mesh, secret)
    dev.announce(join_token="only-for-the-real-one-0123")
    dev.wait_phase("Enrolled")
    assert not secret_exists(mesh, secret)


# revoke, forget, rekey ----------------------------------------------------------------------


def test_revoke_removes_credentials_and_stays_revoked(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_for("bundle", lambda m: m["generation"] == 1)
    name, ns = dev.device_id, mesh.namespace

    patch_device(mesh, name, {"spec": {"revoked": True}})
    revoked = dev.wait_phase("Revoked")
    dev.verify_controller(revoked)
    wait_until(lambda: dev.empty_bundles >= 1, what="retained bundle cleared")
    assert not exists(core(mesh).read_namespaced_service_account, name, ns)
    we = custom(mesh.api).get_namespaced_custom_object
    assert not exists(we, "networking.istio.io", "v1", ns, "workloadentries", name)
    assert get_device(mesh, name)["status"]["phase"] == "Revoked"
    wait_until(lambda: "Revoked" in [e[1] for e in events_for(mesh, name)], what="Revoked event")

    bundles = len(dev.received["bundle"])
    accepted = counter(ctl, "accepted", kind="announce")
    dev.announce()
    wait_until(lambda: counter(ctl, "accepted", kind="announce") > accepted, what="announce")
    resubscribe_barrier(dev, "bundle")
    assert dev.received["enrollment"][-1]["phase"] == "Revoked"
    assert len(dev.received["bundle"]) == bundles, "a revoked device got a bundle"
    assert get_device(mesh, name)["status"]["phase"] == "Revoked"
    assert len(tokens_for(kube_api, mesh, name)) == 1
    assert not exists(core(mesh).read_namespaced_service_account, name, ns)


def test_deleting_the_edgedevice_forgets_the_device(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    controller_factory()
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_phase("Pending")
    approve(mesh, dev.device_id)
    dev.wait_phase("Enrolled")
    old_uid = get_device(mesh, dev.device_id)["metadata"]["uid"]

    cleared_before = dev.empty_bundles
    custom(mesh.api).delete_namespaced_custom_object(
        "pimesh.io", "v1alpha1", mesh.namespace, "edgedevices", dev.device_id
    )
    wait_until(
        lambda: (
            not exists(core(mesh).read_namespaced_service_account, dev.device_id, mesh.namespace)
        ),
        what="ServiceAccount collected with its EdgeDevice",
    )
    # Forgotten entirely: its retained bundle is cleared too (an empty retained payload).
    wait_until(lambda: dev.empty_bundles > cleared_before, what="retained bundle cleared")
    seen = len(dev.received["enrollment"])
    dev.announce()
    again = dev.wait_for(
        "enrollment",
        lambda m: m["phase"] == "Pending" and len(dev.received["enrollment"]) > seen,
    )
    assert f"pimesh approve {dev.device_id}" in again["reason"]
    obj = get_device(mesh, dev.device_id)
    assert obj["metadata"]["uid"] != old_uid
    assert obj["status"]["phase"] == "Pending"
    assert obj["status"].get("generation", 0) == 0
    assert not obj["spec"].get("approved")
    assert len(tokens_for(kube_api, mesh, dev.device_id)) == 1


def test_rekey_pins_new_keys_and_seals_to_them(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    mesh: Mesh,
    kube_api: KubeApiServer,
) -> None:
    ctl = controller_factory(auto_approve=["*"])
    dev = device_factory()
    dev.controller_key()
    dev.announce()
    dev.wait_for("bundle", lambda m: m["generation"] == 1)
    before = get_device(mesh, dev.device_id)["status"]
    old_sign = dev.sign_key

    requested = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch_device(
        mesh, dev.device_id, {"metadata": {"annotations": {"pimesh.io/rekey-requested": requested}}}
    )
    dev.sign_key, dev.kx_key = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    dev.announce()

    bundle = dev.wait_for("bundle", lambda m: m["generation"] == 2)
    content = dev.open_bundle(bundle)  # opens with the new kx key only
    assert content["token"] == tokens_for(kube_api, mesh, dev.device_id)[-1]
    status = get_device(mesh, dev.device_id)["status"]
    assert status["keys"] == {
        "sign": b64(raw_public(dev.sign_key)),
        "kx": b64(raw_public(dev.kx_key)),
    }
    assert status["keyFingerprint"] != before["keyFingerprint"]
    assert status["rekeyHandled"] == requested

    # The request is used up: the old keys are now the mismatch.
    body = dev.announce_body(
        keys={"sign": b64(raw_public(old_sign)), "kx": b64(raw_public(X25519PrivateKey.generate()))}
    )
    dev.publish("announce", dev.signed(body, key=old_sign))
    wait_until(lambda: counter(ctl, "key_mismatch", kind="announce") == 1, what="old key refused")
    assert get_device(mesh, dev.device_id)["status"]["keys"]["sign"] == b64(
        raw_public(dev.sign_key)
    )
    assert get_istio(mesh, "workloadentries", dev.device_id)["spec"]["address"] == dev.address
