"""The LED effects as pure frame generators: no threads, no sleeping, no hardware.

An effect is an iterator of `Step`s: a frame and how long to hold it. The player shows a
step, waits its hold (interruptibly) and asks for the next one, so the timing of every
effect is plain data that tests read without a clock. Repeating effects are endless
iterators; `switch` is finite (its end means "resume the previous effect"); `off` and
`solid` are one step held until the next command (`hold_ms=None`).

The rainbow effects and the theater chase follow the classic rpi_ws281x `strandtest.py`
that the seed's `led_strip_rainbow.py` is built on: `wheel`, `rainbow` (20 ms steps),
`rainbowCycle` and `theaterChase` (50 ms steps). The seed's `/switch` runs one pass of
`rainbow`: 256 steps of 20 ms (PROTOCOL.md, `led`).
"""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from device.leds.driver import BLACK, Color, Frame, fill

BLINK_MS = 500
"""Blink: on for this long, then off for this long."""
RAINBOW_STEP_MS = 20
"""The strandtest's `wait_ms` for `rainbow` and `rainbowCycle`."""
CHASE_STEP_MS = 50
"""The strandtest's `wait_ms` for `theaterChase`."""
WHEEL_POSITIONS = 256
"""One pass of a rainbow: every position of the colour wheel once."""
_CHASE_SPACING = 3  # theaterChase lights every third pixel


class Effect(StrEnum):
    """The effects a `led` command may name (PROTOCOL.md)."""

    OFF = "off"
    SOLID = "solid"
    BLINK = "blink"
    RAINBOW = "rainbow"
    RAINBOW_CYCLE = "rainbow_cycle"
    CHASE = "chase"
    SWITCH = "switch"


@dataclass(frozen=True, slots=True)
class Step:
    """One frame of an effect and how long it stays on the strip.

    Attributes:
        frame: What to show.
        hold_ms: How long to hold it before the next step; `None` holds it until the
            next command.
    """

    frame: Frame
    hold_ms: int | None


def wheel(pos: int) -> Color:
    """The strandtest's colour wheel: red to green to blue and back over 0-255.

    Args:
        pos: A wheel position, 0-255.

    Returns:
        The colour at that position.
    """
    if pos < 85:  # the wheel in thirds, as in strandtest
        return Color(pos * 3, 255 - pos * 3, 0)
    if pos < 170:
        pos -= 85
        return Color(255 - pos * 3, 0, pos * 3)
    pos -= 170
    return Color(0, pos * 3, 255 - pos * 3)


def rainbow_frame(count: int, j: int) -> Frame:
    """Step `j` of the strandtest's `rainbow`: pixel i is `wheel((i + j) & 255)`."""
    return tuple(wheel((i + j) & 255) for i in range(count))


def rainbow_cycle_frame(count: int, j: int) -> Frame:
    """Step `j` of `rainbowCycle`: one whole wheel spread evenly along the strip.

    Pixel i is `wheel((int(i * 256 / count) + j) & 255)`; integer floor division gives
    the same value as the strandtest's `int()` of a float without the float.
    """
    return tuple(wheel((i * WHEEL_POSITIONS // count + j) & 255) for i in range(count))


def chase_frame(count: int, color: Color, q: int) -> Frame:
    """Step `q` (0-2) of `theaterChase`: every third pixel, starting at `q`, lit."""
    return tuple(color if i % _CHASE_SPACING == q else BLACK for i in range(count))


def apply_brightness(frame: Frame, brightness: int) -> Frame:
    """Scales every channel by `brightness / 255`, rounded to the nearest integer.

    Rounding is `(c * brightness + 127) // 255`: exact at 0 and 255, and never a tie
    (`2 * c * brightness` is even, `255 * odd` is odd). We scale in software rather than
    with the library's global brightness so both drivers show the same frames.

    Args:
        frame: The effect's frame at full brightness.
        brightness: 0 (dark) to 255 (unchanged).

    Returns:
        The dimmed frame.
    """
    if brightness == 255:  # the identity: skip the copy
        return frame
    return tuple(
        Color(_scale(c.r, brightness), _scale(c.g, brightness), _scale(c.b, brightness))
        for c in frame
    )


def _scale(channel: int, brightness: int) -> int:
    return (channel * brightness + 127) // 255


def off(count: int) -> Iterator[Step]:
    """All pixels black, held until the next command."""
    yield Step(fill(count, BLACK), None)


def solid(count: int, color: Color) -> Iterator[Step]:
    """All pixels `color`, held until the next command."""
    yield Step(fill(count, color), None)


def blink(count: int, color: Color) -> Iterator[Step]:
    """`color` for 500 ms, black for 500 ms, forever."""
    on, dark = fill(count, color), fill(count, BLACK)
    while True:
        yield Step(on, BLINK_MS)
        yield Step(dark, BLINK_MS)


def rainbow(count: int, *, passes: int | None = None) -> Iterator[Step]:
    """The strandtest's `rainbow`: 256 steps of 20 ms per pass.

    Args:
        count: Pixels on the strip.
        passes: How many passes of the wheel; `None` repeats forever.
    """
    steps = range(WHEEL_POSITIONS * passes) if passes is not None else itertools.count()
    for j in steps:
        yield Step(rainbow_frame(count, j & 255), RAINBOW_STEP_MS)


def rainbow_cycle(count: int) -> Iterator[Step]:
    """The strandtest's `rainbowCycle`, 20 ms steps, forever."""
    for j in itertools.count():
        yield Step(rainbow_cycle_frame(count, j & 255), RAINBOW_STEP_MS)


def chase(count: int, color: Color) -> Iterator[Step]:
    """The strandtest's `theaterChase` of `color`, 50 ms steps, forever."""
    for q in itertools.cycle(range(_CHASE_SPACING)):
        yield Step(chase_frame(count, color, q), CHASE_STEP_MS)


def switch(count: int) -> Iterator[Step]:
    """The seed's `/switch`: one pass of `rainbow` (256 steps of 20 ms), then the end."""
    return rainbow(count, passes=1)


def steps(effect: Effect, *, count: int, color: Color) -> Iterator[Step]:
    """The steps of `effect` on a strip of `count` pixels.

    Args:
        effect: Which effect.
        count: Pixels on the strip.
        color: The colour for the effects that use one (solid, blink, chase); the
            rainbows ignore it.

    Returns:
        An iterator of steps; finite only for `switch`.
    """
    match effect:
        case Effect.OFF:
            return off(count)
        case Effect.SOLID:
            return solid(count, color)
        case Effect.BLINK:
            return blink(count, color)
        case Effect.RAINBOW:
            return rainbow(count)
        case Effect.RAINBOW_CYCLE:
            return rainbow_cycle(count)
        case Effect.CHASE:
            return chase(count, color)
        case Effect.SWITCH:
            return switch(count)
