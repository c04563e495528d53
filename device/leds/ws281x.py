"""The real WS2812b strip, driven through rpi_ws281x, behind the `LedDriver` protocol.

rpi_ws281x is a C extension that builds and works only on a Raspberry Pi, and a
`PixelStrip` built anywhere else crashes the interpreter at exit (DESIGN.md). So this
module imports it lazily, inside `Ws281xStrip`, only after `is_raspberry_pi()` said yes,
and turns its failures into `LedHardwareError` where they enter. The library is untyped;
`_PixelStrip` is the typed slice of it we use, so its `Any` stays in this module.

The defaults are the seed's `led_strip_rainbow.py` (the rpi_ws281x strandtest): 100
pixels on GPIO 18 (PWM0), 800 kHz, DMA 10, channel 0, signal not inverted.
"""

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from device.leds.driver import BLACK, Frame, LedHardwareError, fill

logger = logging.getLogger(__name__)

MODEL_PATHS = (
    Path("/proc/device-tree/model"),
    Path("/sys/firmware/devicetree/base/model"),
)
"""Where the Pi's firmware names the board, e.g. `Raspberry Pi 4 Model B Rev 1.4`."""


class _PixelStrip(Protocol):
    """The part of `rpi_ws281x.PixelStrip` this driver uses."""

    def begin(self) -> None: ...

    def show(self) -> None: ...

    def setPixelColor(self, n: int, color: int) -> None: ...  # noqa: N802 - library name

    def _cleanup(self) -> None: ...


def is_raspberry_pi(model_paths: Iterable[Path] = MODEL_PATHS) -> bool:
    """Tells whether this machine is a Raspberry Pi, from the device-tree model name.

    Args:
        model_paths: Files to read; the first readable one decides.

    Returns:
        True when the model names a Raspberry Pi.
    """
    for path in model_paths:
        try:
            model = path.read_bytes()
        except OSError:
            continue
        # The firmware's string ends in a NUL byte.
        return b"Raspberry Pi" in model
    return False


class Ws281xStrip:
    """A WS281x strip on a Raspberry Pi.

    Brightness is applied to frames by the player (`effects.apply_brightness`) so that a
    simulated strip shows exactly what the real one does; the library's own brightness
    stays 255 unless the caller lowers it as a hard cap (for a weak power supply, say).
    """

    def __init__(
        self,
        count: int = 100,
        *,
        pin: int = 18,
        freq_hz: int = 800_000,
        dma: int = 10,
        brightness: int = 255,
        invert: bool = False,
        channel: int = 0,
        model_paths: Iterable[Path] = MODEL_PATHS,
    ) -> None:
        if not is_raspberry_pi(model_paths):
            # Never build a PixelStrip off a Pi: it segfaults at interpreter exit.
            raise LedHardwareError(
                "not a Raspberry Pi (no 'Raspberry Pi' device-tree model); "
                "use the simulated LED backend"
            )
        library = _import_library()
        self._count = count
        try:
            strip: _PixelStrip = library.PixelStrip(
                count, pin, freq_hz, dma, invert, brightness, channel
            )
            strip.begin()
        except RuntimeError as exc:
            raise LedHardwareError(f"ws281x initialisation failed: {exc}") from exc
        self._strip: _PixelStrip | None = strip

    @property
    def count(self) -> int:
        """The number of pixels."""
        return self._count

    def show(self, frame: Frame) -> None:
        """Writes `frame` to the strip.

        Raises:
            LedHardwareError: The strip is closed, or rendering failed.
        """
        if len(frame) != self._count:
            raise ValueError(f"frame of {len(frame)} pixels for a strip of {self._count}")
        if self._strip is None:
            raise LedHardwareError("the ws281x strip is closed")
        for index, color in enumerate(frame):
            # rpi_ws281x.Color(r, g, b) packs 0x00RRGGBB; the library reorders for GRB.
            self._strip.setPixelColor(index, (color.r << 16) | (color.g << 8) | color.b)
        try:
            self._strip.show()
        except RuntimeError as exc:
            raise LedHardwareError(f"ws281x render failed: {exc}") from exc

    def close(self) -> None:
        """Blanks the strip and releases the DMA channel; safe to call twice."""
        if self._strip is None:
            return
        try:
            self.show(fill(self._count, BLACK))
        except LedHardwareError as exc:
            # Nothing to do about it while shutting down; the release below still matters.
            logger.warning("could not blank the LED strip: %s", exc.reason)
        finally:
            strip, self._strip = self._strip, None
            # `_cleanup` is what the library itself registers with atexit; calling it now
            # frees the DMA channel at a moment we choose (it is idempotent).
            strip._cleanup()


def _import_library() -> "_Library":
    try:
        import rpi_ws281x  # here, not at the top: it loads only on a Pi
    except ImportError as exc:
        raise LedHardwareError(
            f"rpi_ws281x is not importable ({exc}); install pimesh[pi] on the Pi"
        ) from exc
    library: _Library = rpi_ws281x
    return library


class _Library(Protocol):
    """The part of the `rpi_ws281x` module this driver uses."""

    def PixelStrip(  # noqa: N802 - the library's class, called like a factory
        self,
        num: int,
        pin: int,
        freq_hz: int,
        dma: int,
        invert: bool,
        brightness: int,
        channel: int,
        /,
    ) -> _PixelStrip: ...
