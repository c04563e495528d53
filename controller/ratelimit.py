"""Pace TokenRequest calls: at most `rate` per second and `concurrency` at once.

A fleet-wide rotation asks the API server for thousands of tokens; unpaced, every worker
would hit it at once. A token bucket (capacity 1, so requests are evenly spaced rather
than bursty) sets the rate and a semaphore caps how many are in flight. Time and
sleeping are injected so the pacing itself is testable without waiting.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class RateLimiter:
    """Evenly spaced permits with a cap on concurrent holders."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s <= 0 or concurrency < 1:
            msg = "rate must be positive and concurrency at least 1"
            raise ValueError(msg)
        self._interval = 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._slots = threading.BoundedSemaphore(concurrency)
        self.granted = 0

    @contextmanager
    def permit(self) -> Iterator[None]:
        """Wait for a permit (a place in the pace and a concurrency slot) and hold it."""
        with self._slots:
            with self._lock:
                now = self._clock()
                start = max(now, self._next_slot)
                self._next_slot = start + self._interval
                self.granted += 1
            if start > now:
                self._sleep(start - now)
            yield
