"""Rules for one object's fields on create and update, as kube-apiserver applies them.

kmock stores request bodies verbatim. These pure functions do what the apiserver's
generic registry and resource strategies (k8s.io/apiserver/pkg/registry/rest) do to a
body before it is stored: validate the name, fill server-owned metadata, keep it across
updates, drop or protect `.status` where a `status` subresource exists, bump
`metadata.generation` on spec changes, and fold a Secret's `stringData` into `data`.
"""

import base64
import copy
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sandbox.kubeapi.errors import BadRequestError, InvalidError
from sandbox.kubeapi.resources import ResourceType

Obj = dict[str, Any]
NAMESPACES = ("", "v1", "namespaces")
_SECRETS = ("", "v1", "secrets")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Metadata only the server writes; an update cannot change them.
_KEPT_ON_UPDATE = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp")


def rfc3339(moment: datetime | None = None) -> str:
    """Kubernetes' `metav1.Time` wire format (second precision, `Z`)."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metadata(obj: Obj) -> dict[str, Any]:
    """The object's metadata mapping, created empty if absent."""
    meta: dict[str, Any] = obj.setdefault("metadata", {})
    return meta


def require_object(body: Any) -> Obj:
    """Refuse request bodies that are not JSON objects."""
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    return body


def validate_name(resource: ResourceType, name: str) -> None:
    """Names are RFC 1123 subdomains; namespace names are RFC 1123 labels."""
    is_namespace = resource.key == NAMESPACES
    pattern, limit = (_DNS_LABEL, 63) if is_namespace else (_DNS_SUBDOMAIN, 253)
    if len(name) > limit or not pattern.fullmatch(name):
        raise InvalidError(
            f'{resource.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
            "must be a lowercase RFC 1123 name",
            details={"name": name, "kind": resource.plural},
        )


def _fold_string_data(resource: ResourceType, obj: Obj) -> None:
    """A Secret's write-only `stringData` is merged into base64 `data` (core/v1 Secret)."""
    if resource.key == _SECRETS and "stringData" in obj:
        encoded = {
            k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()
        }
        obj["data"] = {**(obj.get("data") or {}), **encoded}


def prepare_create(resource: ResourceType, namespace: str, body: Obj) -> Obj:
    """The object to store for a create at `namespace` ("" for cluster scope)."""
    obj = copy.deepcopy(require_object(body))
    meta = metadata(obj)
    if obj.get("kind", resource.kind) != resource.kind:
        raise BadRequestError(f"kind {obj['kind']!r} does not match the resource {resource.kind}")
    if resource.namespaced and meta.get("namespace", namespace) != namespace:
        raise BadRequestError(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
    validate_name(resource, meta.get("name", ""))
    if resource.namespaced:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    for server_set in ("deletionTimestamp", "resourceVersion", "managedFields"):
        meta.pop(server_set, None)
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=rfc3339(), generation=1)
    obj.update(apiVersion=resource.api_version, kind=resource.kind)
    if resource.has_status:
        obj.pop("status", None)  # status is written through its subresource only
    if resource.key == NAMESPACES:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj["status"] = {"phase": "Active"}
    _fold_string_data(resource, obj)
    return obj


def _spec_part(obj: Obj, *, skip_status: bool) -> Obj:
    """The part of an object whose change bumps metadata.generation."""
    skipped = {"metadata", "status"} if skip_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skipped}


def merge_update(resource: ResourceType, old: Obj, proposed: Obj, *, status: bool) -> Obj:
    """The object to store when `proposed` replaces `old` (via `/status` if `status`)."""
    if status:
        new = copy.deepcopy(old)
        new.pop("status", None)
        if proposed.get("status") is not None:
            new["status"] = copy.deepcopy(proposed["status"])
        return new
    new = copy.deepcopy(require_object(proposed))
    if resource.has_status:
        new.pop("status", None)
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
    meta, old_meta = metadata(new), old["metadata"]
    for kept in _KEPT_ON_UPDATE:
        if kept in old_meta:
            meta[kept] = old_meta[kept]
    meta.update(resourceVersion=old_meta["resourceVersion"], generation=old_meta["generation"])
    new.update(apiVersion=resource.api_version, kind=resource.kind)
    _fold_string_data(resource, new)
    skip = resource.has_status
    if _spec_part(new, skip_status=skip) != _spec_part(old, skip_status=skip):
        meta["generation"] = old_meta["generation"] + 1
    return new
