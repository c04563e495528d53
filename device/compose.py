"""Put an agent together from its settings: the LED strip it drives, then the agent.

Used by `pimesh agent run` and by the sandbox, so both run the same composition.
"""

import logging

from device.agent import Agent
from device.leds import LedDriver, LedHardwareError, SimulatedStrip, Ws281xStrip, is_raspberry_pi
from device.settings import AgentSettings
from shared.settings import MqttSettings

log = logging.getLogger(__name__)


def build_agent(
    settings: AgentSettings, mqtt: MqttSettings, *, strip: LedDriver | None = None
) -> Agent:
    """An agent ready to `start()` (which also serves its LED page on `--http-port`).

    Args:
        settings: The agent's settings.
        mqtt: How to reach the broker.
        strip: A strip to drive instead of the one the settings ask for (a caller that
            watches a `SimulatedStrip` of its own: tests, benchmarks).
    """
    return Agent(settings, mqtt, strip=strip if strip is not None else make_strip(settings))


def make_strip(settings: AgentSettings) -> LedDriver | None:
    """The strip the settings ask for; a strip that cannot start leaves the agent without LEDs."""
    backend = settings.led_backend or ("ws281x" if is_raspberry_pi() else "simulated")
    if backend == "simulated":
        return SimulatedStrip(settings.led_count)
    try:
        return Ws281xStrip(settings.led_count)
    except LedHardwareError as exc:
        log.error("LED strip unavailable, running without it", extra={"why": exc.reason})
        return None
