"""Render the Kubernetes objects that put a device in the mesh (PROTOCOL.md object table).

Pure functions from a device's desired state to manifests ready for server-side apply.
Every object carries the managed-by label; per-device objects are owned by their
EdgeDevice (deleting it garbage-collects them) and the objects an app's devices share
(WorkloadGroup, Service) are owned by every EdgeDevice of that app, so they go when the
last one does.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

MANAGED_BY = {"app.kubernetes.io/managed-by": "pimesh"}
GROUP_LABEL_PREFIX = "pimesh.io/group."
DEVICE_LABEL = "pimesh.io/device"
ONLINE_LABEL = "pimesh.io/online"
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
EDGE_DEVICE_API = "pimesh.io/v1alpha1"


@dataclass(frozen=True)
class PortSpec:
    """A port a device serves, as it announced it."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class DeviceView:
    """What the renderers need to know about one enrolled device."""

    device_id: str
    uid: str
    app: str
    address: str
    online: bool
    groups: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Sequence[PortSpec] = ()


def owner_reference(device: DeviceView, *, controller: bool) -> Manifest:
    """An ownerReference to the device's EdgeDevice."""
    return {
        "apiVersion": EDGE_DEVICE_API,
        "kind": "EdgeDevice",
        "name": device.device_id,
        "uid": device.uid,
        "controller": controller,
        "blockOwnerDeletion": False,
    }


def _metadata(name: str, namespace: str, *, owners: list[Manifest], **extra: Any) -> Manifest:
    meta: Manifest = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}
    meta["ownerReferences"] = owners
    for key, value in extra.items():
        meta[key] = value
    return meta


def namespace(name: str) -> Manifest:
    """The fleet namespace, captured by ztunnel (ambient)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {**MANAGED_BY, "istio.io/dataplane-mode": "ambient"},
        },
    }


def service_account(device: DeviceView, ns: str) -> Manifest:
    """The device's mesh identity: spiffe://TRUST_DOMAIN/ns/NS/sa/ID."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(
            device.device_id, ns, owners=[owner_reference(device, controller=True)]
        ),
    }


def workload_labels(device: DeviceView) -> dict[str, str]:
    """The WorkloadEntry's spec.labels: what Services and policies select on."""
    labels = dict(device.labels)
    labels.update(
        {
            "app": device.app,
            DEVICE_LABEL: device.device_id,
            ONLINE_LABEL: "true" if device.online else "false",
            # Istio releases before 1.22 read the redirection switch from the labels.
            AMBIENT_REDIRECTION: "enabled",
        }
    )
    for group in device.groups:
        labels[GROUP_LABEL_PREFIX + group] = "true"
    return labels


def workload_entry(device: DeviceView, ns: str) -> Manifest:
    """The device as a mesh workload (the seed's hand-written WorkloadEntry)."""
    meta = _metadata(
        device.device_id,
        ns,
        owners=[owner_reference(device, controller=True)],
        annotations={AMBIENT_REDIRECTION: "enabled"},
    )
    meta["labels"] = {**MANAGED_BY, "app": device.app, DEVICE_LABEL: device.device_id}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": meta,
        "spec": {
            "address": device.address,
            "labels": workload_labels(device),
            "serviceAccount": device.device_id,
        },
    }


def workload_group(app: str, ns: str, devices: Iterable[DeviceView]) -> Manifest:
    """The app's WorkloadGroup; its template names no service account (each device has one)."""
    owners = [owner_reference(d, controller=False) for d in _sorted(devices)]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadGroup",
        "metadata": _metadata(app, ns, owners=owners),
        "spec": {"metadata": {"labels": {"app": app}}, "template": {"labels": {"app": app}}},
    }


def service_ports(devices: Iterable[DeviceView]) -> tuple[list[PortSpec], dict[str, list[str]]]:
    """The union of the app's ports; the first device (by id) to claim a name keeps it.

    Returns the ports and, per device id, the port names it lost to an earlier device
    (a `PortConflict` condition on that device).
    """
    by_name: dict[str, PortSpec] = {}
    conflicts: dict[str, list[str]] = {}
    for device in _sorted(devices):
        for port in device.ports:
            kept = by_name.setdefault(port.name, port)
            if kept.port != port.port or kept.protocol != port.protocol:
                conflicts.setdefault(device.device_id, []).append(port.name)
    return sorted(by_name.values(), key=lambda p: p.name), conflicts


def service(app: str, ns: str, devices: Iterable[DeviceView]) -> Manifest | None:
    """The app's Service, selecting only online devices; None when no device has a port."""
    members = _sorted(devices)
    ports, _ = service_ports(members)
    if not ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            app, ns, owners=[owner_reference(d, controller=False) for d in members]
        ),
        "spec": {
            "selector": {"app": app, ONLINE_LABEL: "true"},
            "ports": [
                {"name": p.name, "port": p.port, "targetPort": p.port, "protocol": p.protocol}
                for p in ports
            ],
        },
    }


def _sorted(devices: Iterable[DeviceView]) -> list[DeviceView]:
    return sorted(devices, key=lambda d: d.device_id)
