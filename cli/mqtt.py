"""Publish one message and wait for the broker's PUBACK: the transport of `pimesh led`.

`shared.mqtt.MqttLink` is built for components that run for days: it reconnects for
ever, never raises for an unreachable broker, and its `publish` queues without telling
when (or whether) the broker took the message. A one-shot command needs the opposite: a
connection attempt bounded by `--timeout`, then a definite answer. So this module drives
paho synchronously on the caller's thread (no network thread to stop): CONNECT, CONNACK,
PUBLISH at QoS 1, PUBACK (MQTT 5 sections 3.2 and 3.4), DISCONNECT.

With MQTT 5 the PUBACK carries a reason code, and Mosquitto answers "Not authorized"
(0x87) when its ACL refuses the topic, which is reported as a failure. MQTT 3.1.1 has
no such code: a broker acknowledges a refused publish like any other (section 3.3.5).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cli.errors import CliError
from shared.mqtt import Outgoing, new_client
from shared.settings import MqttSettings

LOOP_SLICE_S = 0.05  # how long one paho loop() waits for the socket


class BrokerError(CliError):
    """The broker could not be reached, refused us, or did not acknowledge in time."""


@dataclass
class _Exchange:
    """What the broker has answered so far (paho calls back from `loop()`, on our thread)."""

    connack: ReasonCode | None = None
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)

    def on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connack = reason

    def on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.pubacks[mid] = reason


def _client(settings: MqttSettings, client_id: str, exchange: _Exchange) -> paho.Client:
    client = new_client(settings, client_id=client_id)
    client.on_connect = exchange.on_connect
    client.on_publish = exchange.on_publish
    return client


class _Session:
    """One connection with a deadline shared by every step."""

    def __init__(self, settings: MqttSettings, client: paho.Client, *, timeout_s: float) -> None:
        self._settings = settings
        self._client = client
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s

    def connect(self, exchange: _Exchange) -> None:
        address = self._settings.address
        self._client.connect_timeout = max(0.1, self._deadline - time.monotonic())
        try:
            self._client.connect(address.host, address.port, keepalive=30)
        except (OSError, ValueError) as exc:
            msg = f"cannot reach the broker at {self._settings.broker}: {exc}"
            raise BrokerError(msg) from exc
        self.pump(lambda: exchange.connack is not None, what="CONNACK")
        if exchange.connack is not None and exchange.connack.is_failure:
            msg = (
                f"the broker at {self._settings.broker} refused the connection: {exchange.connack}"
            )
            raise BrokerError(msg)

    def pump(self, done: Callable[[], bool], *, what: str) -> None:
        """Run paho's loop until `done()`, the deadline, or a lost connection."""
        while not done():
            if time.monotonic() >= self._deadline:
                msg = f"no {what} from the broker at {self._settings.broker} "
                msg += f"within {self._timeout_s:g} s"
                raise BrokerError(msg)
            rc = self._client.loop(timeout=LOOP_SLICE_S)
            if rc != paho.MQTT_ERR_SUCCESS and not done():
                msg = f"lost the connection to {self._settings.broker} while waiting for "
                msg += f"its {what}: {paho.error_string(rc)}"
                raise BrokerError(msg)

    def publish(self, message: Outgoing, exchange: _Exchange) -> ReasonCode:
        """Publish and wait for the PUBACK (for QoS 0: until it is written); its reason."""
        info = self._client.publish(message.topic, message.payload, message.qos, message.retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            msg = f"could not publish on {message.topic}: {paho.error_string(info.rc)}"
            raise BrokerError(msg)
        self.pump(lambda: info.mid in exchange.pubacks, what="PUBACK")
        return exchange.pubacks[info.mid]

    def close(self) -> None:
        """Send DISCONNECT if we got that far; paho closes the socket once it is written."""
        if self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
            self._client.loop_write()


def publish_once(
    settings: MqttSettings, message: Outgoing, *, client_id: str, timeout_s: float
) -> None:
    """Connect, publish `message` at its QoS, wait for the broker to take it, disconnect.

    Raises:
        BrokerError: unreachable, connection refused, no acknowledgement within
            `timeout_s` seconds in all, or (MQTT 5) a PUBACK reason code of failure.
    """
    exchange = _Exchange()
    session = _Session(settings, _client(settings, client_id, exchange), timeout_s=timeout_s)
    try:
        session.connect(exchange)
        reason = session.publish(message, exchange)
        if reason.is_failure:
            msg = f"the broker refused the message on {message.topic}: {reason}"
            raise BrokerError(msg)
    finally:
        session.close()
