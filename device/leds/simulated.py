"""A strip that exists only in memory, for machines without LEDs and for tests.

`SimulatedStrip` implements `LedDriver`: it keeps the frame on show and a bounded history
of the frames before it, and lets a test or the sandbox's live view wait (with a
timeout) for a frame that satisfies a predicate instead of sleeping and hoping.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

from device.leds.driver import BLACK, Frame, LedHardwareError, fill

DEFAULT_HISTORY = 1024
"""Frames kept: four passes of a rainbow, enough for any test to look back on."""


class SimulatedStrip:
    """An in-memory `LedDriver`; safe to use from several threads."""

    def __init__(self, count: int = 100, *, history: int = DEFAULT_HISTORY) -> None:
        if count < 1:
            raise ValueError(f"a strip needs at least one pixel, not {count}")
        self._count = count
        self._changed = threading.Condition()
        self._current: Frame = fill(count, BLACK)
        self._history: deque[Frame] = deque(maxlen=history)
        self._shown = 0
        self._closed = False

    @property
    def count(self) -> int:
        """The number of pixels."""
        return self._count

    @property
    def current(self) -> Frame:
        """The frame on show (all black before the first `show`)."""
        with self._changed:
            return self._current

    @property
    def shown(self) -> int:
        """How many frames have been shown since the strip was made."""
        with self._changed:
            return self._shown

    @property
    def history(self) -> tuple[Frame, ...]:
        """The most recent frames shown, oldest first (bounded)."""
        with self._changed:
            return tuple(self._history)

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        with self._changed:
            return self._closed

    def show(self, frame: Frame) -> None:
        """Records `frame` as the one on show and wakes anyone waiting for frames.

        Raises:
            ValueError: The frame's length is not the strip's pixel count.
            LedHardwareError: The strip is closed, as a real one would be.
        """
        if len(frame) != self._count:
            raise ValueError(f"frame of {len(frame)} pixels for a strip of {self._count}")
        with self._changed:
            if self._closed:
                raise LedHardwareError("the simulated strip is closed")
            self._current = frame
            self._history.append(frame)
            self._shown += 1
            self._changed.notify_all()

    def close(self) -> None:
        """Marks the strip closed; later `show` calls fail."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Frame], bool], *, timeout: float) -> Frame:
        """Waits for a frame satisfying `predicate`: the current one or one shown later.

        Frames shown while waiting are checked in order even if they are no longer on
        show when the waiter wakes (as long as they are still in the history).

        Args:
            predicate: Decides whether a frame is the one wanted.
            timeout: Seconds to wait at most.

        Returns:
            The first matching frame.

        Raises:
            TimeoutError: No matching frame within `timeout`.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            if predicate(self._current):
                return self._current
            seen = self._shown
            while True:
                for frame in self._frames_since(seen):
                    if predicate(frame):
                        return frame
                seen = self._shown
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching frame within {timeout} s")
                self._changed.wait(remaining)

    def _frames_since(self, seen: int) -> list[Frame]:
        new = min(self._shown - seen, len(self._history))
        return list(self._history)[len(self._history) - new :]
