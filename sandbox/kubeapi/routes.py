"""HTTP routing of the emulated API server: URL parsing, verbs, faults and the log.

kmock's path parser takes `/api/v1/namespaces` for "namespace None, no resource" and
`/api/v1/namespaces/x` for "namespace x", so the Namespace resource is unreachable;
it also has no PUT and answers 200 to creates. `parse_target` reads resource URLs the
way kube-apiserver's RequestInfoResolver (k8s.io/apiserver/pkg/endpoints/request)
does, and `ApiHandler` maps verbs to the store with the apiserver's status codes (201
on create and on an apply that creates). Everything else — `/`, `/version`, `/api`,
`/apis` and group/version discovery — is served by kmock's `KubernetesScaffold`,
whose resource catalogue is refreshed from our registry before each discovery call.
"""

import asyncio
import http
import json
import logging
from dataclasses import dataclass
from typing import Any

import kmock
import yaml
from aiohttp import web

from sandbox.kubeapi import patches
from sandbox.kubeapi.errors import (
    ApiError,
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    status_body,
)
from sandbox.kubeapi.resources import VERBS, ResourceRegistry, ResourceType
from sandbox.kubeapi.selectors import Selector
from sandbox.kubeapi.store import ObjectStore
from sandbox.kubeapi.tokens import TokenIssuer
from sandbox.kubeapi.traffic import Injection, RequestRecord, Traffic
from sandbox.kubeapi.watches import serve_watch

logger = logging.getLogger(__name__)

# Subresources of a Namespace, which share the URL shape of namespaced collections.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_SERVICE_ACCOUNTS = ("", "v1", "serviceaccounts")


@dataclass(frozen=True)
class Target:
    """What a resource URL addresses; namespace "" means cluster scope or all namespaces."""

    resource: ResourceType
    namespace: str
    name: str | None
    subresource: str | None


def parse_target(path: str, registry: ResourceRegistry) -> Target | None:
    """Parse a resource URL; None for discovery and other non-resource paths."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        raise NotFoundError("the server could not find the requested resource")
    resource = registry.get(group, version, rest[0])
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    misplaced = bool(namespace) != resource.namespaced and (name is not None or bool(namespace))
    if misplaced or (subresource is not None and subresource not in resource.subresources):
        raise NotFoundError("the server could not find the requested resource")
    return Target(resource, namespace, name, subresource)


async def _read_body(request: web.BaseRequest, *, yaml_ok: bool = False) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        if yaml_ok:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError:
                pass
        raise BadRequestError("the request body is not valid JSON") from exc


def _json(obj: Any, *, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


def fault_response(injection: Injection) -> web.Response:
    """The Status an injected fault answers with (plus Retry-After when asked)."""
    status = injection.status or 500
    reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError"}.get(
        status, http.HTTPStatus(status).phrase.replace(" ", "")
    )
    body = status_body(code=status, reason=reason, message=f"injected fault ({status})")
    headers = {} if injection.retry_after is None else {"Retry-After": str(injection.retry_after)}
    return web.json_response(body, status=status, headers=headers)


class ApiHandler:
    """The aiohttp low-level handler: faults, routing to the store, and the request log."""

    def __init__(self, *, store: ObjectStore, tokens: TokenIssuer, traffic: Traffic) -> None:
        self.store, self.tokens, self.traffic = store, tokens, traffic
        self._discovery = kmock.KubernetesScaffold()

    async def open(self) -> None:
        """Enter kmock's scaffold (it renders Status errors only while entered)."""
        await self._discovery.__aenter__()

    async def close(self) -> None:
        """Leave kmock's scaffold."""
        await self._discovery.__aexit__(None, None, None)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request: an armed fault if one matches, else the API; then log it."""
        injection = self.traffic.take(request.method, request.path)
        if injection is not None and injection.delay_s:
            await asyncio.sleep(injection.delay_s)
        if injection is not None and injection.status is not None:
            response: web.StreamResponse = fault_response(injection)
        else:
            response = await self._serve(request)
        record = RequestRecord(
            request.method,
            request.path,
            dict(request.query),
            response.status,
            injected=injection is not None and injection.status is not None,
        )
        self.traffic.record(record)
        return response

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            target = parse_target(request.path, self.store.registry)
            if target is None:
                return await self._discover(request)
            return await self._dispatch(request, target)
        except ApiError as exc:
            return _json(exc.status(), status=exc.code)
        except Exception:
            # A bug in the emulator: answer like an apiserver would (500 Status), keep the trace.
            logger.exception("kubeapi: failed to serve %s %s", request.method, request.path)
            return _json(ApiError("internal error in the API emulator").status(), status=500)

    async def _discover(self, request: web.BaseRequest) -> web.StreamResponse:
        catalogue = self._discovery.resources
        catalogue.clear()
        for resource in self.store.registry:
            catalogue[kmock.resource(resource.group, resource.version, resource.plural)] = (
                kmock.ResourceInfo(
                    kind=resource.kind,
                    singular=resource.kind.lower(),
                    namespaced=resource.namespaced,
                    verbs=set(VERBS),
                    subresources=set(resource.subresources),
                )
            )
        # kmock's routes are exact paths; the client asks for `/version/`.
        if request.path != "/" and request.path.endswith("/"):
            request = request.clone(rel_url=request.rel_url.with_path(request.path.rstrip("/")))
        response: web.StreamResponse = await self._discovery(request)
        return response

    async def _dispatch(self, request: web.BaseRequest, target: Target) -> web.StreamResponse:
        method = request.method.upper()
        if target.name is None:
            return await self._collection(request, target, method)
        if target.subresource == "token" and method == "POST":
            return await self._token_request(request, target.namespace, target.name)
        if target.subresource not in (None, "status"):
            raise MethodNotAllowedError(f"{method} is not supported on {target.subresource}")
        return await self._item(request, target, method, target.name)

    async def _collection(
        self, request: web.BaseRequest, target: Target, method: str
    ) -> web.StreamResponse:
        store, resource, namespace = self.store, target.resource, target.namespace
        selector = Selector.from_query(request.query)
        if method == "GET" and request.query.get("watch") in ("true", "1"):
            return await serve_watch(
                request, store=store, resource=resource, namespace=namespace, selector=selector
            )
        if method == "GET":
            return _json(self._list(target, store.select(resource, namespace, selector)))
        if method == "POST" and (namespace or not resource.namespaced):
            return _json(store.create(resource, namespace, await _read_body(request)), status=201)
        if method == "DELETE":
            items = store.select(resource, namespace, selector)
            for obj in items:
                store.delete(
                    resource,
                    namespace or obj["metadata"].get("namespace", ""),
                    obj["metadata"]["name"],
                )
            return _json(self._list(target, items))
        raise MethodNotAllowedError(f"{method} is not supported on a collection")

    def _list(self, target: Target, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": target.resource.api_version,
            "kind": f"{target.resource.kind}List",
            "metadata": {"resourceVersion": self.store.resource_version},
            "items": items,
        }

    async def _item(
        self, request: web.BaseRequest, target: Target, method: str, name: str
    ) -> web.StreamResponse:
        store, resource, namespace = self.store, target.resource, target.namespace
        status = target.subresource == "status"
        if method == "GET":
            return _json(store.get(resource, namespace, name))
        if method == "PUT":
            body = await _read_body(request)
            return _json(store.replace(resource, namespace, name, body, status=status))
        if method == "PATCH":
            kind = patches.patch_kind(request.content_type)
            obj, created = store.patch(
                resource,
                namespace,
                name,
                kind=kind,
                body=await _read_body(request, yaml_ok=kind == patches.APPLY),
                status=status,
                field_manager=request.query.get("fieldManager"),
            )
            return _json(obj, status=201 if created else 200)
        if method == "DELETE" and not status:
            return _json(store.delete(resource, namespace, name))
        raise MethodNotAllowedError(f"{method} is not supported here")

    async def _token_request(
        self, request: web.BaseRequest, namespace: str, name: str
    ) -> web.Response:
        accounts = self.store.registry.get(*_SERVICE_ACCOUNTS)
        account = self.store.get(accounts, namespace, name)
        body = await _read_body(request)
        return _json(self.tokens.token_request(body, service_account=account), status=201)
