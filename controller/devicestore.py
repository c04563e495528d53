"""EdgeDevices as the controller sees them: an informer cache with write-through.

Reading a device from the API at every reconcile, and listing an app's devices at every
enrollment, made the controller's requests per device grow with the fleet. Like
client-go's informers, the controller reads EdgeDevices from a cache that the watch
(`controller.sources.DeviceWatch`) keeps current, and writes go to the API server. Two
additions make the cache safe to act on at once:

- write-through: the object a write returns is stored at once, so the next reconcile
  of the same device sees its own writes even before their watch events arrive;
- own-write filtering: the resourceVersions our writes produced are remembered, and a
  watch event carrying one of them is not news. Only a change someone else made (an
  operator, another replica) is reported as foreign, which is what should wake a
  reconcile; the controller no longer re-reconciles a device after each of its writes.
  A write that comes back with someone else's change in it (a patch that changed
  nothing returns the current object) is not counted as ours, so that change's event
  still wakes a reconcile;
- tombstones: a write answered just before its device was deleted must not bring the
  device back, so the uids of deleted devices are remembered until the next list.

Kubernetes asks clients to treat resourceVersions as opaque. They are only compared to
keep the newer of two copies of an object (a late watch event must not replace what a
write just returned); when they are not integers, as they are from etcd, the copy
arriving last wins. A 409 makes the cached copy suspect: the next read goes to the API.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from controller.device import EdgeDevice
from controller.errors import Conflict
from controller.kube import EDGE_DEVICES, JsonObject, Kube

TOMBSTONES = 10_000
"""Uids of deleted devices remembered between lists (oldest forgotten first)."""


class DeviceStore:
    """Thread-safe EdgeDevice cache of one namespace, and the writes that keep it current."""

    def __init__(self, kube: Kube, *, namespace: str) -> None:
        self._kube = kube
        self._ns = namespace
        self._lock = threading.Lock()
        self._devices: dict[str, EdgeDevice] = {}
        self._ours: dict[str, set[str]] = {}
        self._suspect: set[str] = set()
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._synced = False

    # reads ---------------------------------------------------------------------------

    def get(self, name: str) -> EdgeDevice | None:
        """The device as last seen; read from the API before the first list, or when suspect."""
        with self._lock:
            cached = self._devices.get(name)
            trusted = self._synced and name not in self._suspect
        if trusted:
            return cached
        obj = self._kube.find(EDGE_DEVICES, name, namespace=self._ns)
        with self._lock:
            self._suspect.discard(name)
        if obj is None:
            return None
        return self._keep(obj)

    def all(self) -> list[EdgeDevice]:
        """Every cached device (the whole fleet once the first list is in)."""
        with self._lock:
            return list(self._devices.values())

    def members(self, app: str) -> list[EdgeDevice]:
        """The cached devices whose spec names `app`."""
        with self._lock:
            return [d for d in self._devices.values() if d.app == app]

    # what the watch saw --------------------------------------------------------------

    def replace(self, objects: Iterable[JsonObject]) -> None:
        """A full list: it is the truth, and nothing we wrote before it is pending."""
        devices = {d.name: d for d in map(EdgeDevice.from_api, objects)}
        with self._lock:
            self._devices = devices
            self._ours.clear()
            self._suspect.clear()
            self._gone.clear()
            self._synced = True

    def observe(self, obj: JsonObject) -> bool:
        """Take a watch event's object; True when the change was not ours."""
        device = EdgeDevice.from_api(obj)
        with self._lock:
            ours = self._ours.get(device.name)
            foreign = ours is None or device.resource_version not in ours
            if ours is not None:
                ours.discard(device.resource_version)
                if not ours:
                    del self._ours[device.name]
            self._store_locked(device)
        return foreign

    def drop(self, name: str, *, uid: str | None = None) -> EdgeDevice | None:
        """The device (that incarnation: `uid`) was deleted; returns its last known state."""
        with self._lock:
            self._ours.pop(name, None)
            self._suspect.discard(name)
            last = self._devices.pop(name, None)
            for gone in {uid, last.uid if last else None} - {None, ""}:
                self._gone[str(gone)] = None
            while len(self._gone) > TOMBSTONES:
                self._gone.popitem(last=False)
            return last

    # writes --------------------------------------------------------------------------

    def create(self, body: JsonObject) -> EdgeDevice:
        """Create an EdgeDevice. Raises Conflict when it exists (the cache is then suspect)."""
        return self._write(
            body["metadata"]["name"],
            lambda: self._kube.create(EDGE_DEVICES, body, namespace=self._ns),
        )

    def patch(self, name: str, patch: JsonObject) -> EdgeDevice:
        """Merge-patch the object (metadata, spec)."""
        return self._write(
            name,
            lambda: self._kube.merge_patch(EDGE_DEVICES, name, patch, namespace=self._ns),
            patch=patch,
        )

    def patch_status(self, name: str, patch: JsonObject) -> EdgeDevice:
        """Merge-patch /status; a `metadata.resourceVersion` in it is a precondition."""
        return self._write(
            name,
            lambda: self._kube.merge_patch(
                EDGE_DEVICES, name, patch, namespace=self._ns, subresource="status"
            ),
        )

    def _write(
        self,
        name: str,
        call: Callable[[], JsonObject],
        *,
        patch: JsonObject | None = None,
    ) -> EdgeDevice:
        with self._lock:
            before = self._devices.get(name)
        try:
            obj = call()
        except Conflict:
            with self._lock:
                self._suspect.add(name)
            raise
        device = EdgeDevice.from_api(obj)
        with self._lock:
            if before is None or _only_ours(before, device, patch=patch or {}):
                self._ours.setdefault(device.name, set()).add(device.resource_version)
            return self._store_locked(device)

    def _keep(self, obj: JsonObject) -> EdgeDevice:
        with self._lock:
            return self._store_locked(EdgeDevice.from_api(obj))

    def _store_locked(self, device: EdgeDevice) -> EdgeDevice:
        """Keep the newer copy of a device not deleted since; returns the one kept."""
        if device.uid in self._gone:
            return device  # answered after the device was deleted: not news, not kept
        current = self._devices.get(device.name)
        if current is not None and _older(device.resource_version, current.resource_version):
            return current
        self._devices[device.name] = device
        return device


def _only_ours(before: EdgeDevice, after: EdgeDevice, *, patch: JsonObject) -> bool:
    """Whether a write's answer holds no change but the ones the write made.

    Operators change annotations and spec; the controller's writes change status, or the
    annotations and spec fields its merge patch names.
    """
    annotations = set(patch.get("metadata", {}).get("annotations", {}))
    spec = set(patch.get("spec", {}))

    def others(device: EdgeDevice) -> tuple[dict[str, str], dict[str, object]]:
        kept = {k: v for k, v in device.annotations.items() if k not in annotations}
        return kept, device.spec.model_dump(exclude=spec)

    return others(before) == others(after)


def _older(version: str, than: str) -> bool:
    try:
        return int(version) < int(than)
    except ValueError:
        return False
