"""`KubeApiServer`: the emulated Kubernetes API on a loopback port, in its own thread.

The official kubernetes client is synchronous; a server on the caller's event loop
would deadlock against it. The server therefore runs an aiohttp low-level server on a
private event loop in a daemon thread. Every touch of the object store happens on that
loop: HTTP requests natively, and the synchronous helpers below (`install_crd`,
`get_object`, ...) by submitting to the loop and waiting for the result.
"""

import asyncio
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.kubeapi.errors import NotFoundError
from sandbox.kubeapi.resources import ResourceRegistry, ResourceType
from sandbox.kubeapi.routes import ApiHandler
from sandbox.kubeapi.store import ObjectStore
from sandbox.kubeapi.tokens import IssuedToken, TokenIssuer
from sandbox.kubeapi.traffic import Injection, RequestRecord, Traffic

T = TypeVar("T")
_CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_STARTUP_TIMEOUT_S = 10.0
_CONTEXT = "pimesh-sandbox"


class KubeApiServer:
    """A Kubernetes API server over real HTTP for tests and `pimesh sandbox`.

    Use as a context manager, or call `start()` and `stop()`. `strict_namespaces`
    refuses namespaced objects in namespaces that do not exist, as kube-apiserver's
    NamespaceLifecycle admission does.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, strict_namespaces: bool = True
    ) -> None:
        self.registry = ResourceRegistry()
        self.traffic = Traffic()
        self.tokens = TokenIssuer()
        self._store = ObjectStore(self.registry, strict_namespaces=strict_namespaces)
        self._handler = ApiHandler(store=self._store, tokens=self.tokens, traffic=self.traffic)
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        loop, ready = asyncio.new_event_loop(), threading.Event()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name="kubeapi", daemon=True
        )
        self._thread.start()
        if not ready.wait(_STARTUP_TIMEOUT_S) or self._failure is not None:
            self._thread.join(_STARTUP_TIMEOUT_S)
            self._thread = None
            raise RuntimeError("the Kubernetes API emulator did not start") from self._failure
        return self

    def stop(self) -> None:
        """Stop serving: open watches end, the port is released, the thread joins."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_STARTUP_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except Exception as exc:  # reported to start(), which raises
            self._failure = exc
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._close())
        # Handlers of watches whose clients vanished without closing: cancel and await
        # them, so stopping never leaves "Task was destroyed but it is pending!" behind.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    async def _open(self) -> None:
        await self._handler.open()
        # A short shutdown timeout: open watches are cancelled rather than awaited.
        self._runner = web.ServerRunner(web.Server(self._handler), shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._port = self._runner.addresses[0][1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._handler.close()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop (where the store lives) and return its result."""
        if self._loop is None or self._thread is None:
            return fn()

        async def call() -> T:
            return fn()

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(_STARTUP_TIMEOUT_S)

    # -- client configuration ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (after `start()`)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. `http://127.0.0.1:41234`."""
        return f"http://{self._host}:{self._port}"

    def write_kubeconfig(self, path: Path, *, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this server (no credentials: it accepts anyone)."""
        context: dict[str, str] = {"cluster": _CONTEXT, "user": _CONTEXT}
        if namespace is not None:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": _CONTEXT, "cluster": {"server": self.url}}],
            "users": [{"name": _CONTEXT, "user": {}}],
            "contexts": [{"name": _CONTEXT, "context": context}],
            "current-context": _CONTEXT,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- resources and objects -----------------------------------------------------------

    def register_resource(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        subresources: frozenset[str] = frozenset(),
    ) -> ResourceType:
        """Serve one more resource type (discovery lists it at once)."""
        resource = ResourceType(group, version, plural, kind, namespaced, subresources)
        self._on_loop(lambda: self.registry.add(resource))
        return resource

    def install_crd(self, crd: Mapping[str, Any]) -> dict[str, Any]:
        """Create (or replace) a CustomResourceDefinition, as `kubectl apply` of it would."""

        def install() -> dict[str, Any]:
            resource, name = self.registry.get(*_CRDS), crd["metadata"]["name"]
            try:
                self._store.get(resource, "", name)
            except NotFoundError:
                return self._store.create(resource, "", dict(crd))
            return self._store.replace(resource, "", name, dict(crd), status=False)

        return self._on_loop(install)

    def get_object(
        self, api_version: str, plural: str, name: str, *, namespace: str = ""
    ) -> dict[str, Any] | None:
        """A copy of a stored object, or None (for assertions that bypass the client)."""
        group, _, version = api_version.rpartition("/")

        def get() -> dict[str, Any] | None:
            resource = self.registry.get(group, version, plural)  # unknown resource: raise
            try:
                return self._store.get(resource, namespace, name)
            except NotFoundError:
                return None

        return self._on_loop(get)

    # -- observation and fault injection -------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request served so far (method, path, query, status), oldest first."""
        return self.traffic.records

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        """Every TokenRequest answered so far, oldest first."""
        return self.tokens.issued

    @property
    def token_public_key(self) -> rsa.RSAPublicKey:
        """The key that verifies the issued service account tokens (RS256)."""
        return self.tokens.public_key

    def inject(
        self,
        *,
        method: str | None = None,
        path_regex: str | None = None,
        status: int | None = 500,
        times: int | None = 1,
        retry_after: int | None = None,
        delay_s: float = 0.0,
    ) -> Injection:
        """Answer the next `times` matching requests with `status` (None: only delay them)."""
        pattern = re.compile(path_regex) if path_regex is not None else None
        injection = Injection(method, pattern, status, times, retry_after, delay_s)
        return self.traffic.inject(injection)

    def clear_injections(self) -> None:
        """Disarm every injected fault."""
        self.traffic.clear_injections()
