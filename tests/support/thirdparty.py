"""A device written from PROTOCOL.md alone: hand-built JSON, its own signatures and HPKE.

It imports nothing from pimesh, so tests that drive the controller with it prove that a
third-party client interoperates, not merely that our code agrees with itself.
"""

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.cleanup import release

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def ts(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class ThirdPartyDevice:
    """One device: keys, an MQTT 5 connection as its own username, and what it received."""

    def __init__(
        self,
        device_id: str,
        *,
        host: str,
        port: int,
        password: str,
        prefix: str,
        address: str = "192.168.1.178",
    ) -> None:
        self.device_id = device_id
        self.prefix = prefix
        self.address = address
        self.sign_key = Ed25519PrivateKey.generate()
        self.kx_key = X25519PrivateKey.generate()
        self.received: dict[str, list[dict[str, Any]]] = {
            "enrollment": [],
            "bundle": [],
            "controller": [],
        }
        self.empty_bundles = 0
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{device_id}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(device_id, password)
        will = {"v": 1, "kind": "status", "device_id": device_id, "state": "offline"}
        self.client.will_set(self.topic("status"), json.dumps(will), qos=1, retain=True)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(host, port, keepalive=5)
        self.client.loop_start()
        self.client.subscribe(
            [
                (self.topic("enrollment"), 1),
                (self.topic("bundle"), 1),
                (f"{prefix}/controller/status", 1),
            ]
        )
        assert subscribed.wait(5), "SUBACK never came"

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/devices/{self.device_id}/{leaf}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        release(self.client)

    def kill(self) -> None:
        """Vanish without DISCONNECT: the broker publishes the last will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        release(self.client)

    # sending --------------------------------------------------------------------------

    def signed(
        self, body: dict[str, Any], *, key: Ed25519PrivateKey | None = None
    ) -> dict[str, Any]:
        body = {
            "v": 1,
            "device_id": self.device_id,
            "ts": ts(),
            "nonce": b64(os.urandom(16)),
            **body,
        }
        body["sig"] = b64((key or self.sign_key).sign(canonical(body)))
        return body

    def announce_body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "announce",
            "boot_id": uuid.uuid4().hex,
            "hostname": self.device_id,
            "addresses": [self.address],
            "arch": "aarch64",
            "os": "Debian GNU/Linux 12",
            "agent_version": "third-party-0.1",
            "app": "led-pi",
            "groups": ["kitchen"],
            "labels": {"floor": "1"},
            "ports": [{"name": "http-pi", "port": 8080, "protocol": "TCP"}],
            "keys": {"sign": b64(raw_public(self.sign_key)), "kx": b64(raw_public(self.kx_key))},
        }
        body.update(overrides)
        return body

    def announce(self, **overrides: Any) -> dict[str, Any]:
        msg = self.signed(self.announce_body(**overrides))
        self.publish("announce", msg)
        return msg

    def ack(self, generation: int, result: str = "applied") -> None:
        self.publish(
            "ack", self.signed({"kind": "ack", "generation": generation, "result": result})
        )

    def online(self, generation: int = 0) -> None:
        body = {
            "kind": "status",
            "state": "online",
            "agent_version": "third-party-0.1",
            "generation": generation,
            "ztunnel": "running",
        }
        self.publish("status", self.signed(body), retain=True)

    def publish(self, leaf: str, msg: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        payload = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        self.client.publish(self.topic(leaf), payload, qos=1, retain=retain).wait_for_publish(5)

    # receiving -------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        leaf = (
            "controller"
            if message.topic.endswith("/controller/status")
            else message.topic.rsplit("/", 1)[-1]
        )
        with self._cond:
            if not message.payload:
                self.empty_bundles += leaf == "bundle"
            else:
                self.received[leaf].append(json.loads(message.payload))
            self._cond.notify_all()

    def wait_for(
        self, leaf: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in reversed(self.received[leaf]):
                    if predicate(msg):
                        return cast(dict[str, Any], msg)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no matching {leaf} within {timeout}s; got {self.received[leaf]}"
                    )
                self._cond.wait(remaining)

    def wait_phase(self, phase: str, *, timeout: float = 15) -> dict[str, Any]:
        return self.wait_for("enrollment", lambda m: m["phase"] == phase, timeout=timeout)

    # checking what the controller sent ------------------------------------------------------

    def controller_key(self) -> Ed25519PublicKey:
        status = self.wait_for("controller", lambda m: m["state"] == "online")
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(status["keys"]["sign"]))

    def verify_controller(self, msg: dict[str, Any]) -> None:
        body = {k: v for k, v in msg.items() if k != "sig"}
        self.controller_key().verify(base64.b64decode(msg["sig"]), canonical(body))

    def open_bundle(self, msg: dict[str, Any]) -> dict[str, Any]:
        info = f"pimesh/v1 bundle|{self.device_id}|{msg['generation']}".encode()
        plaintext = SUITE.decrypt(base64.b64decode(msg["sealed"]), self.kx_key, info=info)
        return cast(dict[str, Any], json.loads(plaintext))
