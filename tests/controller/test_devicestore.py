"""controller.devicestore against the Kubernetes API emulator over HTTP.

The store is driven the way `controller.sources.DeviceWatch` drives it (`replace` with a
list, `observe` with real watch events) while a second client plays the operator. The
emulator's request log shows which reads went to the API server.
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.devicestore import DeviceStore
from controller.errors import Conflict
from controller.kube import EDGE_DEVICES, JsonObject, Kube, load_api_client
from sandbox.kubeapi import KubeApiServer

pytestmark = pytest.mark.timeout(30)


class HookedKube(Kube):
    """Our facade with a hook run after a merge patch is answered, before it returns."""

    after_patch: Callable[[], None] | None = None

    def merge_patch(
        self,
        resource: Any,
        name: str,
        patch: JsonObject,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonObject:
        answer = super().merge_patch(
            resource, name, patch, namespace=namespace, subresource=subresource
        )
        hook, self.after_patch = self.after_patch, None
        if hook is not None:
            hook()
        return answer


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[HookedKube]:
    api = HookedKube(load_api_client(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def other(kubeconfig: Path) -> Iterator[Kube]:
    """Another client: an operator, or another replica."""
    api = Kube(load_api_client(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def store(kube: HookedKube, kube_namespace: str) -> DeviceStore:
    return DeviceStore(kube, namespace=kube_namespace)


def body(name: str, *, app: str = "led-pi") -> JsonObject:
    return {
        "apiVersion": "pimesh.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": name, "labels": {"pimesh.io/app": app}},
        "spec": {"app": app, "groups": [], "labels": {}},
    }


def make(other: Kube, namespace: str, name: str, **kw: Any) -> JsonObject:
    return other.create(EDGE_DEVICES, body(name, **kw), namespace=namespace)


def sync(store: DeviceStore, kube: Kube, namespace: str) -> str:
    """What DeviceWatch does first: list, and hand the list to the store."""
    items, version = kube.list(EDGE_DEVICES, namespace=namespace)
    store.replace(items)
    return version


def reads(kube_api: KubeApiServer, namespace: str, *, since: int) -> list[str]:
    """GETs of EdgeDevices in the namespace since `since` (single objects and lists)."""
    base = f"/namespaces/{namespace}/edgedevices"
    return [
        r.path
        for r in kube_api.requests[since:]
        if r.method == "GET" and base in r.path and r.query.get("watch") not in ("true", "1")
    ]


def mark(kube_api: KubeApiServer) -> int:
    return len(kube_api.requests)


def watch_events(kube: Kube, namespace: str, *, since: str, count: int) -> list[JsonObject]:
    """The next `count` EdgeDevice change events after `since`, as the watch delivers them."""
    objects: list[JsonObject] = []
    for event in kube.watch(EDGE_DEVICES, namespace=namespace, resource_version=since, timeout_s=5):
        if event.type in ("ADDED", "MODIFIED"):
            objects.append(event.object)
        if len(objects) == count:
            break
    assert len(objects) == count, f"watch delivered {len(objects)} of {count} events"
    return objects


def rv(obj: JsonObject) -> str:
    return str(obj["metadata"]["resourceVersion"])


# reads -------------------------------------------------------------------------------------


def test_get_before_the_first_list_reads_the_api(
    store: DeviceStore, other: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    made = make(other, kube_namespace, "pi-a")
    since = mark(kube_api)

    found = store.get("pi-a")
    assert found is not None
    assert (found.name, found.uid, found.resource_version) == (
        "pi-a",
        made["metadata"]["uid"],
        rv(made),
    )
    assert store.get("pi-missing") is None
    # Not trusted before the first list: every read goes to the API server.
    other.merge_patch(EDGE_DEVICES, "pi-a", {"spec": {"approved": True}}, namespace=kube_namespace)
    again = store.get("pi-a")
    assert again is not None
    assert again.spec.approved
    base = f"/apis/pimesh.io/v1alpha1/namespaces/{kube_namespace}/edgedevices"
    assert reads(kube_api, kube_namespace, since=since) == [
        f"{base}/pi-a",
        f"{base}/pi-missing",
        f"{base}/pi-a",
    ]


def test_after_replace_the_cache_is_trusted_without_requests(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    listed = make(other, kube_namespace, "pi-a")
    make(other, kube_namespace, "pi-b", app="other-app")
    sync(store, kube, kube_namespace)
    # A change the watch has not brought yet: the cache still answers with what it holds.
    other.merge_patch(EDGE_DEVICES, "pi-a", {"spec": {"approved": True}}, namespace=kube_namespace)
    since = mark(kube_api)

    cached = store.get("pi-a")
    assert cached is not None
    assert cached.resource_version == rv(listed)
    assert not cached.spec.approved
    assert store.get("pi-missing") is None, "absent from a synced cache means absent"
    assert sorted(d.name for d in store.all()) == ["pi-a", "pi-b"]
    assert [d.name for d in store.members("other-app")] == ["pi-b"]
    assert [d.name for d in store.members("led-pi")] == ["pi-a"]
    assert reads(kube_api, kube_namespace, since=since) == []


def test_writes_go_through_to_the_cache(
    store: DeviceStore, kube: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    sync(store, kube, kube_namespace)
    created = store.create(body("pi-a"))
    assert store.get("pi-a") == created
    patched = store.patch_status("pi-a", {"status": {"phase": "Pending", "generation": 0}})
    assert int(patched.resource_version) > int(created.resource_version)
    since = mark(kube_api)
    cached = store.get("pi-a")
    assert cached is not None
    assert cached.resource_version == patched.resource_version
    assert cached.status.phase == "Pending"
    assert reads(kube_api, kube_namespace, since=since) == []


# what the watch saw ------------------------------------------------------------------------


def test_observe_tells_our_own_writes_from_foreign_changes(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str
) -> None:
    make(other, kube_namespace, "pi-a")
    start = sync(store, kube, kube_namespace)

    ours = store.patch_status("pi-a", {"status": {"phase": "Pending"}})
    theirs = other.merge_patch(
        EDGE_DEVICES, "pi-a", {"spec": {"approved": True}}, namespace=kube_namespace
    )
    mine_again = store.patch("pi-a", {"metadata": {"annotations": {"note": "ours"}}})
    events = watch_events(kube, kube_namespace, since=start, count=3)
    assert [rv(e) for e in events] == [
        ours.resource_version,
        rv(theirs),
        mine_again.resource_version,
    ]

    assert store.observe(events[0]) is False, "the event of our own write is not news"
    assert store.observe(events[1]) is True, "another client's change is"
    # Our second write was answered with their change in it (the cache had not seen it
    # yet): not counted as only ours, so its event is news too. One reconcile too many
    # at worst, never one too few.
    assert store.observe(events[2]) is True
    cached = store.get("pi-a")
    assert cached is not None
    assert cached.resource_version == mine_again.resource_version
    assert cached.spec.approved
    assert cached.annotations == {"note": "ours"}


def test_an_event_of_an_unknown_device_is_foreign_and_cached(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    start = sync(store, kube, kube_namespace)
    make(other, kube_namespace, "pi-new")
    (event,) = watch_events(kube, kube_namespace, since=start, count=1)
    assert store.observe(event) is True
    since = mark(kube_api)
    cached = store.get("pi-new")
    assert cached is not None
    assert cached.resource_version == rv(event)
    assert reads(kube_api, kube_namespace, since=since) == []


def test_a_late_event_does_not_replace_a_newer_copy(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str
) -> None:
    make(other, kube_namespace, "pi-a")
    start = sync(store, kube, kube_namespace)
    foreign = other.merge_patch(
        EDGE_DEVICES, "pi-a", {"spec": {"approved": True}}, namespace=kube_namespace
    )
    first = store.patch_status("pi-a", {"status": {"phase": "Approved"}})
    second = store.patch_status("pi-a", {"status": {"phase": "Enrolled"}})
    events = watch_events(kube, kube_namespace, since=start, count=3)
    assert [rv(e) for e in events] == [
        rv(foreign),
        first.resource_version,
        second.resource_version,
    ]

    # Both writes returned before any of their events arrived: the events are all late.
    # The first write's answer held the foreign change the cache had not seen: news too.
    assert store.observe(events[0]) is True
    assert store.observe(events[1]) is True
    for stale in events[:2]:
        cached = store.get("pi-a")
        assert cached is not None
        assert cached.resource_version == second.resource_version, f"replaced by rv {rv(stale)}"
        assert cached.status.phase == "Enrolled"
    assert store.observe(events[2]) is False


def test_a_conflict_makes_the_next_get_read_the_api(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    make(other, kube_namespace, "pi-a")
    sync(store, kube, kube_namespace)
    stale = store.get("pi-a")
    assert stale is not None
    theirs = other.merge_patch(
        EDGE_DEVICES,
        "pi-a",
        {"status": {"generation": 7}},
        namespace=kube_namespace,
        subresource="status",
    )
    guarded = {
        "metadata": {"resourceVersion": stale.resource_version},
        "status": {"generation": 1},
    }
    with pytest.raises(Conflict):
        store.patch_status("pi-a", guarded)

    since = mark(kube_api)
    fresh = store.get("pi-a")
    assert fresh is not None
    assert fresh.resource_version == rv(theirs)
    assert fresh.status.generation == 7
    assert reads(kube_api, kube_namespace, since=since) == [
        f"/apis/pimesh.io/v1alpha1/namespaces/{kube_namespace}/edgedevices/pi-a"
    ]
    # Read once: trusted again after that.
    since = mark(kube_api)
    assert store.get("pi-a") == fresh
    assert reads(kube_api, kube_namespace, since=since) == []


def test_a_conflicting_create_makes_the_next_get_read_the_api(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    sync(store, kube, kube_namespace)
    made = make(other, kube_namespace, "pi-a")  # another replica was faster
    with pytest.raises(Conflict):
        store.create(body("pi-a"))
    since = mark(kube_api)
    found = store.get("pi-a")
    assert found is not None
    assert found.uid == made["metadata"]["uid"]
    assert len(reads(kube_api, kube_namespace, since=since)) == 1


def test_drop_forgets(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str, kube_api: KubeApiServer
) -> None:
    make(other, kube_namespace, "pi-a")
    make(other, kube_namespace, "pi-b")
    sync(store, kube, kube_namespace)
    last = store.patch_status("pi-a", {"status": {"phase": "Pending"}})
    other.delete(EDGE_DEVICES, "pi-a", namespace=kube_namespace)

    dropped = store.drop("pi-a")
    assert dropped == last
    assert store.drop("pi-a") is None
    since = mark(kube_api)
    assert store.get("pi-a") is None
    assert [d.name for d in store.all()] == ["pi-b"]
    assert [d.name for d in store.members("led-pi")] == ["pi-b"]
    assert reads(kube_api, kube_namespace, since=since) == []


def test_a_device_recreated_after_drop_is_news(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str
) -> None:
    make(other, kube_namespace, "pi-a")
    sync(store, kube, kube_namespace)
    store.patch_status("pi-a", {"status": {"phase": "Pending"}})
    other.delete(EDGE_DEVICES, "pi-a", namespace=kube_namespace)
    store.drop("pi-a")
    _, start = kube.list(EDGE_DEVICES, namespace=kube_namespace)
    made = make(other, kube_namespace, "pi-a")
    (event,) = watch_events(kube, kube_namespace, since=start, count=1)
    assert store.observe(event) is True
    cached = store.get("pi-a")
    assert cached is not None
    assert cached.uid == made["metadata"]["uid"]
    assert cached.status.phase is None


def test_a_write_answered_while_its_device_is_deleted_does_not_bring_it_back(
    store: DeviceStore, kube: HookedKube, other: Kube, kube_namespace: str
) -> None:
    """A reconcile's write and an operator's delete race; the watch's DELETED wins.

    The write is answered before the delete; its answer is stored after the watch
    thread handled the DELETED event (two threads, no order between them). A copy the
    API server has since deleted must not stay in the cache: it would count in its
    app's shared objects (`members`), the rotation run (`all`) and `get` for good.
    """
    make(other, kube_namespace, "pi-a")
    sync(store, kube, kube_namespace)

    def deleted_meanwhile() -> None:
        other.delete(EDGE_DEVICES, "pi-a", namespace=kube_namespace)
        store.drop("pi-a")  # DeviceWatch.on_event for the DELETED event

    kube.after_patch = deleted_meanwhile
    store.patch_status("pi-a", {"status": {"phase": "Pending"}})
    assert other.find(EDGE_DEVICES, "pi-a", namespace=kube_namespace) is None
    assert [d.name for d in store.all()] == [], "a deleted device came back into the cache"
    assert store.get("pi-a") is None


def test_a_write_that_changed_nothing_does_not_hide_a_foreign_change(
    store: DeviceStore, kube: Kube, other: Kube, kube_namespace: str
) -> None:
    make(other, kube_namespace, "pi-a")
    start = sync(store, kube, kube_namespace)
    theirs = other.merge_patch(
        EDGE_DEVICES,
        "pi-a",
        {"spec": {"approved": True, "revoked": True}},
        namespace=kube_namespace,
    )
    # The controller approves at the same moment: its patch changes nothing, and the
    # answer is the operator's version.
    answer = store.patch("pi-a", {"spec": {"approved": True}})
    assert answer.resource_version == rv(theirs)
    (event,) = watch_events(kube, kube_namespace, since=start, count=1)
    assert store.observe(event) is True, "the operator's revoke must still wake a reconcile"
