"""Lease-based leader election among controller replicas, as client-go's leaderelection does.

DESIGN.md runs the controller as a Deployment of two replicas; what only one of them may
do at a time (with MQTT 3.1.1, subscribing at all: PROTOCOL.md) waits for `is_leader`.
The election record is a `coordination.k8s.io/v1` Lease in the fleet namespace, read and
written only through `controller.kube.Kube` (get, create, and replace: RBAC verbs get,
create and update), with client-go's rules (k8s.io/client-go/tools/leaderelection):

- A candidate takes the Lease when it does not exist, when its `holderIdentity` is empty
  (released), or when the record has not changed for `leaseDurationSeconds` as timed by
  the candidate's own clock from when it last saw the record change: other replicas'
  clocks are never trusted, so `renewTime` is informational.
- Every write carries the resourceVersion that was read, so of two candidates that saw
  the same expired record, exactly one write succeeds; the other gets Conflict and stays
  a candidate.
- The leader renews every `renew_s`; when no renewal has succeeded for
  `renew_deadline_s` (shorter than the lease) it steps down, before any other replica can
  consider the lease expired. `is_leader` is bounded by the same deadline, so a renewal
  stuck in a slow API call never leaves two replicas believing they lead.
- `stop()` releases the Lease (clears `holderIdentity`, as client-go's ReleaseOnCancel),
  so the next replica takes over at once instead of after a whole lease duration.

Unlike client-go's `Run`, an elector that lost the lease stays a candidate, so a replica
cut off from the API server for a while leads again later without a restart. The
callbacks run on the elector's thread and must return quickly.
"""

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime

from controller.errors import Conflict, ControllerError, NotFound
from controller.kube import LEASES, JsonObject, Kube
from controller.resources import MANAGED_BY
from shared.timestamps import now_utc

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "pimesh-controller"
LEASE_API_VERSION = "coordination.k8s.io/v1"
_JITTER = 0.2  # candidates spread their retries, as client-go's JitterUntil does


def micro_time(moment: datetime) -> str:
    """A Lease `MicroTime`: RFC 3339 UTC with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease in a background thread; `is_leader` says who won."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        identity: str,
        name: str = DEFAULT_LEASE_NAME,
        lease_duration_s: float = 15.0,
        renew_s: float = 5.0,
        renew_deadline_s: float | None = None,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = now_utc,
    ) -> None:
        deadline = renew_deadline_s if renew_deadline_s is not None else lease_duration_s * 2 / 3
        if not 0 < renew_s < deadline < lease_duration_s:
            msg = "need 0 < renew_s < renew_deadline_s < lease_duration_s"
            raise ValueError(msg)
        if not identity:
            msg = "a leader elector needs a non-empty identity"
            raise ValueError(msg)
        self._kube = kube
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._lease_duration_s = lease_duration_s
        self._renew_s = renew_s
        self._deadline_s = deadline
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._leading = False
        self._renewed_at = 0.0  # clock() of the last successful acquire or renew
        self._observed: tuple[str, str, object] | None = None  # holder, renewTime, duration
        self._observed_at = 0.0  # clock() when `_observed` last changed
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the Lease and renewed it within the deadline."""
        with self._lock:
            return self._leading and self._clock() - self._renewed_at < self._deadline_s

    def start(self) -> None:
        """Campaign in a background thread until `stop()`."""
        if self._thread is not None:
            msg = "LeaderElector already started"
            raise RuntimeError(msg)
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout_s: float = 10.0) -> None:
        """Stop campaigning; with `release`, hand the Lease over at once.

        Without `release` the Lease stays held until it expires, which is what a crashed
        replica leaves behind.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if release:
            self.release()
        self._settle(won=False, lost=True)

    def try_acquire_or_renew(self) -> bool:
        """One round: acquire or renew the Lease; returns whether this replica leads now."""
        # A renewal counts from before it was sent: a reply that took long must not stretch
        # the leader's belief past the moment the others start timing the lease.
        started = self._clock()
        try:
            won = self._acquire_or_renew()
        except ControllerError as exc:
            log.warning(
                "leader election round failed", extra={"lease": self._name, "why": exc.reason}
            )
            won = False
        lost = not won and self._held_by_other()
        self._settle(won=won, lost=lost, started=started)
        return self.is_leader

    def release(self) -> bool:
        """Give up the Lease if this replica holds it; True when it was released."""
        try:
            lease = self._kube.get(LEASES, self._name, namespace=self._namespace)
            if _spec(lease).get("holderIdentity") != self.identity:
                return False
            stamp = micro_time(self._now())
            spec = {
                **_spec(lease),
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": stamp,
                "renewTime": stamp,
            }
            self._kube.replace(LEASES, {**lease, "spec": spec}, namespace=self._namespace)
        except ControllerError as exc:
            log.warning(
                "could not release the lease", extra={"lease": self._name, "why": exc.reason}
            )
            return False
        log.info("released the lease", extra={"lease": self._name, "identity": self.identity})
        return True

    # one round -----------------------------------------------------------------------

    def _acquire_or_renew(self) -> bool:
        if self._stopping.is_set():
            return False  # a round still running when stop() released must not take it back
        try:
            lease = self._kube.get(LEASES, self._name, namespace=self._namespace)
        except NotFound:
            return self._create()
        spec = _spec(lease)
        holder = str(spec.get("holderIdentity") or "")
        self._observe(holder, spec)
        if holder and holder != self.identity and not self._expired():
            return False
        ours = holder == self.identity
        stamp = micro_time(self._now())
        new_spec = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._lease_seconds(),
            "acquireTime": spec.get("acquireTime", stamp) if ours else stamp,
            "renewTime": stamp,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if ours else 1),
        }
        try:
            # lease["metadata"] carries the resourceVersion just read: the precondition.
            written = self._kube.replace(
                LEASES, {**lease, "spec": new_spec}, namespace=self._namespace
            )
        except (Conflict, NotFound):
            return False  # another replica wrote first; look again next round
        self._observe(self.identity, _spec(written))
        return True

    def _create(self) -> bool:
        stamp = micro_time(self._now())
        lease: JsonObject = {
            "apiVersion": LEASE_API_VERSION,
            "kind": "Lease",
            "metadata": {
                "name": self._name,
                "namespace": self._namespace,
                "labels": dict(MANAGED_BY),
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self._lease_seconds(),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            written = self._kube.create(LEASES, lease, namespace=self._namespace)
        except Conflict:
            return False  # created by another replica since our read
        self._observe(self.identity, _spec(written))
        return True

    def _observe(self, holder: str, spec: JsonObject) -> None:
        record = (holder, str(spec.get("renewTime", "")), spec.get("leaseDurationSeconds"))
        with self._lock:
            if record != self._observed:
                self._observed = record
                self._observed_at = self._clock()

    def _expired(self) -> bool:
        with self._lock:
            observed, since = self._observed, self._observed_at
        duration = observed[2] if observed else None
        seconds = float(duration) if isinstance(duration, int) else self._lease_duration_s
        return self._clock() - since >= seconds

    def _held_by_other(self) -> bool:
        with self._lock:
            holder = self._observed[0] if self._observed else ""
        return bool(holder) and holder != self.identity and not self._expired()

    def _lease_seconds(self) -> int:
        return max(1, math.ceil(self._lease_duration_s))  # leaseDurationSeconds is an int32

    # leading state -------------------------------------------------------------------

    def _settle(self, *, won: bool, lost: bool, started: float = 0.0) -> None:
        """Record a round's outcome and call the callback of a transition, if any."""
        with self._lock:
            was = self._leading
            if won:
                self._renewed_at = started
                self._leading = True
            elif lost or self._clock() - self._renewed_at >= self._deadline_s:
                self._leading = False
            now_leading = self._leading
        if now_leading and not was:
            log.info("became the leader", extra={"lease": self._name, "identity": self.identity})
            if self._on_started is not None:
                self._on_started()
        elif was and not now_leading:
            log.info("stopped leading", extra={"lease": self._name, "identity": self.identity})
            if self._on_stopped is not None:
                self._on_stopped()

    def _run(self) -> None:
        while not self._stopping.is_set():
            leading = self.try_acquire_or_renew()
            jitter = 0.0 if leading else _JITTER * random.random()  # noqa: S311 - not crypto
            self._stopping.wait(self._renew_s * (1 + jitter))


def _spec(lease: JsonObject) -> JsonObject:
    spec = lease.get("spec")
    return spec if isinstance(spec, dict) else {}
