"""`pimesh led TARGET EFFECT`: one LED command to a device, a group or the whole fleet.

PROTOCOL.md (`led` message, topic table): the command is published once, at QoS 1, not
retained, on `P/devices/ID/led/set`, `P/groups/GROUP/led/set` or `P/fleet/led/set`. It
carries a fresh uuid4 as `id` (a device reports it back as `command_id` in `led_state`,
so the operator can tell the command took effect) and the current time as `ts` (devices
ignore commands older than 60 s). `color`, `brightness` and `duration_ms` are sent only
when given: a missing one keeps the device's current value.
"""

import uuid
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.errors import UsageError
from cli.mqtt import publish_once
from shared.codec import encode
from shared.fields import EFFECTS, Brightness, Color, DurationMs, is_device_id
from shared.messages import Led
from shared.mqtt import Outgoing
from shared.settings import MqttSettings
from shared.timestamps import now_utc
from shared.topics import Channel, Topics

FLEET = "all"
GROUP_PREFIX = "group:"
DEVICE_PREFIX = "device:"  # names a device called "all" without ambiguity


class LedOptions(BaseSettings):
    """The command's own flags; the broker connection is `MqttSettings`."""

    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    color: Color | None = Field(default=None, description="Colour as #rrggbb.")
    brightness: Brightness | None = Field(default=None, description="Brightness 0-255.")
    duration_ms: DurationMs | None = Field(
        default=None, description="Milliseconds until the strip goes off (0: until the next)."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds to wait for the broker to take it."
    )


@dataclass(frozen=True)
class Target:
    """Who a command is for: one device, one group, or the fleet."""

    scope: Literal["device", "group", "fleet"]
    name: str = ""

    def topic(self, topics: Topics) -> str:
        """The `led/set` topic of this target."""
        if self.scope == "device":
            return topics.led_set(self.name)
        if self.scope == "group":
            return topics.group_led_set(self.name)
        return topics.fleet_led_set()

    def __str__(self) -> str:
        return "the whole fleet" if self.scope == "fleet" else f"{self.scope} {self.name}"


def parse_target(text: str) -> Target:
    """`ID`, `device:ID`, `group:NAME` or `all`.

    Raises:
        UsageError: none of those, or an id or group that is not a DNS-1123 label of 1 to 40
            characters (ids and groups become topic levels).
    """
    if text == FLEET:
        return Target("fleet")
    scope: Literal["device", "group"] = "group" if text.startswith(GROUP_PREFIX) else "device"
    name = text.removeprefix(GROUP_PREFIX).removeprefix(DEVICE_PREFIX)
    if not is_device_id(name):
        msg = (
            f"TARGET {text[:60]!r} is not a device id, group:NAME or all "
            "(ids and groups are DNS-1123 labels of 1 to 40 characters)"
        )
        raise UsageError(msg)
    return Target(scope, name)


def build_command(effect: str, options: LedOptions) -> Led:
    """The `led` message: a fresh id, now, the effect, and only the optional fields given.

    Raises:
        UsageError: `effect` is not one of the protocol's effects.
    """
    if effect not in EFFECTS:
        msg = f"EFFECT {effect[:40]!r} is not one of {', '.join(EFFECTS)}"
        raise UsageError(msg)
    given = {
        key: value
        for key, value in (
            ("color", options.color),
            ("brightness", options.brightness),
            ("duration_ms", options.duration_ms),
        )
        if value is not None
    }
    return Led.model_validate({"id": str(uuid.uuid4()), "ts": now_utc(), "effect": effect, **given})


def send(command: Led, target: Target, *, settings: MqttSettings, timeout_s: float) -> str:
    """Publish `command` to `target` and wait for the broker's PUBACK; returns the topic.

    Raises:
        BrokerError: the broker was unreachable, refused, or did not acknowledge in time.
    """
    topic = target.topic(Topics(settings.topic_prefix))
    message = Outgoing(topic, encode(command), qos=Channel.LED_SET.qos, retain=False)
    client_id = f"pimesh-led-{uuid.uuid4().hex[:12]}"
    publish_once(settings, message, client_id=client_id, timeout_s=timeout_s)
    return topic
