"""Device messages waiting for the reconciler: what MQTT said since the last reconcile.

The MQTT callback runs on paho's network thread and must not block, so it only checks
what needs no API call (the message decodes, its topic matches, an announce verifies
with its own key), files the message here and enqueues the device id. The worker then
takes everything filed for that device and checks it against the pinned key.

Each device keeps a short, bounded backlog: a device (or someone forging one) that
floods cannot grow the controller's memory, and the oldest messages give way first,
as they are the least current.
"""

import threading
from collections import deque

from shared.messages import Ack, Announce, Status

DeviceInput = Announce | Ack | Status

DEFAULT_BACKLOG = 16


class Inbox:
    """Thread-safe per-device backlog of messages to absorb."""

    def __init__(self, *, backlog: int = DEFAULT_BACKLOG) -> None:
        self._lock = threading.Lock()
        self._backlog = backlog
        self._pending: dict[str, deque[DeviceInput]] = {}
        self._dropped = 0

    def put(self, device_id: str, message: DeviceInput) -> None:
        """File a message for `device_id`."""
        with self._lock:
            queue = self._pending.setdefault(device_id, deque(maxlen=self._backlog))
            if len(queue) == queue.maxlen:
                self._dropped += 1
            queue.append(message)

    def take(self, device_id: str) -> list[DeviceInput]:
        """Everything filed for `device_id`, oldest first; the backlog is emptied."""
        with self._lock:
            queue = self._pending.pop(device_id, None)
        return list(queue) if queue else []

    def restore(self, device_id: str, messages: list[DeviceInput]) -> None:
        """Put taken messages back in front of whatever arrived since (a failed try)."""
        if not messages:
            return
        with self._lock:
            newer = self._pending.pop(device_id, deque())
            queue: deque[DeviceInput] = deque(maxlen=self._backlog)
            for message in [*messages, *newer]:
                if len(queue) == queue.maxlen:
                    self._dropped += 1
                queue.append(message)
            self._pending[device_id] = queue

    @property
    def dropped(self) -> int:
        """Messages that gave way to newer ones because a backlog was full."""
        with self._lock:
            return self._dropped

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._pending.values())
