import threading
from typing import Any, cast

from controller.cluster import ROOT_CERT_CONFIGMAP, ClusterSource
from controller.kube import JsonObject, Kube, Resource
from controller.settings import ControllerSettings


class SlowConfigMaps:
    """The two reads ClusterSource makes, each held until the test releases them."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.release = threading.Event()
        self.root_cert = "CERT-1"
        self._lock = threading.Lock()

    def find(self, resource: Resource, name: str, *, namespace: str | None = None) -> JsonObject:
        with self._lock:
            self.reads.append(name)
            cert = self.root_cert  # what the API server holds when the read arrives
        self.release.wait(5)
        if name == ROOT_CERT_CONFIGMAP:
            return {"data": {"root-cert.pem": cert}}
        return {"data": {"mesh": "defaultConfig: {}"}}


def source(api: SlowConfigMaps) -> ClusterSource:
    settings = ControllerSettings(istiod_ip="10.0.0.1")
    return ClusterSource(cast("Kube", api), settings, ttl_s=60)


def test_workers_that_find_the_cache_stale_together_share_one_refresh() -> None:
    api = SlowConfigMaps()
    cluster = source(api)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(cluster.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    api.release.set()
    for thread in threads:
        thread.join(5)
    assert len(results) == 8
    assert {r.root_cert for r in results} == {"CERT-1"}
    assert len(api.reads) == 2, api.reads  # root cert and mesh config, once


def test_a_change_during_a_refresh_is_not_cached() -> None:
    api = SlowConfigMaps()
    cluster = source(api)
    first = threading.Thread(target=cluster.get)
    first.start()
    while not api.reads:
        threading.Event().wait(0.01)
    api.root_cert = "CERT-2"  # rolled over while the first read was in flight
    cluster.invalidate()
    api.release.set()
    first.join(5)
    assert cluster.get().root_cert == "CERT-2"
    assert len(api.reads) == 4
