"""Watch streams: `?watch=true` as newline-delimited JSON events over chunked HTTP.

kmock's watch replays every object as ADDED whatever resourceVersion the client
resumes from, ignores selectors and never ends. Here the semantics of kube-apiserver's
watch cache (k8s.io/apiserver/pkg/storage/cacher) are followed:

- no `resourceVersion` (or "0"): synthetic ADDED events for the current state first;
- a `resourceVersion`: every change after it, replayed from history, then live ones;
  history that is no longer kept yields an ERROR event carrying a 410 Expired Status;
- with a label/field selector, an object entering the selection arrives as ADDED and one
  leaving it as DELETED;
- `timeoutSeconds` ends the stream cleanly.
"""

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sandbox.kubeapi.errors import ApiError, BadRequestError
from sandbox.kubeapi.resources import ResourceType
from sandbox.kubeapi.selectors import Selector
from sandbox.kubeapi.store import Change, ObjectStore


def translate(
    change: Change, *, resource: ResourceType, namespace: str, selector: Selector
) -> dict[str, Any] | None:
    """The event a watcher of (resource, namespace, selector) sees for a change, if any."""
    if change.resource != resource.key:
        return None
    if namespace and change.obj.get("metadata", {}).get("namespace") != namespace:
        return None
    now = selector.matches(change.obj)
    before = change.old is not None and selector.matches(change.old)
    if change.type == "MODIFIED" and now != before:
        kind = "ADDED" if now else "DELETED"
    elif now:
        kind = change.type
    else:
        return None
    return {"type": kind, "object": change.obj}


def _since(query: Mapping[str, str]) -> int | None:
    value = query.get("resourceVersion", "")
    if value in ("", "0"):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise BadRequestError(f"invalid resourceVersion: {value!r}") from exc


def _timeout_s(query: Mapping[str, str]) -> float | None:
    value = query.get("timeoutSeconds")
    return float(value) if value else None


async def _write(response: web.StreamResponse, event: Mapping[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


async def serve_watch(
    request: web.BaseRequest,
    *,
    store: ObjectStore,
    resource: ResourceType,
    namespace: str,
    selector: Selector,
) -> web.StreamResponse:
    """Stream watch events for one resource until the timeout or the client leaves."""
    since, timeout_s = _since(request.query), _timeout_s(request.query)
    queue: asyncio.Queue[Change] = asyncio.Queue()
    initial = [] if since is not None else store.select(resource, namespace, selector)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        replay, unsubscribe = store.subscribe(queue.put_nowait, since=since)
    except ApiError as exc:
        await response.prepare(request)
        await _write(response, {"type": "ERROR", "object": exc.status()})
        return response
    try:
        await response.prepare(request)
        for obj in initial:
            await _write(response, {"type": "ADDED", "object": obj})
        for change in replay:
            await _forward(response, change, resource, namespace, selector)
        async with asyncio.timeout(timeout_s):
            while True:
                change = await queue.get()
                await _forward(response, change, resource, namespace, selector)
    except (TimeoutError, ConnectionResetError):
        pass  # the server's timeout elapsed, or the client went away
    finally:
        unsubscribe()
    return response


async def _forward(
    response: web.StreamResponse,
    change: Change,
    resource: ResourceType,
    namespace: str,
    selector: Selector,
) -> None:
    event = translate(change, resource=resource, namespace=namespace, selector=selector)
    if event is not None:
        await _write(response, event)
