"""Bundle generations: when a device needs a new one, and how one is made and sent.

A new generation is issued when the device has none yet, when anything its bundle is
built from changed (`bundleHash`), when an operator asked (`pimesh rotate`), when a
fleet rotation run started after its token was issued, when the token is past half its
life, or when an online device never acked the last generation (it may have been lost
with a controller that died between recording and publishing it).

Making one takes a token (`mint`), the generation's status changes (`record`: the
reconciler saves them, with a resourceVersion precondition, before anything is sent)
and then the sealed, signed bundle (`publish`). A token minted for a generation whose
recording failed is kept for the retry, so a flaky API server does not make the
controller ask for token after token.
"""

import hashlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, Protocol

from pydantic import SecretStr

from controller.bundle import IssuedToken, MeshParts, build_content, render_parts, seal
from controller.cluster import ClusterSource
from controller.conditions import clear_condition
from controller.device import DeviceStatus, EdgeDevice
from controller.kube import Kube
from controller.meshconfig import MeshInputs
from controller.metrics import ControllerMetrics
from controller.settings import ControllerSettings
from shared.messages import Bundle
from shared.timestamps import parse_ts

log = logging.getLogger(__name__)

TOKEN_AUDIENCE = "istio-ca"  # noqa: S105 - an audience, not a secret

REUSE_S = 60.0
"""A token minted for a bundle whose recording failed is used by the retry for this
long, rather than asking the API server for another one."""


class BundleSink(Protocol):
    """Where bundles go (the controller's MQTT link)."""

    def publish_bundle(self, msg: Bundle) -> None:
        """Publish a signed, sealed bundle (retained)."""


def bundle_hash(parts: MeshParts, *, kx: str) -> str:
    """`status.bundleHash`: a digest of what the bundle is built from and sealed to.

    A new device key needs a new bundle as much as a new root certificate does.
    """
    return "sha256:" + hashlib.sha256(f"{parts.digest()}|{kx}".encode()).hexdigest()


def seconds_to_half_life(status: DeviceStatus, *, now: datetime) -> float:
    """Seconds until the device's token is half way to expiry; 0 without a token."""
    issued, expires = status.token_issued_at, status.token_expires_at
    if issued is None or expires is None:
        return 0.0
    half_life = issued + (expires - issued) / 2
    return max(0.0, (half_life - now).total_seconds())


class Issuer:
    """Decides on, mints, records and publishes bundle generations; thread-safe."""

    def __init__(
        self,
        kube: Kube,
        settings: ControllerSettings,
        *,
        cluster: ClusterSource,
        sink: BundleSink,
        metrics: ControllerMetrics,
        now: Callable[[], datetime],
        rotation_due: Callable[[datetime | None], bool],
        token_permit: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._cluster = cluster
        self._sink = sink
        self._metrics = metrics
        self._now = now
        self._rotation_due = rotation_due
        self._token_permit = token_permit
        self._lock = threading.Lock()
        self._minted: dict[str, IssuedToken] = {}

    def render(self, device: EdgeDevice, address: str) -> MeshParts:
        """What the device's bundle is built from. Raises Waiting for a missing input."""
        cluster = self._cluster.get()
        inputs = MeshInputs(
            namespace=self._settings.namespace,
            device_id=device.name,
            app=device.app,
            mesh_address=address,
            istiod_ip=cluster.istiod_ip,
            cluster_id=self._settings.cluster_id,
            istiod_address=self._settings.istiod_address,
            revision=self._settings.istio_revision,
            mesh_yaml=cluster.mesh_yaml,
        )
        return render_parts(inputs, root_cert=cluster.root_cert)

    def why_new(self, device: EdgeDevice, *, digest: str) -> str | None:
        """Why the device needs a new generation now, or None."""
        status = device.status
        if status.generation == 0:
            return "first bundle"
        if status.bundle_hash != digest:
            return "mesh inputs, address or keys changed"
        if device.rotation_requested:
            return "rotation requested"
        if self._rotation_due(status.token_issued_at):
            return "fleet rotation run"
        if seconds_to_half_life(status, now=self._now()) <= 0:
            return "token past half of its life"
        if self._unacked_too_long(status):
            return "an online device never acked the last generation"
        return None

    def mint(self, device: EdgeDevice) -> IssuedToken:
        """A new token for the device, or the one minted for it by a try that failed.

        Renewals are paced (`--rotation-rate`): a rotation run or a root-certificate
        change renews the whole fleet at once, and that wave is the controller's own
        doing. A device's first token is not: enrollments come as fast as devices
        announce (each limited by the intake), and the API server's own flow control
        guards it from a boot storm of new devices.
        """
        with self._lock:
            minted = self._minted.get(device.uid)
        if minted is not None and (self._now() - minted.issued_at).total_seconds() < REUSE_S:
            return minted
        paced = device.status.generation > 0
        with self._token_permit() if paced else nullcontext():
            token, expires = self._kube.request_token(
                device.name,
                namespace=self._settings.namespace,
                audience=TOKEN_AUDIENCE,
                ttl_s=self._settings.token_ttl,
            )
        issued = IssuedToken(SecretStr(token), issued_at=self._now(), expires_at=parse_ts(expires))
        with self._lock:
            self._minted[device.uid] = issued
        return issued

    def record(self, device: EdgeDevice, *, issued: IssuedToken, digest: str) -> dict[str, Any]:
        """The status changes of the next generation, to save before `publish`."""
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
        return changes

    def publish(
        self, device: EdgeDevice, parts: MeshParts, *, issued: IssuedToken, why: str
    ) -> None:
        """Seal and publish the generation `device` (saved by now) records."""
        with self._lock:
            self._minted.pop(device.uid, None)
        generation = device.status.generation
        content = build_content(
            parts,
            generation=generation,
            token=issued,
            namespace=self._settings.namespace,
            device_id=device.name,
        )
        if device.status.keys is None:
            msg = f"{device.name} has no pinned keys to seal its bundle to"
            raise ValueError(msg)
        sealed = seal(content, kx_public_b64=device.status.keys.kx, device_id=device.name)
        self._sink.publish_bundle(
            Bundle(device_id=device.name, ts=self._now(), generation=generation, sealed=sealed)
        )
        self._metrics.bundles.labels(why=why).inc()
        log.info(
            "bundle issued", extra={"device": device.name, "generation": generation, "why": why}
        )

    def _unacked_too_long(self, status: DeviceStatus) -> bool:
        """The last bundle may be lost (a controller killed between recording and publishing).

        Only for an online device that said nothing about the generation for a while: an
        offline one gets the retained bundle on reconnect, and one that acked `failed`
        needs an operator, not another token.
        """
        if status.acked_generation >= status.generation or not status.online:
            return False
        applied = status.condition("BundleApplied")
        if applied and applied.message.startswith(f"generation {status.generation}"):
            return False
        issued = status.token_issued_at
        waited = (self._now() - issued).total_seconds() if issued else float("inf")
        return waited > self._settings.ack_timeout
