"""LED commands between the wire and the strip: `led` in, `led_state` out (PROTOCOL.md).

A command older than 60 s is ignored: a persistent session can deliver stale commands
after a reconnect, and a strip suddenly obeying yesterday's command is a surprise.
Colour and brightness left out of a command keep the current ones (the player's rule).
"""

from datetime import datetime, timedelta

from device.leds import Color, Effect, LedCommandSpec, LedState
from shared.messages import Led
from shared.messages import LedState as LedStateMessage

MAX_COMMAND_AGE = timedelta(seconds=60)


def is_stale(command: Led, *, now: datetime) -> bool:
    """True when the command carries a timestamp more than 60 s old."""
    return command.ts is not None and now - command.ts > MAX_COMMAND_AGE


def to_spec(command: Led) -> LedCommandSpec:
    """The player's form of a wire command."""
    return LedCommandSpec(
        effect=Effect(command.effect),
        command_id=command.id,
        color=Color.from_hex(command.color) if command.color else None,
        brightness=command.brightness,
        duration_ms=command.duration_ms or 0,
    )


def to_message(state: LedState, *, device_id: str, now: datetime, nonce: str) -> LedStateMessage:
    """The `led_state` message (unsigned) for the strip's current state."""
    return LedStateMessage(
        device_id=device_id,
        ts=now,
        nonce=nonce,
        effect=state.effect.value,
        color=state.color.to_hex(),
        brightness=state.brightness,
        command_id=state.command_id,
    )
