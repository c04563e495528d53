"""Third-party devices on the test broker, and readers of what the controller made of them.

`Devices` makes `tests.support.thirdparty.ThirdPartyDevice`s on one broker (each with its
own broker user, named after its id as the ACL wants) and closes them all at the end;
a test module's `device_factory` fixture is `yield from devices_on(broker, prefix)`.
The helpers read the API server through the official client, the way an operator's
kubectl would, and `counter` reads the controller's message metric
(`pimesh_device_messages_total{kind,outcome}`).
"""

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

from kubernetes import client

from controller.run import Controller
from sandbox.broker import Mosquitto
from tests.harness.controller import Mesh
from tests.support.thirdparty import ThirdPartyDevice

DeviceFactory = Callable[..., ThirdPartyDevice]


class Devices:
    """Makes third-party devices on one broker and closes them all at the end."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self._broker = broker
        self._prefix = prefix
        self.made: list[ThirdPartyDevice] = []
        self.passwords: dict[str, str] = {}

    def __call__(self, device_id: str | None = None, **kw: Any) -> ThirdPartyDevice:
        device_id = device_id or f"pi-{uuid.uuid4().hex[:8]}"
        password = self._broker.add_user(device_id)
        self.passwords[device_id] = password
        info = self._broker.info
        dev = ThirdPartyDevice(
            device_id, host=info.host, port=info.port, password=password, prefix=self._prefix, **kw
        )
        self.made.append(dev)
        return dev

    def close(self) -> None:
        for dev in self.made:
            dev.close()


def devices_on(broker: Mosquitto, prefix: str) -> Iterator[Devices]:
    """Yield a `Devices` on `broker` and close its devices afterwards (a fixture body)."""
    devices = Devices(broker, prefix)
    try:
        yield devices
    finally:
        devices.close()


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get_istio(mesh: Mesh, plural: str, name: str) -> dict[str, Any]:
    obj = custom(mesh.api).get_namespaced_custom_object(
        "networking.istio.io", "v1", mesh.namespace, plural, name
    )
    return cast(dict[str, Any], obj)


def get_device(mesh: Mesh, name: str) -> dict[str, Any]:
    obj = custom(mesh.api).get_namespaced_custom_object(
        "pimesh.io", "v1alpha1", mesh.namespace, "edgedevices", name
    )
    return cast(dict[str, Any], obj)


def list_custom(mesh: Mesh, group: str, version: str, plural: str) -> list[dict[str, Any]]:
    listed = cast(
        dict[str, Any],
        custom(mesh.api).list_namespaced_custom_object(group, version, mesh.namespace, plural),
    )
    return cast(list[dict[str, Any]], listed["items"])


def names(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(str(o["metadata"]["name"]) for o in objects)


def wait_until(check: Callable[[], Any], *, timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def approve(mesh: Mesh, name: str) -> None:
    patch_device(mesh, name, {"spec": {"approved": True}})


def patch_device(mesh: Mesh, name: str, patch: dict[str, Any]) -> None:
    custom(mesh.api).patch_namespaced_custom_object(
        "pimesh.io", "v1alpha1", mesh.namespace, "edgedevices", name, patch
    )


def counter(ctl: Controller, outcome: str, *, kind: str | None = None) -> float:
    """`pimesh_device_messages_total` summed over the labels that match."""
    total = 0.0
    for metric in ctl.metrics.messages.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels.get("outcome") == outcome
                and kind in (None, labels.get("kind"))
            ):
                total += sample.value
    return total
