"""The controller's side of the broker: its subscriptions, presence and signed publications.

Announces and acks come through MQTT 5 shared subscriptions so replicas split them;
`status` is subscribed without `$share` because MQTT 5 does not deliver retained messages
to shared subscriptions and a restarted controller must learn who is online (PROTOCOL.md).
With MQTT 3.1.1 there is no `$share`, so a single active replica subscribes plainly.

The retained `controller/status` goes `online` only once the subscriptions are
acknowledged (agents re-announce when they see it, so nothing they say is lost), and
`offline` as the last will and on a clean stop. Everything published here is signed
with the controller key that agents pin.
"""

import logging
import socket
from collections.abc import Callable
from importlib.metadata import version

from shared.codec import encode
from shared.crypto import ControllerKey
from shared.messages import Bundle, ControllerKeys, ControllerStatus, Enrollment, MessageBase
from shared.mqtt import Incoming, MqttLink, Outgoing
from shared.settings import MqttSettings
from shared.signing import sign_message
from shared.timestamps import now_utc
from shared.topics import Topics

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600


def default_client_id() -> str:
    """A fixed id per replica (the pod name), so its persistent session survives restarts."""
    return f"pimesh-controller-{socket.gethostname()}"[:64]


class ControllerLink:
    """The controller's MQTT connection."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        key: ControllerKey,
        on_message: Callable[[Incoming], None],
        on_ready: Callable[[], None] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.topics = Topics(settings.topic_prefix)
        self._key = key
        self._version = version("pimesh")
        self._on_ready_hook = on_ready
        self._link = MqttLink(
            settings,
            client_id=client_id or default_client_id(),
            subscriptions=self.topics.controller_subscriptions(shared=settings.mqtt_version == "5"),
            on_message=on_message,
            on_ready=self._announce_online,
            will=self._presence("offline"),
            persistent_session=True,
            session_expiry_s=SESSION_EXPIRY_S,
        )

    @property
    def ready(self) -> bool:
        """Subscribed and announced online."""
        return self._link.ready

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready; True when ready."""
        return self._link.wait_ready(timeout)

    def start(self) -> None:
        """Connect in the background."""
        self._link.start()

    def stop(self) -> None:
        """Say `offline` (retained) and disconnect."""
        self._link.stop(self._presence("offline"))

    def publish_enrollment(self, msg: Enrollment, *, retain: bool = True) -> None:
        """Tell a device where it stands (a key-mismatch rejection is not retained)."""
        self._publish(self.topics.enrollment(msg.device_id), msg, retain=retain)

    def publish_bundle(self, msg: Bundle) -> None:
        """Publish a device's sealed bundle, retained so it reaches the device on reconnect."""
        self._publish(self.topics.bundle(msg.device_id), msg, retain=True)

    def clear_bundle(self, device_id: str) -> None:
        """Remove a revoked device's retained bundle (an empty retained payload)."""
        self._link.publish(Outgoing(self.topics.bundle(device_id), b"", qos=1, retain=True))

    def forget(self, device_id: str) -> None:
        """Remove everything retained for a deleted device: bundle and enrollment."""
        self.clear_bundle(device_id)
        self._link.publish(Outgoing(self.topics.enrollment(device_id), b"", qos=1, retain=True))

    def _publish(self, topic: str, msg: MessageBase, *, retain: bool) -> None:
        signed = sign_message(msg, self._key.private_key)
        self._link.publish(Outgoing(topic, encode(signed), qos=1, retain=retain))

    def _presence(self, state: str) -> Outgoing:
        msg = ControllerStatus(
            state="online" if state == "online" else "offline",
            ts=now_utc() if state == "online" else None,
            version=self._version,
            keys=ControllerKeys(sign=self._key.public_b64),
        )
        signed = sign_message(msg, self._key.private_key)
        return Outgoing(self.topics.controller_status(), encode(signed), qos=1, retain=True)

    def _announce_online(self) -> None:
        self._link.publish(self._presence("online"))
        log.info("controller online", extra={"topic": self.topics.controller_status()})
        if self._on_ready_hook is not None:
            self._on_ready_hook()
