"""The LED strip on the Pi: effects computed as frames, played on a driver.

    effects.py    pure frame generators (the seed's rainbow, blink, chase, ...)
    player.py     one thread per strip running the latest `led` command
    driver.py     `Color`, `Frame`, the `LedDriver` protocol, `LedHardwareError`
    ws281x.py     the real WS2812b strip (rpi_ws281x, imported lazily, Pi only)
    simulated.py  an in-memory strip for tests and machines without LEDs

Importing this package never imports rpi_ws281x.
"""

from device.leds.driver import Color, Frame, LedDriver, LedHardwareError
from device.leds.effects import Effect
from device.leds.player import EffectPlayer, LedCommandSpec, LedState
from device.leds.simulated import SimulatedStrip
from device.leds.ws281x import Ws281xStrip, is_raspberry_pi

__all__ = [
    "Color",
    "Effect",
    "EffectPlayer",
    "Frame",
    "LedCommandSpec",
    "LedDriver",
    "LedHardwareError",
    "LedState",
    "SimulatedStrip",
    "Ws281xStrip",
    "is_raspberry_pi",
]
