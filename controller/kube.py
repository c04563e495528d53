"""The controller's only door to the Kubernetes API: a small typed facade.

The official client is used for what it is good at (kubeconfig and in-cluster
configuration, authentication, TLS, connection pooling) while requests go through its
generic `call_api`, so that every answer is handled the same way: JSON in, JSON out,
HTTP status mapped onto `controller.errors`. That sidesteps the generated code's quirks
listed in DESIGN.md (server-side apply answering 201 deserialises to None; patch bodies
silently sent as strategic merge) and keeps `Any` from leaking into the controller.

Every call the controller makes is a method here, so the RBAC rules in `deploy/` can be
derived from (and tested against) this one module.
"""

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from controller.errors import (
    ApiError,
    ApiUnavailable,
    Conflict,
    NotFound,
    TooManyRequests,
)

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
FIELD_MANAGER = "pimesh"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
WatchType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The URL path of the collection, or of one object when `name` is given."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base if name is None else f"{base}/{name}"


NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
SERVICES = Resource("", "v1", "services")
CONFIG_MAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
EDGE_DEVICES = Resource("pimesh.io", "v1alpha1", "edgedevices")
WORKLOAD_ENTRIES = Resource("networking.istio.io", "v1", "workloadentries")
WORKLOAD_GROUPS = Resource("networking.istio.io", "v1", "workloadgroups")
AUTHORIZATION_POLICIES = Resource("security.istio.io", "v1", "authorizationpolicies")

BY_KIND: Mapping[tuple[str, str], Resource] = {
    ("v1", "Namespace"): NAMESPACES,
    ("v1", "ServiceAccount"): SERVICE_ACCOUNTS,
    ("v1", "Service"): SERVICES,
    ("v1", "ConfigMap"): CONFIG_MAPS,
    ("v1", "Secret"): SECRETS,
    ("pimesh.io/v1alpha1", "EdgeDevice"): EDGE_DEVICES,
    ("networking.istio.io/v1", "WorkloadEntry"): WORKLOAD_ENTRIES,
    ("networking.istio.io/v1", "WorkloadGroup"): WORKLOAD_GROUPS,
    ("security.istio.io/v1", "AuthorizationPolicy"): AUTHORIZATION_POLICIES,
}


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch stream."""

    type: WatchType
    object: JsonObject


def load_api_client(kubeconfig: Path | None, *, connections: int = 16) -> k8s.ApiClient:
    """In-cluster config when no path is given and we run in a pod, else a kubeconfig file.

    `connections` sizes the HTTP connection pool: every reconcile worker and every watch
    holds one at a time, and a full pool would open (and drop) a connection per request.

    Raises:
        ApiUnavailable: no usable configuration was found.
    """
    config = k8s.Configuration()
    try:
        loaded = False
        if kubeconfig is None:
            try:
                k8s_config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
                loaded = True
            except ConfigException:
                pass
        if not loaded:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None, client_configuration=config
            )
    except (ConfigException, OSError) as exc:
        msg = f"no usable Kubernetes configuration: {exc}"
        raise ApiUnavailable(msg) from exc
    config.connection_pool_maxsize = connections
    return k8s.ApiClient(config)


class Kube:
    """Typed access to the objects pimesh reads and writes."""

    def __init__(self, api: k8s.ApiClient, *, timeout_s: float = 30.0) -> None:
        self._api = api
        self._timeout_s = timeout_s
        self._watches: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        with self._lock:
            return self._closed

    def close(self) -> None:
        """End open watches and release the connection pool."""
        with self._lock:
            self._closed = True
            watches = list(self._watches)
        for response in watches:
            # A watch that ended on its own meanwhile (its socket closed, or back in the
            # pool) has nothing left to unblock.
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                response.shutdown()  # unblocks the thread reading it
        self._api.close()  # type: ignore[no-untyped-call]

    # Generic verbs ---------------------------------------------------------------

    def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JsonObject:
        """Read one object. Raises NotFound."""
        return self._call("GET", resource.path(namespace, name))

    def find(
        self, resource: Resource, name: str, *, namespace: str | None = None
    ) -> JsonObject | None:
        """Read one object, or None when it does not exist."""
        try:
            return self.get(resource, name, namespace=namespace)
        except NotFound:
            return None

    def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> tuple[list[JsonObject], str]:
        """List objects; returns them and the list's resourceVersion (to start a watch)."""
        query = {"labelSelector": label_selector} if label_selector else {}
        body = self._call("GET", resource.path(namespace), query=query)
        version = str(body.get("metadata", {}).get("resourceVersion", ""))
        return list(body.get("items", [])), version

    def create(
        self, resource: Resource, obj: JsonObject, *, namespace: str | None = None
    ) -> JsonObject:
        """Create an object. Raises Conflict when it exists."""
        return self._call("POST", resource.path(namespace), body=obj)

    def apply(self, manifest: JsonObject, *, force: bool = True) -> JsonObject:
        """Server-side apply with field manager `pimesh`: create or converge the fields we own."""
        resource = BY_KIND[(manifest["apiVersion"], manifest["kind"])]
        meta = manifest["metadata"]
        path = resource.path(meta.get("namespace"), meta["name"])
        query = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        return self._call("PATCH", path, query=query, body=manifest, content_type=APPLY)

    def merge_patch(
        self,
        resource: Resource,
        name: str,
        patch: JsonObject,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonObject:
        """JSON merge patch (RFC 7386); a `metadata.resourceVersion` in it is a precondition."""
        path = resource.path(namespace, name) + (f"/{subresource}" if subresource else "")
        query = {"fieldManager": FIELD_MANAGER}
        return self._call("PATCH", path, query=query, body=patch, content_type=MERGE)

    def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        uid: str | None = None,
    ) -> bool:
        """Delete an object (only that incarnation when `uid` is given); False if absent."""
        body: JsonObject = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", resource.path(namespace, name), body=body)
        except NotFound:
            return False
        return True

    def watch(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        resource_version: str = "",
        timeout_s: int = 300,
    ) -> Iterator[WatchEvent]:
        """Stream watch events until the server ends the watch.

        Raises:
            ApiError: the watch could not start, or sent an ERROR event (410 Gone means the
                resourceVersion is too old: list again).
            ApiUnavailable: the connection broke.
        """
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        if resource_version:
            query["resourceVersion"] = resource_version
        response = self._open(
            "GET", resource.path(namespace), query=query, read_timeout=timeout_s + 10
        )
        with self._lock:
            if self._closed:
                response.release_conn()
                return
            self._watches.add(response)
        try:
            for line in _lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise _api_error(int(status.get("code", 500)), status.get("message", ""), None)
                yield WatchEvent(event["type"], event["object"])
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self.closed:
                return  # close() ended it on purpose
            msg = f"watch of {resource.plural} broke: {type(exc).__name__}"
            raise ApiUnavailable(msg) from exc
        finally:
            with self._lock:
                self._watches.discard(response)
            response.release_conn()

    # Specific calls ----------------------------------------------------------------

    def request_token(
        self, service_account: str, *, namespace: str, audience: str, ttl_s: int
    ) -> tuple[str, str]:
        """TokenRequest on a ServiceAccount; returns (token, expirationTimestamp)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": ttl_s},
        }
        path = SERVICE_ACCOUNTS.path(namespace, service_account) + "/token"
        answer = self._call("POST", path, body=body)
        status = answer.get("status", {})
        return str(status["token"]), str(status["expirationTimestamp"])

    # Optimistic concurrency (controller.leader) ---------------------------------------

    def replace(
        self, resource: Resource, obj: JsonObject, *, namespace: str | None = None
    ) -> JsonObject:
        """Replace a whole object (PUT, RBAC verb `update`).

        Its `metadata.resourceVersion` is a precondition: Conflict when the object changed
        since it was read, so of two writers that read the same version only one wins.
        Raises NotFound when the object is gone.
        """
        return self._call("PUT", resource.path(namespace, obj["metadata"]["name"]), body=obj)

    # Plumbing ------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> JsonObject:
        response = self._open(method, path, query=query, body=body, content_type=content_type)
        try:
            data = response.data
        finally:
            response.release_conn()
        return json.loads(data) if data else {}

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
        read_timeout: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self._api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        timeout = (10.0, read_timeout if read_timeout is not None else self._timeout_s)
        try:
            rest = self._api.call_api(*serialized, _request_timeout=timeout)
        except k8s.ApiException as exc:  # raised for TLS errors, with status 0
            msg = f"{method} {path}: {exc.reason}"
            raise ApiUnavailable(msg) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            msg = f"{method} {path}: {type(exc).__name__}: {exc}"
            raise ApiUnavailable(msg) from exc
        response: urllib3.BaseHTTPResponse = rest.response
        if response.status >= 300:
            try:
                data = response.data
            finally:
                response.release_conn()
            raise _error_from(method, path, response.status, data, response.headers)
        return response


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


def _error_from(
    method: str, path: str, status: int, data: bytes, headers: Mapping[str, str]
) -> ApiError:
    message = ""
    try:
        message = str(json.loads(data).get("message", ""))
    except (ValueError, AttributeError):
        message = data[:200].decode("utf-8", "replace")
    retry_after = headers.get("Retry-After")
    retry_s = float(retry_after) if retry_after and retry_after.isdigit() else None
    return _api_error(status, f"{method} {path}: {status} {message}".strip(), retry_s)


def _api_error(status: int, reason: str, retry_after_s: float | None) -> ApiError:
    kinds: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 429: TooManyRequests}
    return kinds.get(status, ApiError)(reason, status=status, retry_after_s=retry_after_s)
