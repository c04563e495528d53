"""The object store behind the emulated API server: Kubernetes object semantics.

kmock's emulator stores bodies as given: no uid, resourceVersion or namespace, 200 on
create, no PUT, no preconditions, no status subresource, no garbage collection. This
store closes those gaps the way kube-apiserver's generic registry behaves:

- create fills uid, resourceVersion (one global counter, as etcd's revision),
  creationTimestamp, generation and the namespace from the URL; names are validated;
  namespaced objects need an existing namespace (the NamespaceLifecycle admission);
- updates honour resourceVersion preconditions (409 Conflict), keep server-set
  metadata, bump generation on non-metadata/status changes, and are no-ops (no new
  resourceVersion, no event) when nothing changed;
- resources with a `status` subresource drop `.status` on create and on main-resource
  writes, and their `/status` writes change nothing but `.status`;
- deletion honours finalizers, empties deleted namespaces, and garbage-collects
  dependents whose every ownerReference points at a deleted uid (background cascade);
- CustomResourceDefinitions register and unregister their resources.

Not thread-safe by design: the server calls it only from its event loop thread.
"""

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.kubeapi import patches
from sandbox.kubeapi.errors import (
    AlreadyExistsError,
    BadRequestError,
    ConflictError,
    GoneError,
    NotFoundError,
)
from sandbox.kubeapi.objects import (
    NAMESPACES,
    Obj,
    merge_update,
    metadata,
    prepare_create,
    require_object,
    rfc3339,
)
from sandbox.kubeapi.resources import ResourceRegistry, ResourceType, crd_resource_types, crd_status
from sandbox.kubeapi.selectors import Selector

ObjKey = tuple[tuple[str, str, str], str, str]  # (resource key, namespace or "", name)
_CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


@dataclass(frozen=True)
class Change:
    """One committed change, kept for watches that resume from a resourceVersion."""

    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    resource: tuple[str, str, str]
    obj: Obj
    old: Obj | None


class ObjectStore:
    """Objects by (resource, namespace, name), a change history and watch subscribers."""

    def __init__(
        self, registry: ResourceRegistry, *, strict_namespaces: bool = True, history: int = 10000
    ) -> None:
        self.registry = registry
        self.strict_namespaces = strict_namespaces
        self._objects: dict[ObjKey, Obj] = {}
        self._applied: dict[ObjKey, dict[str, frozenset[patches.Path]]] = {}
        self._history: deque[Change] = deque(maxlen=history)
        self._subscribers: set[Callable[[Change], None]] = set()
        self._rv = 0

    @property
    def resource_version(self) -> str:
        """The latest resourceVersion handed out (what a list reports)."""
        return str(self._rv)

    # -- reads ---------------------------------------------------------------------------

    def get(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        """A copy of one object, or 404 NotFound."""
        return copy.deepcopy(self._existing(resource, namespace, name))

    def select(self, resource: ResourceType, namespace: str, selector: Selector) -> list[Obj]:
        """Copies of the selected objects; namespace "" lists across all namespaces."""
        return [
            copy.deepcopy(obj)
            for (key, ns, _), obj in sorted(self._objects.items())
            if key == resource.key and namespace in ("", ns) and selector.matches(obj)
        ]

    def subscribe(
        self, callback: Callable[[Change], None], *, since: int | None
    ) -> tuple[list[Change], Callable[[], None]]:
        """Register a watcher; returns the changes after `since` (None: none) and an unsubscribe."""
        replay: list[Change] = []
        if since is not None:
            truncated = len(self._history) == self._history.maxlen
            if truncated and since < self._history[0].rv - 1:
                raise GoneError(f"too old resource version: {since} ({self._history[0].rv - 1})")
            replay = [change for change in self._history if change.rv > since]
        self._subscribers.add(callback)
        return replay, lambda: self._subscribers.discard(callback)

    # -- writes --------------------------------------------------------------------------

    def create(self, resource: ResourceType, namespace: str, body: Obj) -> Obj:
        """Create an object (POST); 409 AlreadyExists when the name is taken."""
        obj = prepare_create(resource, namespace, body)
        if resource.namespaced:
            self._require_namespace(namespace)
        key = (resource.key, namespace, obj["metadata"]["name"])
        if key in self._objects:
            raise AlreadyExistsError(
                f'{resource.plural} "{key[2]}" already exists',
                details={"name": key[2], "kind": resource.plural},
            )
        if resource.key == _CRDS:
            obj["status"] = crd_status(obj)
            self._register_crd(obj, previous=None)
        return self._commit(resource, key, obj, old=None)

    def replace(
        self, resource: ResourceType, namespace: str, name: str, body: Obj, *, status: bool
    ) -> Obj:
        """Replace an object (PUT), optionally only its status (PUT .../status)."""
        if metadata(require_object(body)).get("name", name) != name:
            raise BadRequestError(
                f"the name of the object ({body['metadata']['name']}) does not match "
                f"the name on the URL ({name})"
            )
        return self._update(resource, (resource.key, namespace, name), body, status=status)

    def patch(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        *,
        kind: str,
        body: Any,
        status: bool,
        field_manager: str | None,
    ) -> tuple[Obj, bool]:
        """Patch an object; returns it and whether it was created (only apply creates)."""
        key = (resource.key, namespace, name)
        if kind == patches.APPLY:
            return self._apply(resource, key, body, status=status, manager=field_manager)
        old = self._existing(resource, namespace, name)
        merged = (
            patches.json_patch(old, body)
            if kind == patches.JSON_PATCH
            else patches.merge_patch(old, require_object(body))
        )
        return self._update(resource, key, merged, status=status), False

    def delete(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        """Delete an object (finalizers first), then cascade to namespaces' and GC dependents."""
        key = (resource.key, namespace, name)
        old = self._existing(resource, namespace, name)
        if old["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(old)  # already waiting for its finalizers
        if old["metadata"].get("finalizers"):
            marked = copy.deepcopy(old)
            marked["metadata"].setdefault("deletionTimestamp", rfc3339())
            return self._commit(resource, key, marked, old=old)
        deleted = self._delete_now(key)
        self._collect_garbage()
        return deleted

    # -- internals -----------------------------------------------------------------------

    def _existing(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._objects.get((resource.key, namespace, name))
        if obj is None:
            raise NotFoundError(
                f'{resource.plural} "{name}" not found',
                details={"name": name, "group": resource.group, "kind": resource.plural},
            )
        return obj

    def _require_namespace(self, namespace: str) -> None:
        if self.strict_namespaces and ((NAMESPACES, "", namespace) not in self._objects):
            raise NotFoundError(
                f'namespaces "{namespace}" not found',
                details={"name": namespace, "kind": "namespaces"},
            )

    def _update(self, resource: ResourceType, key: ObjKey, proposed: Obj, *, status: bool) -> Obj:
        old = self._existing(resource, key[1], key[2])
        expected = metadata(proposed).get("resourceVersion")
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise ConflictError(
                f'Operation cannot be fulfilled on {resource.plural} "{key[2]}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                details={"name": key[2], "group": resource.group, "kind": resource.plural},
            )
        new = merge_update(resource, old, proposed, status=status)
        if new == old:
            return copy.deepcopy(old)  # kube-apiserver skips no-op writes: same rv, no event
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            deleted = self._delete_now(key)
            self._collect_garbage()
            return deleted
        if resource.key == _CRDS:
            self._register_crd(new, previous=old)
        return self._commit(resource, key, new, old=old)

    def _apply(
        self, resource: ResourceType, key: ObjKey, body: Any, *, status: bool, manager: str | None
    ) -> tuple[Obj, bool]:
        if not manager:
            raise BadRequestError("PATCH with apply requires the fieldManager parameter")
        if metadata(require_object(body)).get("name", key[2]) != key[2]:
            raise BadRequestError(
                "the name of the applied object does not match the name on the URL"
            )
        metadata(body).setdefault("name", key[2])
        # Ownership is per manager and per subresource, as in managedFields.
        owner = f"{manager}/status" if status else manager
        if key not in self._objects:
            if status:
                self._existing(resource, key[1], key[2])  # /status never creates: 404
            created = self.create(resource, key[1], body)
            self._applied[key] = {owner: patches.leaf_paths(body)}
            return created, True
        owned = self._applied.setdefault(key, {})
        merged, owned[owner] = patches.server_side_apply(
            self._objects[key], body, previous=owned.get(owner, ())
        )
        return self._update(resource, key, merged, status=status), False

    def _commit(self, resource: ResourceType, key: ObjKey, obj: Obj, *, old: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        self._publish(Change(self._rv, "MODIFIED" if old else "ADDED", resource.key, obj, old))
        return copy.deepcopy(obj)

    def _delete_now(self, key: ObjKey) -> Obj:
        if key[0] == NAMESPACES:
            for inner in [k for k in self._objects if k[1] == key[2] and k[0] != NAMESPACES]:
                self._delete_now(inner)
        old = self._objects.pop(key)
        self._applied.pop(key, None)
        if key[0] == _CRDS:
            self._unregister_crd(old)
        self._rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._publish(Change(self._rv, "DELETED", key[0], gone, old))
        return copy.deepcopy(gone)

    def _publish(self, change: Change) -> None:
        self._history.append(change)
        for subscriber in list(self._subscribers):
            subscriber(change)

    def _collect_garbage(self) -> None:
        """Delete dependents none of whose owners exist any more, until nothing changes."""
        while True:
            live = {obj["metadata"]["uid"] for obj in self._objects.values()}
            orphans = [
                key
                for key, obj in self._objects.items()
                if (refs := obj["metadata"].get("ownerReferences"))
                and not any(ref.get("uid") in live for ref in refs)
            ]
            if not orphans:
                return
            for key in orphans:
                if key in self._objects:  # not already gone with a deleted namespace
                    self._delete_now(key)

    def _register_crd(self, crd: Obj, *, previous: Obj | None) -> None:
        if previous is not None:
            self._unregister_crd(previous, keep_objects=True)
        for resource in crd_resource_types(crd):
            self.registry.add(resource)

    def _unregister_crd(self, crd: Obj, *, keep_objects: bool = False) -> None:
        for resource in crd_resource_types(crd):
            self.registry.remove(resource.key)
            if not keep_objects:
                for key in [k for k in self._objects if k[0] == resource.key]:
                    self._delete_now(key)
