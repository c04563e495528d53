"""Every manifest under deploy/ is valid, and the pieces agree with each other and the code.

Core kinds are validated with kubernetes-validate (strict), Istio kinds and the EdgeDevice
against their CRD schemas (tests/support/schemas.py). IstioOperator, Gateway and
VirtualService have no schema here: they are parsed and checked for the fields pimesh
relies on.
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from controller.cluster import EASTWEST_SERVICE, ISTIO_NAMESPACE
from controller.policyfile import parse_policies
from controller.settings import ControllerSettings
from shared.settings import MqttSettings
from tests.support.schemas import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE_DIR = DEPLOY / "kubernetes"
ISTIO_DIR = DEPLOY / "istio"
PARSE_ONLY = {
    ("install.istio.io/v1alpha1", "IstioOperator"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
}
KUSTOMIZE = "kustomize.config.k8s.io/v1beta1"
Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def all_docs() -> list[Doc]:
    return [doc for path in manifest_files() for doc in load_docs(path)]


def find(kind: str, name: str, docs: list[Doc] | None = None) -> Doc:
    matches = [
        d
        for d in docs or all_docs()
        if (d["kind"], d.get("metadata", {}).get("name")) == (kind, name)
    ]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def render_broker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_broker", DEPLOY / "render_broker.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# validity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no documents"
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if doc["apiVersion"] == KUSTOMIZE:
            for resource in doc["resources"]:
                target = path.parent / resource
                assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
        elif key in PARSE_ONLY:
            assert doc["metadata"]["name"]
            assert isinstance(doc["spec"], dict)
        else:
            validate_manifest(doc)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())["resources"]
    files = {str(p.relative_to(KUBE_DIR)) for p in KUBE_DIR.rglob("*.yaml")}
    assert set(listed) == (files - {"kustomization.yaml"}) | {"../crd"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_builds_valid_objects() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUBE_DIR)], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        validate_manifest(doc)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("CustomResourceDefinition", "edgedevices.pimesh.io"),
        ("Namespace", "pi-fleet"),
        ("Deployment", "pimesh-controller"),
        ("Deployment", "mosquitto"),
    } <= kinds
    role = find(
        "Role",
        "pimesh-controller",
        [d for d in docs if d["metadata"].get("namespace") == ISTIO_NAMESPACE],
    )
    assert role["metadata"]["namespace"] == ISTIO_NAMESPACE
    image = find("Deployment", "pimesh-controller", docs)["spec"]["template"]["spec"]["containers"][
        0
    ]["image"]
    assert image == "pimesh:0.1.0"


def test_an_edge_device_validates_against_the_crd() -> None:
    device: Doc = {
        "apiVersion": "pimesh.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": "pi-kitchen", "namespace": "pi-fleet"},
        "spec": {
            "approved": True,
            "revoked": False,
            "app": "led-pi",
            "groups": ["kitchen"],
            "labels": {"floor": "1"},
        },
        "status": {
            "phase": "Enrolled",
            "reason": "bundle generation 3 published",
            "addresses": ["192.168.1.178"],
            "ports": [{"name": "http-pi", "port": 8080, "protocol": "TCP"}],
            "online": True,
            "lastSeen": "2026-11-26T10:00:00Z",
            "keys": {"sign": "c2lnbg==", "kx": "a3g="},
            "generation": 3,
            "ackedGeneration": 3,
            "tokenExpiresAt": "2026-11-26T11:00:00Z",
            "conditions": [{"type": "PortConflict", "status": "False"}],
        },
    }
    validate_manifest(device)
    bad = {**device, "status": {**device["status"], "phase": "Sleeping"}}
    with pytest.raises(Exception, match="Sleeping"):
        validate_manifest(bad)


# the controller --------------------------------------------------------------------------------


def controller_pod() -> Doc:
    spec: Doc = find("Deployment", "pimesh-controller")["spec"]
    assert spec["replicas"] == 2
    pod: Doc = spec["template"]["spec"]
    return pod


def test_controller_settings_load_from_the_configmap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = find("ConfigMap", "pimesh-controller-env")["data"]
    ca = tmp_path / "ca.crt"
    ca.write_text("not parsed here\n")
    for key, value in env.items():
        monkeypatch.setenv(key, str(ca) if key == "PIMESH_CA_FILE" else value)
    settings, mqtt = ControllerSettings(), MqttSettings()
    fields = {
        f"PIMESH_{f.upper()}"
        for f in [*ControllerSettings.model_fields, *MqttSettings.model_fields]
    }
    assert set(env) <= fields, set(env) - fields
    assert settings.namespace == "pi-fleet"
    assert mqtt.address.tls
    assert mqtt.username == "_pimesh-controller"
    # The files the settings name are mounted where they say.
    mounts = {m["mountPath"]: m["name"] for m in controller_pod()["containers"][0]["volumeMounts"]}
    assert mounts[str(Path(env["PIMESH_CA_FILE"]).parent)] == "broker-ca"
    assert mounts[str(Path(env["PIMESH_POLICY_FILE"]).parent)] == "policies"
    policies = find("ConfigMap", "pimesh-policies")["data"][Path(env["PIMESH_POLICY_FILE"]).name]
    assert parse_policies(policies) == []


def test_the_controller_pod_is_locked_down_and_probed() -> None:
    pod = controller_pod()
    container = pod["containers"][0]
    assert pod["serviceAccountName"] == "pimesh-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["args"] == ["controller", "run"]
    port = int(find("ConfigMap", "pimesh-controller-env")["data"]["PIMESH_METRICS_PORT"])
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": port, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in container["env"]
    assert container["resources"]["limits"]["memory"]
    service = find("Service", "pimesh-controller-metrics")
    assert service["spec"]["selector"] == pod_labels("pimesh-controller")


def pod_labels(name: str) -> dict[str, str]:
    deployment = find("Deployment", name)
    selector: dict[str, str] = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    return selector


# the broker ----------------------------------------------------------------------------------


def test_the_broker_config_is_rendered_by_brokerconf() -> None:
    checked_in = (KUBE_DIR / "broker" / "mosquitto-config.yaml").read_text()
    assert checked_in == render_broker().render_configmap()
    check = subprocess.run(
        [sys.executable, str(DEPLOY / "render_broker.py"), "--check"],
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_render_broker_prints_a_password_line() -> None:
    out = subprocess.run(
        [sys.executable, str(DEPLOY / "render_broker.py"), "passwd", "pi-kitchen"],
        input="hunter2\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("pi-kitchen:$7$101$")
    assert out.count("\n") == 1
    assert "hunter2" not in out


def _conf_paths(conf: str) -> dict[str, str]:
    keys = {"password_file", "acl_file", "cafile", "certfile", "keyfile", "persistence_location"}
    pairs = (line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    return {key: value.rstrip("/") for key, value in pairs if key in keys}


def test_every_file_the_broker_reads_is_mounted() -> None:
    configmap = find("ConfigMap", "mosquitto-config")
    pod = find("Deployment", "mosquitto")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    conf_path = Path(container["command"][-1])
    assert conf_path.name in configmap["data"]
    paths = _conf_paths(configmap["data"][conf_path.name])
    assert set(paths) == {
        "password_file",
        "acl_file",
        "cafile",
        "certfile",
        "keyfile",
        "persistence_location",
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for key, value in [*paths.items(), ("config", str(conf_path))]:
        path = Path(value)
        if key == "persistence_location":
            assert "persistentVolumeClaim" in volumes[mounts[str(path)]]
            continue
        volume = volumes[mounts[str(path.parent)]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == "mosquitto-config"
            assert path.name in configmap["data"], key
        else:
            items = volume["secret"].get("items")
            assert items is None or path.name in {i["path"] for i in items}, key
    assert container["ports"][0]["containerPort"] == render_broker().TLS_PORT
    service = find("Service", "mosquitto")
    assert service["spec"]["selector"] == pod_labels("mosquitto")
    env = find("ConfigMap", "pimesh-controller-env")["data"]
    assert (
        env["PIMESH_BROKER"]
        == f"mqtts://mosquitto.pi-fleet.svc:{service['spec']['ports'][0]['port']}"
    )


def test_the_broker_runs_unprivileged_outside_ambient_capture() -> None:
    template = find("Deployment", "mosquitto")["spec"]["template"]
    assert template["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


# Istio -----------------------------------------------------------------------------------------


def test_istiod_is_exposed_through_the_gateway_the_controller_reads() -> None:
    docs = [d for p in ISTIO_DIR.glob("*.yaml") for d in load_docs(p)]
    eastwest = find("IstioOperator", "eastwest", docs)["spec"]["components"]["ingressGateways"][0]
    assert eastwest["name"] == EASTWEST_SERVICE
    ports = {p["port"] for p in eastwest["k8s"]["service"]["ports"]}
    assert {15012, 15017} <= ports
    gateway = find("Gateway", "istiod-gateway", docs)
    assert gateway["spec"]["selector"].items() <= eastwest["label"].items()
    assert {s["port"]["number"] for s in gateway["spec"]["servers"]} == {15012, 15017}
    service = find("VirtualService", "istiod-vs", docs)
    assert service["spec"]["gateways"] == ["istiod-gateway"]
    routes = {r["match"][0]["port"]: r["route"][0]["destination"] for r in service["spec"]["tls"]}
    assert routes[15012] == {
        "host": "istiod.istio-system.svc.cluster.local",
        "port": {"number": 15012},
    }
    env = find("ConfigMap", "pimesh-controller-env")["data"]
    assert env["PIMESH_ISTIOD_ADDRESS"].endswith(":15012")


def test_the_mesh_captures_dns_as_the_seed_does() -> None:
    operator = find("IstioOperator", "istio", load_docs(ISTIO_DIR / "istio-operator.yaml"))["spec"]
    assert operator["profile"] == "ambient"
    dns = {
        "ISTIO_META_DNS_CAPTURE": "true",
        "ISTIO_META_DNS_AUTO_ALLOCATE": "true",
        "ISTIO_META_DNS_PROXY_ADDR": "127.0.0.1:15053",
    }
    assert operator["meshConfig"]["defaultConfig"]["proxyMetadata"] == dns
    assert operator["values"]["ztunnel"]["meshConfig"]["defaultConfig"]["proxyMetadata"] == dns
    address = find("ConfigMap", "pimesh-controller-env")["data"]["PIMESH_ISTIOD_ADDRESS"]
    assert operator["values"]["pilot"]["env"]["ISTIOD_SAN"] == address.rpartition(":")[0]
