"""A fake clock for the LED player: time moves only when a test says so.

The player holds each frame by calling `sleep(event, timeout)`. Here that blocks until the
test advances the clock past the deadline or the event is set (a new command, close).
`advance` first waits until the player is blocked in such a hold, so a test steps the
player frame by frame with no real sleeps and no races.
"""

import threading
import time
from collections.abc import Callable

_POLL_S = 0.002  # how often a blocked sleeper looks at the player's Event
_TIMEOUT_S = 5.0


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._cond = threading.Condition()
        self._now = start
        self._event: threading.Event | None = None  # the blocked sleeper's event
        self._deadline: float | None = None
        self._returns = 0

    def __call__(self) -> float:
        with self._cond:
            return self._now

    def sleep(self, event: threading.Event, timeout: float | None) -> bool:
        with self._cond:
            self._deadline = None if timeout is None else self._now + timeout
            self._event = event
            self._cond.notify_all()
            try:
                while not event.is_set():
                    if self._deadline is not None and self._now >= self._deadline:
                        return False
                    # The Event is not tied to this condition: poll it.
                    self._cond.wait(_POLL_S)
                return True
            finally:
                self._event = None
                self._returns += 1
                self._cond.notify_all()

    def wait_blocked(self, timeout: float = _TIMEOUT_S) -> float | None:
        """Waits until the player holds a frame; returns that hold's remaining seconds."""
        with self._cond:
            self._poll(self._blocked, timeout, "the player never held a frame")
            return None if self._deadline is None else self._deadline - self._now

    def advance(self, seconds: float, timeout: float = _TIMEOUT_S) -> None:
        """Moves time on once the player is holding; waits for it to move on if it should."""
        with self._cond:
            self._poll(self._blocked, timeout, "the player never held a frame")
            returns = self._returns
            self._now += seconds
            self._cond.notify_all()
            if self._deadline is not None and self._deadline <= self._now:
                self._poll(lambda: self._returns > returns, timeout, "the hold did not end")

    def _blocked(self) -> bool:
        return self._event is not None and not self._event.is_set()

    def _poll(self, ready: Callable[[], bool], timeout: float, message: str) -> None:
        # Called with the condition held.
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() >= deadline:
                raise AssertionError(message)
            self._cond.wait(_POLL_S)
