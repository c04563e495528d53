"""The hardware boundary of the LED strip: colours, frames and the `LedDriver` protocol.

Everything above this module (effects, the player, the agent) speaks in `Frame`s, tuples
of `Color`s, one per pixel. A driver only has to show a whole frame at once; the real
strip (`ws281x.py`) and the simulated one (`simulated.py`) are interchangeable behind
`LedDriver`, the way httpx swaps a mock transport for a real one.
"""

import re
from dataclasses import dataclass
from typing import Protocol

from device.errors import DeviceError

_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_CHANNEL_MAX = 255


class LedHardwareError(DeviceError):
    """The LED strip cannot be driven: no Pi, no library, or the library failed.

    Raised by drivers; `reason` names the cause (a rpi_ws281x error is converted where it
    enters, in `ws281x.py`).
    """


@dataclass(frozen=True, slots=True)
class Color:
    """One pixel's colour, 8 bits per channel as the WS2812b takes it.

    Attributes:
        r: Red, 0-255.
        g: Green, 0-255.
        b: Blue, 0-255.
    """

    r: int
    g: int
    b: int

    def __post_init__(self) -> None:
        for channel in (self.r, self.g, self.b):
            if not 0 <= channel <= _CHANNEL_MAX:
                raise ValueError(f"colour channel {channel} is outside 0-255")

    @classmethod
    def from_hex(cls, text: str) -> "Color":
        """Parses the protocol's `#rrggbb` form (either case).

        Args:
            text: A colour such as `#ff8800`.

        Returns:
            The colour.

        Raises:
            ValueError: The text is not `#` followed by six hex digits.
        """
        if not _HEX_COLOR.fullmatch(text):
            raise ValueError(f"colour {text!r} is not #rrggbb")
        return cls(int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))

    def to_hex(self) -> str:
        """Returns the colour as lower-case `#rrggbb`, the protocol's form."""
        return f"#{self.r:02x}{self.g:02x}{self.b:02x}"


BLACK = Color(0, 0, 0)
WHITE = Color(255, 255, 255)

Frame = tuple[Color, ...]
"""What a strip shows at one moment: one colour per pixel, pixel 0 first."""


def fill(count: int, color: Color) -> Frame:
    """Returns a frame of `count` pixels all of `color`."""
    return (color,) * count


class LedDriver(Protocol):
    """A strip of addressable LEDs that shows whole frames."""

    @property
    def count(self) -> int:
        """The number of pixels; every frame shown must have exactly this many."""

    def show(self, frame: Frame) -> None:
        """Shows `frame` on the strip at once.

        Raises:
            LedHardwareError: The strip could not be driven.
        """

    def close(self) -> None:
        """Releases the strip; the driver shows nothing afterwards."""
