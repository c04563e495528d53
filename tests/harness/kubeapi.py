"""Fixtures for the Kubernetes API emulator (sandbox.kubeapi) over real HTTP.

`kube_api` is one server per test session (per xdist worker) with the EdgeDevice CRD
from deploy/crd installed; tests isolate themselves with the `namespace` fixture, and
`kube_namespace` creates that namespace on the server (strict namespaces are on, as in
a real cluster) and deletes it, with everything in it, afterwards.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from sandbox.kubeapi import KubeApiServer

EDGE_DEVICE_CRD = Path(__file__).resolve().parents[2] / "deploy" / "crd" / "edgedevice.yaml"


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApiServer]:
    """A running API server shared by the session, with the EdgeDevice CRD installed."""
    with KubeApiServer() as server:
        server.install_crd(yaml.safe_load(EDGE_DEVICE_CRD.read_text()))
        yield server


@pytest.fixture(scope="session")
def kubeconfig(kube_api: KubeApiServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a kubeconfig file pointing at `kube_api`."""
    return kube_api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture
def kube_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """An official-client ApiClient loaded from `kubeconfig`."""
    api_client: client.ApiClient = config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
    yield api_client
    api_client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def kube_namespace(
    kube_api: KubeApiServer, kube_client: client.ApiClient, namespace: str
) -> Iterator[str]:
    """The test's unique namespace, created on `kube_api` and deleted afterwards."""
    core = client.CoreV1Api(kube_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    yield namespace
    core.delete_namespace(namespace)
