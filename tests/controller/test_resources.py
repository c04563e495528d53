import pytest

from controller import resources
from controller.resources import DeviceView, PortSpec
from tests.support.schemas import validate_manifest


def device(device_id: str = "pi-kitchen", **kw: object) -> DeviceView:
    base: dict[str, object] = {
        "device_id": device_id,
        "uid": f"uid-{device_id}",
        "app": "led-pi",
        "address": "192.168.1.178",
        "online": True,
        "groups": ("kitchen",),
        "labels": {"floor": "1"},
        "ports": (PortSpec("http-pi", 8080),),
    }
    base.update(kw)
    return DeviceView(**base)  # type: ignore[arg-type]


def test_every_rendered_object_validates() -> None:
    devices = [device(), device("pi-hall", groups=(), online=False)]
    manifests = [
        resources.namespace("pi-fleet"),
        resources.service_account(devices[0], "pi-fleet"),
        resources.workload_entry(devices[0], "pi-fleet"),
        resources.workload_entry(devices[1], "pi-fleet"),
        resources.workload_group("led-pi", "pi-fleet", devices),
        resources.service("led-pi", "pi-fleet", devices),
    ]
    for manifest in manifests:
        assert manifest is not None
        validate_manifest(manifest)
        assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pimesh"


def test_validator_catches_a_bad_manifest() -> None:
    bad = resources.workload_entry(device(), "pi-fleet")
    bad["spec"]["adress"] = "typo"
    with pytest.raises(Exception, match="adress"):
        validate_manifest(bad)
    core = resources.service_account(device(), "pi-fleet")
    core["spec"] = {"nope": 1}
    with pytest.raises(Exception, match="spec"):
        validate_manifest(core)


def test_workload_entry_matches_protocol() -> None:
    we = resources.workload_entry(device(), "pi-fleet")
    assert we["apiVersion"] == "networking.istio.io/v1"
    assert we["metadata"]["name"] == "pi-kitchen"
    assert we["metadata"]["annotations"] == {"ambient.istio.io/redirection": "enabled"}
    assert we["spec"] == {
        "address": "192.168.1.178",
        "serviceAccount": "pi-kitchen",
        "labels": {
            "app": "led-pi",
            "floor": "1",
            "pimesh.io/device": "pi-kitchen",
            "pimesh.io/online": "true",
            "pimesh.io/group.kitchen": "true",
            "ambient.istio.io/redirection": "enabled",
        },
    }
    owner = we["metadata"]["ownerReferences"]
    assert owner == [
        {
            "apiVersion": "pimesh.io/v1alpha1",
            "kind": "EdgeDevice",
            "name": "pi-kitchen",
            "uid": "uid-pi-kitchen",
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]


def test_offline_device_is_labelled_out_of_its_service() -> None:
    we = resources.workload_entry(device(online=False), "pi-fleet")
    assert we["spec"]["labels"]["pimesh.io/online"] == "false"
    svc = resources.service("led-pi", "pi-fleet", [device()])
    assert svc is not None
    assert svc["spec"]["selector"] == {"app": "led-pi", "pimesh.io/online": "true"}


def test_shared_objects_are_owned_by_every_device_of_the_app() -> None:
    devices = [device("pi-b"), device("pi-a")]
    wg = resources.workload_group("led-pi", "pi-fleet", devices)
    assert [o["name"] for o in wg["metadata"]["ownerReferences"]] == ["pi-a", "pi-b"]
    assert all(o["controller"] is False for o in wg["metadata"]["ownerReferences"])
    assert "serviceAccount" not in wg["spec"]["template"]


def test_service_is_the_union_of_ports_and_first_claim_wins() -> None:
    a = device("pi-a", ports=(PortSpec("http-pi", 8080), PortSpec("metrics", 9100)))
    b = device("pi-b", ports=(PortSpec("http-pi", 8081), PortSpec("ssh-x", 2222)))
    ports, conflicts = resources.service_ports([b, a])
    assert [(p.name, p.port) for p in ports] == [
        ("http-pi", 8080),
        ("metrics", 9100),
        ("ssh-x", 2222),
    ]
    assert conflicts == {"pi-b": ["http-pi"]}
    svc = resources.service("led-pi", "pi-fleet", [a, b])
    assert svc is not None
    assert svc["spec"]["ports"][0] == {
        "name": "http-pi",
        "port": 8080,
        "targetPort": 8080,
        "protocol": "TCP",
    }


def test_no_ports_no_service() -> None:
    assert resources.service("led-pi", "pi-fleet", [device(ports=())]) is None


def test_namespace_is_ambient() -> None:
    ns = resources.namespace("pi-fleet")
    assert ns["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
