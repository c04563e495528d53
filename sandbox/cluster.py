"""What Istio (and a cloud) would have left in a cluster, for the sandbox's in-process API.

The controller builds every bundle from the mesh's root certificate (ConfigMap
`istio-ca-root-cert` in the fleet namespace) and the east-west gateway's address
(Service `istio-eastwestgateway` in `istio-system`); `seed_cluster` puts both there, with
a real self-signed CA and a load balancer address the controller discovers as it would
in a cluster. The benchmarks seed their emulator the same way.
"""

from pathlib import Path
from typing import Any

from controller.cluster import EASTWEST_SERVICE, ISTIO_NAMESPACE, ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY
from controller.kube import SERVICES, Kube
from controller.resources import namespace as namespace_manifest
from sandbox.tlsgen import CertificateAuthority

GATEWAY_IP = "203.0.113.10"
"""The east-west gateway's address in the sandbox (RFC 5737 TEST-NET-3)."""
EDGE_DEVICE_CRD = Path(__file__).resolve().parents[1] / "deploy" / "crd" / "edgedevice.yaml"


def seed_cluster(kube: Kube, *, namespace: str) -> None:
    """What Istio would have put in the cluster: the mesh root and the east-west gateway."""
    root = CertificateAuthority(common_name="pimesh sandbox mesh root").cert_pem.decode()
    kube.apply(namespace_manifest(namespace))
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE}})
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": namespace},
            "data": {ROOT_CERT_KEY: root},
        }
    )
    kube.apply(gateway_service())
    # A load balancer's address is status, written by the cloud's controller.
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": GATEWAY_IP}]}}}
    kube.merge_patch(
        SERVICES, EASTWEST_SERVICE, ingress, namespace=ISTIO_NAMESPACE, subresource="status"
    )


def gateway_service() -> dict[str, Any]:
    """Service `istio-eastwestgateway` as Istio's multicluster samples install it."""
    ports = [("status-port", 15021), ("tls", 15443), ("tls-istiod", 15012), ("tls-webhook", 15017)]
    labels = {"istio": "eastwestgateway", "app": "istio-eastwestgateway"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": EASTWEST_SERVICE, "namespace": ISTIO_NAMESPACE, "labels": labels},
        "spec": {
            "type": "LoadBalancer",
            "selector": labels,
            "ports": [
                {"name": name, "port": port, "targetPort": port, "protocol": "TCP"}
                for name, port in ports
            ],
        },
    }
