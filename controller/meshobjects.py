"""Apply the mesh objects of devices and of apps, and only when they change.

Per device: its ServiceAccount and WorkloadEntry. Per app: the WorkloadGroup and
Service its devices share, with one owner reference per member (PROTOCOL.md). A device
is Enrolled only once its app's objects include it, so its reconcile waits for that;
but rendering them from a LIST of the app's devices at every enrollment made a fleet's
enrollment quadratic. Instead:

- the app's members come from the EdgeDevice cache, overlaid with what the devices
  reconciled in this process contributed (their uid and ports), so no LIST is needed;
- applies are group-committed: a device whose part is not yet applied takes the app's
  lock, and one apply covers every device that joined while the previous one ran, so
  a boot storm makes one apply per handful of devices, not one per device;
- what was applied is remembered as a digest of the manifest, so converging an
  unchanged device or app makes no request at all.

A device that leaves (revoked, deleted, moved to another app) schedules its app on a
work-queue key of its own (`AppKey`), converged from the same membership later. Port
conflicts are found where the Service is rendered; each device's own reconcile reports
them in its status (a device's status has a single writer: its reconcile).
"""

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from controller import resources
from controller.device import EdgeDevice
from controller.devicestore import DeviceStore
from controller.kube import (
    SERVICE_ACCOUNTS,
    SERVICES,
    WORKLOAD_ENTRIES,
    WORKLOAD_GROUPS,
    JsonObject,
    Kube,
)
from controller.resources import DeviceView, PortSpec
from shared.canonical import canonical_json


@dataclass(frozen=True)
class AppKey:
    """The work-queue key of an app's shared objects (device ids are plain strings)."""

    app: str

    def __str__(self) -> str:
        return f"app:{self.app}"


Contribution = tuple[str, tuple[PortSpec, ...]]
"""What of a member shapes its app's shared objects: its EdgeDevice uid and its ports."""


def is_member(device: EdgeDevice) -> bool:
    """Counts towards its app's shared objects: approved, not revoked, reachable."""
    return device.spec.approved and not device.spec.revoked and bool(device.status.addresses)


def view(device: EdgeDevice) -> DeviceView:
    """What the renderers need of an enrolled device."""
    return DeviceView(
        device_id=device.name,
        uid=device.uid,
        app=device.app,
        address=device.status.addresses[0],
        online=device.status.online,
        groups=device.spec.groups,
        labels=device.spec.labels,
        ports=tuple(PortSpec(p.name, p.port, p.protocol) for p in device.status.ports),
    )


class MeshObjects:
    """Applies devices' and apps' objects; thread-safe (workers share one)."""

    def __init__(
        self,
        kube: Kube,
        devices: DeviceStore,
        *,
        namespace: str,
        schedule_app: Callable[[str], None],
    ) -> None:
        self._kube = kube
        self._devices = devices
        self._ns = namespace
        self._schedule_app = schedule_app
        self._lock = threading.Lock()
        self._app_locks: dict[str, threading.Lock] = {}
        self._applied: dict[tuple[str, str], str] = {}
        self._members: dict[str, DeviceView] = {}
        self._included: dict[str, dict[str, Contribution]] = {}
        self._conflicts: dict[str, tuple[str, ...]] = {}
        self._namespace_ready = False

    # devices ---------------------------------------------------------------------------

    def apply_device(self, device: EdgeDevice) -> None:
        """Count the device in its app and apply its own objects.

        The app's objects follow in `include`, called as late as the reconcile allows:
        every device counted in meanwhile is covered by the same apply.
        """
        member = view(device)
        with self._lock:
            before = self._members.get(device.name)
            self._members[device.name] = member
        if before is not None and before.app != member.app:
            self._schedule_app(before.app)  # it left that app
        if not self._namespace_ready:
            self._apply_once(resources.namespace(self._ns))
            self._namespace_ready = True
        self._apply_once(resources.service_account(member, self._ns))
        self._apply_once(resources.workload_entry(member, self._ns))

    def include(self, device: EdgeDevice) -> list[str]:
        """Return once the app's objects include the device (after `apply_device`).

        Returns the other devices whose port conflicts changed: their status must say so.
        """
        member = view(device)
        with self._app_lock(member.app):
            if self._is_included(member):
                return []  # an apply made while we waited covered us
            return [d for d in self._converge_app(member.app) if d != device.name]

    def remove_device(self, device: EdgeDevice) -> None:
        """Delete a revoked device's own objects and take it out of its app."""
        self._kube.delete(WORKLOAD_ENTRIES, device.name, namespace=self._ns)
        self._kube.delete(SERVICE_ACCOUNTS, device.name, namespace=self._ns)
        self.forget(device.name)

    def forget(self, device_id: str) -> None:
        """Drop what was applied for the device; its app is re-rendered without it."""
        with self._lock:
            self._applied = {k: v for k, v in self._applied.items() if k[1] != device_id}
            self._conflicts.pop(device_id, None)
            member = self._members.pop(device_id, None)
        if member is not None:
            self._schedule_app(member.app)

    def port_conflicts(self, device_id: str) -> tuple[str, ...]:
        """Port names the device announced with numbers its app already serves otherwise."""
        with self._lock:
            return self._conflicts.get(device_id, ())

    # apps ------------------------------------------------------------------------------

    def reconcile_app(self, app: str) -> list[str]:
        """Converge the app's WorkloadGroup and Service from its current members.

        Returns the devices whose port conflicts changed.
        """
        with self._app_lock(app):
            return self._converge_app(app)

    def _converge_app(self, app: str) -> list[str]:
        members = self._current_members(app)
        if not members:
            self._kube.delete(SERVICES, app, namespace=self._ns)
            self._kube.delete(WORKLOAD_GROUPS, app, namespace=self._ns)
            self._forget(("Service", app), ("WorkloadGroup", app))
            with self._lock:
                self._included.pop(app, None)
            return []
        self._apply_once(resources.workload_group(app, self._ns, members))
        service = resources.service(app, self._ns, members)
        if service is not None:
            self._apply_once(service)
        elif self._forget(("Service", app)):
            # Its devices announce no port any more: an app without ports has no Service.
            self._kube.delete(SERVICES, app, namespace=self._ns)
        _, conflicts = resources.service_ports(members)
        changed = []
        with self._lock:
            self._included[app] = {m.device_id: _contribution(m) for m in members}
            for member in members:
                names = tuple(conflicts.get(member.device_id, ()))
                if self._conflicts.get(member.device_id, ()) != names:
                    self._conflicts[member.device_id] = names
                    changed.append(member.device_id)
        return changed

    def _current_members(self, app: str) -> list[DeviceView]:
        """The cache's members of `app`, corrected by what this process has seen since.

        The cache alone lags: a device's status (its addresses and ports) is saved after
        its objects are applied. What devices contributed here is newer, also about
        which app they belong to.
        """
        with self._lock:
            known = dict(self._members)
        members = {
            d.name: view(d)
            for d in self._devices.members(app)
            if is_member(d) and d.name not in known
        }
        members.update({name: m for name, m in known.items() if m.app == app})
        return list(members.values())

    # plumbing --------------------------------------------------------------------------

    def _is_included(self, member: DeviceView) -> bool:
        with self._lock:
            included = self._included.get(member.app, {})
            return included.get(member.device_id) == _contribution(member)

    def _app_lock(self, app: str) -> threading.Lock:
        with self._lock:
            return self._app_locks.setdefault(app, threading.Lock())

    def _apply_once(self, manifest: JsonObject) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        digest = hashlib.sha256(canonical_json(manifest)).hexdigest()
        with self._lock:
            if self._applied.get(key) == digest:
                return
        self._kube.apply(manifest)
        with self._lock:
            self._applied[key] = digest

    def _forget(self, *keys: tuple[str, str]) -> bool:
        """Forget what was applied under `keys`; True when any of them had been."""
        with self._lock:
            popped = [self._applied.pop(key, None) for key in keys]  # every key, always
        return any(value is not None for value in popped)


def _contribution(member: DeviceView) -> Contribution:
    return (member.uid, tuple(member.ports))
