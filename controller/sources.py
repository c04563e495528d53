"""Kubernetes event sources: list-then-watch loops that enqueue device ids.

`DeviceWatch` follows EdgeDevices into the controller's cache (`DeviceStore`) and
enqueues every device it lists, which is how a starting controller reconciles the whole
fleet, and then every device someone else changed (an operator approving, revoking or
rotating it). `ConfigWatch` follows the ConfigMaps every bundle is built
from (Istio's root certificate, the mesh config) and re-enqueues every device when one
changes. Both re-list after a broken watch or a 410 Gone, backing off while the API
server is unreachable, and never die.
"""

import logging
import threading
from collections.abc import Callable, Iterable

from controller.devicestore import DeviceStore
from controller.errors import ApiError, ControllerError
from controller.kube import CONFIG_MAPS, EDGE_DEVICES, JsonObject, Kube, Resource, WatchEvent
from controller.workqueue import Enqueue
from shared.mqtt import Backoff

log = logging.getLogger(__name__)


class _ListWatch:
    """A thread that lists a resource, then watches it from the list's resourceVersion."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        *,
        namespace: str | None,
        name: str,
        watch_timeout_s: int = 300,
    ) -> None:
        self._kube = kube
        self._resource = resource
        self._namespace = namespace
        self._watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def synced(self) -> bool:
        """The first list succeeded (readiness)."""
        return self._synced.is_set()

    def start(self) -> None:
        """Start listing and watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current watch ends (at most its timeout)."""
        self._stop.set()

    def on_list(self, objects: Iterable[JsonObject]) -> None:
        """Handle a full list (also after every re-list)."""

    def on_event(self, event: WatchEvent) -> None:
        """Handle one watch event."""

    def _run(self) -> None:
        attempt = 0
        backoff = Backoff(first_s=0.5, max_s=30.0)
        while not self._stop.is_set():
            try:
                objects, version = self._kube.list(self._resource, namespace=self._namespace)
                self.on_list(objects)
                self._synced.set()
                attempt = 0
                self._follow(version)
            except ApiError as exc:
                log.info(
                    "watch ended, listing again",
                    extra={"resource": self._resource.plural, "why": exc.reason},
                )
            except ControllerError as exc:
                log.warning(
                    "API unreachable", extra={"resource": self._resource.plural, "why": exc.reason}
                )
                self._stop.wait(backoff.delay(attempt))
                attempt += 1

    def _follow(self, version: str) -> None:
        while not self._stop.is_set():
            for event in self._kube.watch(
                self._resource,
                namespace=self._namespace,
                resource_version=version,
                timeout_s=self._watch_timeout_s,
            ):
                if self._stop.is_set():
                    return
                version = str(event.object.get("metadata", {}).get("resourceVersion", version))
                if event.type != "BOOKMARK":
                    self.on_event(event)


class DeviceWatch(_ListWatch):
    """Keeps the EdgeDevice cache current and enqueues devices someone else changed.

    Every listed device is enqueued (a (re)started controller trusts nothing it held);
    after that only changes the controller did not make itself wake a reconcile.
    """

    def __init__(
        self,
        kube: Kube,
        queue: Enqueue[str],
        *,
        store: DeviceStore,
        namespace: str,
        on_deleted: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(kube, EDGE_DEVICES, namespace=namespace, name="watch-edgedevices")
        self._queue = queue
        self._store = store
        self._on_deleted = on_deleted

    def on_list(self, objects: Iterable[JsonObject]) -> None:
        """Refill the cache and reconcile the whole fleet."""
        objects = list(objects)
        self._store.replace(objects)
        for obj in objects:
            self._queue.add(obj["metadata"]["name"])

    def on_event(self, event: WatchEvent) -> None:
        """Reconcile a device someone else changed; forget one that was deleted."""
        name = event.object["metadata"]["name"]
        if event.type == "DELETED":
            self._store.drop(name, uid=event.object["metadata"].get("uid"))
            if self._on_deleted is not None:
                self._on_deleted(name)
        elif not self._store.observe(event.object):
            return  # our own write, already in the cache
        self._queue.add(name)


class ConfigWatch(_ListWatch):
    """Calls `on_change` when one of the named ConfigMaps of a namespace changes."""

    def __init__(
        self, kube: Kube, *, namespace: str, names: frozenset[str], on_change: Callable[[], None]
    ) -> None:
        super().__init__(
            kube, CONFIG_MAPS, namespace=namespace, name=f"watch-configmaps-{namespace}"
        )
        self._names = names
        self._on_change = on_change
        self._seen: dict[str, str] = {}

    def on_list(self, objects: Iterable[JsonObject]) -> None:
        """Remember the content; a change seen only through a re-list counts too."""
        current = {
            o["metadata"]["name"]: repr(o.get("data"))
            for o in objects
            if o["metadata"]["name"] in self._names
        }
        if self._seen and current != self._seen:
            self._on_change()
        self._seen = current

    def on_event(self, event: WatchEvent) -> None:
        """Fire on a real change of a watched ConfigMap."""
        name = event.object["metadata"]["name"]
        if name not in self._names:
            return
        data = repr(event.object.get("data")) if event.type != "DELETED" else ""
        if self._seen.get(name) != data:
            self._seen[name] = data
            self._on_change()
