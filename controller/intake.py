"""MQTT messages in: decode, check what needs no API call, file, enqueue the device id.

Runs on paho's network thread, so it never blocks and never raises. Garbage and bad
signatures are dropped (and counted) without an answer, as PROTOCOL.md asks: answering
them would let anyone make the controller publish on a device's topics. Everything that
needs the pinned key or the API is left to the reconciler.

Announces are also paced per device (`AnnounceLimiter`): a device that floods announces
would otherwise keep its id at the head of the work queue, each reconcile re-reading and
re-checking the same object, and starve the rest of the fleet. Honest agents announce
every `--announce-every` seconds (300 by default, never under 5) and once per
reconnect, far below the limit.

Acks and statuses are enqueued a moment later (`BATCH_S`) so that what a device says at
once is absorbed at once.
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from controller.inbox import Inbox
from controller.metrics import ControllerMetrics
from controller.workqueue import Enqueue
from shared.errors import BadSignature, InvalidMessage
from shared.messages import Ack, Announce, Status
from shared.mqtt import Incoming
from shared.signing import verify_message
from shared.topics import Channel, Topics, decode_on

log = logging.getLogger(__name__)

ACCEPTED_CHANNELS = frozenset({Channel.ANNOUNCE, Channel.ACK, Channel.STATUS})

ANNOUNCE_BURST = 5
ANNOUNCE_RATE_PER_S = 1.0
TRACKED_DEVICES = 100_000

BATCH_S = 0.2
"""How long an ack or status waits for the device's next message: an agent sends its
ack and its status together after installing a bundle, and absorbing both in one
reconcile makes one status write instead of two. Announces are handled at once."""


class AnnounceLimiter:
    """A token bucket per device id, in a bounded map (least recently seen ids go first).

    Each id may send `burst` announces at once and `rate_per_s` a second after that.
    The map holds at most `max_devices` buckets, so ids made up by a flooder cannot
    grow the controller's memory; a forgotten id simply starts again with a full bucket.
    """

    def __init__(
        self,
        *,
        burst: int = ANNOUNCE_BURST,
        rate_per_s: float = ANNOUNCE_RATE_PER_S,
        max_devices: int = TRACKED_DEVICES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or rate_per_s <= 0 or max_devices < 1:
            msg = "burst and max_devices must be at least 1 and the rate positive"
            raise ValueError(msg)
        self._burst = float(burst)
        self._rate = rate_per_s
        self._max = max_devices
        self._clock = clock
        self._lock = threading.Lock()
        # Device id -> (tokens left, when they were counted).
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, device_id: str) -> bool:
        """Take one token from `device_id`'s bucket; False when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.pop(device_id, (self._burst, now))
            tokens = min(self._burst, tokens + (now - then) * self._rate)
            allowed = tokens >= 1.0
            self._buckets[device_id] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return allowed

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


class Intake:
    """The controller's `on_message`."""

    def __init__(
        self,
        topics: Topics,
        *,
        inbox: Inbox,
        queue: Enqueue[str],
        metrics: ControllerMetrics,
        limiter: AnnounceLimiter | None = None,
    ) -> None:
        self._topics = topics
        self._inbox = inbox
        self._queue = queue
        self._metrics = metrics
        self.limiter = limiter or AnnounceLimiter()

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
        if isinstance(message, Announce) and not self.limiter.allow(parsed.device_id):
            # Counted, not logged: a flood would otherwise flood the log as well.
            self._count(kind, "rate_limited")
            return
        self._count(kind, "queued")
        self._inbox.put(parsed.device_id, message)
        if isinstance(message, Announce):
            self._queue.add(parsed.device_id)
        else:
            self._queue.add_after(parsed.device_id, BATCH_S)

    def _count(self, kind: str, outcome: str) -> None:
        self._metrics.messages.labels(kind=kind, outcome=outcome).inc()
