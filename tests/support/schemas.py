"""Validate rendered manifests the way the API server would.

Istio kinds against Istio's own CRD schemas, core kinds with kubernetes-validate (strict),
our own EdgeDevice against deploy/crd/edgedevice.yaml.
"""

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Istio's CRDs (Apache-2.0), copied unchanged from the team handbook's istio-crds/.
ISTIO_CRDS = ROOT / "tests" / "support" / "istio-crds.yaml"
EDGE_DEVICE_CRD = ROOT / "deploy" / "crd" / "edgedevice.yaml"
K8S_VERSION = "1.31"


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    docs = [
        *yaml.safe_load_all(ISTIO_CRDS.read_text()),
        yaml.safe_load(EDGE_DEVICE_CRD.read_text()),
    ]
    for doc in docs:
        if not doc:
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise if the manifest would be refused by its schema."""
    key = (manifest["apiVersion"], manifest["kind"])
    schema = _crd_schemas().get(key)
    if schema is not None:
        strict = _strict(schema)
        # The root lists only spec/status; apiVersion, kind and metadata belong to the API server.
        strict["properties"] = {**strict["properties"], "apiVersion": {}, "kind": {}}
        strict["properties"]["metadata"] = {"type": "object"}
        jsonschema.validate(manifest, strict)
        return
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Structural CRD schemas prune unknown fields; refuse them instead, to catch typos."""
    out = dict(schema)
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    return out
