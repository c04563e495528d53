"""The resource types the emulated API server knows, and how a CRD turns into one.

kmock learns resources only from the objects or reactions it was fed, so discovery of an
empty cluster is empty and nothing says which resources are namespaced or have a
`status` subresource. This registry is the explicit catalogue instead: built-in kinds
pimesh touches, Istio's kinds, and whatever `CustomResourceDefinition` is created.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.kubeapi.errors import NotFoundError

VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served resource: its group/version/plural and the facts its objects obey."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: frozenset[str] = field(default_factory=frozenset)

    @property
    def api_version(self) -> str:
        """`apiVersion` of the objects: `v1` for the core group, else `group/version`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_status(self) -> bool:
        """Whether `.status` is written only through the `status` subresource."""
        return "status" in self.subresources

    @property
    def key(self) -> tuple[str, str, str]:
        """The identity used in URLs: (group, version, plural)."""
        return (self.group, self.version, self.plural)


def _core(plural: str, kind: str, *subresources: str, namespaced: bool = True) -> ResourceType:
    return ResourceType("", "v1", plural, kind, namespaced, frozenset(subresources))


def _grouped(group: str, version: str, plural: str, kind: str, *subs: str) -> ResourceType:
    return ResourceType(group, version, plural, kind, True, frozenset(subs))


BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    _core("namespaces", "Namespace", "status", namespaced=False),
    _core("serviceaccounts", "ServiceAccount", "token"),
    _core("services", "Service", "status"),
    _core("configmaps", "ConfigMap"),
    _core("secrets", "Secret"),
    _core("events", "Event"),
    _grouped("events.k8s.io", "v1", "events", "Event"),
    _grouped("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        subresources=frozenset({"status"}),
    ),
    # Istio's CRDs declare `subresources: {status: {}}` on every served version.
    _grouped("networking.istio.io", "v1", "workloadentries", "WorkloadEntry", "status"),
    _grouped("networking.istio.io", "v1", "workloadgroups", "WorkloadGroup", "status"),
    _grouped("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy", "status"),
)


class ResourceRegistry:
    """The catalogue of served resources, keyed by (group, version, plural)."""

    def __init__(self, resources: Iterable[ResourceType] = BUILTIN_RESOURCES) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for resource in resources:
            self.add(resource)

    def add(self, resource: ResourceType) -> None:
        """Serve `resource` (replacing an earlier registration of the same key)."""
        self._types[resource.key] = resource

    def remove(self, key: tuple[str, str, str]) -> None:
        """Stop serving a resource (its CRD was deleted)."""
        self._types.pop(key, None)

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The resource at these URL parts, if served."""
        return self._types.get((group, version, plural))

    def get(self, group: str, version: str, plural: str) -> ResourceType:
        """The resource at these URL parts, or `NotFoundError` as the apiserver answers."""
        found = self.find(group, version, plural)
        if found is None:
            raise NotFoundError("the server could not find the requested resource")
        return found

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))


def crd_resource_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resources a `CustomResourceDefinition` (apiextensions.k8s.io/v1) serves."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    return [
        ResourceType(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=frozenset(version.get("subresources") or {}),
        )
        for version in spec.get("versions", [])
        if version.get("served", True)
    ]


def crd_status(crd: Mapping[str, Any]) -> dict[str, Any]:
    """The status kube-apiserver reports once a CRD is established.

    Clients (kopf, kubectl wait) wait for `Established`; the official client's model
    also requires `acceptedNames` and `storedVersions` whenever a status is present.
    """
    spec = crd.get("spec", {})
    stored = [v["name"] for v in spec.get("versions", []) if v.get("storage")]
    conditions = [
        {"type": kind, "status": "True", "reason": reason, "message": message}
        for kind, reason, message in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        )
    ]
    return {
        "acceptedNames": dict(spec.get("names", {})),
        "storedVersions": stored,
        "conditions": conditions,
    }
