"""The controller's Prometheus metrics and its health endpoints.

Each controller owns a registry (not the process-global one) so several controllers can
live in one process, as they do in the tests and the sandbox. The HTTP server answers
`/metrics`, `/healthz` (the process is alive and its workers run) and `/readyz` (the
broker link is up and the API answered its first list).
"""

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class ControllerMetrics:
    """Every metric the controller exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "pimesh_device_messages",
            "Device messages received, by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.reconciles = Counter(
            "pimesh_reconciles", "Reconciles, by result.", ["result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "pimesh_reconcile_seconds",
            "Time to reconcile one device.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue_depth = Gauge("pimesh_queue_depth", "Device ids waiting.", registry=r)
        self.devices = Gauge("pimesh_devices", "EdgeDevices by phase.", ["phase"], registry=r)
        self.api_errors = Counter(
            "pimesh_api_errors", "Kubernetes API errors, by status.", ["status"], registry=r
        )
        self.bundles = Counter(
            "pimesh_bundles_issued", "Bundle generations issued, by why.", ["why"], registry=r
        )
        self.soonest_expiry = Gauge(
            "pimesh_token_soonest_expiry_seconds",
            "Seconds until the soonest token expiry in the fleet (negative: expired).",
            registry=r,
        )
        self.at_risk = Gauge(
            "pimesh_devices_at_risk",
            "Enrolled devices whose token expires within a quarter of the TTL without a newer "
            "one acked.",
            registry=r,
        )
        self.rotation_runs = Counter("pimesh_rotation_runs", "Rotation runs started.", registry=r)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class HealthServer:
    """`/metrics`, `/healthz` and `/readyz` on a port of their own (0 = any free port)."""

    def __init__(
        self,
        metrics: ControllerMetrics,
        *,
        port: int,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        host: str = "0.0.0.0",  # noqa: S104 - probes and scrapers come from outside the pod
    ) -> None:
        handler = _handler(metrics, alive=alive, ready=ready)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def _handler(
    metrics: ControllerMetrics, *, alive: Callable[[], bool], ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif self.path in {"/healthz", "/readyz"}:
                ok = alive() if self.path == "/healthz" else ready()
                self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Probes every few seconds would drown the log."""

    return Handler
