"""The pimesh wire protocol as types: every message of PROTOCOL.md and its parts.

This module defines every object on the wire (STYLE.md, Messages), built from the field
types of `shared.fields` and `shared.timestamps`. Each message kind is a frozen, strict
pydantic model; `Message` is their union, discriminated on `kind`. How bytes become one
of these models and back (the transport rules, `decode`, `encode`, the bytes a signature
covers) is `shared.codec`'s job.

Signatures cover the canonical JSON of the object as received, minus `sig`, unknown
fields included (PROTOCOL.md, Device identity and signatures). `MessageBase` therefore
carries a private slot for those bytes, which `shared.codec.decode` fills; a copy that
changes anything but `sig` forgets them.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from shared.fields import (
    AckResult,
    BearerToken,
    Brightness,
    BundleGeneration,
    Color,
    DeviceId,
    DnsLabel,
    DnsSubdomain,
    DurationMs,
    Effect,
    EnvName,
    EnvValue,
    Generation,
    HostName,
    IpAddress,
    JoinToken,
    LabelKey,
    LabelValue,
    LongText,
    Nonce,
    OnlineState,
    Phase,
    PublicKey,
    Sealed,
    ServiceName,
    ShortText,
    Signature,
    Version,
    ZtunnelState,
    quoted,
)
from shared.timestamps import Timestamp


def _unique_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for group in groups:
        if group in seen:
            msg = f"group {quoted(group)} is listed twice"
            raise ValueError(msg)
        seen.add(group)
    return groups


class WireModel(BaseModel):
    """Base of every wire type: frozen, strict (no '1' for 1), unknown fields ignored."""

    # hide_input_in_errors: a ValidationError chained under InvalidMessage must never
    # print a join token or a bearer token in a traceback.
    model_config = ConfigDict(
        frozen=True,
        strict=True,
        extra="ignore",
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )


class Keys(WireModel):
    """A device's public keys, raw 32 bytes each in base64."""

    sign: PublicKey
    """Ed25519 verification key: every device message is signed with its private half."""
    kx: PublicKey
    """X25519 key-agreement key: bundles are sealed to it (RFC 9180)."""


class ControllerKeys(WireModel):
    """The controller's public keys."""

    sign: PublicKey
    """Ed25519 key that signs enrollments, bundles and controller statuses."""


class Port(WireModel):
    """A port a device serves."""

    name: ServiceName
    port: Annotated[int, Field(ge=1, le=65_535)]
    protocol: Literal["TCP"] = "TCP"


def _unique_ports(ports: tuple[Port, ...]) -> tuple[Port, ...]:
    # Names key the WorkloadEntry's ports; a Service also refuses one number twice.
    for attribute, what in (("name", "name"), ("port", "number")):
        values = [getattr(port, attribute) for port in ports]
        for value in values:
            if values.count(value) > 1:
                msg = f"port {what} {quoted(value)} is listed twice"
                raise ValueError(msg)
    return ports


class HostEntry(WireModel):
    """One line of the device's /etc/hosts block."""

    ip: IpAddress
    names: Annotated[tuple[HostName, ...], Field(min_length=1, max_length=16)]


class MessageBase(WireModel):
    """Base of every message: the protocol version and the bytes a signature covers."""

    v: Version = 1
    _signing_bytes: bytes | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # Equal content is an equal message, whether decoded (with remembered signing
        # bytes) or built locally; pydantic's own __eq__ would compare private state too.
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy the message; remembered signing bytes survive only an update of `sig`."""
        copy = super().model_copy(update=update, deep=deep)
        if update and set(update) - {"sig"}:
            copy._signing_bytes = None
        return copy


class Announce(MessageBase):
    """A device introduces itself and its keys (device -> controller, signed)."""

    kind: Literal["announce"] = "announce"
    device_id: DeviceId
    ts: Timestamp
    nonce: Nonce
    boot_id: Annotated[str, Field(min_length=1, max_length=64)]
    hostname: Annotated[str, Field(min_length=1, max_length=253)]
    addresses: Annotated[tuple[IpAddress, ...], Field(min_length=1, max_length=8)]
    """The first one is the mesh address."""
    arch: ShortText
    os: ShortText
    agent_version: ShortText
    app: DnsLabel
    groups: Annotated[
        tuple[DeviceId, ...], Field(max_length=8), AfterValidator(_unique_groups)
    ] = ()
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=16)] = Field(
        default_factory=dict
    )
    ports: Annotated[tuple[Port, ...], Field(max_length=16), AfterValidator(_unique_ports)] = ()
    keys: Keys
    join_token: JoinToken | None = None
    sig: Signature | None = None


class Ack(MessageBase):
    """A device reports installing (or failing to install) a bundle generation."""

    kind: Literal["ack"] = "ack"
    device_id: DeviceId
    ts: Timestamp
    nonce: Nonce
    generation: Generation
    result: AckResult
    detail: LongText | None = None
    sig: Signature | None = None


class Status(MessageBase):
    """A device's retained presence; the unsigned `offline` form is its last will."""

    kind: Literal["status"] = "status"
    device_id: DeviceId
    state: OnlineState
    ts: Timestamp | None = None
    nonce: Nonce | None = None
    agent_version: ShortText | None = None
    generation: Generation | None = None
    token_expires_at: Timestamp | None = None
    ztunnel: ZtunnelState | None = None
    sig: Signature | None = None

    @model_validator(mode="after")
    def _online_is_complete(self) -> Self:
        if self.state == "online":
            required = ("ts", "nonce", "agent_version", "generation", "ztunnel")
            missing = [name for name in required if getattr(self, name) is None]
            if missing:
                msg = f"an online status needs {', '.join(missing)}"
                raise ValueError(msg)
        return self

    @classmethod
    def last_will(cls, device_id: str) -> Self:
        """The unsigned offline status the broker publishes when the device vanishes."""
        return cls(device_id=device_id, state="offline")


class Enrollment(MessageBase):
    """Where a device stands (controller -> device, retained, signed by the controller)."""

    kind: Literal["enrollment"] = "enrollment"
    device_id: DeviceId
    ts: Timestamp
    phase: Phase
    reason: LongText
    """What an operator must do, e.g. the command that approves the device."""
    sig: Signature | None = None


class Bundle(MessageBase):
    """A device's mesh configuration, sealed to its `kx` key (controller -> device)."""

    kind: Literal["bundle"] = "bundle"
    device_id: DeviceId
    ts: Timestamp
    generation: BundleGeneration
    sealed: Sealed
    """HPKE `enc || ct` (RFC 9180 base mode) of a `BundleContent`."""
    sig: Signature | None = None


class Led(MessageBase):
    """An LED command (operator -> one device, a group or the fleet; unsigned)."""

    kind: Literal["led"] = "led"
    id: Annotated[str, Field(min_length=1, max_length=64)]
    effect: Effect
    ts: Timestamp | None = None
    color: Color | None = None
    brightness: Brightness | None = None
    duration_ms: DurationMs | None = None
    """Absent or 0: run until the next command; otherwise turn off after it."""


class LedState(MessageBase):
    """What a device's strip shows now (device -> all, retained, signed)."""

    kind: Literal["led_state"] = "led_state"
    device_id: DeviceId
    ts: Timestamp
    nonce: Nonce
    effect: Effect
    color: Color
    brightness: Brightness
    command_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """Id of the last command applied; absent before the first one."""
    sig: Signature | None = None


class ControllerStatus(MessageBase):
    """The controller's retained presence and public key; `offline` (no `ts`) is its will."""

    kind: Literal["controller_status"] = "controller_status"
    state: OnlineState
    ts: Timestamp | None = None
    version: ShortText
    keys: ControllerKeys
    sig: Signature | None = None

    @model_validator(mode="after")
    def _online_has_ts(self) -> Self:
        if self.state == "online" and self.ts is None:
            msg = "an online controller status needs ts"
            raise ValueError(msg)
        return self


class BundleContent(WireModel):
    """The plaintext inside `Bundle.sealed`: what istioctl would have produced."""

    generation: BundleGeneration
    issued_at: Timestamp
    identity: Annotated[str, Field(max_length=512, pattern=r"^spiffe://[^\s]+$")]
    namespace: DnsLabel
    service_account: DnsSubdomain
    root_cert: Annotated[str, Field(min_length=1, max_length=32_768)]
    token: BearerToken
    token_expires_at: Timestamp
    cluster_env: Annotated[str, Field(max_length=16_384)]
    mesh_config: Annotated[str, Field(max_length=32_768)]
    hosts: Annotated[tuple[HostEntry, ...], Field(max_length=16)] = ()
    ztunnel_env: Annotated[dict[EnvName, EnvValue], Field(max_length=128)] = Field(
        default_factory=dict
    )


Message = Annotated[
    Announce | Ack | Status | Enrollment | Bundle | Led | LedState | ControllerStatus,
    Field(discriminator="kind"),
]
"""Any pimesh v1 message, told apart by `kind`."""

DeviceMessage = Announce | Ack | Status | Enrollment | Bundle | LedState
"""The messages that name a device in `device_id` (its topic must name the same one)."""

MESSAGE_TYPES: Final[Mapping[str, type[MessageBase]]] = {
    cls.model_fields["kind"].default: cls
    for cls in (Announce, Ack, Status, Enrollment, Bundle, Led, LedState, ControllerStatus)
}
"""Every message class by its `kind`."""


def kind_of(cls: type[MessageBase]) -> str:
    """The `kind` string of a message class."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        msg = f"{cls.__name__} is not a message kind"
        raise TypeError(msg)
    return kind
