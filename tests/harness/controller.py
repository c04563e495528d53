"""Run the real controller against the test broker and API server.

`mesh` prepares what Istio would have put in the cluster (the `istio-ca-root-cert`
ConfigMap with a real self-signed CA in the test namespace); `controller_factory` starts
controllers (several, for restart and multi-replica tests) and stops them afterwards.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes import client
from pydantic import SecretStr

from controller.run import Controller
from controller.settings import ControllerSettings
from sandbox.broker import Mosquitto
from sandbox.tlsgen import CertificateAuthority
from shared.settings import MqttSettings

ISTIOD_IP = "203.0.113.10"


@dataclass
class Mesh:
    """What Istio provides in the test namespace."""

    namespace: str
    root_cert: str
    api: client.ApiClient
    extra: dict[str, Any] = field(default_factory=dict)

    def set_root_cert(self, pem: str) -> None:
        core = client.CoreV1Api(self.api)
        body = {"data": {"root-cert.pem": pem}}
        core.patch_namespaced_config_map("istio-ca-root-cert", self.namespace, body)
        self.root_cert = pem


@pytest.fixture
def mesh(kube_namespace: str, kube_client: client.ApiClient) -> Mesh:
    pem = CertificateAuthority(common_name="istio test root").cert_pem.decode()
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map(
        kube_namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="istio-ca-root-cert"), data={"root-cert.pem": pem}
        ),
    )
    return Mesh(namespace=kube_namespace, root_cert=pem, api=kube_client)


class ControllerFactory(Protocol):
    def __call__(self, **overrides: Any) -> Controller: ...


@pytest.fixture
def controller_factory(
    broker: Mosquitto, kubeconfig: Path, mesh: Mesh, prefix: str
) -> Iterator[ControllerFactory]:
    started: list[Controller] = []
    info = broker.info

    def make(**overrides: Any) -> Controller:
        client_id = overrides.pop("client_id", f"ctl-{mesh.namespace}-{len(started)}")
        settings = ControllerSettings(
            **{
                "namespace": mesh.namespace,
                "kubeconfig": kubeconfig,
                "istiod_ip": ISTIOD_IP,
                "metrics_port": 0,
                "workers": 2,
                **overrides,
            }
        )
        mqtt = MqttSettings(
            broker=info.url,
            username=info.controller_username,
            password=SecretStr(info.controller_password),
            topic_prefix=prefix,
        )
        ctl = Controller(settings, mqtt, client_id=client_id)
        started.append(ctl)
        ctl.start()
        assert ctl.link is not None
        assert ctl.link.wait_ready(10), "controller never became ready"
        return ctl

    yield make
    for ctl in started:
        ctl.stop()
