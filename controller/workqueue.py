"""A deduplicating work queue of device ids, after controller-runtime's workqueue.

Event sources (MQTT callbacks, the Kubernetes watch, timers) only `add` a key; workers
`get` a key, reconcile the whole state of that device and call `done`. The queue
guarantees what makes level-triggered reconciliation safe:

- a key waiting in the queue is held once, however often it is added (deduplication);
- a key is never handed to two workers at once; a key added while it is being handled
  is handed out exactly once more after `done`;
- failures back off per key (`add_rate_limited`, exponential, capped) until `forget`;
- `add_after` delays a key (a requeue the reconciler asked for), keeping the earliest
  deadline when added twice;
- `hold` keeps a key back until a deadline whatever adds it meanwhile: the API server's
  Retry-After must not be cut short by a watch event about the same device.

Time comes from an injectable clock so tests never sleep; a test that moves a fake clock
calls `wake()` so a blocked `get` re-reads it.
"""

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)

Clock = Callable[[], float]
"""Monotonic seconds; `time.monotonic` in production."""


class Enqueue(Protocol[K_contra]):
    """The adding side of a work queue: all an event source needs of it."""

    def add(self, key: K_contra) -> None:
        """Queue `key` now."""

    def add_after(self, key: K_contra, delay_s: float) -> None:
        """Queue `key` after `delay_s` seconds."""


class ShutDown(Exception):  # noqa: N818 - named for the state, like queue.ShutDown
    """Raised by `get` once the queue is shut down and no key will come."""


class WorkQueue(Generic[K]):
    """Thread-safe deduplicating queue with per-key backoff and delayed adds."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        base_delay_s: float = 0.05,
        max_delay_s: float = 300.0,
    ) -> None:
        self._clock = clock
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._ready: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._deadline: dict[K, float] = {}
        self._seq = itertools.count()
        self._failures: dict[K, int] = {}
        self._not_before: dict[K, float] = {}
        self._shutdown = False

    def add(self, key: K) -> None:
        """Queue `key` now unless it is already waiting."""
        with self._cond:
            self._add_locked(key)

    def add_after(self, key: K, delay_s: float) -> None:
        """Queue `key` after `delay_s` seconds; an earlier pending deadline wins."""
        if delay_s <= 0:
            self.add(key)
            return
        with self._cond:
            if not self._shutdown:
                self._schedule_locked(key, self._clock() + delay_s)

    def hold(self, key: K, delay_s: float) -> None:
        """Hand `key` out no sooner than `delay_s` from now, however often it is added."""
        with self._cond:
            at = self._clock() + delay_s
            self._not_before[key] = at
            if not self._shutdown:
                self._schedule_locked(key, at)

    def add_rate_limited(self, key: K) -> float:
        """Queue `key` after its next backoff delay; returns that delay in seconds."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = min(self._base_delay_s * 2.0**failures, self._max_delay_s)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """Reset `key`'s backoff after a success."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        """How many times in a row `key` has been re-queued for failing."""
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float | None = None) -> K | None:
        """Block until a key is ready and hand it out; None when `timeout` passes.

        Raises:
            ShutDown: the queue was shut down.
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDown
                wait = self._promote_due_locked()
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                if end is not None:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        """Mark `key` handled; if it was added meanwhile it becomes ready again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)  # honours a hold set while it was being handled

    def wake(self) -> None:
        """Make blocked `get` calls re-read the clock (after a fake clock moved)."""
        with self._cond:
            self._cond.notify_all()

    def shutdown(self) -> None:
        """Stop handing out keys; blocked and future `get` calls raise ShutDown."""
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys waiting to be handed out now (the queue depth metric)."""
        with self._cond:
            return len(self._ready)

    def pending(self) -> int:
        """Keys waiting now or later, plus those being handled: zero means drained."""
        with self._cond:
            return len(self._ready) + len(self._deadline) + len(self._processing)

    def _schedule_locked(self, key: K, at: float) -> None:
        if self._deadline.get(key, float("inf")) <= at:
            return
        self._deadline[key] = at
        heapq.heappush(self._delayed, (at, next(self._seq), key))
        self._cond.notify()

    def _add_locked(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        not_before = self._not_before.get(key)
        if not_before is not None:
            if not_before > self._clock():
                self._schedule_locked(key, not_before)
                return
            del self._not_before[key]
        self._dirty.add(key)
        self._deadline.pop(key, None)
        if key not in self._processing:
            self._ready.append(key)
            self._cond.notify()

    def _promote_due_locked(self) -> float | None:
        """Move due delayed keys to ready; return seconds until the next one, if any."""
        now = self._clock()
        while self._delayed:
            at, _, key = self._delayed[0]
            if self._deadline.get(key) != at:
                heapq.heappop(self._delayed)  # superseded by an earlier deadline or an add
                continue
            if at > now:
                return at - now
            heapq.heappop(self._delayed)
            del self._deadline[key]
            self._add_locked(key)
        return None
