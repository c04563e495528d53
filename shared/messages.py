"""The pimesh wire protocol as types: every message of PROTOCOL.md and how bytes become one.

This module is the only definition of anything on the wire (STYLE.md, Messages). Each
message kind is a frozen, strict pydantic model; `Message` is their union, discriminated
on `kind`. Receivers go through `decode`, which enforces the transport rules pydantic
cannot see (size, UTF-8, no floats, no nulls, no duplicate keys) and turns every failure
into one `InvalidMessage` whose reason names the field. Senders build models and call
`encode`.

Signatures cover the canonical JSON of the object as received, minus `sig`, unknown
fields included (PROTOCOL.md, Device identity and signatures). `decode` therefore
remembers those bytes on each message it returns, and `signing_bytes` hands them to
`shared.crypto`; a message built locally is signed over its own wire form.
"""

import base64
import binascii
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NoReturn, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, core_schema

from shared.canonical import canonical_json
from shared.errors import InvalidMessage

MAX_PAYLOAD_BYTES: Final = 65_536
"""Largest payload accepted or produced (PROTOCOL.md, Transport)."""

MAX_NESTING: Final = 32
"""Deepest nesting of lists and objects accepted; v1 needs 4, the rest is for new fields."""

MAX_SAFE_INT: Final = 2**53 - 1
"""Largest integer every JSON implementation holds exactly (RFC 7493 section 2.2)."""

DEVICE_ID_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"
"""A device id or group: a DNS-1123 label of 1 to 40 characters (PROTOCOL.md)."""

Effect = Literal["off", "solid", "blink", "rainbow", "rainbow_cycle", "chase", "switch"]
Phase = Literal["Pending", "Approved", "Enrolled", "Rejected", "Revoked"]
AckResult = Literal["applied", "failed"]
ZtunnelState = Literal["running", "stopped", "failed", "absent"]
OnlineState = Literal["online", "offline"]
EFFECTS: Final[tuple[str, ...]] = get_args(Effect)
PHASES: Final[tuple[str, ...]] = get_args(Phase)

# Explicit [0-9] classes: Python's \d also matches non-ASCII digits.
_DEVICE_ID_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,38}[a-z0-9])?")
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
_LABEL_NAME_RE = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SERVICE_NAME_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,13}[a-z0-9])?")
_COLOR_RE = re.compile(r"#[0-9a-fA-F]{6}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TS_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)
_B64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$"
_LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)
_RESERVED_LABEL_DOMAIN = "pimesh.io"


def _show(value: object) -> str:
    """Quote a received value for an error reason, cut short so a reason stays short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def is_device_id(value: str) -> bool:
    """Whether `value` is a valid device id (also the rule for group names)."""
    return _DEVICE_ID_RE.fullmatch(value) is not None


def _is_dns_subdomain(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and all(_DNS_LABEL_RE.fullmatch(label) for label in labels)


def _check_device_id(value: str) -> str:
    if not is_device_id(value):
        msg = f"{_show(value)} is not a DNS-1123 label of 1 to 40 characters"
        raise ValueError(msg)
    return value


def _check_dns_label(value: str) -> str:
    if _DNS_LABEL_RE.fullmatch(value) is None:
        msg = f"{_show(value)} is not a DNS-1123 label (lower-case, digits, '-', at most 63)"
        raise ValueError(msg)
    return value


def _check_dns_subdomain(value: str) -> str:
    if not _is_dns_subdomain(value):
        msg = f"{_show(value)} is not a DNS-1123 subdomain"
        raise ValueError(msg)
    return value


def _check_hostname(value: str) -> str:
    # These names go into /etc/hosts: anything but RFC 1123 host names could inject lines.
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        msg = f"{_show(value)} is not an RFC 1123 host name"
        raise ValueError(msg)
    return value


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        msg = f"{_show(value)} is not an IP address"
        raise ValueError(msg) from None


def _check_label_key(value: str) -> str:
    """A Kubernetes label key (apimachinery IsQualifiedName) that pimesh does not reserve."""
    prefix, slash, name = value.rpartition("/")
    if (slash and not _is_dns_subdomain(prefix)) or len(name) > 63:
        msg = f"{_show(value)} is not a valid Kubernetes label key"
        raise ValueError(msg)
    if _LABEL_NAME_RE.fullmatch(name) is None:
        msg = f"{_show(value)} is not a valid Kubernetes label key"
        raise ValueError(msg)
    # `app` and pimesh.io/* are written by the controller itself (PROTOCOL.md, announce);
    # like kubernetes.io, subdomains of the reserved domain are reserved too.
    if value == "app" or prefix == _RESERVED_LABEL_DOMAIN or prefix.endswith(".pimesh.io"):
        msg = f"label key {_show(value)} is reserved for pimesh"
        raise ValueError(msg)
    return value


def _check_label_value(value: str) -> str:
    if len(value) > 63 or (value and _LABEL_NAME_RE.fullmatch(value) is None):
        msg = f"{_show(value)} is not a valid Kubernetes label value"
        raise ValueError(msg)
    return value


def _check_service_name(value: str) -> str:
    # RFC 6335 section 5.1, as Kubernetes validates port names (IsValidPortName).
    valid = (
        _SERVICE_NAME_RE.fullmatch(value) is not None
        and "--" not in value
        and any("a" <= char <= "z" for char in value)
    )
    if not valid:
        msg = f"{_show(value)} is not an IANA service name (RFC 6335)"
        raise ValueError(msg)
    return value


def _check_color(value: str) -> str:
    if _COLOR_RE.fullmatch(value) is None:
        msg = f"{_show(value)} is not a color like #ff8800"
        raise ValueError(msg)
    return value


def _check_env_name(value: str) -> str:
    if _ENV_NAME_RE.fullmatch(value) is None:
        msg = f"{_show(value)} is not an environment variable name"
        raise ValueError(msg)
    return value


def _check_env_value(value: str) -> str:
    if "\0" in value:
        msg = "an environment value cannot contain NUL"
        raise ValueError(msg)
    return value


def _strict_b64decode(value: str) -> bytes | None:
    """Decode RFC 4648 base64 with padding, refusing every non-canonical spelling."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == value else None


def _base64_check(size: int, *, at_least: bool = False) -> Callable[[str], str]:
    """A validator for base64 text of exactly (or, with `at_least`, at least) `size` bytes."""

    def check(value: str) -> str:
        raw = _strict_b64decode(value)
        if raw is None:
            msg = f"{_show(value)} is not standard base64 with padding (RFC 4648)"
            raise ValueError(msg)
        if len(raw) < size or (len(raw) > size and not at_least):
            wanted = f"at least {size}" if at_least else f"{size}"
            msg = f"decodes to {len(raw)} bytes, expected {wanted}"
            raise ValueError(msg)
        return value

    return check


def _b64_schema(size: int, *, at_least: bool = False) -> dict[str, Any]:
    length = 4 * ((size + 2) // 3)
    schema: dict[str, Any] = {
        "type": "string",
        "contentEncoding": "base64",
        "pattern": _B64_PATTERN,
        "minLength": length,
    }
    if not at_least:
        schema["maxLength"] = length
    return schema


def parse_ts(value: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp with a trailing 'Z' into an aware datetime.

    Digits finer than a microsecond are dropped; other offsets and lower-case 't'/'z'
    are refused because PROTOCOL.md allows only the 'Z' form.

    Raises:
        ValueError: `value` is not such a timestamp.
    """
    match = _TS_RE.fullmatch(value)
    if match is None:
        msg = f"{_show(value)} is not an RFC 3339 UTC timestamp like 2026-11-26T10:00:00Z"
        raise ValueError(msg)
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
        )
    except ValueError:
        msg = f"{_show(value)} is not a valid date and time"
        raise ValueError(msg) from None


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as PROTOCOL.md wants it: UTC, trailing 'Z'.

    Raises:
        ValueError: `moment` is naive.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        msg = "a timestamp must be timezone-aware"
        raise ValueError(msg)
    utc = moment.astimezone(UTC)
    # Explicit widths: strftime('%Y') does not pad years before 1000 on every libc.
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    return f"{text}.{utc.microsecond:06d}Z" if utc.microsecond else f"{text}Z"


def now_utc() -> datetime:
    """The current time as an aware UTC datetime, for `ts` fields."""
    return datetime.now(UTC)


def new_nonce() -> str:
    """A fresh `nonce`: base64 of 16 random bytes (PROTOCOL.md, Device identity)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _timestamp(value: object) -> datetime:
    if isinstance(value, str):
        return parse_ts(value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            msg = "a timestamp must be timezone-aware"
            raise ValueError(msg)
        return value.astimezone(UTC)
    msg = "must be an RFC 3339 UTC timestamp string"
    raise ValueError(msg)


def _version(value: object) -> int:
    if type(value) is not int or value != 1:
        msg = f"version {_show(value)} is not supported (this is pimesh protocol version 1)"
        raise ValueError(msg)
    return value


def _reveal(secret: SecretStr) -> str:
    return secret.get_secret_value()


def _label_schema(pattern: str, *, max_length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, "maxLength": max_length})


Version = Annotated[
    Literal[1], PlainValidator(_version), WithJsonSchema({"type": "integer", "const": 1})
]
Timestamp = Annotated[
    datetime,
    PlainValidator(_timestamp),
    PlainSerializer(format_ts, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": _TS_PATTERN}),
]
DeviceId = Annotated[
    str, AfterValidator(_check_device_id), _label_schema(DEVICE_ID_PATTERN, max_length=40)
]
DnsLabel = Annotated[
    str,
    AfterValidator(_check_dns_label),
    _label_schema(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length=63),
]
DnsSubdomain = Annotated[
    str,
    AfterValidator(_check_dns_subdomain),
    _label_schema(
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253
    ),
]
HostName = Annotated[
    str,
    AfterValidator(_check_hostname),
    _label_schema(
        r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$",
        max_length=253,
    ),
]
IpAddress = Annotated[
    str,
    AfterValidator(_check_ip),
    WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]
LabelKey = Annotated[
    str,
    AfterValidator(_check_label_key),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _LABEL_KEY_PATTERN,
            "not": {"anyOf": [{"const": "app"}, {"pattern": r"^([^/]*\.)?pimesh\.io/"}]},
        }
    ),
]
LabelValue = Annotated[
    str,
    AfterValidator(_check_label_value),
    _label_schema(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63),
]
ServiceName = Annotated[
    str,
    AfterValidator(_check_service_name),
    _label_schema(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$", max_length=15),
]
Color = Annotated[
    str, AfterValidator(_check_color), _label_schema(r"^#[0-9a-fA-F]{6}$", max_length=7)
]
EnvName = Annotated[
    str, AfterValidator(_check_env_name), _label_schema(r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
]
EnvValue = Annotated[str, Field(max_length=4096), AfterValidator(_check_env_value)]
PublicKey = Annotated[str, AfterValidator(_base64_check(32)), WithJsonSchema(_b64_schema(32))]
Nonce = Annotated[str, AfterValidator(_base64_check(16)), WithJsonSchema(_b64_schema(16))]
Signature = Annotated[str, AfterValidator(_base64_check(64)), WithJsonSchema(_b64_schema(64))]
# HPKE enc for DHKEM(X25519) is 32 bytes (RFC 9180 section 7.1), the Poly1305 tag 16.
Sealed = Annotated[
    str,
    AfterValidator(_base64_check(48, at_least=True)),
    WithJsonSchema(_b64_schema(48, at_least=True)),
]
Generation = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
BundleGeneration = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
ShortText = Annotated[str, Field(max_length=128)]
LongText = Annotated[str, Field(max_length=1024)]
Brightness = Annotated[int, Field(ge=0, le=255)]
DurationMs = Annotated[int, Field(ge=0, le=600_000)]


JoinToken = Annotated[
    SecretStr,
    Field(min_length=1, max_length=256),
    PlainSerializer(_reveal, return_type=str, when_used="json"),
]
BearerToken = Annotated[
    SecretStr,
    Field(min_length=1, max_length=16_384),
    PlainSerializer(_reveal, return_type=str, when_used="json"),
]


def _unique_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for group in groups:
        if group in seen:
            msg = f"group {_show(group)} is listed twice"
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
                msg = f"port {what} {_show(value)} is listed twice"
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

M = TypeVar("M", bound=MessageBase)

# The adapter has its own validator: hide inputs there too, or a token could reach a log.
_MESSAGE_ADAPTER: Final[TypeAdapter[Message]] = TypeAdapter(
    Message, config=ConfigDict(hide_input_in_errors=True)
)
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


class _JsonRules:
    """json.loads hooks that enforce PROTOCOL.md's transport rules while parsing."""

    @staticmethod
    def no_float(text: str) -> NoReturn:
        msg = f"floats are not allowed ({_show(text)}); use an integer"
        raise InvalidMessage(msg)

    @staticmethod
    def no_constant(text: str) -> NoReturn:
        msg = f"{text} is not allowed (not JSON, and no floats anyway)"
        raise InvalidMessage(msg)

    @staticmethod
    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                msg = f"key {_show(key)} appears twice in one object"
                raise InvalidMessage(msg)
            result[key] = value
        return result


_JSON_TYPE_NAMES: Final[Mapping[type, str]] = {
    list: "array",
    str: "string",
    int: "number",
    bool: "boolean",
    type(None): "null",
}


def _render_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            continue
        elif part.isidentifier() or not text:
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _check_tree(root: Mapping[str, Any], *, name: str) -> None:
    """Refuse nulls anywhere and nesting deeper than MAX_NESTING (iteratively: no recursion)."""
    stack: list[tuple[object, tuple[int | str, ...]]] = [(root, (name,))]
    while stack:
        value, path = stack.pop()
        if value is None:
            where = _render_loc(path)
            msg = f"{where}: null is not allowed (leave out a field that has no value)"
            raise InvalidMessage(msg)
        if len(path) > MAX_NESTING:
            msg = f"payload is nested deeper than {MAX_NESTING} levels"
            raise InvalidMessage(msg)
        if isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))


def _load_object(payload: bytes) -> dict[str, Any]:
    """Parse a payload under the transport rules into a JSON object."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        msg = f"payload is {len(payload)} bytes, more than the limit of {MAX_PAYLOAD_BYTES}"
        raise InvalidMessage(msg)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        msg = "payload is not UTF-8"
        raise InvalidMessage(msg) from None
    try:
        obj = json.loads(
            text,
            parse_float=_JsonRules.no_float,
            parse_constant=_JsonRules.no_constant,
            object_pairs_hook=_JsonRules.unique_keys,
        )
    except json.JSONDecodeError as exc:
        msg = f"payload is not JSON ({exc.msg} at character {exc.pos})"
        raise InvalidMessage(msg) from None
    except (ValueError, RecursionError):
        # Integers beyond sys.get_int_max_str_digits(), or arrays nested past the stack.
        msg = "payload is not JSON that can be read safely"
        raise InvalidMessage(msg) from None
    if not isinstance(obj, dict):
        msg = f"payload is a JSON {_JSON_TYPE_NAMES.get(type(obj), 'value')}, not an object"
        raise InvalidMessage(msg)
    return obj


def _unsigned_canonical(obj: Mapping[str, Any]) -> bytes:
    """The canonical bytes of `obj` without `sig`: what the signature covers."""
    try:
        return canonical_json({key: value for key, value in obj.items() if key != "sig"})
    except UnicodeEncodeError:
        msg = "payload contains an unpaired UTF-16 surrogate escape"
        raise InvalidMessage(msg) from None


def _reason(exc: ValidationError, *, root: str = "") -> str:
    """One short sentence for the first problem pydantic found, naming the field."""
    # Only the first: later ones are often echoes of it (a bad item, then "too short").
    first = exc.errors(include_url=False)[0]
    loc = (root, *first["loc"]) if root else first["loc"]
    return f"{_render_loc(loc) or 'message'}: {_error_text(first)}"


def _error_text(error: ErrorDetails) -> str:
    ctx = error.get("ctx", {})
    if error["type"] in {"too_long", "too_short"}:
        unit = "characters" if isinstance(error.get("input"), str | SecretStr) else "items"
        bound = "at most" if error["type"] == "too_long" else "at least"
        limit = ctx.get("max_length", ctx.get("min_length"))
        return f"must have {bound} {limit} {unit}"
    text = error["msg"].removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


def _check_envelope(obj: Mapping[str, Any]) -> str:
    """Check `v` and `kind` first, so their reasons are the clearest ones; return the kind."""
    if "v" not in obj:
        msg = "v: missing (this is pimesh protocol version 1)"
        raise InvalidMessage(msg)
    try:
        _version(obj["v"])
    except ValueError as exc:
        raise InvalidMessage(f"v: {exc}") from None
    if "kind" not in obj:
        msg = "kind: missing"
        raise InvalidMessage(msg)
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        msg = f"kind: unknown kind {_show(kind)}"
        raise InvalidMessage(msg)
    return kind


def decode(payload: bytes) -> Message:
    """Turn a received payload into a message, or refuse it.

    Raises:
        InvalidMessage: for every way `payload` can fail to be a pimesh v1 message; its
            reason names the field, e.g. "announce.addresses[0]: '999.1.1.1' is not an
            IP address".
    """
    obj = _load_object(payload)
    _check_tree(obj, name=_check_envelope(obj))
    signed = _unsigned_canonical(obj)
    try:
        message = _MESSAGE_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        raise InvalidMessage(_reason(exc)) from exc
    message._signing_bytes = signed
    return message


def decode_as(payload: bytes, kind_cls: type[M]) -> M:
    """Decode a payload that must be of one kind (the kind its topic carries).

    Raises:
        InvalidMessage: the payload is invalid or of another kind.
    """
    message = decode(payload)
    if not isinstance(message, kind_cls):
        msg = f"kind: expected {kind_of(kind_cls)!r} here, got {message.kind!r}"
        raise InvalidMessage(msg)
    return message


def decode_bundle_content(plaintext: bytes) -> BundleContent:
    """Turn an opened bundle's plaintext into its content, or refuse it.

    Raises:
        InvalidMessage: the plaintext is not a valid bundle content; the reason never
            contains the token.
    """
    obj = _load_object(plaintext)
    _check_tree(obj, name="bundle_content")
    _unsigned_canonical(obj)
    try:
        return BundleContent.model_validate_json(plaintext)
    except ValidationError as exc:
        raise InvalidMessage(_reason(exc, root="bundle_content")) from exc


def to_wire(msg: MessageBase | BundleContent) -> dict[str, Any]:
    """The JSON object of a message as it goes on the wire: no nulls, secrets revealed."""
    return msg.model_dump(mode="json", exclude_none=True)


def encode(msg: MessageBase | BundleContent) -> bytes:
    """The compact UTF-8 JSON of a message, ready to publish (or to seal, for content).

    Raises:
        InvalidMessage: the result would exceed MAX_PAYLOAD_BYTES, or a string holds an
            unpaired surrogate (possible in a Python str, impossible in UTF-8).
    """
    what = getattr(msg, "kind", "bundle_content")
    text = json.dumps(to_wire(msg), separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        reason = f"{what}: contains an unpaired UTF-16 surrogate, which UTF-8 cannot carry"
        raise InvalidMessage(reason) from None
    if len(data) > MAX_PAYLOAD_BYTES:
        reason = f"{what}: encodes to {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}"
        raise InvalidMessage(reason)
    return data


def signing_bytes(msg: MessageBase) -> bytes:
    """The bytes `msg.sig` covers: as received for a decoded message, else its wire form."""
    if msg._signing_bytes is not None:
        return msg._signing_bytes
    return _unsigned_canonical(to_wire(msg))


class _WireJsonSchema(GenerateJsonSchema):
    """JSON Schema of the wire form: optional fields are omitted there, never null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            del json_schema["default"]
        return json_schema


def wire_json_schema(cls: type[WireModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) a third-party client can validate against."""
    return cls.model_json_schema(schema_generator=_WireJsonSchema, mode="validation")
