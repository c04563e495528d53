import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.leds import effects
from device.leds.driver import BLACK, Color, Frame
from device.leds.effects import Effect, Step, apply_brightness, wheel

RED = Color(255, 0, 0)


@pytest.mark.parametrize(
    ("pos", "expected"),
    [
        (0, Color(0, 255, 0)),
        (1, Color(3, 252, 0)),
        (84, Color(252, 3, 0)),
        (85, Color(255, 0, 0)),
        (169, Color(3, 0, 252)),
        (170, Color(0, 0, 255)),
        (255, Color(0, 255, 0)),
    ],
)
def test_wheel_matches_the_strandtest(pos: int, expected: Color) -> None:
    assert wheel(pos) == expected


@pytest.mark.parametrize(
    ("j", "first", "last"),
    [
        (0, Color(0, 255, 0), Color(213, 0, 42)),  # wheel(0), wheel(99)
        (10, Color(30, 225, 0), Color(183, 0, 72)),  # wheel(10), wheel(109)
        (200, Color(0, 90, 165), Color(129, 126, 0)),  # wheel(200), wheel(299 & 255 = 43)
    ],
)
def test_rainbow_frame_is_the_seeds_step_j(j: int, first: Color, last: Color) -> None:
    frame = effects.rainbow_frame(100, j)
    assert len(frame) == 100
    assert frame[0] == first
    assert frame[99] == last


def test_rainbow_cycle_spreads_one_wheel_over_the_strip() -> None:
    frame = effects.rainbow_cycle_frame(100, 0)
    assert frame[0] == Color(0, 255, 0)  # wheel(0)
    assert frame[50] == Color(126, 0, 129)  # wheel(128)
    assert frame[99] == Color(0, 249, 6)  # wheel(int(99 * 256 / 100) = 253)
    assert effects.rainbow_cycle_frame(100, 5)[99] == Color(6, 249, 0)  # wheel(258 & 255)


@given(count=st.integers(1, 600), j=st.integers(0, 255), i=st.integers(0, 599))
def test_rainbow_cycle_equals_the_strandtest_float_formula(count: int, j: int, i: int) -> None:
    i %= count
    expected = wheel((int(i * 256 / count) + j) & 255)
    assert effects.rainbow_cycle_frame(count, j)[i] == expected


def lit(frame: Frame) -> list[int]:
    return [i for i, color in enumerate(frame) if color != BLACK]


def test_chase_lights_every_third_pixel_moving_by_one_every_50_ms() -> None:
    taken = list(itertools.islice(effects.chase(7, RED), 4))
    assert [lit(step.frame) for step in taken] == [[0, 3, 6], [1, 4], [2, 5], [0, 3, 6]]
    assert {step.hold_ms for step in taken} == {50}
    assert all(step.frame[i] == RED for step in taken for i in lit(step.frame))


def test_blink_is_on_500_ms_then_off_500_ms_repeating() -> None:
    taken = list(itertools.islice(effects.blink(3, RED), 4))
    assert [step.frame for step in taken] == [(RED,) * 3, (BLACK,) * 3] * 2
    assert [step.hold_ms for step in taken] == [500] * 4


def test_off_and_solid_hold_one_frame_until_the_next_command() -> None:
    assert list(effects.off(2)) == [Step((BLACK, BLACK), None)]
    assert list(effects.solid(2, RED)) == [Step((RED, RED), None)]


def test_switch_is_one_rainbow_pass_of_256_steps_of_20_ms() -> None:
    taken = list(effects.switch(100))
    assert len(taken) == 256
    assert [step.frame for step in taken] == [effects.rainbow_frame(100, j) for j in range(256)]
    assert {step.hold_ms for step in taken} == {20}


def test_rainbow_and_rainbow_cycle_repeat_after_a_pass() -> None:
    for endless in (effects.rainbow(10), effects.rainbow_cycle(10)):
        taken = list(itertools.islice(endless, 258))
        assert taken[256] == taken[0]
        assert taken[257] == taken[1]
        assert taken[1] != taken[0]


@pytest.mark.parametrize("effect", list(Effect))
def test_every_effect_has_steps_of_the_strip_length(effect: Effect) -> None:
    first = next(effects.steps(effect, count=12, color=RED))
    assert len(first.frame) == 12


def test_steps_dispatches_on_the_effect() -> None:
    assert next(effects.steps(Effect.SOLID, count=2, color=RED)).frame == (RED, RED)
    assert next(effects.steps(Effect.OFF, count=2, color=RED)).frame == (BLACK, BLACK)
    assert next(effects.steps(Effect.CHASE, count=4, color=RED)).frame == (RED, BLACK, BLACK, RED)


def test_brightness_scales_each_channel_rounding_to_nearest() -> None:
    frame = (Color(255, 128, 1), Color(10, 20, 30))
    assert apply_brightness(frame, 128) == (Color(128, 64, 1), Color(5, 10, 15))
    assert apply_brightness(frame, 0) == (BLACK, BLACK)
    assert apply_brightness(frame, 255) == frame


@given(channel=st.integers(0, 255), brightness=st.integers(0, 255))
def test_brightness_is_within_half_a_step_of_exact(channel: int, brightness: int) -> None:
    (scaled,) = apply_brightness((Color(channel, 0, 0),), brightness)
    assert abs(scaled.r - channel * brightness / 255) < 0.5
