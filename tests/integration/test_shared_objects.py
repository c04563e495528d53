"""An app's shared objects (WorkloadGroup, Service) as devices join, clash, leave and move.

Black-box like test_enrollment.py: real Mosquitto (ACLs on), the Kubernetes API
emulator over HTTP, the controller as it runs in production, and devices written from
PROTOCOL.md alone (`tests.support.thirdparty`). The test reads objects straight from
the emulator's store (`KubeApiServer.get_object`), not over HTTP, so its request log
holds only the controller's requests, and the API-efficiency test can count them.
"""

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from sandbox.kubeapi.traffic import RequestRecord
from tests.harness.controller import ControllerFactory, Mesh
from tests.harness.devices import DeviceFactory, custom, devices_on, patch_device, wait_until
from tests.support.thirdparty import ThirdPartyDevice

pytestmark = pytest.mark.timeout(90)

HTTP: dict[str, Any] = {"name": "http-pi", "port": 8080, "protocol": "TCP"}
METRICS: dict[str, Any] = {"name": "metrics", "port": 9100, "protocol": "TCP"}
HTTP_ELSEWHERE: dict[str, Any] = {"name": "http-pi", "port": 9090, "protocol": "TCP"}


@pytest.fixture
def device_factory(broker: Mosquitto, prefix: str) -> Iterator[DeviceFactory]:
    yield from devices_on(broker, prefix)


@pytest.fixture
def ids() -> Callable[[str], str]:
    """Device ids of this test; ordered by their suffix (conflicts go to the later id)."""
    base = f"pi-{uuid.uuid4().hex[:8]}"
    return lambda suffix: f"{base}-{suffix}"


# reading the emulator's store (no HTTP: the request log stays the controller's) ----------


class Store:
    def __init__(self, kube_api: KubeApiServer, namespace: str) -> None:
        self.api, self.ns = kube_api, namespace

    def device(self, name: str) -> dict[str, Any] | None:
        return self.api.get_object("pimesh.io/v1alpha1", "edgedevices", name, namespace=self.ns)

    def status(self, name: str) -> dict[str, Any]:
        obj = self.device(name)
        return dict((obj or {}).get("status") or {})

    def uid(self, name: str) -> str:
        obj = self.device(name)
        assert obj is not None, f"no EdgeDevice {name}"
        return str(obj["metadata"]["uid"])

    def workload_group(self, app: str) -> dict[str, Any] | None:
        return self.api.get_object(
            "networking.istio.io/v1", "workloadgroups", app, namespace=self.ns
        )

    def service(self, app: str) -> dict[str, Any] | None:
        return self.api.get_object("v1", "services", app, namespace=self.ns)

    def owners(self, app: str) -> tuple[set[str], set[str]]:
        """Owner uids of the app's WorkloadGroup and of its Service."""
        return owner_uids(self.workload_group(app)), owner_uids(self.service(app))

    def ports(self, app: str) -> dict[str, int]:
        svc = self.service(app) or {}
        return {p["name"]: p["port"] for p in (svc.get("spec") or {}).get("ports", [])}

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        conditions = self.status(name).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), None)


def owner_uids(obj: dict[str, Any] | None) -> set[str]:
    if obj is None:
        return set()
    return {ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []}


@pytest.fixture
def store(kube_api: KubeApiServer, mesh: Mesh) -> Store:
    return Store(kube_api, mesh.namespace)


def start(
    device_factory: DeviceFactory, device_id: str, **announce: Any
) -> tuple[ThirdPartyDevice, dict[str, Any]]:
    dev = device_factory(device_id)
    dev.controller_key()
    return dev, dev.announce(**announce)


def wait_enrolled(store: Store, *names: str, timeout: float = 20) -> None:
    wait_until(
        lambda: all(store.status(n).get("phase") == "Enrolled" for n in names),
        timeout=timeout,
        what=f"{', '.join(names)} Enrolled",
    )


# a. ordering: included before Enrolled ---------------------------------------------------


def test_enrolled_devices_are_already_in_their_apps_objects(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    ports = {ids("a"): [HTTP], ids("b"): [METRICS], ids("c"): [HTTP, METRICS]}
    for name, announced in ports.items():
        start(device_factory, name, app="shop", ports=announced)

    checked: set[str] = set()

    def check_enrolled_are_included() -> bool:
        enrolled = [n for n in ports if store.status(n).get("phase") == "Enrolled"]
        if not enrolled:
            return False
        # Read right after the phase was seen, no polling: the contract's ordering.
        wg_owners, svc_owners = store.owners("shop")
        served = store.ports("shop")
        for name in enrolled:
            uid = store.uid(name)
            assert uid in wg_owners, f"{name} is Enrolled but not in the WorkloadGroup"
            assert uid in svc_owners, f"{name} is Enrolled but not among the Service's owners"
            for port in ports[name]:
                assert served.get(port["name"]) == port["port"], (name, served)
        checked.update(enrolled)
        return len(enrolled) == len(ports)

    wait_until(check_enrolled_are_included, timeout=30, what="every device Enrolled")
    assert checked == set(ports)
    uids = {store.uid(n) for n in ports}
    assert store.owners("shop") == (uids, uids)
    assert store.ports("shop") == {"http-pi": 8080, "metrics": 9100}
    wg = store.workload_group("shop")
    assert wg is not None
    refs = wg["metadata"]["ownerReferences"]
    assert all(r["kind"] == "EdgeDevice" and r["controller"] is False for r in refs)
    assert sorted(r["name"] for r in refs) == sorted(ports)


def test_a_device_enrolling_later_is_added_before_it_is_enrolled(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    first, second = ids("a"), ids("b")
    start(device_factory, first, app="shop", ports=[HTTP])
    wait_enrolled(store, first)
    assert store.owners("shop") == ({store.uid(first)}, {store.uid(first)})

    start(device_factory, second, app="shop", ports=[METRICS])
    wait_enrolled(store, second)
    both = {store.uid(first), store.uid(second)}
    assert store.owners("shop") == (both, both)
    assert store.ports("shop") == {"http-pi": 8080, "metrics": 9100}


# b. port conflicts -------------------------------------------------------------------------


def test_a_conflicting_port_goes_to_the_later_device_and_clears_when_dropped(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    first, later = ids("a"), ids("b")
    start(device_factory, first, app="shop", ports=[HTTP])
    wait_enrolled(store, first)
    dev, _ = start(device_factory, later, app="shop", ports=[HTTP_ELSEWHERE, METRICS])

    conflict = wait_until(
        lambda: (c := store.condition(later, "PortConflict")) and c["status"] == "True" and c,
        what="PortConflict on the later device",
    )
    assert conflict["reason"] == "PortConflict"
    assert "http-pi" in conflict["message"]
    assert store.ports("shop") == {"http-pi": 8080, "metrics": 9100}, "the first keeps its number"
    assert store.condition(first, "PortConflict") is None
    wait_enrolled(store, later)

    dev.announce(app="shop", ports=[METRICS])
    cleared = wait_until(
        lambda: (c := store.condition(later, "PortConflict")) and c["status"] == "False" and c,
        what="PortConflict cleared",
    )
    assert cleared["reason"] == "NoConflict"
    assert store.ports("shop") == {"http-pi": 8080, "metrics": 9100}
    assert store.condition(first, "PortConflict") is None


def test_an_app_whose_devices_drop_every_port_loses_its_service(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    name = ids("a")
    dev, _ = start(device_factory, name, app="quiet", ports=[HTTP])
    wait_enrolled(store, name)
    assert store.ports("quiet") == {"http-pi": 8080}

    dev.announce(app="quiet", ports=[])
    wait_until(lambda: store.service("quiet") is None, what="the port-less app's Service gone")
    assert owner_uids(store.workload_group("quiet")) == {store.uid(name)}


def test_an_earlier_id_arriving_later_takes_the_port_name_over(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    """The rule is by id, not by arrival: the device that was there first gets the condition."""
    controller_factory(auto_approve=["*"])
    earlier, later = ids("a"), ids("b")
    start(device_factory, later, app="shop", ports=[HTTP_ELSEWHERE])
    wait_enrolled(store, later)
    assert store.ports("shop") == {"http-pi": 9090}
    assert store.condition(later, "PortConflict") is None

    start(device_factory, earlier, app="shop", ports=[HTTP])
    wait_until(
        lambda: (c := store.condition(later, "PortConflict")) and c["status"] == "True",
        what="PortConflict on the device already enrolled",
    )
    wait_enrolled(store, earlier)
    assert store.ports("shop") == {"http-pi": 8080}
    assert store.condition(earlier, "PortConflict") is None


def test_a_conflict_clears_when_the_device_holding_the_name_leaves(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    mesh: Mesh,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    holder, later = ids("a"), ids("b")
    start(device_factory, holder, app="shop", ports=[HTTP])
    wait_enrolled(store, holder)
    start(device_factory, later, app="shop", ports=[HTTP_ELSEWHERE])
    wait_until(
        lambda: (c := store.condition(later, "PortConflict")) and c["status"] == "True",
        what="PortConflict on the later device",
    )

    patch_device(mesh, holder, {"spec": {"revoked": True}})
    cleared = wait_until(
        lambda: (c := store.condition(later, "PortConflict")) and c["status"] == "False" and c,
        what="PortConflict cleared once the name is free",
    )
    assert cleared["reason"] == "NoConflict"
    wait_until(lambda: store.ports("shop") == {"http-pi": 9090}, what="its number served now")


# c. devices leaving ------------------------------------------------------------------------


def test_revoked_and_deleted_devices_leave_their_apps_objects(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    mesh: Mesh,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    revoked, kept = ids("a"), ids("b")
    start(device_factory, revoked, app="shop", ports=[HTTP])
    start(device_factory, kept, app="shop", ports=[METRICS])
    wait_enrolled(store, revoked, kept)
    kept_uid = store.uid(kept)

    patch_device(mesh, revoked, {"spec": {"revoked": True}})
    wait_until(
        lambda: store.owners("shop") == ({kept_uid}, {kept_uid}),
        what="the revoked device's owner references removed",
    )
    wait_until(lambda: store.ports("shop") == {"metrics": 9100}, what="its port removed")
    assert store.status(revoked).get("phase") == "Revoked"

    custom(mesh.api).delete_namespaced_custom_object(
        "pimesh.io", "v1alpha1", mesh.namespace, "edgedevices", kept
    )
    wait_until(
        lambda: store.workload_group("shop") is None and store.service("shop") is None,
        what="the app's objects deleted with its last device",
    )


def test_revoking_every_device_deletes_the_apps_objects(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    mesh: Mesh,
    ids: Callable[[str], str],
) -> None:
    """No EdgeDevice is deleted, so no garbage collection: the controller must do it."""
    controller_factory(auto_approve=["*"])
    names = [ids("a"), ids("b")]
    for name in names:
        start(device_factory, name, app="shop", ports=[HTTP])
    wait_enrolled(store, *names)
    for name in names:
        patch_device(mesh, name, {"spec": {"revoked": True}})
    wait_until(
        lambda: store.workload_group("shop") is None and store.service("shop") is None,
        what="the app's objects deleted once no member is left",
    )
    assert all(store.device(n) is not None for n in names)


# d. a device moving to another app -------------------------------------------------------


def test_a_device_changing_its_app_moves_between_the_apps_objects(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    stays, moves = ids("a"), ids("b")
    start(device_factory, stays, app="shop", ports=[HTTP])
    dev, _ = start(device_factory, moves, app="shop", ports=[METRICS])
    wait_enrolled(store, stays, moves)
    stays_uid, moves_uid = store.uid(stays), store.uid(moves)
    assert store.owners("shop") == ({stays_uid, moves_uid}, {stays_uid, moves_uid})

    dev.announce(app="depot", ports=[METRICS])
    wait_until(
        lambda: store.owners("depot") == ({moves_uid}, {moves_uid}),
        what="the device in its new app's objects",
    )
    wait_until(
        lambda: store.owners("shop") == ({stays_uid}, {stays_uid}),
        what="the device out of its old app's objects",
    )
    assert store.ports("shop") == {"http-pi": 8080}
    assert store.ports("depot") == {"metrics": 9100}
    device = store.device(moves)
    assert device is not None
    assert device["spec"]["app"] == "depot"


def test_the_last_device_moving_away_deletes_its_old_apps_objects(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    ids: Callable[[str], str],
) -> None:
    controller_factory(auto_approve=["*"])
    dev, _ = start(device_factory, ids("a"), app="shop", ports=[HTTP])
    wait_enrolled(store, dev.device_id)
    uid = store.uid(dev.device_id)
    dev.announce(app="depot", ports=[HTTP])
    wait_until(lambda: store.owners("depot") == ({uid}, {uid}), what="in the new app")
    wait_until(
        lambda: store.workload_group("shop") is None and store.service("shop") is None,
        what="the old app's objects deleted",
    )


# e. API efficiency -------------------------------------------------------------------------


def kinds(records: list[RequestRecord], namespace: str) -> Counter[str]:
    """The controller's requests in the namespace as `VERB resource[/name[/sub]]`."""
    counts: Counter[str] = Counter()
    marker = f"/namespaces/{namespace}/"
    for record in records:
        if marker not in record.path:
            continue
        rest = record.path.split(marker, 1)[1]
        if rest.startswith("leases/"):
            continue  # the leader election's renewals, on their own clock
        verb = record.method
        if verb == "GET" and "/" not in rest:
            verb = "LIST"
        elif verb == "PATCH" and "force" in record.query:
            verb = "APPLY"
        counts[f"{verb} {rest}"] += 1
    return counts


def test_one_enrollment_costs_a_fixed_handful_of_requests(
    controller_factory: ControllerFactory,
    device_factory: DeviceFactory,
    store: Store,
    kube_api: KubeApiServer,
    mesh: Mesh,
    ids: Callable[[str], str],
) -> None:
    ns = mesh.namespace
    controller_factory(auto_approve=["*"])
    edge_devices = f"/apis/pimesh.io/v1alpha1/namespaces/{ns}/edgedevices"
    # The watch's first list fills the cache; a warm-up device applies the namespace.
    wait_until(
        lambda: any(r.method == "GET" and r.path == edge_devices for r in kube_api.requests),
        what="the controller's first list of EdgeDevices",
    )
    start(device_factory, ids("warm"), app="shop", ports=[HTTP])
    wait_enrolled(store, ids("warm"))

    measured = [ids("m1"), ids("m2")]
    since = len(kube_api.requests)
    devs = [start(device_factory, name, app="shop", ports=[HTTP])[0] for name in measured]
    for dev in devs:
        dev.wait_for("bundle", lambda m: m["generation"] == 1)
        dev.ack(1)
    wait_until(
        lambda: all(store.status(n).get("ackedGeneration") == 1 for n in measured),
        what="both acks recorded",
    )
    seen = kinds(kube_api.requests[since:], ns)
    report = "\n".join(f"{n:3d} {k}" for k, n in sorted(seen.items()))

    assert seen["POST edgedevices"] == len(measured), report
    assert seen["LIST edgedevices"] == 0, report
    for name in measured:
        sa = f"serviceaccounts/{name}"
        assert seen[f"APPLY {sa}"] == 1, report
        assert seen[f"APPLY workloadentries/{name}"] == 1, report
        assert seen[f"POST {sa}/token"] == 1, report
        assert 1 <= seen[f"PATCH edgedevices/{name}/status"] <= 2, report
        assert seen[f"GET edgedevices/{name}"] == 0, report
    assert not [k for k in seen if k.startswith("GET edgedevices")], report

    # A re-announce that changes nothing: at most its status patch (lastSeen,
    # lastAnnounceTs), and nothing applied.
    dev, name = devs[0], measured[0]
    before = store.status(name)["lastSeen"]
    since = len(kube_api.requests)
    dev.announce(app="shop", ports=[HTTP])
    wait_until(lambda: store.status(name)["lastSeen"] != before, what="re-announce absorbed")
    time.sleep(0.5)  # give a wrong extra request the chance to appear
    again = kinds(kube_api.requests[since:], ns)
    report = "\n".join(f"{n:3d} {k}" for k, n in sorted(again.items()))
    assert sum(again.values()) <= 1, report
    assert set(again) <= {f"PATCH edgedevices/{name}/status"}, report
    assert store.status(name)["generation"] == 1
