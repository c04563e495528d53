"""One MQTT connection that outlives broker outages: the transport under every component.

paho-mqtt does the protocol; this module owns the connection's life, which paho leaves to
its caller:

- its own network thread reconnects with exponential backoff and full jitter, so a fleet
  that lost its broker does not come back in one burst, and never gives up;
- subscriptions are (re)made after every CONNACK, and the link counts as *ready* only
  once the SUBACK says they are in place: PROTOCOL.md has controller and agent publish
  their retained `online` status only then;
- a last will, a persistent session (fixed client id, clean start off, MQTT 5 session
  expiry) when asked, TLS and credentials all come from `MqttSettings`;
- `stop()` publishes a final retained status before a clean DISCONNECT, because a clean
  DISCONNECT suppresses the will (MQTT 5 section 3.1.2.5).

This is the only module of `shared` that does I/O; paho is imported nowhere else.
"""

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from shared.settings import MqttSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """A message to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Incoming:
    """A message received on one of the link's subscriptions."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: exponential from `first_s` to `max_s`, with full jitter."""

    first_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before reconnect attempt number `attempt` (0-based)."""
        ceiling = min(self.max_s, self.first_s * 2.0**attempt)
        return ceiling / 2 + rng() * ceiling / 2


def new_client(settings: MqttSettings, *, client_id: str, persistent: bool = False) -> paho.Client:
    """A paho client set up from the shared flags: protocol, credentials, TLS.

    `persistent` keeps the session across reconnects (MQTT 3.1.1 clean session off; for
    MQTT 5 it is the CONNECT's clean start and session expiry, set when connecting).
    """
    v5 = settings.mqtt_version == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else not persistent,
    )
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.address.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
        )
    return client


class MqttLink:
    """A supervised paho client; callbacks run on its network thread and must not block."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[Incoming], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        will: Outgoing | None = None,
        persistent_session: bool = False,
        session_expiry_s: int = 3600,
        keepalive_s: int = 30,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._settings = settings
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_ready = on_ready
        self._persistent = persistent_session
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._backoff = backoff
        self._v5 = settings.mqtt_version == "5"
        self._client = self._make_client(client_id, will)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._connected = threading.Event()
        self._sub_mid: int | None = None
        self._attempt = 0
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)

    @property
    def ready(self) -> bool:
        """Connected and every subscription acknowledged."""
        return self._ready.is_set()

    @property
    def connected(self) -> bool:
        """Connected (CONNACK success), subscriptions perhaps not yet acknowledged."""
        return self._connected.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready or `timeout` seconds pass; True when ready."""
        return self._ready.wait(timeout)

    def start(self) -> None:
        """Start connecting in the background; never raises for an unreachable broker."""
        self._thread.start()

    def publish(self, message: Outgoing) -> None:
        """Queue a message; QoS 1 messages wait in paho's queue across a reconnect."""
        info = self._client.publish(
            message.topic, message.payload, qos=message.qos, retain=message.retain
        )
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish refused", extra={"topic": message.topic, "rc": info.rc})

    def stop(self, final: Outgoing | None = None, *, timeout: float = 5.0) -> None:
        """Publish `final` (if connected), disconnect cleanly and end the network thread."""
        if final is not None and self.connected:
            info = self._client.publish(final.topic, final.payload, qos=1, retain=final.retain)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("final message not sent", extra={"topic": final.topic})
        if self.connected:
            self._client.disconnect()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            # paho closes its socket and its loop's wake-up socket pair only in __del__,
            # which for a client in a reference cycle runs whenever the collector gets to
            # it ("unclosed socket"); there is no public close, so release them now.
            self._client._reset_sockets()

    def _make_client(self, client_id: str, will: Outgoing | None) -> paho.Client:
        client = new_client(self._settings, client_id=client_id, persistent=self._persistent)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.max_queued_messages_set(10_000)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        return client

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not self._socket_open(first=first):
                self._wait_backoff()
                continue
            first = False
            while not self._stop.is_set():
                if self._client.loop(timeout=0.5) != paho.MQTT_ERR_SUCCESS:
                    break
            if not self._stop.is_set():
                self._wait_backoff()

    def _socket_open(self, *, first: bool) -> bool:
        address = self._settings.address
        try:
            if first:
                self._client.connect(
                    address.host,
                    address.port,
                    keepalive=self._keepalive_s,
                    clean_start=not self._persistent
                    if self._v5
                    else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=self._connect_properties(),
                )
            else:
                self._client.reconnect()
        except (OSError, ValueError) as exc:
            log.info(
                "broker unreachable", extra={"broker": self._settings.broker, "error": str(exc)}
            )
            return False
        return True

    def _connect_properties(self) -> Properties | None:
        if not self._v5:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            props.SessionExpiryInterval = self._session_expiry_s
        return props

    def _wait_backoff(self) -> None:
        delay = self._backoff.delay(self._attempt)
        self._attempt += 1
        self._stop.wait(delay)

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused connection", extra={"reason": str(reason)})
            return
        self._attempt = 0
        self._connected.set()
        log.info("connected", extra={"broker": self._settings.broker})
        if not self._subscriptions:
            self._become_ready()
            return
        if self._v5:
            options = SubscribeOptions(qos=1)
            _, self._sub_mid = client.subscribe([(t, options) for t in self._subscriptions])
        else:
            _, self._sub_mid = client.subscribe([(t, 1) for t in self._subscriptions])

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._sub_mid:
            return
        refused = [
            t for t, rc in zip(self._subscriptions, reason_codes, strict=False) if rc.is_failure
        ]
        if refused:
            log.error("subscriptions refused", extra={"topics": refused})
        self._become_ready()

    def _become_ready(self) -> None:
        self._ready.set()
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception:
                log.exception("on_ready callback failed")

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()
        self._connected.clear()
        if not self._stop.is_set():
            log.info("disconnected", extra={"reason": str(reason)})

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(Incoming(msg.topic, bytes(msg.payload), bool(msg.retain)))
        except Exception:
            # A handler bug must never take the network thread (and the connection) down.
            log.exception("message handler failed", extra={"topic": msg.topic})
