"""The EdgeDevice custom resource as typed data (deploy/crd/edgedevice.yaml).

The API hands us JSON; the reconciler works on these frozen models and writes back
status patches built from them. Field names follow the CRD (camelCase on the wire).
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Approved", "Enrolled", "Rejected", "Revoked"]

ROTATE_ANNOTATION = "pimesh.io/rotate-requested"
REKEY_ANNOTATION = "pimesh.io/rekey-requested"
APP_LABEL = "pimesh.io/app"
DEFAULT_APP = "led-pi"
"""The app of a device whose announce named none (the agent's default, as in the seed)."""


class _Camel(BaseModel):
    model_config = ConfigDict(
        frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore"
    )


class DeviceSpec(_Camel):
    """Operators own approved/revoked; the device's announce fills app, groups and labels."""

    approved: bool = False
    revoked: bool = False
    app: str | None = None
    groups: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)


class DeviceKeys(_Camel):
    """The device's public keys as pinned at first announce (base64)."""

    sign: str
    kx: str


class DevicePort(_Camel):
    """A port the device announced."""

    name: str
    port: int
    protocol: str = "TCP"


class Condition(_Camel):
    """A Kubernetes-style condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None


class DeviceStatus(_Camel):
    """What the controller knows and has done; the fleet dashboard."""

    phase: Phase | None = None
    reason: str | None = None
    addresses: tuple[str, ...] = ()
    ports: tuple[DevicePort, ...] = ()
    online: bool = False
    last_seen: datetime | None = None
    last_announce_ts: datetime | None = None
    hostname: str | None = None
    arch: str | None = None
    os: str | None = None
    agent_version: str | None = None
    ztunnel: str | None = None
    keys: DeviceKeys | None = None
    key_fingerprint: str | None = None
    generation: int = 0
    acked_generation: int = 0
    bundle_hash: str | None = None
    token_issued_at: datetime | None = None
    token_expires_at: datetime | None = None
    acked_token_expires_at: datetime | None = None
    rotation_handled: str | None = None
    rekey_handled: str | None = None
    conditions: tuple[Condition, ...] = ()

    def condition(self, kind: str) -> Condition | None:
        """The condition of that type, if set."""
        return next((c for c in self.conditions if c.type == kind), None)


class EdgeDevice(BaseModel):
    """One EdgeDevice object."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    uid: str
    resource_version: str
    annotations: dict[str, str] = Field(default_factory=dict)
    spec: DeviceSpec = DeviceSpec()
    status: DeviceStatus = DeviceStatus()
    unsaved: frozenset[str] = frozenset()
    """Status fields changed in memory (`with_status`) and not yet written."""

    @classmethod
    def from_api(cls, obj: dict[str, Any]) -> "EdgeDevice":
        """Parse the API's JSON."""
        meta = obj.get("metadata", {})
        return cls(
            name=meta["name"],
            uid=meta.get("uid", ""),
            resource_version=str(meta.get("resourceVersion", "")),
            annotations=meta.get("annotations") or {},
            spec=DeviceSpec.model_validate(obj.get("spec") or {}),
            status=DeviceStatus.model_validate(obj.get("status") or {}),
        )

    def with_status(self, **changes: Any) -> "EdgeDevice":
        """A copy with `changes` (snake_case status fields) made in memory only.

        A reconcile gathers what it learns (announce facts, acks, phase, generation)
        this way and writes it as one status patch (`unsaved_patch`) instead of one
        request per fact.
        """
        changed = {k: v for k, v in changes.items() if getattr(self.status, k) != v}
        if not changed:
            return self
        return self.model_copy(
            update={
                "status": self.status.model_copy(update=changed),
                "unsaved": self.unsaved | changed.keys(),
            }
        )

    def rebased(self, fresh: "EdgeDevice") -> "EdgeDevice":
        """`fresh` (just read or written) with this copy's unsaved changes on top."""
        pending = {field: getattr(self.status, field) for field in self.unsaved}
        return fresh.with_status(**pending) if pending else fresh

    def unsaved_patch(self) -> dict[str, Any]:
        """The merge patch for /status that writes the unsaved changes."""
        wire = self.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {"status": {to_camel(k): wire.get(to_camel(k)) for k in sorted(self.unsaved)}}

    @property
    def app(self) -> str:
        """The app the device belongs to."""
        return self.spec.app or DEFAULT_APP

    @property
    def rotation_requested(self) -> str | None:
        """The operator's pending `pimesh rotate` request, if not yet handled."""
        value = self.annotations.get(ROTATE_ANNOTATION)
        return value if value and value != self.status.rotation_handled else None

    @property
    def rekey_requested(self) -> str | None:
        """The operator's pending `pimesh rekey` request, if not yet handled."""
        value = self.annotations.get(REKEY_ANNOTATION)
        return value if value and value != self.status.rekey_handled else None
