"""The value types of wire fields: what each field of PROTOCOL.md may hold, and why not.

Every message model in `shared.messages` is built from these `Annotated` aliases, so a
limit of the protocol (a DNS-1123 label, 32 raw bytes of base64, a label key pimesh does
not reserve) is written once, here, with its validator and the JSON Schema a third-party
client sees. Validators raise `ValueError` with a short reason naming the bad value; the
codec turns that into `InvalidMessage`. Timestamps have their own module,
`shared.timestamps`, because callers far from the wire need them too.
"""

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    WithJsonSchema,
)

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
_B64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)
_RESERVED_LABEL_DOMAIN = "pimesh.io"


def quoted(value: object) -> str:
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
        msg = f"{quoted(value)} is not a DNS-1123 label of 1 to 40 characters"
        raise ValueError(msg)
    return value


def _check_dns_label(value: str) -> str:
    if _DNS_LABEL_RE.fullmatch(value) is None:
        msg = f"{quoted(value)} is not a DNS-1123 label (lower-case, digits, '-', at most 63)"
        raise ValueError(msg)
    return value


def _check_dns_subdomain(value: str) -> str:
    if not _is_dns_subdomain(value):
        msg = f"{quoted(value)} is not a DNS-1123 subdomain"
        raise ValueError(msg)
    return value


def _check_hostname(value: str) -> str:
    # These names go into /etc/hosts: anything but RFC 1123 host names could inject lines.
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        msg = f"{quoted(value)} is not an RFC 1123 host name"
        raise ValueError(msg)
    return value


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        msg = f"{quoted(value)} is not an IP address"
        raise ValueError(msg) from None


def _check_label_key(value: str) -> str:
    """A Kubernetes label key (apimachinery IsQualifiedName) that pimesh does not reserve."""
    prefix, slash, name = value.rpartition("/")
    if (slash and not _is_dns_subdomain(prefix)) or len(name) > 63:
        msg = f"{quoted(value)} is not a valid Kubernetes label key"
        raise ValueError(msg)
    if _LABEL_NAME_RE.fullmatch(name) is None:
        msg = f"{quoted(value)} is not a valid Kubernetes label key"
        raise ValueError(msg)
    # `app` and pimesh.io/* are written by the controller itself (PROTOCOL.md, announce);
    # like kubernetes.io, subdomains of the reserved domain are reserved too.
    if value == "app" or prefix == _RESERVED_LABEL_DOMAIN or prefix.endswith(".pimesh.io"):
        msg = f"label key {quoted(value)} is reserved for pimesh"
        raise ValueError(msg)
    return value


def _check_label_value(value: str) -> str:
    if len(value) > 63 or (value and _LABEL_NAME_RE.fullmatch(value) is None):
        msg = f"{quoted(value)} is not a valid Kubernetes label value"
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
        msg = f"{quoted(value)} is not an IANA service name (RFC 6335)"
        raise ValueError(msg)
    return value


def _check_color(value: str) -> str:
    if _COLOR_RE.fullmatch(value) is None:
        msg = f"{quoted(value)} is not a color like #ff8800"
        raise ValueError(msg)
    return value


def _check_env_name(value: str) -> str:
    if _ENV_NAME_RE.fullmatch(value) is None:
        msg = f"{quoted(value)} is not an environment variable name"
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
            msg = f"{quoted(value)} is not standard base64 with padding (RFC 4648)"
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


def new_nonce() -> str:
    """A fresh `nonce`: base64 of 16 random bytes (PROTOCOL.md, Device identity)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def check_version(value: object) -> int:
    """Accept protocol version 1, the only one this code speaks.

    Raises:
        ValueError: `value` is anything but the integer 1.
    """
    if type(value) is not int or value != 1:
        msg = f"version {quoted(value)} is not supported (this is pimesh protocol version 1)"
        raise ValueError(msg)
    return value


def _reveal(secret: SecretStr) -> str:
    return secret.get_secret_value()


def _label_schema(pattern: str, *, max_length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, "maxLength": max_length})


Version = Annotated[
    Literal[1], PlainValidator(check_version), WithJsonSchema({"type": "integer", "const": 1})
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
