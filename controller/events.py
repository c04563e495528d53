"""Kubernetes Events about EdgeDevices: what `kubectl describe edgedevice ID` shows.

Events are best effort: failing to record one is logged and never fails a reconcile.
"""

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from controller.device import EdgeDevice
from controller.errors import ControllerError
from controller.kube import EVENTS, Kube

log = logging.getLogger(__name__)

COMPONENT = "pimesh-controller"


class EventRecorder:
    """Writes core/v1 Events about devices."""

    def __init__(self, kube: Kube, *, namespace: str, now: Callable[[], datetime]) -> None:
        self._kube = kube
        self._namespace = namespace
        self._now = now

    def normal(self, device: EdgeDevice, reason: str, message: str) -> None:
        """Record something that went as expected."""
        self._record(device, "Normal", reason, message)

    def warning(self, device: EdgeDevice, reason: str, message: str) -> None:
        """Record something an operator should look at."""
        self._record(device, "Warning", reason, message)

    def _record(self, device: EdgeDevice, kind: str, reason: str, message: str) -> None:
        stamp = self._now().strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{device.name}.{uuid.uuid4().hex[:16]}",
                "namespace": self._namespace,
            },
            "involvedObject": {
                "apiVersion": "pimesh.io/v1alpha1",
                "kind": "EdgeDevice",
                "name": device.name,
                "namespace": self._namespace,
                "uid": device.uid,
                "resourceVersion": device.resource_version,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._kube.create(EVENTS, event, namespace=self._namespace)
        except ControllerError as exc:
            log.warning(
                "event not recorded",
                extra={"device": device.name, "reason": reason, "error": exc.reason},
            )
