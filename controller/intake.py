"""MQTT messages in: decode, check what needs no API call, file, enqueue the device id.

Runs on paho's network thread, so it never blocks and never raises. Garbage and bad
signatures are dropped (and counted) without an answer, as PROTOCOL.md asks: answering
them would let anyone make the controller publish on a device's topics. Everything that
needs the pinned key or the API is left to the reconciler.
"""

import logging

from controller.inbox import Inbox
from controller.metrics import ControllerMetrics
from controller.workqueue import WorkQueue
from shared.errors import BadSignature, InvalidMessage
from shared.messages import Ack, Announce, Status
from shared.mqtt import Incoming
from shared.signing import verify_message
from shared.topics import Channel, Topics, decode_on

log = logging.getLogger(__name__)

ACCEPTED_CHANNELS = frozenset({Channel.ANNOUNCE, Channel.ACK, Channel.STATUS})


class Intake:
    """The controller's `on_message`."""

    def __init__(
        self, topics: Topics, *, inbox: Inbox, queue: WorkQueue[str], metrics: ControllerMetrics
    ) -> None:
        self._topics = topics
        self._inbox = inbox
        self._queue = queue
        self._metrics = metrics

    def __call__(self, incoming: Incoming) -> None:
        """Handle one message from the broker."""
        try:
            parsed = self._topics.parse(incoming.topic)
        except InvalidMessage:
            self._count("unknown", "bad_topic")
            return
        if parsed.channel not in ACCEPTED_CHANNELS or parsed.device_id is None:
            return
        if not incoming.payload:
            return  # a cleared retained message
        kind = parsed.channel.kind
        try:
            message = decode_on(parsed, incoming.payload)
            if isinstance(message, Announce):
                # Self-signed: proves the sender holds the key it announces. Whether that
                # is the device's pinned key is the reconciler's question.
                verify_message(message, message.keys.sign)
        except BadSignature:
            self._count(kind, "bad_signature")
            log.info(
                "dropped message",
                extra={"device": parsed.device_id, "kind": kind, "why": "bad signature"},
            )
            return
        except InvalidMessage as exc:
            self._count(kind, "invalid")
            log.info(
                "dropped message",
                extra={"device": parsed.device_id, "kind": kind, "why": exc.reason},
            )
            return
        if not isinstance(message, Announce | Ack | Status):
            return
        self._count(kind, "queued")
        self._inbox.put(parsed.device_id, message)
        self._queue.add(parsed.device_id)

    def _count(self, kind: str, outcome: str) -> None:
        self._metrics.messages.labels(kind=kind, outcome=outcome).inc()
