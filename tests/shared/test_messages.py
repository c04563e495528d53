"""The wire as types: every limit of PROTOCOL.md, the decode rules, signatures' bytes, fuzzing.

Covers `shared.fields`, `shared.timestamps`, `shared.messages` and `shared.codec` together.

The example payloads here are written the way a third-party client would write them:
plain dicts through json.dumps, never through our models.
"""

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from shared.codec import (
    MAX_PAYLOAD_BYTES,
    decode,
    decode_as,
    decode_bundle_content,
    encode,
    signing_bytes,
    to_wire,
)
from shared.errors import InvalidMessage
from shared.fields import DEVICE_ID_PATTERN, EFFECTS, new_nonce
from shared.messages import (
    MESSAGE_TYPES,
    Ack,
    Announce,
    Bundle,
    BundleContent,
    ControllerKeys,
    ControllerStatus,
    Enrollment,
    HostEntry,
    Keys,
    Led,
    LedState,
    MessageBase,
    Port,
    Status,
)
from shared.timestamps import format_ts, parse_ts

Json = dict[str, Any]
FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def b64(size: int, fill: int = 7) -> str:
    return base64.b64encode(bytes([fill]) * size).decode("ascii")


SIGN_KEY = b64(32, 1)
KX_KEY = b64(32, 2)
NONCE = b64(16, 3)
SIG = b64(64, 4)
SEALED = b64(120, 5)
TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-payload.signature"


# --- the PROTOCOL.md examples, hand-built ---------------------------------------------


def announce() -> Json:
    return {
        "v": 1,
        "kind": "announce",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:00Z",
        "nonce": NONCE,
        "boot_id": "3f2b9c1e-0d4a-4c8e-9b7a-1e2f3a4b5c6d",
        "hostname": "pi-kitchen",
        "addresses": ["192.168.1.178"],
        "arch": "aarch64",
        "os": "Debian GNU/Linux 12",
        "agent_version": "0.1.0",
        "app": "led-pi",
        "groups": ["kitchen"],
        "labels": {"floor": "1"},
        "ports": [{"name": "http-pi", "port": 8080, "protocol": "TCP"}],
        "keys": {"sign": SIGN_KEY, "kx": KX_KEY},
        "join_token": "optional pre-shared enrollment token",
        "sig": SIG,
    }


def enrollment() -> Json:
    return {
        "v": 1,
        "kind": "enrollment",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:01Z",
        "phase": "Pending",
        "reason": "waiting for approval: pimesh approve pi-kitchen",
        "sig": SIG,
    }


def bundle() -> Json:
    return {
        "v": 1,
        "kind": "bundle",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:02Z",
        "generation": 3,
        "sealed": SEALED,
        "sig": SIG,
    }


def ack() -> Json:
    return {
        "v": 1,
        "kind": "ack",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:03Z",
        "nonce": NONCE,
        "generation": 3,
        "result": "applied",
        "detail": "installed",
        "sig": SIG,
    }


def status() -> Json:
    return {
        "v": 1,
        "kind": "status",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:04Z",
        "nonce": NONCE,
        "state": "online",
        "agent_version": "0.1.0",
        "generation": 3,
        "token_expires_at": "2026-11-26T11:00:00Z",
        "ztunnel": "running",
        "sig": SIG,
    }


def last_will() -> Json:
    return {"v": 1, "kind": "status", "device_id": "pi-kitchen", "state": "offline"}


def led() -> Json:
    return {
        "v": 1,
        "kind": "led",
        "id": "6f1c2a9e-8b3d-4e5f-a1b2-c3d4e5f6a7b8",
        "ts": "2026-11-26T10:00:05Z",
        "effect": "blink",
        "color": "#ff8800",
        "brightness": 128,
        "duration_ms": 5000,
    }


def led_state() -> Json:
    return {
        "v": 1,
        "kind": "led_state",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:06Z",
        "nonce": NONCE,
        "effect": "blink",
        "color": "#ff8800",
        "brightness": 128,
        "command_id": "6f1c2a9e-8b3d-4e5f-a1b2-c3d4e5f6a7b8",
        "sig": SIG,
    }


def controller_status() -> Json:
    return {
        "v": 1,
        "kind": "controller_status",
        "ts": "2026-11-26T09:59:00Z",
        "state": "online",
        "version": "0.1.0",
        "keys": {"sign": SIGN_KEY},
        "sig": SIG,
    }


def controller_will() -> Json:
    return {
        "v": 1,
        "kind": "controller_status",
        "state": "offline",
        "version": "0.1.0",
        "keys": {"sign": SIGN_KEY},
        "sig": SIG,
    }


def content() -> Json:
    return {
        "generation": 3,
        "issued_at": "2026-11-26T10:00:02Z",
        "identity": "spiffe://cluster.local/ns/pi-fleet/sa/pi-kitchen",
        "namespace": "pi-fleet",
        "service_account": "pi-kitchen",
        "root_cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "token": TOKEN,
        "token_expires_at": "2026-11-26T11:00:02Z",
        "cluster_env": "CANONICAL_SERVICE='led-pi'\n",
        "mesh_config": "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n",
        "hosts": [{"ip": "203.0.113.10", "names": ["istiod.istio-system.svc"]}],
        "ztunnel_env": {
            "PROXY_MODE": "dedicated",
            "CA_ADDRESS": "istiod.istio-system.svc:15012",
            "PROXY_WORKLOAD_INFO": "pi-fleet/pi-kitchen/pi-kitchen",
        },
    }


EXAMPLES: dict[str, Callable[[], Json]] = {
    "announce": announce,
    "enrollment": enrollment,
    "bundle": bundle,
    "ack": ack,
    "status": status,
    "last_will": last_will,
    "led": led,
    "led_state": led_state,
    "controller_status": controller_status,
    "controller_will": controller_will,
}


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


def canonical_by_hand(obj: Json) -> bytes:
    rest = {key: value for key, value in obj.items() if key != "sig"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rejected(payload: bytes | Json) -> str:
    data = payload if isinstance(payload, bytes) else dumps(payload)
    with pytest.raises(InvalidMessage) as info:
        decode(data)
    return info.value.reason


def with_field(obj: Json, path: str, value: Any) -> Json:
    """A copy of obj with the dotted path set (list indexes as digits)."""
    result = copy.deepcopy(obj)
    target: Any = result
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return result


def without(obj: Json, key: str) -> Json:
    return {k: v for k, v in obj.items() if k != key}


# --- third-party client ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_third_party_examples_decode_and_round_trip(name: str) -> None:
    obj = EXAMPLES[name]()
    message = decode(dumps(obj))
    assert message.kind == obj["kind"]
    assert type(message) is MESSAGE_TYPES[obj["kind"]]
    assert to_wire(message) == obj, "a normalized payload comes back byte for byte"
    assert decode(encode(message)) == message
    assert signing_bytes(message) == canonical_by_hand(obj)


def test_third_party_announce_fields() -> None:
    message = decode_as(dumps(announce()), Announce)
    assert message.device_id == "pi-kitchen"
    assert message.ts == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    assert message.addresses == ("192.168.1.178",)
    assert message.groups == ("kitchen",)
    assert message.labels == {"floor": "1"}
    assert message.ports == (Port(name="http-pi", port=8080, protocol="TCP"),)
    assert message.keys == Keys(sign=SIGN_KEY, kx=KX_KEY)
    assert message.join_token is not None
    assert message.join_token.get_secret_value() == "optional pre-shared enrollment token"


def test_last_will_is_exactly_the_protocol_bytes() -> None:
    wire = b'{"v":1,"kind":"status","device_id":"pi-kitchen","state":"offline"}'
    assert encode(Status.last_will("pi-kitchen")) == wire
    assert decode(wire) == Status.last_will("pi-kitchen")


def test_bundle_content_example() -> None:
    obj = content()
    decoded = decode_bundle_content(dumps(obj))
    assert decoded.token.get_secret_value() == TOKEN
    assert decoded.hosts == (HostEntry(ip="203.0.113.10", names=("istiod.istio-system.svc",)),)
    assert decoded.ztunnel_env["PROXY_MODE"] == "dedicated"
    assert to_wire(decoded) == obj
    assert decode_bundle_content(encode(decoded)) == decoded
    assert TOKEN not in repr(decoded)


def test_minimal_led_command() -> None:
    message = decode_as(b'{"v":1,"kind":"led","id":"x","effect":"off"}', Led)
    assert (message.ts, message.color, message.brightness, message.duration_ms) == (None,) * 4
    assert encode(message) == b'{"v":1,"kind":"led","id":"x","effect":"off"}'


# --- transport rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not JSON"),
        (b"", "not JSON"),
        (b'\xef\xbb\xbf{"v":1}', "not JSON"),
        (b"[]", "not an object"),
        (b'"announce"', "not an object"),
        (b"1", "not an object"),
        (b"null", "payload is a JSON null, not an object"),
        (b"[1]", "payload is a JSON array, not an object"),
        (b"{}", "v: missing"),
        (b'{"v":1}', "kind: missing"),
        (b'{"v":1,"kind":null}', "kind: unknown kind None"),
        (b'{"v":null,"kind":"led"}', "v: version None"),
        (b'{"v":1,"kind":"nope"}', "unknown kind 'nope'"),
        (b'{"v":1,"kind":7}', "unknown kind 7"),
        (b'{"v":2,"kind":"led","id":"x","effect":"off"}', "v: version 2"),
        (b'{"v":"1","kind":"led","id":"x","effect":"off"}', "v: version '1'"),
        (b'{"v":true,"kind":"led","id":"x","effect":"off"}', "v: version True"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","v":1}', "'v' appears twice"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":{"a":1,"a":2}}', "'a' appears twice"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","brightness":1.0}', "floats"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","brightness":1e2}', "floats"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":[[{"y":0.5}]]}', "floats"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":NaN}', "NaN"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":Infinity}', "Infinity"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":-Infinity}', "Infinity"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","color":null}', "led.color: null"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":{"y":[null]}}', "led.x.y[0]: null"),
        (b'{"v":1,"kind":"led","id":"x","effect":"off","x":"\\ud800"}', "surrogate"),
    ],
)
def test_transport_rules(payload: bytes, fragment: str) -> None:
    assert fragment in rejected(payload)


def test_size_limit_is_exactly_65536_bytes() -> None:
    head = b'{"v":1,"kind":"led","id":"x","effect":"off","pad":"'
    tail = b'"}'
    fits = head + b"a" * (MAX_PAYLOAD_BYTES - len(head) - len(tail)) + tail
    assert len(fits) == MAX_PAYLOAD_BYTES
    assert decode(fits).kind == "led"
    too_big = head + b"a" * (MAX_PAYLOAD_BYTES + 1 - len(head) - len(tail)) + tail
    assert "65537 bytes" in rejected(too_big)


def test_hostile_nesting_and_huge_numbers_are_refused_cleanly() -> None:
    assert "not JSON" in rejected(b"[" * 60_000)
    nested = b'{"v":1,"kind":"led","id":"x","effect":"off","x":%s}'
    assert decode(nested % (b"[" * 31 + b"]" * 31)).kind == "led"
    assert "nested deeper" in rejected(nested % (b"[" * 32 + b"]" * 32))
    assert "not JSON" in rejected(b'{"v":' + b"9" * 5000 + b"}")


def test_unknown_fields_are_ignored_but_signed() -> None:
    obj = {**led_state(), "future": {"nested": [1, "two", True]}, "aaa": ""}
    message = decode(dumps(obj))
    assert "future" not in to_wire(message)
    assert b'"future":{"nested":[1,"two",true]}' in signing_bytes(message)
    assert signing_bytes(message) == canonical_by_hand(obj)


# --- field limits: (example, path, value, what the reason must mention) ----------------

REJECTED: list[tuple[str, str, Any, str]] = [
    # device ids (DNS-1123 label, 1..40)
    ("announce", "device_id", "Pi-Kitchen", "announce.device_id: 'Pi-Kitchen'"),
    ("announce", "device_id", "", "announce.device_id"),
    ("announce", "device_id", "-pi", "DNS-1123"),
    ("announce", "device_id", "pi-", "DNS-1123"),
    ("announce", "device_id", "pi_kitchen", "DNS-1123"),
    ("announce", "device_id", "pi.kitchen", "DNS-1123"),
    ("announce", "device_id", "a" * 41, "1 to 40"),
    ("announce", "device_id", "pi\n", "DNS-1123"),
    ("announce", "device_id", 7, "announce.device_id: input should be a valid string"),
    ("ack", "device_id", "+", "ack.device_id"),
    ("status", "device_id", "#", "status.device_id"),
    ("enrollment", "device_id", "a/b", "enrollment.device_id"),
    ("bundle", "device_id", "A", "bundle.device_id"),
    ("led_state", "device_id", "x" * 41, "led_state.device_id"),
    # app
    ("announce", "app", "Led-Pi", "announce.app"),
    ("announce", "app", "a" * 64, "announce.app"),
    ("announce", "app", "", "announce.app"),
    # groups
    ("announce", "groups", [f"g{i}" for i in range(9)], "announce.groups: must have at most 8"),
    ("announce", "groups", ["kitchen", "kitchen"], "'kitchen' is listed twice"),
    ("announce", "groups", ["a" * 41], "announce.groups[0]"),
    ("announce", "groups", ["Kitchen"], "announce.groups[0]"),
    ("announce", "groups", "kitchen", "announce.groups: input should be a valid array"),
    # labels
    ("announce", "labels", {f"k{i}": "v" for i in range(17)}, "labels: must have at most 16"),
    ("announce", "labels", {"app": "x"}, "'app' is reserved"),
    ("announce", "labels", {"pimesh.io/device": "x"}, "'pimesh.io/device' is reserved"),
    ("announce", "labels", {"pimesh.io/group.a": "true"}, "reserved"),
    ("announce", "labels", {"edge.pimesh.io/x": "y"}, "reserved"),
    ("announce", "labels", {"-floor": "1"}, "not a valid Kubernetes label key"),
    ("announce", "labels", {"floor-": "1"}, "label key"),
    ("announce", "labels", {"": "1"}, "label key"),
    ("announce", "labels", {"example.com/": "1"}, "label key"),
    ("announce", "labels", {"/floor": "1"}, "label key"),
    ("announce", "labels", {"Example.com/floor": "1"}, "label key"),
    ("announce", "labels", {"a/b/c": "1"}, "label key"),
    ("announce", "labels", {"k" * 64: "1"}, "label key"),
    ("announce", "labels", {("a" * 63 + ".") * 4 + "x/k": "1"}, "label key"),
    ("announce", "labels", {"floor one": "1"}, "announce.labels['floor one']"),
    ("announce", "labels", {"floor": "v" * 64}, "not a valid Kubernetes label value"),
    ("announce", "labels", {"floor": "-1"}, "label value"),
    ("announce", "labels", {"floor": "a b"}, "label value"),
    ("announce", "labels", {"floor": 1}, "announce.labels.floor: input should be a valid"),
    # addresses
    ("announce", "addresses", [], "announce.addresses: must have at least 1"),
    ("announce", "addresses", [f"10.0.0.{i}" for i in range(9)], "at most 8"),
    ("announce", "addresses", ["999.1.1.1"], "announce.addresses[0]: '999.1.1.1' is not an IP"),
    ("announce", "addresses", ["10.0.0.1", "pi.local"], "announce.addresses[1]"),
    ("announce", "addresses", ["1.2.3"], "not an IP address"),
    ("announce", "addresses", ["010.1.1.1"], "not an IP address"),
    ("announce", "addresses", [" 10.0.0.1"], "not an IP address"),
    ("announce", "addresses", ["10.0.0.0/8"], "not an IP address"),
    # ports
    ("announce", "ports", [{"name": f"p{i}", "port": 1000 + i} for i in range(17)], "at most 16"),
    ("announce", "ports.0.port", 0, "announce.ports[0].port"),
    ("announce", "ports.0.port", 65536, "announce.ports[0].port"),
    ("announce", "ports.0.port", "8080", "announce.ports[0].port"),
    ("announce", "ports.0.port", True, "announce.ports[0].port"),
    ("announce", "ports.0.protocol", "UDP", "announce.ports[0].protocol"),
    ("announce", "ports.0.name", "HTTP", "not an IANA service name"),
    ("announce", "ports.0.name", "-http", "IANA"),
    ("announce", "ports.0.name", "http-", "IANA"),
    ("announce", "ports.0.name", "ht--tp", "IANA"),
    ("announce", "ports.0.name", "8080", "IANA"),
    ("announce", "ports.0.name", "a" * 16, "IANA"),
    ("announce", "ports.0.name", "", "IANA"),
    ("announce", "ports.0.name", "http_pi", "IANA"),
    (
        "announce",
        "ports",
        [{"name": "http", "port": 80}, {"name": "http", "port": 81}],
        "port name 'http' is listed twice",
    ),
    (
        "announce",
        "ports",
        [{"name": "http", "port": 80}, {"name": "web", "port": 80}],
        "port number 80 is listed twice",
    ),
    # keys, nonce, sig
    ("announce", "keys.sign", "not base64!", "announce.keys.sign: 'not base64!' is not standard"),
    ("announce", "keys.sign", b64(31), "decodes to 31 bytes, expected 32"),
    ("announce", "keys.kx", b64(33), "announce.keys.kx: decodes to 33 bytes"),
    ("announce", "keys.kx", b64(32).rstrip("="), "not standard base64"),
    ("announce", "keys.kx", b64(32).replace("B", "-"), "not standard base64"),
    ("announce", "keys.kx", "AQ" + b64(32)[2:-2] + "B=", "not standard base64"),
    ("announce", "keys.kx", " " + b64(32), "not standard base64"),
    ("announce", "keys", {"sign": SIGN_KEY}, "announce.keys.kx: field required"),
    ("announce", "nonce", b64(15), "announce.nonce: decodes to 15 bytes, expected 16"),
    ("ack", "nonce", b64(17), "ack.nonce"),
    ("announce", "sig", b64(63), "announce.sig: decodes to 63 bytes, expected 64"),
    ("enrollment", "sig", "", "enrollment.sig"),
    ("bundle", "sealed", b64(47), "bundle.sealed: decodes to 47 bytes, expected at least 48"),
    ("controller_status", "keys.sign", b64(16), "controller_status.keys.sign"),
    # timestamps
    ("announce", "ts", "2026-11-26T10:00:00+00:00", "announce.ts"),
    ("announce", "ts", "2026-11-26T10:00:00", "RFC 3339"),
    ("announce", "ts", "2026-11-26 10:00:00Z", "RFC 3339"),
    ("announce", "ts", "2026-11-26t10:00:00z", "RFC 3339"),
    ("announce", "ts", "2026-11-26T10:00Z", "RFC 3339"),
    ("announce", "ts", "20261126T100000Z", "RFC 3339"),
    ("announce", "ts", "2026-11-26T10:00:00.Z", "RFC 3339"),
    ("announce", "ts", "2026-11-26T10:00:00.1234567890Z", "RFC 3339"),
    ("announce", "ts", "2026-13-01T00:00:00Z", "not a valid date"),
    ("announce", "ts", "2026-02-30T00:00:00Z", "not a valid date"),
    ("announce", "ts", "2026-11-26T24:00:00Z", "not a valid date"),
    ("announce", "ts", "\u0662\u0660\u0662\u0666-11-26T10:00:00Z", "RFC 3339"),
    ("announce", "ts", 1796205600, "announce.ts: must be an RFC 3339"),
    ("status", "token_expires_at", "tomorrow", "status.token_expires_at"),
    ("led", "ts", "2026-11-26T10:00:00+01:00", "led.ts"),
    # free text limits
    ("announce", "hostname", "h" * 254, "announce.hostname: string should have at most 253"),
    ("announce", "hostname", "", "announce.hostname"),
    ("announce", "os", "o" * 129, "announce.os"),
    ("announce", "arch", "a" * 129, "announce.arch"),
    ("announce", "agent_version", "v" * 129, "announce.agent_version"),
    ("announce", "boot_id", "b" * 65, "announce.boot_id"),
    ("announce", "boot_id", "", "announce.boot_id"),
    ("announce", "join_token", "t" * 257, "announce.join_token: must have at most 256 characters"),
    ("announce", "join_token", "", "announce.join_token"),
    ("announce", "join_token", 12345, "announce.join_token"),
    ("enrollment", "reason", "r" * 1025, "enrollment.reason"),
    ("ack", "detail", "d" * 1025, "ack.detail"),
    ("status", "agent_version", "v" * 129, "status.agent_version"),
    ("controller_status", "version", "v" * 129, "controller_status.version"),
    # enums
    ("enrollment", "phase", "pending", "enrollment.phase"),
    ("ack", "result", "ok", "ack.result"),
    ("status", "ztunnel", "crashed", "status.ztunnel"),
    ("status", "state", "away", "status.state"),
    ("controller_status", "state", "ONLINE", "controller_status.state"),
    ("led", "effect", "strobe", "led.effect"),
    ("led_state", "effect", "", "led_state.effect"),
    # generations
    ("ack", "generation", -1, "ack.generation"),
    ("status", "generation", -1, "status.generation"),
    ("bundle", "generation", 0, "bundle.generation: input should be greater than or equal to 1"),
    ("bundle", "generation", 2**53, "bundle.generation"),
    ("bundle", "generation", "3", "bundle.generation: input should be a valid integer"),
    ("ack", "generation", False, "ack.generation"),
    # led
    ("led", "id", "", "led.id"),
    ("led", "id", "i" * 65, "led.id"),
    ("led", "color", "#12345", "led.color: '#12345' is not a color"),
    ("led", "color", "red", "led.color"),
    ("led", "color", "#gggggg", "led.color"),
    ("led", "color", "#ff8800 ", "led.color"),
    ("led", "brightness", 256, "led.brightness"),
    ("led", "brightness", -1, "led.brightness"),
    ("led", "brightness", True, "led.brightness"),
    ("led", "brightness", "128", "led.brightness"),
    ("led", "duration_ms", 600_001, "led.duration_ms"),
    ("led", "duration_ms", -1, "led.duration_ms"),
    ("led_state", "brightness", 300, "led_state.brightness"),
    ("led_state", "color", "#fff", "led_state.color"),
    ("led_state", "command_id", "c" * 65, "led_state.command_id"),
]


@pytest.mark.parametrize(
    ("example", "path", "value", "fragment"),
    REJECTED,
    ids=[f"{example}.{path}={str(value)[:20]}" for example, path, value, _ in REJECTED],
)
def test_limit_rejected(example: str, path: str, value: Any, fragment: str) -> None:
    reason = rejected(with_field(EXAMPLES[example](), path, value))
    assert fragment in reason
    assert reason.startswith(f"{EXAMPLES[example]()['kind']}."), "the reason names the field"


ACCEPTED: list[tuple[str, str, Any]] = [
    ("announce", "device_id", "a"),
    ("announce", "device_id", "0"),
    ("announce", "device_id", "a" * 40),
    ("announce", "device_id", "pi-0-9"),
    ("announce", "app", "a" * 63),
    ("announce", "groups", []),
    ("announce", "groups", [f"g{i}" for i in range(8)]),
    ("announce", "groups", ["g" * 40]),
    ("announce", "labels", {}),
    ("announce", "labels", {f"k{i}": "v" for i in range(16)}),
    ("announce", "labels", {"example.com/tier": ""}),
    ("announce", "labels", {"a.b_c-D": "V.1_x-y"}),
    ("announce", "labels", {"k" * 63: "v" * 63}),
    (
        "announce",
        "labels",
        {"a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + "/k": "v"},
    ),
    ("announce", "labels", {"pimesh.iox/k": "v"}),
    ("announce", "labels", {"application": "v"}),
    ("announce", "addresses", [f"10.0.0.{i}" for i in range(8)]),
    ("announce", "addresses", ["::1", "2001:db8::1", "fe80::1"]),
    ("announce", "addresses", ["10.0.0.1", "10.0.0.1"]),
    ("announce", "ports", []),
    ("announce", "ports", [{"name": f"p{i}", "port": 1000 + i} for i in range(16)]),
    ("announce", "ports", [{"name": "a" * 15, "port": 1}, {"name": "x1", "port": 65535}]),
    ("announce", "ports", [{"name": "h", "port": 80}]),
    ("announce", "hostname", "h" * 253),
    ("announce", "os", ""),
    ("announce", "os", "o" * 128),
    ("announce", "boot_id", "b" * 64),
    ("announce", "join_token", "t" * 256),
    ("announce", "ts", "2026-11-26T10:00:00.5Z"),
    ("announce", "ts", "2026-11-26T10:00:00.123456789Z"),
    ("announce", "ts", "0001-01-01T00:00:00Z"),
    ("enrollment", "reason", ""),
    ("enrollment", "reason", "r" * 1024),
    ("ack", "generation", 0),
    ("ack", "result", "failed"),
    ("ack", "detail", "d" * 1024),
    ("bundle", "generation", 2**53 - 1),
    ("bundle", "sealed", b64(48)),
    ("status", "generation", 0),
    ("status", "ztunnel", "absent"),
    ("led", "id", "i" * 64),
    ("led", "color", "#A0b1C2"),
    ("led", "brightness", 0),
    ("led", "brightness", 255),
    ("led", "duration_ms", 0),
    ("led", "duration_ms", 600_000),
    *[("led", "effect", effect) for effect in EFFECTS],
    *[("enrollment", "phase", p) for p in ("Pending", "Approved", "Enrolled", "Rejected")],
    ("enrollment", "phase", "Revoked"),
]


@pytest.mark.parametrize(
    ("example", "path", "value"),
    ACCEPTED,
    ids=[f"{example}.{path}={str(value)[:20]}" for example, path, value in ACCEPTED],
)
def test_limit_accepted(example: str, path: str, value: Any) -> None:
    message = decode(dumps(with_field(EXAMPLES[example](), path, value)))
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    ("example", "optional"),
    [
        ("announce", "groups"),
        ("announce", "labels"),
        ("announce", "ports"),
        ("announce", "join_token"),
        ("announce", "sig"),
        ("ack", "detail"),
        ("status", "token_expires_at"),
        ("led", "ts"),
        ("led", "color"),
        ("led", "brightness"),
        ("led", "duration_ms"),
        ("led_state", "command_id"),
        ("controller_status", "sig"),
    ],
)
def test_optional_fields_may_be_left_out(example: str, optional: str) -> None:
    message = decode(dumps(without(EXAMPLES[example](), optional)))
    assert optional not in to_wire(message) or to_wire(message)[optional] in ((), [], {})


@pytest.mark.parametrize(
    ("example", "required"),
    [
        *[("announce", f) for f in ("device_id", "ts", "nonce", "addresses", "keys", "app")],
        *[("announce", f) for f in ("boot_id", "hostname", "arch", "os", "agent_version")],
        *[("ack", f) for f in ("device_id", "ts", "nonce", "generation", "result")],
        *[("status", f) for f in ("device_id", "state")],
        *[("enrollment", f) for f in ("device_id", "ts", "phase", "reason")],
        *[("bundle", f) for f in ("device_id", "ts", "generation", "sealed")],
        *[("led", f) for f in ("id", "effect")],
        *[("led_state", f) for f in ("device_id", "ts", "nonce", "effect", "color", "brightness")],
        *[("controller_status", f) for f in ("state", "version", "keys")],
    ],
)
def test_required_fields(example: str, required: str) -> None:
    reason = rejected(without(EXAMPLES[example](), required))
    assert reason == f"{EXAMPLES[example]()['kind']}.{required}: field required"


@pytest.mark.parametrize("missing", ["ts", "nonce", "agent_version", "generation", "ztunnel"])
def test_online_status_is_complete(missing: str) -> None:
    reason = rejected(without(status(), missing))
    assert reason.startswith("status: an online status needs")
    assert missing in reason


def test_offline_status_may_be_signed_with_details() -> None:
    message = decode_as(dumps({**status(), "state": "offline"}), Status)
    assert message.state == "offline"
    assert message.sig == SIG


def test_online_controller_status_needs_ts() -> None:
    reason = rejected(without(controller_status(), "ts"))
    assert reason == "controller_status: an online controller status needs ts"
    assert decode_as(dumps(controller_will()), ControllerStatus).ts is None


def test_addresses_are_normalized_and_normal_forms_round_trip() -> None:
    message = decode_as(
        dumps(with_field(announce(), "addresses", ["2001:DB8:0:0::1", "10.0.0.1"])), Announce
    )
    assert message.addresses == ("2001:db8::1", "10.0.0.1")
    assert to_wire(message)["addresses"] == ["2001:db8::1", "10.0.0.1"]


def test_timestamps_keep_fractions_and_come_back_with_z() -> None:
    message = decode_as(dumps(with_field(led(), "ts", "2026-11-26T10:00:00.5Z")), Led)
    assert message.ts == datetime(2026, 11, 26, 10, 0, 0, 500_000, tzinfo=UTC)
    assert to_wire(message)["ts"] == "2026-11-26T10:00:00.500000Z"
    nanos = decode_as(dumps(with_field(led(), "ts", "2026-11-26T10:00:00.123456789Z")), Led)
    assert nanos.ts is not None
    assert nanos.ts.microsecond == 123456


# --- secrets -----------------------------------------------------------------------------


def test_join_token_never_shows_in_repr_or_errors() -> None:
    token = "very-secret-join-token"
    message = decode_as(dumps(with_field(announce(), "join_token", token)), Announce)
    assert token not in repr(message)
    assert token not in str(message)
    assert json.loads(encode(message))["join_token"] == token
    with pytest.raises(InvalidMessage) as info:
        decode(dumps(with_field(announce(), "join_token", token * 20)))
    assert token not in info.value.reason
    assert token not in str(info.value.__cause__)


def test_bundle_token_never_shows_in_errors() -> None:
    obj = with_field(content(), "token", TOKEN * 400)
    with pytest.raises(InvalidMessage) as info:
        decode_bundle_content(dumps(obj))
    assert info.value.reason.startswith("bundle_content.token:")
    assert "secret-payload" not in info.value.reason
    assert "secret-payload" not in str(info.value.__cause__)


# --- bundle content ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("generation", 0, "bundle_content.generation"),
        ("issued_at", "now", "bundle_content.issued_at"),
        ("identity", "cluster.local/ns/x/sa/y", "bundle_content.identity"),
        ("namespace", "Pi-Fleet", "bundle_content.namespace"),
        ("service_account", "Pi", "bundle_content.service_account"),
        ("root_cert", "", "bundle_content.root_cert"),
        ("token", "", "bundle_content.token"),
        ("token_expires_at", "2026-11-26T11:00:02+00:00", "bundle_content.token_expires_at"),
        ("cluster_env", 1, "bundle_content.cluster_env"),
        ("hosts.0.ip", "istiod", "bundle_content.hosts[0].ip"),
        ("hosts.0.names", [], "bundle_content.hosts[0].names"),
        ("hosts.0.names", ["evil\n6.6.6.6 bank.example"], "not an RFC 1123 host name"),
        ("hosts.0.names", ["a b"], "bundle_content.hosts[0].names[0]"),
        ("hosts.0.names", ["#comment"], "host name"),
        ("ztunnel_env", {"1BAD": "x"}, "not an environment variable name"),
        ("ztunnel_env", {"A=B": "x"}, "environment variable name"),
        ("ztunnel_env", {"OK": "a\u0000b"}, "NUL"),
        ("ztunnel_env", {"OK": 1}, "bundle_content.ztunnel_env.OK"),
    ],
)
def test_bundle_content_rejects(path: str, value: Any, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_bundle_content(dumps(with_field(content(), path, value)))
    assert fragment in info.value.reason


def test_bundle_content_transport_rules() -> None:
    for bad in (b"[]", b"{", dumps({**content(), "hosts": None}), b'{"generation":1.5}'):
        with pytest.raises(InvalidMessage):
            decode_bundle_content(bad)


# --- decode_as, encode, signing bytes ------------------------------------------------------


def test_decode_as_checks_the_kind() -> None:
    assert decode_as(dumps(ack()), Ack).generation == 3
    with pytest.raises(InvalidMessage, match="kind: expected 'announce' here, got 'ack'"):
        decode_as(dumps(ack()), Announce)


def local_announce() -> Announce:
    return Announce(
        device_id="pi-1",
        ts=datetime(2026, 11, 26, 10, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=2))),
        nonce=NONCE,
        boot_id="boot",
        hostname="pi-1",
        addresses=("10.0.0.5",),
        arch="aarch64",
        os="Debian",
        agent_version="0.1.0",
        app="led-pi",
        ports=(Port(name="http-pi", port=8080),),
        keys=Keys(sign=SIGN_KEY, kx=KX_KEY),
        join_token=SecretStr("tok"),
    )


def test_encode_is_compact_json_without_nulls() -> None:
    message = local_announce()
    data = encode(message)
    assert b" " not in data.replace(b"Debian", b"")
    wire = json.loads(data)
    assert wire["ts"] == "2026-11-26T08:00:00.250000Z", "converted to UTC, written with Z"
    assert wire["join_token"] == "tok"
    assert "sig" not in wire
    assert wire["ports"] == [{"name": "http-pi", "port": 8080, "protocol": "TCP"}]
    assert wire == to_wire(message)
    assert decode(data) == message


def test_encode_refuses_oversized_messages() -> None:
    message = Bundle(
        device_id="pi-1", ts=datetime.now(UTC), generation=1, sealed=b64(50_000), sig=SIG
    )
    with pytest.raises(InvalidMessage, match=r"bundle: encodes to \d+ bytes"):
        encode(message)


def test_signing_bytes_of_local_message_is_its_wire_form_without_sig() -> None:
    message = local_announce().model_copy(update={"sig": SIG})
    assert signing_bytes(message) == canonical_by_hand(to_wire(message))
    assert b'"sig"' not in signing_bytes(message)


def test_signing_bytes_survive_setting_sig_but_not_other_changes() -> None:
    obj = {**announce(), "extra": "signed too"}
    message = decode(dumps(obj))
    assert signing_bytes(message.model_copy(update={"sig": b64(64, 9)})) == canonical_by_hand(obj)
    changed = message.model_copy(update={"hostname": "other"})
    assert b"signed too" not in signing_bytes(changed)
    assert b'"hostname":"other"' in signing_bytes(changed)


def test_models_are_frozen() -> None:
    message = decode_as(dumps(led()), Led)
    with pytest.raises(ValidationError):
        message.effect = "off"  # type: ignore[misc]


def test_local_construction_is_strict() -> None:
    with pytest.raises(ValidationError):
        Led(id="x", effect="off", brightness="1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Led(id="x", effect="off", ts=datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose


def test_every_kind_has_a_model() -> None:
    assert set(MESSAGE_TYPES) == {
        "announce",
        "ack",
        "status",
        "enrollment",
        "bundle",
        "led",
        "led_state",
        "controller_status",
    }


# --- helpers -----------------------------------------------------------------------------


def test_format_and_parse_ts() -> None:
    assert format_ts(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0005-01-02T03:04:05Z"
    moment = datetime(2026, 11, 26, 12, 0, 0, 7, tzinfo=timezone(timedelta(hours=2)))
    assert format_ts(moment) == "2026-11-26T10:00:00.000007Z"
    assert parse_ts(format_ts(moment)) == moment
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ts(datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_ts("2026-01-01T00:00:00+00:00")


def test_new_nonce_is_16_random_bytes() -> None:
    nonces = {new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(base64.b64decode(n, validate=True)) == 16 for n in nonces)
    led_state_obj = with_field(led_state(), "nonce", new_nonce())
    assert decode(dumps(led_state_obj)).kind == "led_state"


def test_models_build_from_python_values() -> None:
    status_msg = ControllerStatus(
        state="online", ts=datetime.now(UTC), version="1", keys=ControllerKeys(sign=SIGN_KEY)
    )
    enroll = Enrollment(device_id="pi-1", ts=datetime.now(UTC), phase="Enrolled", reason="")
    state = LedState(
        device_id="pi-1", ts=datetime.now(UTC), nonce=NONCE, effect="off", color="#000000",
        brightness=0,
    )  # fmt: skip
    body = BundleContent.model_validate_json(dumps(content()))
    for message in (status_msg, enroll, state):
        assert decode(encode(message)) == message
    assert decode_bundle_content(encode(body)) == body


# --- property tests: nothing but a model or InvalidMessage comes out --------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


def decode_or_refuse(payload: bytes) -> MessageBase | None:
    try:
        message = decode(payload)
    except InvalidMessage as exc:
        reason = exc.reason
    else:
        assert decode(encode(message)) == message
        return message
    assert isinstance(reason, str)
    assert reason
    return None


@FAST
@given(st.binary(max_size=400))
def test_random_bytes(payload: bytes) -> None:
    decode_or_refuse(payload)


@FAST
@given(json_values)
def test_random_json(value: Any) -> None:
    decode_or_refuse(json.dumps(value).encode())


@FAST
@given(
    st.sampled_from(sorted(EXAMPLES)), st.dictionaries(st.text(max_size=8), json_values, max_size=4)
)
def test_random_fields_over_an_example(name: str, extra: dict[str, Any]) -> None:
    decode_or_refuse(dumps({**EXAMPLES[name](), **extra}))


def paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def mutate(obj: Json, path: tuple[str | int, ...], operation: str, replacement: Any) -> Any:
    parent: Any = obj
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if operation == "drop":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif operation == "replace":
        parent[last] = replacement
    elif operation == "float":
        parent[last] = 1.5
    elif operation == "null":
        parent[last] = None
    elif operation == "stringify":
        parent[last] = json.dumps(parent[last])
    elif operation == "listify":
        parent[last] = [parent[last]]
    return obj


@FAST
@given(
    st.sampled_from(sorted(EXAMPLES)),
    st.data(),
    st.sampled_from(["drop", "replace", "float", "null", "stringify", "listify"]),
    json_values,
)
def test_mutated_examples(name: str, data: st.DataObject, operation: str, value: Any) -> None:
    obj = EXAMPLES[name]()
    path = data.draw(st.sampled_from(paths(obj)))
    message = decode_or_refuse(dumps(mutate(obj, path, operation, value)))
    if operation in {"float", "null"}:
        assert message is None


@FAST
@given(st.sampled_from(sorted(EXAMPLES)), st.data())
def test_mangled_bytes(name: str, data: st.DataObject) -> None:
    payload = bytearray(dumps(EXAMPLES[name]()))
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "oversize", "duplicate"]))
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    if how == "truncate":
        payload = payload[:index]
    elif how == "flip":
        payload[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    elif how == "insert":
        payload[index:index] = data.draw(st.binary(min_size=1, max_size=8))
    elif how == "oversize":
        payload = payload[:-1] + b',"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    else:
        payload = payload[:-1] + b',"v":1}'
    message = decode_or_refuse(bytes(payload))
    if how in {"oversize", "duplicate"}:
        assert message is None


device_ids = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
aware_datetimes = st.datetimes(timezones=st.just(UTC))


@FAST
@given(
    device_id=device_ids,
    ts=aware_datetimes,
    addresses=st.lists(st.ip_addresses().map(str), min_size=1, max_size=8).map(tuple),
    groups=st.lists(device_ids, max_size=8, unique=True).map(tuple),
    labels=st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True), st.just("v")),
    port_numbers=st.lists(st.integers(1, 65535), max_size=16, unique=True),
    token=st.none() | st.text(min_size=1, max_size=256).map(SecretStr),
)
def test_round_trip_of_random_announces(
    device_id: str,
    ts: datetime,
    addresses: tuple[str, ...],
    groups: tuple[str, ...],
    labels: dict[str, str],
    port_numbers: list[int],
    token: SecretStr | None,
) -> None:
    labels = {key: value for key, value in list(labels.items())[:16] if key != "app"}
    message = Announce(
        device_id=device_id,
        ts=ts,
        nonce=new_nonce(),
        boot_id="b",
        hostname=device_id,
        addresses=addresses,
        arch="aarch64",
        os="Linux",
        agent_version="0",
        app="app",
        groups=groups,
        labels=labels,
        ports=tuple(Port(name=f"p{number}", port=number) for number in port_numbers),
        keys=Keys(sign=SIGN_KEY, kx=KX_KEY),
        join_token=token,
    )
    assert decode(encode(message)) == message


@FAST
@given(
    effect=st.sampled_from(EFFECTS),
    ts=st.none() | aware_datetimes,
    color=st.none() | st.from_regex(r"#[0-9a-fA-F]{6}", fullmatch=True),
    brightness=st.none() | st.integers(0, 255),
    duration_ms=st.none() | st.integers(0, 600_000),
    command_id=st.text(min_size=1, max_size=64),
)
def test_round_trip_of_random_led_commands(
    effect: Any,
    ts: datetime | None,
    color: str | None,
    brightness: int | None,
    duration_ms: int | None,
    command_id: str,
) -> None:
    message = Led(
        id=command_id,
        effect=effect,
        ts=ts,
        color=color,
        brightness=brightness,
        duration_ms=duration_ms,
    )
    if any(0xD800 <= ord(char) <= 0xDFFF for char in command_id):
        # A Python str may hold a lone surrogate, which UTF-8 cannot carry.
        with pytest.raises(InvalidMessage, match="surrogate"):
            encode(message)
        return
    assert decode(encode(message)) == message
