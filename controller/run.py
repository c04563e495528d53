"""`pimesh controller run`: wire the sources, the work queue and the reconcile workers.

Start order matters. The namespace and the controller key come first (everything is
signed with it); then the watches and workers, so the initial list of EdgeDevices is
reconciled; the MQTT link last, because its retained `online` status makes every agent
re-announce and the controller must be ready to take those announces.
Stop order is the reverse: say `offline`, stop taking work, let workers finish.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from controller.cluster import ISTIO_NAMESPACE, ROOT_CERT_CONFIGMAP, ClusterSource
from controller.devicestore import DeviceStore
from controller.errors import ApiError, PermanentError, TooManyRequests, Waiting
from controller.identity import load_or_create_key
from controller.inbox import Inbox
from controller.intake import Intake
from controller.kube import Kube, load_api_client
from controller.leader import LeaderElector
from controller.meshconfig import mesh_configmap_name
from controller.metrics import ControllerMetrics, HealthServer
from controller.mqtt import ControllerLink, default_client_id
from controller.policy import PolicySync
from controller.ratelimit import RateLimiter
from controller.reconciler import Reconciler, WorkKey
from controller.resources import namespace as namespace_manifest
from controller.rotation import Rotation, build_schedule, fleet_expiry
from controller.settings import ControllerSettings
from controller.sources import ConfigWatch, DeviceWatch
from controller.workqueue import ShutDown, WorkQueue
from shared.settings import MqttSettings
from shared.timestamps import now_utc
from shared.topics import Topics

log = logging.getLogger(__name__)

WATCH_CONNECTIONS = 8
"""API connections besides the workers': the watches, the Lease, policies, events."""


class Controller:
    """The whole controller process, startable and stoppable (tests run several)."""

    def __init__(
        self,
        settings: ControllerSettings,
        mqtt: MqttSettings,
        *,
        client_id: str | None = None,
        now: Callable[[], datetime] = now_utc,
    ) -> None:
        self.settings = settings
        self.metrics = ControllerMetrics()
        self.queue: WorkQueue[WorkKey] = WorkQueue()
        self.inbox = Inbox()
        self.kube = Kube(
            load_api_client(settings.kubeconfig, connections=settings.workers + WATCH_CONNECTIONS)
        )
        self.devices = DeviceStore(self.kube, namespace=settings.namespace)
        self._mqtt_settings = mqtt
        self._client_id = client_id
        self._now = now
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.cluster = ClusterSource(self.kube, settings)
        self.link: ControllerLink | None = None
        self.reconciler: Reconciler | None = None
        self.health: HealthServer | None = None
        self._watches: list[DeviceWatch | ConfigWatch] = []
        self.policies = PolicySync(
            self.kube, namespace=settings.namespace, path=settings.policy_file
        )
        self.token_pace = RateLimiter(
            rate_per_s=settings.rotation_rate, concurrency=settings.rotation_concurrency
        )
        self.rotation = Rotation(
            build_schedule(settings),
            queue=self.queue,
            enrolled=self._start_rotation_run,
            rate_per_s=settings.rotation_rate,
            now=now,
        )
        self.leader = LeaderElector(
            self.kube,
            namespace=settings.namespace,
            identity=client_id or default_client_id(),
            on_started_leading=self.rotation.start,
            on_stopped_leading=self.rotation.stop,
        )

    def start(self) -> None:
        """Start everything; returns once the background threads run."""
        ns = self.settings.namespace
        self.kube.apply(namespace_manifest(ns))
        key = load_or_create_key(self.kube, namespace=ns)
        intake = Intake(
            Topics(self._mqtt_settings.topic_prefix),
            inbox=self.inbox,
            queue=self.queue,
            metrics=self.metrics,
        )
        self.link = ControllerLink(
            self._mqtt_settings, key=key, on_message=intake, client_id=self._client_id
        )
        self.reconciler = Reconciler(
            self.kube,
            self.devices,
            self.settings,
            publisher=self.link,
            inbox=self.inbox,
            cluster=self.cluster,
            metrics=self.metrics,
            now=self._now,
            queue=self.queue,
            rotation_due=self.rotation.is_due,
            token_permit=self.token_pace.permit,
        )
        self.policies.start()
        self._start_watches()
        for index in range(self.settings.workers):
            worker = threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._start_health()
        self.link.start()
        # Every replica reconciles; only the leader runs the rotation schedule.
        self.leader.start()

    def is_leader(self) -> bool:
        """This replica holds the Lease (and runs the rotation schedule)."""
        return self.leader.is_leader

    def ready(self) -> bool:
        """Connected to the broker and the first list of devices is done."""
        return bool(self.link and self.link.ready) and all(w.synced for w in self._watches)

    def alive(self) -> bool:
        """Every worker thread still runs."""
        return not self._stopping.is_set() and all(w.is_alive() for w in self._workers)

    def stop(self) -> None:
        """Say offline, stop taking work and let the workers finish."""
        self._stopping.set()
        self.leader.stop()  # releases the Lease: a standby takes over at once
        self.rotation.stop()
        if self.link is not None:
            self.link.stop()
        for watch in self._watches:
            watch.stop()
        self.policies.stop()
        self.queue.shutdown()
        for worker in self._workers:
            worker.join(timeout=10)
        self.kube.close()  # also ends the open watches
        if self.health is not None:
            self.health.stop()

    def _start_watches(self) -> None:
        def roots_changed() -> None:
            self.cluster.invalidate()
            for name in self._known_devices():
                self.queue.add(name)

        mesh_cm = mesh_configmap_name(self.settings.istio_revision)
        self._watches = [
            DeviceWatch(
                self.kube,
                self.queue,
                store=self.devices,
                namespace=self.settings.namespace,
                on_deleted=self._forget_device,
            ),
            ConfigWatch(
                self.kube,
                namespace=self.settings.namespace,
                names=frozenset({ROOT_CERT_CONFIGMAP}),
                on_change=roots_changed,
            ),
            ConfigWatch(
                self.kube,
                namespace=ISTIO_NAMESPACE,
                names=frozenset({mesh_cm}),
                on_change=roots_changed,
            ),
        ]
        for watch in self._watches:
            watch.start()

    def _start_rotation_run(self) -> list[str]:
        """The devices a rotation run renews; also refreshes the fleet's expiry gauges."""
        enrolled = [d for d in self.devices.all() if d.spec.approved and not d.spec.revoked]
        soonest, at_risk = fleet_expiry(
            [d.status for d in enrolled], now=self._now(), ttl_s=self.settings.token_ttl
        )
        if soonest is not None:
            self.metrics.soonest_expiry.set(soonest)
        self.metrics.at_risk.set(at_risk)
        self.metrics.rotation_runs.inc()
        return [d.name for d in enrolled if d.status.generation > 0]

    def _forget_device(self, device_id: str) -> None:
        """An EdgeDevice was deleted: clear its retained messages and what we remember."""
        if self.reconciler is not None:
            self.reconciler.forget(device_id)
        if self.link is not None:
            self.link.forget(device_id)

    def _known_devices(self) -> list[str]:
        return [d.name for d in self.devices.all()]

    def _start_health(self) -> None:
        if self.settings.metrics_port == 0:
            return
        self.health = HealthServer(
            self.metrics, port=self.settings.metrics_port, alive=self.alive, ready=self.ready
        )
        self.health.start()

    def _work(self) -> None:
        assert self.reconciler is not None  # noqa: S101 - set in start() before workers run
        while True:
            try:
                key = self.queue.get()
            except ShutDown:
                return
            if key is None:
                continue
            self.metrics.queue_depth.set(len(self.queue))
            try:
                self._reconcile_one(key)
            finally:
                self.queue.done(key)

    def _reconcile_one(self, key: WorkKey) -> None:
        assert self.reconciler is not None  # noqa: S101
        started = time.monotonic()
        try:
            result = self.reconciler.reconcile(key)
        except Waiting as exc:
            self.queue.add_after(key, exc.retry_after_s)
            self.metrics.reconciles.labels(result="waiting").inc()
        except TooManyRequests as exc:
            self.metrics.api_errors.labels(status="429").inc()
            if exc.retry_after_s is not None:
                self.queue.hold(key, exc.retry_after_s)
            else:
                self.queue.add_rate_limited(key)
        except PermanentError as exc:
            log.error("reconcile failed for good", extra={"device": str(key), "why": exc.reason})
            self.metrics.reconciles.labels(result="permanent_error").inc()
        except ApiError as exc:
            self.metrics.api_errors.labels(status=str(exc.status)).inc()
            delay = self.queue.add_rate_limited(key)
            log.warning(
                "reconcile failed, retrying",
                extra={"device": str(key), "why": exc.reason, "retry_s": delay},
            )
        except Exception:
            delay = self.queue.add_rate_limited(key)
            log.exception(
                "reconcile failed, retrying", extra={"device": str(key), "retry_s": delay}
            )
            self.metrics.reconciles.labels(result="error").inc()
        else:
            self.queue.forget(key)
            self.metrics.reconciles.labels(result="ok").inc()
            if result.requeue_after_s is not None:
                self.queue.add_after(key, result.requeue_after_s)
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
