"""Cluster-wide inputs of every bundle: the mesh root certificate, mesh config, istiod's IP.

They are the same for every device, so they are read once and cached briefly instead of
on every reconcile; the ConfigMap watch calls `invalidate()` when Istio's CA rolls over.
A missing input is a `Waiting` error with a reason an operator can act on, never a crash.
"""

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.errors import Waiting
from controller.kube import CONFIG_MAPS, SERVICES, JsonObject, Kube
from controller.meshconfig import mesh_configmap_name
from controller.settings import ControllerSettings

ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
ISTIO_NAMESPACE = "istio-system"
EASTWEST_SERVICE = "istio-eastwestgateway"


@dataclass(frozen=True)
class ClusterInputs:
    """What every bundle is built from besides the device itself."""

    root_cert: str
    mesh_yaml: str | None
    istiod_ip: str


class ClusterSource:
    """Reads and caches `ClusterInputs`."""

    def __init__(
        self,
        kube: Kube,
        settings: ControllerSettings,
        *,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._epoch = 0
        self._cached: tuple[float, ClusterInputs] | None = None

    def get(self) -> ClusterInputs:
        """The current inputs. Raises Waiting when one is missing."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        # One refresh at a time: the workers that find the cache stale together wait for
        # it instead of each reading the same three objects.
        with self._refreshing:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            with self._lock:
                epoch = self._epoch
            inputs = ClusterInputs(
                root_cert=self._root_cert(),
                mesh_yaml=self._mesh_yaml(),
                istiod_ip=self._istiod_ip(),
            )
            with self._lock:
                if epoch == self._epoch:  # else a change came in while we read: not cached
                    self._cached = (self._clock(), inputs)
            return inputs

    def _fresh(self) -> ClusterInputs | None:
        with self._lock:
            if self._cached and self._clock() - self._cached[0] < self._ttl_s:
                return self._cached[1]
            return None

    def invalidate(self) -> None:
        """Forget the cache (the root cert or mesh config changed)."""
        with self._lock:
            self._cached = None
            self._epoch += 1

    def _root_cert(self) -> str:
        ns = self._settings.namespace
        cm = self._kube.find(CONFIG_MAPS, ROOT_CERT_CONFIGMAP, namespace=ns)
        cert = (cm or {}).get("data", {}).get(ROOT_CERT_KEY)
        if not cert:
            reason = (
                f"waiting for ConfigMap {ns}/{ROOT_CERT_CONFIGMAP} (key {ROOT_CERT_KEY}): "
                "Istio copies it into every namespace once istiod runs"
            )
            raise Waiting(reason, condition="RootCertMissing")
        return str(cert)

    def _mesh_yaml(self) -> str | None:
        name = mesh_configmap_name(self._settings.istio_revision)
        cm = self._kube.find(CONFIG_MAPS, name, namespace=ISTIO_NAMESPACE)
        mesh = (cm or {}).get("data", {}).get("mesh")
        return str(mesh) if mesh else None

    def _istiod_ip(self) -> str:
        if self._settings.istiod_ip:
            return self._settings.istiod_ip
        svc = self._kube.find(SERVICES, EASTWEST_SERVICE, namespace=ISTIO_NAMESPACE)
        address = _ingress_ip(svc) if svc else None
        if address is None:
            reason = (
                f"waiting for an address of Service {ISTIO_NAMESPACE}/{EASTWEST_SERVICE} "
                "(or pass --istiod-ip)"
            )
            raise Waiting(reason, condition="GatewayAddressMissing")
        return address


def _ingress_ip(svc: JsonObject) -> str | None:
    ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
    for entry in ingress:
        if entry.get("ip"):
            return str(entry["ip"])
    for entry in ingress:
        if entry.get("hostname"):
            try:
                return socket.gethostbyname(str(entry["hostname"]))
            except OSError:
                continue
    return None
