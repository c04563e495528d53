import threading
import time
from collections.abc import Callable, Iterator

import pytest

from device.leds.driver import BLACK, Color, Frame, LedHardwareError, fill
from device.leds.effects import Effect, apply_brightness, rainbow_frame
from device.leds.player import EffectPlayer, LedCommandSpec, LedState, wait_on_event
from device.leds.simulated import SimulatedStrip
from tests.device.leds.fakes import FakeClock

pytestmark = pytest.mark.timeout(60)

COUNT = 10
RED = Color(255, 0, 0)
BLUE = Color(0, 0, 255)
WAIT_S = 5.0


def all_of(color: Color) -> Callable[[Frame], bool]:
    return lambda frame: frame == fill(len(frame), color)


def cmd(effect: Effect, command_id: str = "c1", **fields: object) -> LedCommandSpec:
    return LedCommandSpec(effect=effect, command_id=command_id, **fields)  # type: ignore[arg-type]


class Rig:
    """A player on a simulated strip, driven by a fake clock, recording every state."""

    def __init__(self, strip: SimulatedStrip) -> None:
        self.strip = strip
        self.clock = FakeClock()
        self.states: list[LedState] = []
        self.player = EffectPlayer(
            strip, clock=self.clock, sleeper=self.clock.sleep, on_change=self.states.append
        )

    def play_and_show(self, command: LedCommandSpec, first: Callable[[Frame], bool]) -> None:
        """Plays `command` and waits until its first frame is on the strip and held."""
        self.player.play(command)
        self.strip.wait_for(first, timeout=WAIT_S)
        self.clock.wait_blocked()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig(SimulatedStrip(COUNT))
    yield made
    made.player.close()


def test_before_any_command_the_strip_is_off(rig: Rig) -> None:
    rig.clock.wait_blocked()
    state = rig.player.state()
    assert state.effect is Effect.OFF
    assert state.command_id is None
    assert not state.failed
    assert rig.strip.shown == 1
    assert rig.strip.current == fill(COUNT, BLACK)


def test_a_command_is_applied_and_reported(rig: Rig) -> None:
    state = rig.player.play(cmd(Effect.SOLID, "red-1", color=RED, brightness=255))
    assert state == LedState(Effect.SOLID, RED, 255, "red-1")
    assert rig.player.state() == state
    rig.strip.wait_for(all_of(RED), timeout=WAIT_S)
    rig.clock.wait_blocked()  # held: the report went out before the hold
    assert rig.states == [state]


class Reports:
    """on_change for tests: each state with the frame on show and the thread, waitable."""

    def __init__(self, strip: SimulatedStrip) -> None:
        self.strip = strip
        self.seen: list[tuple[LedState, Frame, str]] = []
        self._changed = threading.Condition()

    def __call__(self, state: LedState) -> None:
        with self._changed:
            self.seen.append((state, self.strip.current, threading.current_thread().name))
            self._changed.notify_all()

    def wait(self, count: int) -> list[LedState]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.seen) >= count, timeout=WAIT_S)
            return [state for state, _, _ in self.seen]


def test_a_command_is_reported_from_the_effect_thread_once_its_frame_is_shown() -> None:
    strip = SimulatedStrip(COUNT)
    reports = Reports(strip)
    with EffectPlayer(strip, on_change=reports) as player:
        state = player.play(cmd(Effect.SOLID, "red", color=RED))
        assert reports.wait(1) == [state]
    [(_, frame, thread)] = reports.seen
    assert frame == fill(COUNT, RED), "the frame was on the strip before the report"
    assert thread == "led-effects"


def test_play_does_not_wait_for_a_slow_report() -> None:
    # The agent signs led_state in on_change: the caller (paho's thread) must not pay.
    strip = SimulatedStrip(COUNT)
    entered, release = threading.Event(), threading.Event()

    def slow(state: LedState) -> None:
        entered.set()
        release.wait(WAIT_S)

    with EffectPlayer(strip, on_change=slow) as player:
        player.play(cmd(Effect.SOLID, "a", color=RED))
        assert entered.wait(WAIT_S)
        started = time.monotonic()
        later = player.play(cmd(Effect.SOLID, "b", color=BLUE))
        returned = time.monotonic() - started
        assert later.command_id == "b"
        assert strip.current == fill(COUNT, RED), "blue waits for the report, not play"
        release.set()
        strip.wait_for(all_of(BLUE), timeout=WAIT_S)
    assert returned < 0.5


def test_commands_played_back_to_back_are_all_reported_in_order() -> None:
    strip = SimulatedStrip(COUNT)
    reports = Reports(strip)
    with EffectPlayer(strip, on_change=reports) as player:
        played = [player.play(cmd(Effect.SOLID, f"c{i}", color=Color(i, 0, 0))) for i in range(20)]
        assert reports.wait(20) == played
        strip.wait_for(all_of(Color(19, 0, 0)), timeout=WAIT_S)


def test_on_change_may_play_a_command_itself() -> None:
    strip = SimulatedStrip(COUNT)
    reports = Reports(strip)
    players: list[EffectPlayer] = []

    def follow_up(state: LedState) -> None:
        reports(state)
        if state.command_id == "first":
            players[0].play(cmd(Effect.SOLID, "second", color=BLUE))

    player = EffectPlayer(strip, on_change=follow_up)
    players.append(player)
    try:
        player.play(cmd(Effect.SOLID, "first", color=RED))
        assert [s.command_id for s in reports.wait(2)] == ["first", "second"]
        strip.wait_for(all_of(BLUE), timeout=WAIT_S)
    finally:
        player.close()


def test_a_command_played_just_before_close_is_still_reported(rig: Rig) -> None:
    rig.clock.wait_blocked()
    state = rig.player.play(cmd(Effect.SOLID, "last", color=RED))
    rig.player.close()
    assert rig.states == [state]


def test_missing_color_and_brightness_keep_the_current_ones(rig: Rig) -> None:
    rig.player.play(cmd(Effect.SOLID, "a", color=RED, brightness=100))
    state = rig.player.play(cmd(Effect.CHASE, "b"))
    assert (state.effect, state.color, state.brightness) == (Effect.CHASE, RED, 100)
    dim_red = apply_brightness((RED,), 100)[0]
    frame = rig.strip.wait_for(lambda f: f[0] == dim_red and f[1] == BLACK, timeout=WAIT_S)
    assert frame[3] == dim_red


def test_blink_is_on_for_500_ms_then_off(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.BLINK, color=RED), all_of(RED))
    shown = rig.strip.shown
    rig.clock.advance(0.25)
    assert rig.strip.current == fill(COUNT, RED)
    assert rig.strip.shown == shown
    rig.clock.advance(0.25)
    assert rig.clock.wait_blocked() == pytest.approx(0.5)
    assert rig.strip.current == fill(COUNT, BLACK)
    rig.clock.advance(0.5)
    rig.clock.wait_blocked()
    assert rig.strip.current == fill(COUNT, RED)
    assert rig.strip.shown == shown + 2


def test_brightness_applies_to_every_frame(rig: Rig) -> None:
    rig.play_and_show(
        cmd(Effect.RAINBOW, brightness=40), lambda f: f == rainbow_rig_frame(0, brightness=40)
    )
    for j in range(1, 5):
        rig.clock.advance(0.02)
        rig.clock.wait_blocked()
        assert rig.strip.current == rainbow_rig_frame(j, brightness=40)


def rainbow_rig_frame(j: int, *, brightness: int = 255) -> Frame:
    return apply_brightness(rainbow_frame(COUNT, j), brightness)


def test_switch_runs_one_rainbow_pass_then_resumes_the_previous_effect() -> None:
    rig = Rig(SimulatedStrip(100))
    try:
        rig.play_and_show(cmd(Effect.SOLID, "before", color=RED, brightness=200), lambda f: True)
        before = rig.strip.current
        # The switch keeps the current brightness: every rainbow frame is dimmed to 200.
        pass_frames = tuple(apply_brightness(rainbow_frame(100, j), 200) for j in range(256))
        rig.play_and_show(cmd(Effect.SWITCH, "sw"), lambda f: f == pass_frames[0])
        assert rig.player.state().effect is Effect.SWITCH
        start = rig.strip.shown - 1
        for _ in range(256):
            assert rig.player.state().effect is Effect.SWITCH
            rig.clock.advance(0.02)
        assert rig.clock.wait_blocked() is None  # the resumed solid holds until a command
        frames = rig.strip.history[start - rig.strip.shown :]
        assert frames[:256] == pass_frames
        assert frames[256:] == (before,)
        assert rig.player.state() == LedState(Effect.SOLID, RED, 200, "sw")
        assert [s.effect for s in rig.states] == [Effect.SOLID, Effect.SWITCH, Effect.SOLID]
    finally:
        rig.player.close()


def test_switch_during_a_switch_still_resumes_what_ran_before(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.BLINK, "blink", color=BLUE), all_of(BLUE))
    rig.play_and_show(cmd(Effect.SWITCH, "sw1"), lambda f: f == rainbow_rig_frame(0))
    rig.clock.advance(0.02)
    rig.play_and_show(cmd(Effect.SWITCH, "sw2"), lambda f: f == rainbow_rig_frame(0))
    for _ in range(256):
        rig.clock.advance(0.02)
    rig.clock.wait_blocked()
    assert rig.strip.current == fill(COUNT, BLUE)
    assert rig.player.state() == LedState(Effect.BLINK, BLUE, 255, "sw2")


def test_a_new_command_interrupts_a_hold_without_time_passing(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.BLINK, "a", color=RED), all_of(RED))
    rig.player.play(cmd(Effect.SOLID, "b", color=BLUE))
    # The fake clock never moves: only the interruption can end the 500 ms hold.
    rig.strip.wait_for(all_of(BLUE), timeout=WAIT_S)


def test_a_new_command_interrupts_a_real_hold_promptly() -> None:
    strip = SimulatedStrip(COUNT)
    holds: list[tuple[float | None, bool]] = []

    def real_wait(event: threading.Event, timeout: float | None) -> bool:
        woken = wait_on_event(event, timeout)
        holds.append((timeout, woken))
        return woken

    with EffectPlayer(strip, sleeper=real_wait) as player:
        player.play(cmd(Effect.BLINK, "a", color=RED))
        strip.wait_for(all_of(RED), timeout=WAIT_S)
        started = time.monotonic()
        player.play(cmd(Effect.SOLID, "b", color=BLUE))
        strip.wait_for(all_of(BLUE), timeout=WAIT_S)
        elapsed = time.monotonic() - started
    assert (0.5, True) in holds  # blink's 500 ms hold ended because it was woken
    assert elapsed < 0.5


def test_duration_ends_in_off(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.SOLID, "timed", color=RED, duration_ms=1000), all_of(RED))
    assert rig.clock.wait_blocked() == pytest.approx(1.0)
    rig.clock.advance(1.0)
    rig.clock.wait_blocked()
    assert rig.strip.current == fill(COUNT, BLACK)
    assert rig.player.state() == LedState(Effect.OFF, RED, 255, "timed")
    assert [s.effect for s in rig.states] == [Effect.SOLID, Effect.OFF]


def test_duration_cuts_a_hold_short(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.BLINK, color=RED, duration_ms=750), all_of(RED))
    rig.clock.advance(0.5)
    assert rig.clock.wait_blocked() == pytest.approx(0.25)  # the dark half, cut short
    rig.clock.advance(0.25)
    assert rig.clock.wait_blocked() is None
    assert rig.player.state().effect is Effect.OFF


def test_a_switch_duration_bounds_the_resumed_effect_too(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.SOLID, "a", color=RED), all_of(RED))
    rig.play_and_show(cmd(Effect.SWITCH, "sw", duration_ms=100), lambda f: f != fill(COUNT, RED))
    for _ in range(4):
        rig.clock.advance(0.02)
    # Past the 100 ms whatever the last hold was (0.02 s steps do not add up exactly).
    rig.clock.advance(0.05)
    rig.clock.wait_blocked()
    assert rig.strip.current == fill(COUNT, BLACK)
    assert rig.strip.shown == 8  # initial off, red, five rainbow frames, black
    assert rig.player.state().effect is Effect.OFF


class FailingStrip(SimulatedStrip):
    """Shows `good` frames, then fails like a strip whose DMA channel went away."""

    def __init__(self, count: int, *, good: int) -> None:
        super().__init__(count)
        self._good = good

    def show(self, frame: Frame) -> None:
        if self.shown >= self._good:
            raise LedHardwareError("ws2811_render failed with code -11")
        super().show(frame)


def test_a_hardware_error_marks_the_state_failed_and_stops_driving() -> None:
    strip = FailingStrip(COUNT, good=2)
    failed = threading.Event()
    states: list[LedState] = []

    def record(state: LedState) -> None:
        states.append(state)
        if state.failed:
            failed.set()

    player = EffectPlayer(strip, on_change=record)
    player.play(cmd(Effect.RAINBOW, "r"))
    assert failed.wait(WAIT_S)
    state = player.state()
    assert state.failed
    assert state.error == "ws2811_render failed with code -11"
    assert state.effect is Effect.RAINBOW
    alive_after_failure = player.alive
    assert alive_after_failure
    later = player.play(cmd(Effect.SOLID, "s", color=RED))
    assert later.failed
    assert later.command_id == "s"
    assert strip.shown == 2
    player.close()
    assert not player.alive
    assert strip.closed


def test_a_failing_callback_does_not_stop_the_player() -> None:
    strip = SimulatedStrip(COUNT)

    def explode(state: LedState) -> None:
        raise RuntimeError("subscriber bug")

    with EffectPlayer(strip, on_change=explode) as player:
        player.play(cmd(Effect.SOLID, color=RED))
        strip.wait_for(all_of(RED), timeout=WAIT_S)
        assert player.alive


def test_close_stops_the_thread_and_closes_the_driver(rig: Rig) -> None:
    rig.play_and_show(cmd(Effect.BLINK, color=RED), all_of(RED))
    rig.player.close()
    assert not rig.player.alive
    assert rig.strip.closed
    rig.player.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        rig.player.play(cmd(Effect.OFF))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command_id": ""}, "needs an id"),
        ({"brightness": 256}, "brightness"),
        ({"brightness": -1}, "brightness"),
        ({"duration_ms": 600_001}, "duration_ms"),
        ({"duration_ms": -1}, "duration_ms"),
    ],
)
def test_command_spec_rejects_values_outside_the_protocol(
    fields: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {"effect": Effect.SOLID, "command_id": "x", **fields}
    with pytest.raises(ValueError, match=message):
        LedCommandSpec(**values)  # type: ignore[arg-type]
