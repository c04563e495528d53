"""Golden JSON Schemas of the wire: a change to any message is a reviewed diff.

Each model's schema (`shared.codec.wire_json_schema`, validation mode: what a sender
may put on the wire) is pinned in `tests/shared/golden/<kind>.schema.json`, and
`bundle_content.schema.json` pins the sealed plaintext. When a wire change is intended,
regenerate them and review the diff:

    PIMESH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/shared/test_schema_golden.py

The pinned schemas are also checked to be valid JSON Schema (draft 2020-12) and to
accept what `encode` produces, so a third-party client can validate against them.
"""

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import SecretStr

from shared.codec import encode, wire_json_schema
from shared.fields import new_nonce
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
    WireModel,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PIMESH_UPDATE_GOLDEN") == "1"
SCHEMAS: dict[str, type[WireModel]] = {**MESSAGE_TYPES, "bundle_content": BundleContent}
KEY = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
SIG = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBA=="
TS = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def rendered(name: str) -> str:
    return json.dumps(wire_json_schema(SCHEMAS[name]), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_matches_golden(name: str) -> None:
    path = GOLDEN / f"{name}.schema.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(rendered(name), encoding="utf-8")
    assert path.is_file(), f"no golden for {name}: run with PIMESH_UPDATE_GOLDEN=1"
    assert path.read_text(encoding="utf-8") == rendered(name), (
        f"the wire schema of {name} changed; if intended, rerun with PIMESH_UPDATE_GOLDEN=1 "
        "and review the diff"
    )


def test_no_stale_goldens() -> None:
    pinned = {path.name.removesuffix(".schema.json") for path in GOLDEN.glob("*.schema.json")}
    assert pinned == set(SCHEMAS)


def samples() -> list[MessageBase | BundleContent]:
    return [
        Announce(
            device_id="pi-kitchen",
            ts=TS,
            nonce=new_nonce(),
            boot_id="boot",
            hostname="pi-kitchen",
            addresses=("192.168.1.178", "fd00::1"),
            arch="aarch64",
            os="Debian GNU/Linux 12",
            agent_version="0.1.0",
            app="led-pi",
            groups=("kitchen",),
            labels={"floor": "1", "example.com/tier": ""},
            ports=(Port(name="http-pi", port=8080),),
            keys=Keys(sign=KEY, kx=KEY),
            join_token=SecretStr("token"),
            sig=SIG,
        ),
        Ack(device_id="pi-kitchen", ts=TS, nonce=new_nonce(), generation=1, result="applied"),
        Status(
            device_id="pi-kitchen",
            state="online",
            ts=TS,
            nonce=new_nonce(),
            agent_version="0.1.0",
            generation=0,
            ztunnel="stopped",
            sig=SIG,
        ),
        Status.last_will("pi-kitchen"),
        Enrollment(device_id="pi-kitchen", ts=TS, phase="Pending", reason="approve me", sig=SIG),
        Bundle(
            device_id="pi-kitchen",
            ts=TS,
            generation=1,
            sealed=base64.b64encode(bytes(64)).decode(),
            sig=SIG,
        ),
        Led(id="c1", effect="rainbow", ts=TS, color="#ff0000", brightness=10, duration_ms=0),
        LedState(
            device_id="pi-kitchen",
            ts=TS,
            nonce=new_nonce(),
            effect="off",
            color="#000000",
            brightness=0,
            sig=SIG,
        ),
        ControllerStatus(state="offline", version="0.1.0", keys=ControllerKeys(sign=KEY), sig=SIG),
        BundleContent(
            generation=1,
            issued_at=TS,
            identity="spiffe://cluster.local/ns/pi-fleet/sa/pi-kitchen",
            namespace="pi-fleet",
            service_account="pi-kitchen",
            root_cert="-----BEGIN CERTIFICATE-----\n",
            token=SecretStr("jwt"),
            token_expires_at=TS,
            cluster_env="",
            mesh_config="defaultConfig: {}\n",
            hosts=(HostEntry(ip="203.0.113.10", names=("istiod.istio-system.svc",)),),
            ztunnel_env={"PROXY_MODE": "dedicated"},
        ),
    ]


def golden_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((GOLDEN / f"{name}.schema.json").read_text("utf-8"))
    return schema


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_golden_is_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(golden_schema(name))


@pytest.mark.parametrize("sample", samples(), ids=lambda sample: type(sample).__name__)
def test_golden_accepts_what_encode_produces(sample: MessageBase | BundleContent) -> None:
    name = getattr(sample, "kind", "bundle_content")
    jsonschema.validate(json.loads(encode(sample)), golden_schema(name))


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("led", {"v": 1, "kind": "led", "id": "x", "effect": "off", "color": None}),
        ("led", {"v": 1, "kind": "led", "id": "x", "effect": "strobe"}),
        ("led", {"v": 2, "kind": "led", "id": "x", "effect": "off"}),
        ("status", {"v": 1, "kind": "status", "device_id": "Pi", "state": "offline"}),
        ("announce", {"v": 1, "kind": "announce"}),
    ],
)
def test_golden_refuses_what_decode_refuses(name: str, payload: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, golden_schema(name))
