"""Make the world match one device's EdgeDevice: the heart of the controller.

`reconcile(device_id)` is level-triggered: whatever woke it (an announce, a watch event,
a timer), it reads the device's whole state, absorbs what the device said since last
time (`controller.absorb`) and then converges, step by idempotent step:

    revoked?          delete its mesh objects, clear its retained bundle, say Revoked
    not approved?     an `--auto-approve` glob may approve it; else say Pending and how
                      to approve it
    approved          apply ServiceAccount, WorkloadEntry, WorkloadGroup and Service;
                      issue a new bundle generation when there is none yet, the mesh
                      inputs changed, an operator asked (`pimesh rotate`), the token is
                      past half its life, or an unacked generation may have been lost in
                      a restart; then say Enrolled

A generation is recorded in status before its bundle is published, so a number is
never reused for different content. What was already applied or told in this process
is remembered, so a no-op reconcile makes no API calls beyond reading the device.
"""

import hashlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import SecretStr

from controller import resources
from controller.absorb import Absorber
from controller.admission import consume_join_token, matches_auto_approve
from controller.bundle import IssuedToken, MeshParts, build_content, render_parts, seal
from controller.cluster import ClusterSource
from controller.conditions import clear_condition, set_condition
from controller.device import APP_LABEL, EdgeDevice, Phase, status_patch
from controller.errors import Waiting
from controller.events import EventRecorder
from controller.inbox import Inbox
from controller.kube import (
    EDGE_DEVICES,
    SERVICE_ACCOUNTS,
    SERVICES,
    WORKLOAD_ENTRIES,
    WORKLOAD_GROUPS,
    JsonObject,
    Kube,
)
from controller.meshconfig import MeshInputs
from controller.metrics import ControllerMetrics
from controller.resources import DeviceView, PortSpec
from controller.rotation import token_at_risk
from controller.settings import ControllerSettings
from shared.canonical import canonical_json
from shared.messages import Announce, Bundle, Enrollment, parse_ts
from shared.replay import ReplayGuard

log = logging.getLogger(__name__)

TOKEN_AUDIENCE = "istio-ca"  # noqa: S105 - an audience, not a secret


class Publisher(Protocol):
    """Where enrollments and bundles go (the controller's MQTT link)."""

    def publish_enrollment(self, msg: Enrollment, *, retain: bool = True) -> None:
        """Publish a signed enrollment."""

    def publish_bundle(self, msg: Bundle) -> None:
        """Publish a signed, sealed bundle (retained)."""

    def clear_bundle(self, device_id: str) -> None:
        """Remove the retained bundle."""


@dataclass(frozen=True)
class Result:
    """What the work queue should do with the key afterwards."""

    requeue_after_s: float | None = None


class Reconciler:
    """Reconciles one device at a time (the work queue guarantees no key runs twice)."""

    def __init__(
        self,
        kube: Kube,
        settings: ControllerSettings,
        *,
        publisher: Publisher,
        inbox: Inbox,
        cluster: ClusterSource,
        metrics: ControllerMetrics,
        now: Callable[[], datetime],
        replay: ReplayGuard | None = None,
        rotation_due: Callable[[datetime | None], bool] = lambda _issued: False,
        token_permit: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._ns = settings.namespace
        self._publisher = publisher
        self._inbox = inbox
        self._cluster = cluster
        self._metrics = metrics
        self._now = now
        self.events = EventRecorder(kube, namespace=self._ns, now=now)
        self._absorber = Absorber(
            kube,
            settings,
            replay=replay or ReplayGuard(),
            events=self.events,
            metrics=metrics,
            reject=lambda msg: publisher.publish_enrollment(msg, retain=False),
            now=now,
        )
        self._lock = threading.Lock()
        self._applied: dict[tuple[str, str], str] = {}
        self._told: dict[str, tuple[str, str]] = {}
        self._rotation_due = rotation_due
        self._token_permit = token_permit
        self._spent_tokens: dict[str, str] = {}
        self._namespace_ready = False

    def forget(self, device_id: str) -> None:
        """Drop what this process remembers of a deleted device (PROTOCOL.md, step 4).

        Its next announce starts over; without this, an unchanged phase or object would
        count as already told or applied, and never reach the new device.
        """
        with self._lock:
            self._told.pop(device_id, None)
            self._applied = {k: v for k, v in self._applied.items() if k[1] != device_id}

    def reconcile(self, device_id: str) -> Result:
        """Absorb what the device said, then converge its objects, bundle and phase."""
        obj = self._kube.find(EDGE_DEVICES, device_id, namespace=self._ns)
        device = EdgeDevice.from_api(obj) if obj else None
        messages = self._inbox.take(device_id)
        for index, message in enumerate(messages):
            try:
                absorbed = self._absorber.absorb(device, message)
                device = absorbed.device
                # Only an announce that passed every check may spend a join token: a
                # replay or an impostor's key must not admit (or reject) the device.
                if absorbed.accepted and isinstance(message, Announce) and device is not None:
                    device = self._admit_by_join_token(device, message)
            except Exception:
                for rest in messages[index:]:
                    self._inbox.put(device_id, rest)  # retried with the key
                raise
            self._absorber.done(message)
        if device is None:
            return Result()
        return self._converge(device)

    # convergence ---------------------------------------------------------------------

    def _converge(self, device: EdgeDevice) -> Result:
        if device.spec.revoked:
            return self._revoke(device)
        if not device.spec.approved:
            if not matches_auto_approve(device.name, self._settings.auto_approve):
                return self._hold(device)
            device = self._approve(device, reason="matches --auto-approve")
        keys, addresses = device.status.keys, device.status.addresses
        if keys is None or not addresses:
            self._tell(device, "Approved", "approved; waiting for the device to announce itself")
            return Result()
        try:
            parts = self._render(device, addresses[0])
        except Waiting as exc:
            self._tell(device, "Approved", exc.reason, condition=(exc.condition, exc.reason))
            return Result(requeue_after_s=exc.retry_after_s)
        self._apply_objects(device)
        digest = _bundle_hash(parts, keys.kx)
        why = self._why_new_bundle(device, digest)
        if why is not None:
            device = self._issue(device, parts, digest=digest, why=why)
        device = self._watch_expiry(device)
        generation = device.status.generation
        self._tell(device, "Enrolled", f"bundle generation {generation} published")
        return Result(requeue_after_s=self._next_check_s(device))

    def _watch_expiry(self, device: EdgeDevice) -> EdgeDevice:
        """`TokenExpiring` while the token the device holds expires within a quarter TTL."""
        at_risk = token_at_risk(device.status, now=self._now(), ttl_s=self._settings.token_ttl)
        current = device.status.condition("TokenExpiring")
        if at_risk == (current is not None and current.status == "True"):
            return device
        expiry = device.status.acked_token_expires_at
        message = (
            f"the token the device holds expires at {expiry:%Y-%m-%dT%H:%M:%SZ} and it has "
            "not acked a newer one"
            if at_risk and expiry
            else "the device holds a current token"
        )
        conditions = set_condition(
            device.status.conditions,
            "TokenExpiring",
            "True" if at_risk else "False",
            "Expiring" if at_risk else "Current",
            message,
            now=self._now(),
        )
        if at_risk:
            self.events.warning(device, "TokenExpiring", message)
        return self._set_status(device, conditions=conditions)

    def _next_check_s(self, device: EdgeDevice) -> float:
        """Come back at the token's half-life, or sooner to re-check an unacked bundle."""
        half_life = self._seconds_to_half_life(device)
        status = device.status
        if status.acked_generation < status.generation and status.online:
            return min(half_life, float(self._settings.ack_timeout) + 1)
        return half_life

    def _hold(self, device: EdgeDevice) -> Result:
        if device.status.phase == "Rejected" and device.status.reason:
            self._tell(device, "Rejected", device.status.reason)
        else:
            reason = (
                f"waiting for approval: run `pimesh approve {device.name}` "
                f"(or kubectl patch edgedevice {device.name} -n {self._ns} "
                '--type merge -p \'{"spec":{"approved":true}}\')'
            )
            self._tell(device, "Pending", reason)
        return Result()

    def _approve(self, device: EdgeDevice, *, reason: str) -> EdgeDevice:
        """The one write of spec.approved the controller makes (PROTOCOL.md, step 5)."""
        obj = self._kube.merge_patch(
            EDGE_DEVICES, device.name, {"spec": {"approved": True}}, namespace=self._ns
        )
        self.events.normal(device, "Approved", reason)
        return EdgeDevice.from_api(obj)

    def _admit_by_join_token(self, device: EdgeDevice, msg: Announce) -> EdgeDevice:
        if msg.join_token is None or device.spec.approved or device.spec.revoked:
            return device
        with self._lock:
            # A token spent by an earlier try whose approval failed: it is gone now, so
            # asking again would reject the device it admitted.
            reason = self._spent_tokens.get(device.uid)
        if reason is None:
            verdict = consume_join_token(
                self._kube,
                namespace=self._ns,
                device_id=device.name,
                token=msg.join_token.get_secret_value(),
                now=self._now(),
            )
            if not verdict.admitted:
                return self._reject(device, verdict.reason)
            reason = verdict.reason
            with self._lock:
                self._spent_tokens[device.uid] = reason
        device = self._approve(device, reason=reason)
        with self._lock:
            self._spent_tokens.pop(device.uid, None)
        return device

    def _reject(self, device: EdgeDevice, reason: str) -> EdgeDevice:
        if (device.status.phase, device.status.reason) == ("Rejected", reason):
            return device
        device = self._set_status(device, phase="Rejected", reason=reason)
        # `_tell` records phase changes, but this one is already in status when it runs.
        self.events.warning(device, "Rejected", reason)
        return device

    def _revoke(self, device: EdgeDevice) -> Result:
        if device.status.phase != "Revoked":
            self._kube.delete(WORKLOAD_ENTRIES, device.name, namespace=self._ns)
            self._kube.delete(SERVICE_ACCOUNTS, device.name, namespace=self._ns)
            self._apply_shared(device.spec.app, exclude=device.name)
            self._publisher.clear_bundle(device.name)
            with self._lock:
                self._applied = {k: v for k, v in self._applied.items() if k[1] != device.name}
        reason = "revoked by an operator: it gets no credentials until spec.revoked is unset"
        self._tell(device, "Revoked", reason)
        return Result()

    # mesh objects --------------------------------------------------------------------

    def _view(self, device: EdgeDevice) -> DeviceView:
        return DeviceView(
            device_id=device.name,
            uid=device.uid,
            app=device.spec.app or "led-pi",
            address=device.status.addresses[0],
            online=device.status.online,
            groups=device.spec.groups,
            labels=device.spec.labels,
            ports=tuple(PortSpec(p.name, p.port, p.protocol) for p in device.status.ports),
        )

    def _apply_objects(self, device: EdgeDevice) -> None:
        if not self._namespace_ready:
            self._apply_once(resources.namespace(self._ns))
            self._namespace_ready = True
        view = self._view(device)
        self._apply_once(resources.service_account(view, self._ns))
        self._apply_once(resources.workload_entry(view, self._ns))
        contribution = repr((view.app, view.uid, view.ports))
        if self._remember(("contribution", device.name), contribution):
            try:
                self._apply_shared(view.app)
            except Exception:
                self._forget("contribution", device.name)  # or the retry would skip it
                raise

    def _apply_shared(self, app: str | None, *, exclude: str | None = None) -> None:
        """Re-render the app's WorkloadGroup and Service from every member's EdgeDevice."""
        if not app:
            return
        objs, _ = self._kube.list(
            EDGE_DEVICES, namespace=self._ns, label_selector=f"{APP_LABEL}={app}"
        )
        members = [
            self._view(d)
            for d in map(EdgeDevice.from_api, objs)
            if d.name != exclude and _is_member(d)
        ]
        if not members:
            self._kube.delete(SERVICES, app, namespace=self._ns)
            self._kube.delete(WORKLOAD_GROUPS, app, namespace=self._ns)
            self._forget("Service", app)
            self._forget("WorkloadGroup", app)
            return
        self._apply_once(resources.workload_group(app, self._ns, members))
        service = resources.service(app, self._ns, members)
        if service is not None:
            self._apply_once(service)
        _, conflicts = resources.service_ports(members)
        for member in members:
            self._mark_port_conflicts(member.device_id, conflicts.get(member.device_id, []))

    def _mark_port_conflicts(self, device_id: str, names: list[str]) -> None:
        obj = self._kube.find(EDGE_DEVICES, device_id, namespace=self._ns) if names else None
        if obj is None:
            return
        device = EdgeDevice.from_api(obj)
        message = f"port names {', '.join(names)} are already served with other numbers"
        conditions = set_condition(
            device.status.conditions,
            "PortConflict",
            "True",
            "PortConflict",
            message,
            now=self._now(),
        )
        if conditions != device.status.conditions:
            self._set_status(device, conditions=conditions)
            self.events.warning(device, "PortConflict", message)

    def _apply_once(self, manifest: JsonObject) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if self._remember(key, hashlib.sha256(canonical_json(manifest)).hexdigest()):
            try:
                self._kube.apply(manifest)
            except Exception:
                self._forget(*key)
                raise

    def _remember(self, key: tuple[str, str], value: str) -> bool:
        """Record `value` under `key`; True when it differs from what was recorded."""
        with self._lock:
            if self._applied.get(key) == value:
                return False
            self._applied[key] = value
            return True

    def _forget(self, kind: str, name: str) -> None:
        with self._lock:
            self._applied.pop((kind, name), None)

    # bundles ---------------------------------------------------------------------------

    def _render(self, device: EdgeDevice, address: str) -> MeshParts:
        cluster = self._cluster.get()
        inputs = MeshInputs(
            namespace=self._ns,
            device_id=device.name,
            app=device.spec.app or "led-pi",
            mesh_address=address,
            istiod_ip=cluster.istiod_ip,
            cluster_id=self._settings.cluster_id,
            istiod_address=self._settings.istiod_address,
            revision=self._settings.istio_revision,
            mesh_yaml=cluster.mesh_yaml,
        )
        return render_parts(inputs, root_cert=cluster.root_cert)

    def _why_new_bundle(self, device: EdgeDevice, digest: str) -> str | None:
        status = device.status
        if status.generation == 0:
            return "first bundle"
        if status.bundle_hash != digest:
            return "mesh inputs, address or keys changed"
        if device.rotation_requested:
            return "rotation requested"
        if self._rotation_due(status.token_issued_at):
            return "fleet rotation run"
        if self._seconds_to_half_life(device) <= 0:
            return "token past half of its life"
        if self._unacked_too_long(device):
            return "an online device never acked the last generation"
        return None

    def _unacked_too_long(self, device: EdgeDevice) -> bool:
        """The last bundle may be lost (a controller killed between recording and publishing).

        Only for an online device that said nothing about the generation for a while: an
        offline one gets the retained bundle on reconnect, and one that acked `failed`
        needs an operator, not another token.
        """
        status = device.status
        if status.acked_generation >= status.generation or not status.online:
            return False
        applied = status.condition("BundleApplied")
        if applied and applied.message.startswith(f"generation {status.generation}"):
            return False
        issued = status.token_issued_at
        waited = (self._now() - issued).total_seconds() if issued else float("inf")
        return waited > self._settings.ack_timeout

    def _seconds_to_half_life(self, device: EdgeDevice) -> float:
        issued, expires = device.status.token_issued_at, device.status.token_expires_at
        if issued is None or expires is None:
            return 0.0
        half_life = issued + (expires - issued) / 2
        return max(0.0, (half_life - self._now()).total_seconds())

    def _issue(self, device: EdgeDevice, parts: MeshParts, *, digest: str, why: str) -> EdgeDevice:
        with self._token_permit():  # paced: a rotation wave must not flood the API server
            token, expires = self._kube.request_token(
                device.name,
                namespace=self._ns,
                audience=TOKEN_AUDIENCE,
                ttl_s=self._settings.token_ttl,
            )
        issued = IssuedToken(SecretStr(token), issued_at=self._now(), expires_at=parse_ts(expires))
        generation = device.status.generation + 1
        changes: dict[str, Any] = {
            "generation": generation,
            "bundle_hash": digest,
            "token_issued_at": issued.issued_at,
            "token_expires_at": issued.expires_at,
            "phase": "Enrolled",
            "reason": f"bundle generation {generation} published",
            "conditions": clear_condition(device.status.conditions, "RootCertMissing"),
        }
        if device.rotation_requested:
            changes["rotation_handled"] = device.rotation_requested
        # Recorded before publishing, guarded by resourceVersion: a generation number is
        # never published twice with different content, even by two replicas.
        device = self._set_status(device, precondition=True, **changes)
        content = build_content(
            parts, generation=generation, token=issued, namespace=self._ns, device_id=device.name
        )
        assert device.status.keys is not None  # noqa: S101 - checked by _converge
        sealed = seal(content, kx_public_b64=device.status.keys.kx, device_id=device.name)
        self._publisher.publish_bundle(
            Bundle(device_id=device.name, ts=self._now(), generation=generation, sealed=sealed)
        )
        self._metrics.bundles.labels(why=why).inc()
        log.info(
            "bundle issued", extra={"device": device.name, "generation": generation, "why": why}
        )
        return device

    # phase, status and what the device is told -------------------------------------------

    def _tell(
        self,
        device: EdgeDevice,
        phase: Phase,
        reason: str,
        *,
        condition: tuple[str, str] | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        if (device.status.phase, device.status.reason) != (phase, reason):
            changes.update(phase=phase, reason=reason)
        if condition is not None:
            kind, message = condition
            conditions = set_condition(
                device.status.conditions, kind, "True", kind, message, now=self._now()
            )
            if conditions != device.status.conditions:
                changes["conditions"] = conditions
        if changes:
            device = self._set_status(device, **changes)
            if "phase" in changes and phase in {"Pending", "Rejected", "Revoked"}:
                self.events.normal(device, phase, reason)
        with self._lock:
            if self._told.get(device.name) == (phase, reason):
                return
            self._told[device.name] = (phase, reason)
        self._publisher.publish_enrollment(
            Enrollment(device_id=device.name, ts=self._now(), phase=phase, reason=reason)
        )

    def _set_status(
        self, device: EdgeDevice, *, precondition: bool = False, **changes: Any
    ) -> EdgeDevice:
        patch: dict[str, Any] = status_patch(device.status, **changes)
        if precondition:
            patch["metadata"] = {"resourceVersion": device.resource_version}
        obj = self._kube.merge_patch(
            EDGE_DEVICES, device.name, patch, namespace=self._ns, subresource="status"
        )
        return EdgeDevice.from_api(obj)


def _is_member(device: EdgeDevice) -> bool:
    """Counts towards its app's shared objects: approved, not revoked, reachable."""
    return device.spec.approved and not device.spec.revoked and bool(device.status.addresses)


def _bundle_hash(parts: MeshParts, kx: str) -> str:
    return "sha256:" + hashlib.sha256(f"{parts.digest()}|{kx}".encode()).hexdigest()
