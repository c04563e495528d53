"""controller.device: status changes gathered in memory and written as one merge patch."""

import json
from datetime import UTC, datetime
from typing import Any

from controller.conditions import set_condition
from controller.device import Condition, DeviceKeys, DevicePort, EdgeDevice
from sandbox.kubeapi.patches import merge_patch

T0 = datetime(2026, 11, 26, 11, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 26, 11, 5, 30, tzinfo=UTC)


def api_object(*, rv: str = "10", **status: Any) -> dict[str, Any]:
    base_status: dict[str, Any] = {
        "phase": "Approved",
        "reason": "approved; waiting for the device to announce itself",
        "addresses": ["192.168.1.178"],
        "ports": [{"name": "http-pi", "port": 8080, "protocol": "TCP"}],
        "online": True,
        "lastSeen": "2026-11-26T10:00:00Z",
        "keys": {"sign": "c2lnbg==", "kx": "a3g="},
        "keyFingerprint": "SHA256:abc",
        "generation": 0,
        "ackedGeneration": 0,
    }
    base_status.update(status)
    return {
        "apiVersion": "pimesh.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {
            "name": "pi-kitchen",
            "namespace": "pi-fleet",
            "uid": "uid-1",
            "resourceVersion": rv,
            "annotations": {"pimesh.io/rotate-requested": "r1"},
        },
        "spec": {"approved": True, "app": "led-pi", "groups": ["kitchen"]},
        "status": base_status,
    }


def device(**status: Any) -> EdgeDevice:
    return EdgeDevice.from_api(api_object(**status))


# with_status -----------------------------------------------------------------------------


def test_a_fresh_object_has_nothing_unsaved() -> None:
    fresh = device()
    assert fresh.unsaved == frozenset()
    assert fresh.unsaved_patch() == {"status": {}}


def test_with_status_records_only_real_changes() -> None:
    fresh = device()
    same = fresh.with_status(
        phase="Approved",
        online=True,
        generation=0,
        addresses=("192.168.1.178",),
        ports=(DevicePort(name="http-pi", port=8080),),
        keys=DeviceKeys(sign="c2lnbg==", kx="a3g="),
    )
    assert same is fresh, "nothing changed: the same object, nothing to write"
    assert same.unsaved == frozenset()

    changed = fresh.with_status(phase="Enrolled", online=True, generation=1)
    assert changed.unsaved == {"phase", "generation"}
    assert changed.status.phase == "Enrolled"
    assert changed.status.generation == 1
    assert fresh.status.phase == "Approved", "the original is untouched (frozen model)"
    assert fresh.unsaved == frozenset()


def test_with_status_accumulates_over_calls() -> None:
    step1 = device().with_status(last_seen=T1)
    step2 = step1.with_status(acked_generation=1, last_seen=T1)
    step3 = step2.with_status(phase="Enrolled")
    assert step1.unsaved == {"last_seen"}
    assert step2.unsaved == {"last_seen", "acked_generation"}
    assert step3.unsaved == {"last_seen", "acked_generation", "phase"}


def test_an_unchanged_condition_tuple_is_no_change() -> None:
    fresh = device()
    conditions = set_condition(fresh.status.conditions, "PortConflict", "True", "P", "m", now=T0)
    with_condition = fresh.with_status(conditions=conditions)
    assert with_condition.unsaved == {"conditions"}
    again = set_condition(
        with_condition.status.conditions, "PortConflict", "True", "P", "m", now=T1
    )
    assert with_condition.with_status(conditions=again) is with_condition


# unsaved_patch ---------------------------------------------------------------------------


def test_unsaved_patch_writes_exactly_the_changed_fields_in_camel_case() -> None:
    changed = device().with_status(
        acked_generation=1,
        last_announce_ts=T1,
        token_expires_at=T0,
        key_fingerprint="SHA256:abc",  # unchanged: not written
        agent_version="0.4.0",
    )
    assert changed.unsaved_patch() == {
        "status": {
            "ackedGeneration": 1,
            "agentVersion": "0.4.0",
            "lastAnnounceTs": "2026-11-26T11:05:30Z",
            "tokenExpiresAt": "2026-11-26T11:00:00Z",
        }
    }


def test_unsaved_patch_renders_nested_values_as_the_crd_spells_them() -> None:
    condition = Condition(
        type="PortConflict",
        status="True",
        reason="PortConflict",
        message="port names http are already served with other numbers",
        last_transition_time=T0,
    )
    changed = device().with_status(
        conditions=(condition,),
        keys=DeviceKeys(sign="bmV3", kx="bmV3a3g="),
        ports=(DevicePort(name="metrics", port=9100),),
        online=False,
    )
    assert changed.unsaved_patch() == {
        "status": {
            "conditions": [
                {
                    "type": "PortConflict",
                    "status": "True",
                    "reason": "PortConflict",
                    "message": "port names http are already served with other numbers",
                    "lastTransitionTime": "2026-11-26T11:00:00Z",
                }
            ],
            "keys": {"sign": "bmV3", "kx": "bmV3a3g="},
            "online": False,
            "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"}],
        }
    }


def test_a_none_value_is_json_null_and_the_merge_patch_clears_the_field() -> None:
    obj = api_object(reason="was here", bundleHash="sha256:1")
    changed = EdgeDevice.from_api(obj).with_status(reason=None, bundle_hash=None, generation=2)
    patch = changed.unsaved_patch()
    assert patch == {"status": {"bundleHash": None, "generation": 2, "reason": None}}
    assert '"reason": null' in json.dumps(patch)
    # RFC 7386, as the API server applies it: null removes the field.
    merged = merge_patch(obj, patch)
    assert "reason" not in merged["status"]
    assert "bundleHash" not in merged["status"]
    assert merged["status"]["generation"] == 2
    assert merged["status"]["phase"] == "Approved", "fields not in the patch are kept"
    reread = EdgeDevice.from_api(merged)
    assert reread.status == changed.status


def test_the_patch_applied_to_the_object_gives_the_status_held_in_memory() -> None:
    obj = api_object()
    changed = (
        EdgeDevice.from_api(obj)
        .with_status(phase="Enrolled", reason="bundle generation 1 published")
        .with_status(generation=1, token_issued_at=T0, token_expires_at=T1, keys=None)
    )
    reread = EdgeDevice.from_api(merge_patch(obj, json.loads(json.dumps(changed.unsaved_patch()))))
    assert reread.status == changed.status


# rebased ---------------------------------------------------------------------------------


def test_rebased_keeps_unsaved_changes_on_top_of_a_fresh_object() -> None:
    mine = device().with_status(phase="Enrolled", generation=1, last_seen=T1)
    fresh_obj = api_object(rv="42", online=False, hostname="kitchen")
    fresh_obj["spec"]["revoked"] = True
    fresh_obj["metadata"]["annotations"] = {"pimesh.io/rekey-requested": "k1"}
    rebased = mine.rebased(EdgeDevice.from_api(fresh_obj))

    assert rebased.resource_version == "42", "the fresh object's version, for preconditions"
    assert rebased.spec.revoked is True
    assert rebased.annotations == {"pimesh.io/rekey-requested": "k1"}
    assert rebased.status.online is False, "what someone else wrote is kept"
    assert rebased.status.hostname == "kitchen"
    assert (rebased.status.phase, rebased.status.generation, rebased.status.last_seen) == (
        "Enrolled",
        1,
        T1,
    )
    assert rebased.unsaved == {"phase", "generation", "last_seen"}
    assert rebased.unsaved_patch() == {
        "status": {"generation": 1, "lastSeen": "2026-11-26T11:05:30Z", "phase": "Enrolled"}
    }


def test_rebased_drops_changes_the_fresh_object_already_has() -> None:
    mine = device().with_status(phase="Enrolled", generation=1)
    fresh = EdgeDevice.from_api(api_object(rv="43", phase="Enrolled"))
    rebased = mine.rebased(fresh)
    assert rebased.unsaved == {"generation"}
    assert rebased.status.phase == "Enrolled"


def test_rebased_without_unsaved_changes_is_the_fresh_object() -> None:
    fresh = EdgeDevice.from_api(api_object(rv="44", online=False))
    assert device().rebased(fresh) is fresh
