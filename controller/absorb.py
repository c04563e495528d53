"""Turn what devices said (announce, ack, status) into changes of their EdgeDevice.

This is the only place a device's word enters the cluster, so every check of
PROTOCOL.md happens here, in this order: the key is the pinned one (or the device is
new, or an operator asked to re-key it), the signature verifies with it, and the
timestamp and nonce pass the replay window (newer than the last accepted announce,
which is kept in status so a restart does not reopen the window). A message that fails
is dropped and counted; only a validly self-signed announce with another key earns an
answer (`Rejected`, not retained: the real device's phase stays as it was).

Status changes are made in memory (`EdgeDevice.with_status`): the reconciler writes
everything one batch of messages taught it, with its own changes, as one status patch.
A message whose changes were not written (the API failed) is filed again by the
reconciler and retried; it is remembered as admitted until the reconciler calls `done`,
so the retry is not refused as a replay of itself.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.admission import matches_auto_approve
from controller.conditions import set_condition
from controller.device import APP_LABEL, DeviceKeys, DevicePort, EdgeDevice
from controller.devicestore import DeviceStore
from controller.errors import Conflict
from controller.events import EventRecorder
from controller.metrics import ControllerMetrics
from controller.resources import MANAGED_BY
from controller.settings import ControllerSettings
from shared.crypto import fingerprint, load_sign_public
from shared.errors import BadSignature, CryptoError, ReplayedMessage
from shared.messages import Ack, Announce, Enrollment, Status
from shared.replay import ReplayGuard
from shared.signing import verify_message

log = logging.getLogger(__name__)

DeviceInput = Announce | Ack | Status

RETRY_MEMORY = 16_384
"""Admitted messages awaiting a retry that are remembered; beyond it the oldest is
forgotten, and its retry is then refused as a replay (fail closed). A failed reconcile
puts all of its messages back, so a storm of API errors can hold one or two messages
per device of the fleet; a few hundred bytes each."""


@dataclass(frozen=True)
class Absorbed:
    """The device after one message, and whether the message was accepted."""

    device: EdgeDevice | None
    accepted: bool


class Absorber:
    """Applies verified device messages to EdgeDevices."""

    def __init__(
        self,
        devices: DeviceStore,
        settings: ControllerSettings,
        *,
        replay: ReplayGuard,
        events: EventRecorder,
        metrics: ControllerMetrics,
        reject: Callable[[Enrollment], None],
        now: Callable[[], datetime],
    ) -> None:
        self._devices = devices
        self._settings = settings
        self._replay = replay
        self._events = events
        self._metrics = metrics
        self._reject = reject
        self._now = now
        self._lock = threading.Lock()
        self._admitted: OrderedDict[tuple[str, str], None] = OrderedDict()

    def absorb(self, device: EdgeDevice | None, message: DeviceInput) -> Absorbed:
        """Apply one message; the device as it is now (None if still unknown).

        An API error propagates and leaves the message admitted for its retry; call
        `done` once the message is fully handled.
        """
        try:
            if isinstance(message, Announce):
                return self._announce(device, message)
            if device is None or device.status.keys is None:
                self._count(message.kind, "unknown_device")
                return Absorbed(device, accepted=False)
            if isinstance(message, Ack):
                return Absorbed(
                    self._ack(device, message, sign_key=device.status.keys.sign), accepted=True
                )
            return Absorbed(
                self._status(device, message, sign_key=device.status.keys.sign), accepted=True
            )
        except (CryptoError, BadSignature, ReplayedMessage) as exc:
            self.done(message)
            self._count(message.kind, "rejected")
            log.info(
                "message refused",
                extra={"device": message.device_id, "kind": message.kind, "why": exc.reason},
            )
            return Absorbed(device, accepted=False)

    def done(self, message: DeviceInput) -> None:
        """The message is handled for good: a copy of it is a replay from now on."""
        if message.nonce is not None:
            with self._lock:
                self._admitted.pop((message.device_id, message.nonce), None)

    def _admit(
        self,
        device_id: str,
        *,
        ts: datetime,
        nonce: str,
        newest_accepted: datetime | None = None,
    ) -> None:
        """The replay check, once per message even when applying it is retried."""
        key = (device_id, nonce)
        with self._lock:
            if key in self._admitted:
                return
        self._replay.check(device_id, ts=ts, nonce=nonce, newest_accepted=newest_accepted)
        with self._lock:
            self._admitted[key] = None
            while len(self._admitted) > RETRY_MEMORY:
                self._admitted.popitem(last=False)

    # announce ------------------------------------------------------------------------

    def _announce(self, device: EdgeDevice | None, msg: Announce) -> Absorbed:
        if device is None:
            self._admit(msg.device_id, ts=msg.ts, nonce=msg.nonce)
            created = self._create(msg)
            if created.status.keys is None:
                self._count("announce", "created")
                device = created.with_status(**self._pin(msg), **self._facts(msg))
                return Absorbed(device, accepted=True)
            device = created  # made meanwhile by another replica: checked as any other
        pinned = device.status.keys
        repin: dict[str, Any] = {}
        if pinned is None:
            repin = self._pin(msg)
        elif (pinned.sign, pinned.kx) != (msg.keys.sign, msg.keys.kx):
            if device.rekey_requested is None:
                return Absorbed(self._key_mismatch(device, msg), accepted=False)
            repin = {**self._pin(msg), "rekey_handled": device.rekey_requested}
        self._admit(
            msg.device_id,
            ts=msg.ts,
            nonce=msg.nonce,
            newest_accepted=device.status.last_announce_ts,
        )
        device = self._update_spec(device, msg)
        self._count("announce", "accepted")
        device = device.with_status(**repin, **self._facts(msg))
        if "rekey_handled" in repin:
            # Recorded once the new keys are pinned, not when they were merely offered.
            self._events.normal(device, "Rekeyed", f"new keys pinned: {repin['key_fingerprint']}")
        return Absorbed(device, accepted=True)

    def _create(self, msg: Announce) -> EdgeDevice:
        spec: dict[str, Any] = {
            "app": msg.app,
            "groups": list(msg.groups),
            "labels": dict(msg.labels),
        }
        if matches_auto_approve(msg.device_id, self._settings.auto_approve):
            spec["approved"] = True
        body = {
            "apiVersion": "pimesh.io/v1alpha1",
            "kind": "EdgeDevice",
            "metadata": {
                "name": msg.device_id,
                "namespace": self._settings.namespace,
                "labels": {**MANAGED_BY, APP_LABEL: msg.app},
            },
            "spec": spec,
        }
        try:
            device = self._devices.create(body)
        except Conflict:
            # Our cache had not seen it yet (another replica, or its watch event is late).
            found = self._devices.get(msg.device_id)
            if found is None:
                raise
            return found
        log.info("new device", extra={"device": msg.device_id, "app": msg.app})
        return device

    def _pin(self, msg: Announce) -> dict[str, Any]:
        return {
            "keys": DeviceKeys(sign=msg.keys.sign, kx=msg.keys.kx),
            "key_fingerprint": fingerprint(load_sign_public(msg.keys.sign)),
        }

    def _facts(self, msg: Announce) -> dict[str, Any]:
        return {
            "addresses": tuple(msg.addresses),
            "ports": tuple(
                DevicePort(name=p.name, port=p.port, protocol=p.protocol) for p in msg.ports
            ),
            "last_announce_ts": msg.ts,
            "last_seen": self._now(),
            # It announced, so it is connected: no need to wait for its status to say so.
            "online": True,
            "hostname": msg.hostname,
            "arch": msg.arch,
            "os": msg.os,
            "agent_version": msg.agent_version,
        }

    def _update_spec(self, device: EdgeDevice, msg: Announce) -> EdgeDevice:
        spec = device.spec
        if (spec.app, spec.groups, spec.labels) == (msg.app, tuple(msg.groups), dict(msg.labels)):
            return device
        labels: dict[str, str | None] = {k: None for k in spec.labels if k not in msg.labels}
        labels.update(msg.labels)
        patch = {
            "metadata": {"labels": {APP_LABEL: msg.app}},
            "spec": {"app": msg.app, "groups": list(msg.groups), "labels": labels},
        }
        return device.rebased(self._devices.patch(device.name, patch))

    def _key_mismatch(self, device: EdgeDevice, msg: Announce) -> EdgeDevice:
        self._count("announce", "key_mismatch")
        reason = (
            f"key mismatch: {device.name} is enrolled with key {device.status.key_fingerprint}; "
            f"if the device was reinstalled, run `pimesh rekey {device.name}`"
        )
        self._reject(
            Enrollment(device_id=device.name, ts=self._now(), phase="Rejected", reason=reason)
        )
        self._events.warning(device, "KeyMismatch", reason)
        # The condition is recorded without touching the phase of the real device.
        conditions = set_condition(
            device.status.conditions, "KeyMismatch", "True", "KeyMismatch", reason, now=self._now()
        )
        return device.with_status(conditions=conditions)

    # ack and status --------------------------------------------------------------------

    def _ack(self, device: EdgeDevice, msg: Ack, *, sign_key: str) -> EdgeDevice:
        verify_message(msg, sign_key)
        self._admit(msg.device_id, ts=msg.ts, nonce=msg.nonce)
        self._count("ack", msg.result)
        status = device.status
        changes: dict[str, Any] = {"last_seen": self._now()}
        if (
            msg.result == "applied"
            and status.acked_generation < msg.generation <= status.generation
        ):
            changes["acked_generation"] = msg.generation
            if msg.generation == status.generation:
                # The token the device now holds: what TokenExpiring watches.
                changes["acked_token_expires_at"] = status.token_expires_at
        if msg.result == "failed":
            detail = msg.detail or "no detail given"
            self._events.warning(device, "BundleFailed", f"generation {msg.generation}: {detail}")
        ok = msg.result == "applied"
        changes["conditions"] = set_condition(
            status.conditions,
            "BundleApplied",
            "True" if ok else "False",
            "Applied" if ok else "Failed",
            f"generation {msg.generation}" + ("" if ok else f": {msg.detail or 'no detail'}"),
            now=self._now(),
        )
        return device.with_status(**changes)

    def _status(self, device: EdgeDevice, msg: Status, *, sign_key: str) -> EdgeDevice:
        if msg.state == "offline":
            # The last will is unsigned: only the broker's ACL vouches for it.
            self._count("status", "offline")
            return device.with_status(online=False) if device.status.online else device
        verify_message(msg, sign_key)
        if msg.ts is None or msg.nonce is None:  # the model refuses this; mypy cannot know
            raise BadSignature("online status without ts or nonce")
        self._admit(msg.device_id, ts=msg.ts, nonce=msg.nonce)
        self._count("status", "online")
        changes: dict[str, Any] = {
            "online": True,
            "last_seen": self._now(),
            "ztunnel": msg.ztunnel,
            "agent_version": msg.agent_version,
        }
        status = device.status
        installed = msg.generation or 0
        if status.acked_generation < installed <= status.generation:
            # The signed status names the generation the device runs: as good as its ack,
            # and it recovers an ack the broker dropped.
            changes["acked_generation"] = installed
            if installed == status.generation:
                changes["acked_token_expires_at"] = status.token_expires_at
        return device.with_status(**changes)

    # plumbing --------------------------------------------------------------------------

    def _count(self, kind: str, outcome: str) -> None:
        self._metrics.messages.labels(kind=kind, outcome=outcome).inc()
