"""Runs one LED effect at a time on one strip, on its own thread.

`EffectPlayer.play` applies a `led` command (PROTOCOL.md): a missing colour or brightness
keeps the current one, `duration_ms` turns the strip `off` when it elapses, `switch` runs
the seed's one rainbow pass and then resumes the previous effect with its parameters, and
a new command replaces the running effect at once, even in the middle of a hold (holds
are waits on an Event that `play` sets, never sleeps).

Every state change (a command applied, a switch finishing, a duration ending, the
hardware failing) is reported in order to `on_change`, from which the agent publishes
`led_state`. Reports are delivered on the effect thread, and a command's only once its
first frame is on the strip: `play` itself does no more than hand the command over and
wake the thread, so the frame never waits for the caller's work after `play` or for
the report (the agent signs `led_state`, which costs more than the rest of the path
from MQTT message to frame).

Time comes from an injectable clock and "sleeper" (a wait on an Event with a timeout),
so tests step a fake clock instead of sleeping.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum, auto
from typing import Self

from device.leds.driver import WHITE, Color, Frame, LedDriver, LedHardwareError
from device.leds.effects import Effect, apply_brightness, steps

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Monotonic seconds; `time.monotonic` in production."""

Sleeper = Callable[[threading.Event, float | None], bool]
"""Waits until the event is set or the timeout (seconds; `None`: no timeout) passes;
returns whether the event was set. `threading.Event.wait` in production."""

MAX_DURATION_MS = 600_000
"""The protocol's limit on `duration_ms`."""
_FULL = 255


def wait_on_event(event: threading.Event, timeout: float | None) -> bool:
    """The production sleeper: `event.wait(timeout)`."""
    return event.wait(timeout)


@dataclass(frozen=True, slots=True)
class LedCommandSpec:
    """A `led` command as the player takes it (the agent maps the wire message here).

    Attributes:
        effect: The effect to run.
        command_id: The command's `id`, reported back in `led_state`.
        color: The colour, or `None` to keep the current one.
        brightness: 0-255, or `None` to keep the current one.
        duration_ms: 0 runs until the next command; otherwise the strip goes `off`
            after this long.
    """

    effect: Effect
    command_id: str
    color: Color | None = None
    brightness: int | None = None
    duration_ms: int = 0

    def __post_init__(self) -> None:
        if not self.command_id:
            raise ValueError("a command needs an id")
        if self.brightness is not None and not 0 <= self.brightness <= _FULL:
            raise ValueError(f"brightness {self.brightness} is outside 0-255")
        if not 0 <= self.duration_ms <= MAX_DURATION_MS:
            raise ValueError(f"duration_ms {self.duration_ms} is outside 0-{MAX_DURATION_MS}")


@dataclass(frozen=True, slots=True)
class LedState:
    """What the strip is doing, as `led_state` reports it.

    Attributes:
        effect: The effect running (`switch` while its pass runs).
        color: The current colour.
        brightness: The current brightness, 0-255.
        command_id: The id of the last command applied; `None` before any.
        failed: Whether the hardware failed; the player no longer drives the strip.
        error: Why the hardware failed, when it did.
    """

    effect: Effect
    color: Color
    brightness: int
    command_id: str | None = None
    failed: bool = False
    error: str | None = None


INITIAL_STATE = LedState(effect=Effect.OFF, color=WHITE, brightness=_FULL)
"""Before any command the strip is off (PROTOCOL.md `led_state`)."""


@dataclass(frozen=True, slots=True)
class _Program:
    """An effect with its parameters, when it ends, and what follows a switch."""

    state: LedState
    ends_at: float | None = None
    resume: "_Program | None" = None


class _Outcome(Enum):
    ELAPSED = auto()  # the hold ran its course: next step
    WOKEN = auto()  # a new command or close: drop this program
    DEADLINE = auto()  # duration_ms elapsed: go off


class EffectPlayer:
    """Plays effects on one `LedDriver` from a thread of its own.

    `on_change` runs on the effect thread, one call per state change, in order: for a
    command after its first frame is shown, for the thread's own changes (a switch or
    a duration ending, a failure) before the next frame. It may call `play`; it must
    not wait for another thread that calls `play`.
    """

    def __init__(
        self,
        driver: LedDriver,
        *,
        clock: Clock = time.monotonic,
        sleeper: Sleeper = wait_on_event,
        on_change: Callable[[LedState], None] | None = None,
    ) -> None:
        self._driver = driver
        self._clock = clock
        self._sleeper = sleeper
        self._on_change = on_change
        self._lock = threading.Lock()
        self._pending: deque[LedState] = deque()
        self._wake = threading.Event()
        self._program = _Program(INITIAL_STATE)
        self._generation = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="led-effects", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """Whether the effect thread is running."""
        return self._thread.is_alive()

    def state(self) -> LedState:
        """The current state (effect, colour, brightness, last command, failure)."""
        with self._lock:
            return self._program.state

    def play(self, command: LedCommandSpec) -> LedState:
        """Applies `command`, replacing the running effect at once.

        Args:
            command: The command; missing colour and brightness keep the current ones.

        Returns:
            The state the command produced (`on_change` hears of it from the effect
            thread once the command's first frame is shown).

        Raises:
            RuntimeError: The player is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the LED player is closed")
            program = _resolve(command, self._program, now=self._clock())
            self._install(program)
            self._wake.set()
        return program.state

    def close(self, *, timeout: float = 5.0) -> None:
        """Stops the effect thread (within `timeout` seconds) and closes the driver."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._driver.close()

    def _install(self, program: _Program) -> None:
        # Caller holds the lock. The generation lets the effect thread tell that a
        # command replaced the program it was running.
        self._program = program
        self._generation += 1
        self._pending.append(program.state)

    def _run(self) -> None:
        while True:
            with self._lock:
                closed = self._closed
                program, generation = self._program, self._generation
                self._wake.clear()
            if closed:
                self._notify()  # what was played before close is still reported
                return
            if program.state.failed:
                self._notify()
                self._wake.wait()  # the strip is dead: only close matters now
                continue
            successor = self._drive(program)
            if successor is not None:
                self._succeed(generation, successor)

    def _drive(self, program: _Program) -> _Program | None:
        """Shows the program's steps; returns what follows it if it ended by itself."""
        state = program.state
        for step in steps(state.effect, count=self._driver.count, color=state.color):
            if program.ends_at is not None and self._clock() >= program.ends_at:
                return _switched_off(program)
            if not self._show(apply_brightness(step.frame, state.brightness)):
                return None
            self._notify()  # the command that started this program, now it is shown
            outcome = self._hold(step.hold_ms, program.ends_at)
            if outcome is _Outcome.WOKEN:
                return None
            if outcome is _Outcome.DEADLINE:
                return _switched_off(program)
        return program.resume or _switched_off(program)

    def _hold(self, hold_ms: int | None, ends_at: float | None) -> _Outcome:
        timeout = None if hold_ms is None else hold_ms / 1000
        ending = False
        if ends_at is not None:
            remaining = ends_at - self._clock()
            if timeout is None or remaining <= timeout:
                timeout, ending = max(remaining, 0.0), True
        if self._sleeper(self._wake, timeout):
            return _Outcome.WOKEN
        return _Outcome.DEADLINE if ending else _Outcome.ELAPSED

    def _show(self, frame: Frame) -> bool:
        try:
            self._driver.show(frame)
        except LedHardwareError as exc:
            logger.error("LED strip failed, no longer driving it: %s", exc.reason)
            with self._lock:
                failed = replace(self._program.state, failed=True, error=exc.reason)
                self._program = replace(self._program, state=failed)
                self._pending.append(failed)
            self._notify()
            return False
        return True

    def _succeed(self, generation: int, successor: _Program) -> None:
        with self._lock:
            if self._closed or generation != self._generation:
                return  # a command arrived meanwhile and wins
            self._install(successor)
        self._notify()

    def _notify(self) -> None:
        # On the effect thread only: every pending change, oldest first. A `play` from
        # `on_change` appends to the queue and is delivered by this same loop.
        while True:
            with self._lock:
                if not self._pending:
                    return
                state = self._pending.popleft()
            if self._on_change is None:
                continue
            try:
                self._on_change(state)
            except Exception:
                logger.exception("LED state callback failed")


def _resolve(command: LedCommandSpec, current: _Program, *, now: float) -> _Program:
    """The program a command starts, given the one running (PROTOCOL.md `led`)."""
    base = current.state
    state = replace(
        base,
        effect=command.effect,
        color=command.color or base.color,
        brightness=base.brightness if command.brightness is None else command.brightness,
        command_id=command.command_id,
    )
    ends_at = now + command.duration_ms / 1000 if command.duration_ms else None
    if command.effect is not Effect.SWITCH:
        return _Program(state, ends_at)
    # A switch during a switch restarts the pass and still resumes what ran before.
    previous = current.resume if current.resume is not None else current
    resumed = replace(
        previous,
        state=replace(previous.state, command_id=command.command_id),
        ends_at=_earliest(previous.ends_at, ends_at),
    )
    return _Program(state, ends_at, resumed)


def _switched_off(program: _Program) -> _Program:
    return _Program(replace(program.state, effect=Effect.OFF))


def _earliest(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)
