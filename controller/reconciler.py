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

A reconcile writes the device's status once: what the device said and what the
reconcile decided are gathered in memory and saved together before the device is told
its phase (`_tell`, the last step of every path). The one earlier write is a new
generation, recorded (with a resourceVersion precondition) before its bundle is
published, so a number is never reused for different content. Devices are read from
the watch's cache (`controller.devicestore`) and what was already applied or told in
this process is remembered, so a no-op reconcile makes no API call at all. An app's
shared objects have their own key (`AppKey`, `controller.meshobjects`).
"""

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from controller.absorb import Absorber
from controller.admission import consume_join_token, matches_auto_approve
from controller.cluster import ClusterSource
from controller.conditions import set_condition
from controller.device import EdgeDevice, Phase
from controller.devicestore import DeviceStore
from controller.errors import Waiting
from controller.events import EventRecorder
from controller.inbox import Inbox
from controller.issuer import BundleSink, Issuer, bundle_hash, seconds_to_half_life
from controller.kube import Kube
from controller.meshobjects import AppKey, MeshObjects
from controller.metrics import ControllerMetrics
from controller.rotation import token_at_risk
from controller.settings import ControllerSettings
from controller.workqueue import Enqueue
from shared.messages import Announce, Enrollment
from shared.replay import ReplayGuard

log = logging.getLogger(__name__)

APP_SETTLE_S = 1.0
"""How long an app waits, after a device left it, for others to leave too: its shared
objects are then re-applied once (joining devices are group-committed instead)."""

WorkKey = str | AppKey
"""A device id, or an app whose shared objects need converging."""


class Publisher(BundleSink, Protocol):
    """Where enrollments and bundles go (the controller's MQTT link)."""

    def publish_enrollment(self, msg: Enrollment, *, retain: bool = True) -> None:
        """Publish a signed enrollment."""

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
        devices: DeviceStore,
        settings: ControllerSettings,
        *,
        publisher: Publisher,
        inbox: Inbox,
        cluster: ClusterSource,
        metrics: ControllerMetrics,
        now: Callable[[], datetime],
        queue: Enqueue[WorkKey],
        replay: ReplayGuard | None = None,
        rotation_due: Callable[[datetime | None], bool] = lambda _issued: False,
        token_permit: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self._kube = kube
        self._devices = devices
        self._settings = settings
        self._ns = settings.namespace
        self._publisher = publisher
        self._inbox = inbox
        self._now = now
        self._queue = queue
        self.events = EventRecorder(kube, namespace=self._ns, now=now)
        self._mesh = MeshObjects(
            kube,
            devices,
            namespace=self._ns,
            schedule_app=lambda app: queue.add_after(AppKey(app), APP_SETTLE_S),
        )
        self._absorber = Absorber(
            devices,
            settings,
            replay=replay or ReplayGuard(),
            events=self.events,
            metrics=metrics,
            reject=lambda msg: publisher.publish_enrollment(msg, retain=False),
            now=now,
        )
        self._lock = threading.Lock()
        self._told: dict[str, tuple[str, str]] = {}
        self._spent_tokens: dict[str, str] = {}
        self._issuer = Issuer(
            kube,
            settings,
            cluster=cluster,
            sink=publisher,
            metrics=metrics,
            now=now,
            rotation_due=rotation_due,
            token_permit=token_permit,
        )

    def forget(self, device_id: str) -> None:
        """Drop what this process remembers of a deleted device (PROTOCOL.md, step 4).

        Its next announce starts over; without this, an unchanged phase or object would
        count as already told or applied, and never reach the new device.
        """
        with self._lock:
            self._told.pop(device_id, None)
        self._mesh.forget(device_id)

    def reconcile(self, key: WorkKey) -> Result:
        """Converge one device, or the shared objects of one app."""
        if isinstance(key, AppKey):
            for device_id in self._mesh.reconcile_app(key.app):
                self._queue.add(device_id)  # its PortConflict condition changed
            return Result()
        return self._reconcile_device(key)

    def _reconcile_device(self, device_id: str) -> Result:
        """Absorb what the device said, then converge its objects, bundle and phase.

        On any error the batch of messages goes back to the inbox, to be absorbed again
        with the retry: what they taught may not have been saved.
        """
        device = self._devices.get(device_id)
        messages = self._inbox.take(device_id)
        try:
            for message in messages:
                absorbed = self._absorber.absorb(device, message)
                device = absorbed.device
                # Only an announce that passed every check may spend a join token: a
                # replay or an impostor's key must not admit (or reject) the device.
                if absorbed.accepted and isinstance(message, Announce) and device is not None:
                    device = self._admit_by_join_token(device, message)
            result = Result() if device is None else self._converge(device)
        except Exception:
            self._inbox.restore(device_id, messages)
            raise
        for message in messages:
            self._absorber.done(message)
        return result

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
            parts = self._issuer.render(device, addresses[0])
        except Waiting as exc:
            self._tell(device, "Approved", exc.reason, condition=(exc.condition, exc.reason))
            return Result(requeue_after_s=exc.retry_after_s)
        self._mesh.apply_device(device)
        digest = bundle_hash(parts, kx=keys.kx)
        why = self._issuer.why_new(device, digest=digest)
        # The token is minted before the app's objects are applied: the longer a device
        # waits to be included, the more devices one apply of them covers.
        token = None if why is None else self._issuer.mint(device)
        for other in self._mesh.include(device):
            self._queue.add(other)  # its PortConflict condition changed
        device = self._note_port_conflicts(device)
        if why is not None and token is not None:
            changes = self._issuer.record(device, issued=token, digest=digest)
            # Recorded before publishing, so a number never goes out with two contents.
            device = self._save(device.with_status(**changes), precondition=True)
            self._issuer.publish(device, parts, issued=token, why=why)
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
        return device.with_status(conditions=conditions)

    def _next_check_s(self, device: EdgeDevice) -> float:
        """Come back at the token's half-life, or sooner to re-check an unacked bundle."""
        half_life = seconds_to_half_life(device.status, now=self._now())
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
        approved = device.rebased(self._devices.patch(device.name, {"spec": {"approved": True}}))
        self.events.normal(device, "Approved", reason)
        return approved

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
        # `_tell` records phase changes, but this one is already made when it runs.
        self.events.warning(device, "Rejected", reason)
        return device.with_status(phase="Rejected", reason=reason)

    def _revoke(self, device: EdgeDevice) -> Result:
        if device.status.phase != "Revoked":
            self._mesh.remove_device(device)
            self._publisher.clear_bundle(device.name)
        reason = "revoked by an operator: it gets no credentials until spec.revoked is unset"
        self._tell(device, "Revoked", reason)
        return Result()

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
        device = self._save(device.with_status(**changes))
        if "phase" in changes and phase in {"Pending", "Rejected", "Revoked"}:
            self.events.normal(device, phase, reason)
        with self._lock:
            if self._told.get(device.name) == (phase, reason):
                return
            self._told[device.name] = (phase, reason)
        self._publisher.publish_enrollment(
            Enrollment(device_id=device.name, ts=self._now(), phase=phase, reason=reason)
        )

    def _note_port_conflicts(self, device: EdgeDevice) -> EdgeDevice:
        """Say in status which announced port names its app already serves otherwise."""
        names = self._mesh.port_conflicts(device.name)
        current = device.status.condition("PortConflict")
        if current is None and not names:
            return device
        message = (
            f"port names {', '.join(names)} are already served with other numbers"
            if names
            else "every announced port is served"
        )
        conditions = set_condition(
            device.status.conditions,
            "PortConflict",
            "True" if names else "False",
            "PortConflict" if names else "NoConflict",
            message,
            now=self._now(),
        )
        if conditions == device.status.conditions:
            return device
        if names:
            self.events.warning(device, "PortConflict", message)
        return device.with_status(conditions=conditions)

    def _save(self, device: EdgeDevice, *, precondition: bool = False) -> EdgeDevice:
        """Write the device's unsaved status changes as one patch."""
        if not device.unsaved:
            return device
        patch = device.unsaved_patch()
        if precondition:
            # Guarded by resourceVersion: a generation number is never published twice
            # with different content, even by two replicas.
            patch["metadata"] = {"resourceVersion": device.resource_version}
        return self._devices.patch_status(device.name, patch)
