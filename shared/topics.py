"""Every MQTT topic of the protocol: the only place that builds or parses one.

PROTOCOL.md's topic table, for a configurable prefix `P`. `Topics(prefix)` builds topics
and the subscription filters the controller and the agent need; `Topics.parse` turns a
received topic back into its channel and the device or group it names, and refuses
anything else with `InvalidTopic`. Ids and groups become single topic levels, so they are
checked here too: a device id like `+` or `a/b` must never reach a topic string.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared import DEFAULT_TOPIC_PREFIX
from shared.codec import decode
from shared.errors import InvalidMessage, InvalidTopic
from shared.fields import is_device_id
from shared.messages import ControllerStatus, DeviceMessage, Led, Message

CONTROLLER_SHARE_GROUP: Final = "pimesh-controller"
"""The MQTT 5 shared-subscription group controller replicas split announces and acks in."""

MAX_PREFIX_BYTES: Final = 1024
"""Generous, and far below MQTT's 65,535-byte topic limit (MQTT 5 section 1.5.4)."""


class Channel(StrEnum):
    """What a topic carries: one row of PROTOCOL.md's topic table."""

    ANNOUNCE = "announce"
    ACK = "ack"
    STATUS = "status"
    ENROLLMENT = "enrollment"
    BUNDLE = "bundle"
    LED_SET = "led_set"
    LED_STATE = "led_state"
    GROUP_LED_SET = "group_led_set"
    FLEET_LED_SET = "fleet_led_set"
    CONTROLLER_STATUS = "controller_status"

    @property
    def kind(self) -> str:
        """The `kind` of the messages this channel carries."""
        return _KINDS.get(self, self.value)

    @property
    def qos(self) -> int:
        """The QoS PROTOCOL.md gives this channel."""
        # led_state is a frequently replaced snapshot: losing one is harmless.
        return 0 if self is Channel.LED_STATE else 1

    @property
    def retained(self) -> bool:
        """Whether messages on this channel are published retained."""
        return self in _RETAINED


_KINDS: Final = {
    Channel.LED_SET: "led",
    Channel.GROUP_LED_SET: "led",
    Channel.FLEET_LED_SET: "led",
}
_RETAINED: Final = frozenset(
    {
        Channel.STATUS,
        Channel.ENROLLMENT,
        Channel.BUNDLE,
        Channel.LED_STATE,
        Channel.CONTROLLER_STATUS,
    }
)
# The levels after P/devices/ID for each per-device channel.
_DEVICE_SUFFIXES: Final = {
    Channel.ANNOUNCE: "announce",
    Channel.ACK: "ack",
    Channel.STATUS: "status",
    Channel.ENROLLMENT: "enrollment",
    Channel.BUNDLE: "bundle",
    Channel.LED_SET: "led/set",
    Channel.LED_STATE: "led/state",
}
_BY_SUFFIX: Final = {suffix: channel for channel, suffix in _DEVICE_SUFFIXES.items()}


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A received topic: its channel and the device or group it names (if any)."""

    channel: Channel
    device_id: str | None = None
    group: str | None = None


def _check_id(value: str, *, what: str) -> str:
    if not is_device_id(value):
        msg = f"{what} {value[:60]!r} is not a DNS-1123 label of 1 to 40 characters"
        raise InvalidTopic(msg)
    return value


def _check_prefix(prefix: str) -> None:
    levels = prefix.split("/")
    if not prefix or "" in levels:
        msg = f"topic prefix {prefix!r} has an empty level or a leading or trailing '/'"
        raise InvalidTopic(msg)
    # '$' starts broker-internal topics (MQTT 5 section 4.7.2); NUL is forbidden (1.5.4).
    if set(prefix) & set("+#$\0"):
        msg = f"topic prefix {prefix!r} may not contain '+', '#', '$' or NUL"
        raise InvalidTopic(msg)
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        msg = f"topic prefix is longer than {MAX_PREFIX_BYTES} bytes"
        raise InvalidTopic(msg)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one pimesh installation, under `prefix`.

    Raises:
        InvalidTopic: on construction, if `prefix` is not plain topic levels.
    """

    prefix: str = DEFAULT_TOPIC_PREFIX

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)

    def device(self, channel: Channel, device_id: str) -> str:
        """The topic of a per-device channel, e.g. `P/devices/ID/led/set`.

        Raises:
            InvalidTopic: `device_id` is not a valid id, or `channel` is not per-device.
        """
        suffix = _DEVICE_SUFFIXES.get(channel)
        if suffix is None:
            msg = f"{channel} is not a per-device channel"
            raise InvalidTopic(msg)
        return f"{self.prefix}/devices/{_check_id(device_id, what='device id')}/{suffix}"

    def announce(self, device_id: str) -> str:
        """`P/devices/ID/announce`."""
        return self.device(Channel.ANNOUNCE, device_id)

    def ack(self, device_id: str) -> str:
        """`P/devices/ID/ack`."""
        return self.device(Channel.ACK, device_id)

    def status(self, device_id: str) -> str:
        """`P/devices/ID/status` (also the device's last-will topic)."""
        return self.device(Channel.STATUS, device_id)

    def enrollment(self, device_id: str) -> str:
        """`P/devices/ID/enrollment`."""
        return self.device(Channel.ENROLLMENT, device_id)

    def bundle(self, device_id: str) -> str:
        """`P/devices/ID/bundle`."""
        return self.device(Channel.BUNDLE, device_id)

    def led_set(self, device_id: str) -> str:
        """`P/devices/ID/led/set`."""
        return self.device(Channel.LED_SET, device_id)

    def led_state(self, device_id: str) -> str:
        """`P/devices/ID/led/state`."""
        return self.device(Channel.LED_STATE, device_id)

    def group_led_set(self, group: str) -> str:
        """`P/groups/GROUP/led/set`."""
        return f"{self.prefix}/groups/{_check_id(group, what='group')}/led/set"

    def fleet_led_set(self) -> str:
        """`P/fleet/led/set`."""
        return f"{self.prefix}/fleet/led/set"

    def controller_status(self) -> str:
        """`P/controller/status` (also the controller's last-will topic)."""
        return f"{self.prefix}/controller/status"

    def device_filter(self, channel: Channel) -> str:
        """The filter matching one per-device channel of every device: `P/devices/+/...`."""
        suffix = _DEVICE_SUFFIXES.get(channel)
        if suffix is None:
            msg = f"{channel} is not a per-device channel"
            raise InvalidTopic(msg)
        return f"{self.prefix}/devices/+/{suffix}"

    def shared_filter(self, channel: Channel, *, group: str = CONTROLLER_SHARE_GROUP) -> str:
        """`$share/GROUP/P/devices/+/...`: replicas split the load (MQTT 5 section 4.8.2)."""
        return f"$share/{group}/{self.device_filter(channel)}"

    def controller_subscriptions(self, *, shared: bool) -> tuple[str, ...]:
        """What a controller subscribes to: announces and acks, and every device status.

        `shared` selects MQTT 5 shared subscriptions for announce and ack. Status is never
        shared: brokers do not deliver retained messages to shared subscriptions (MQTT 5
        section 4.8.2) and a restarted controller must learn who is online.
        """
        pick = self.shared_filter if shared else self.device_filter
        return (
            pick(Channel.ANNOUNCE),
            pick(Channel.ACK),
            self.device_filter(Channel.STATUS),
        )

    def agent_subscriptions(self, device_id: str, *, groups: Iterable[str] = ()) -> tuple[str, ...]:
        """What an agent subscribes to: its enrollment, bundle, LED commands, the controller."""
        return (
            self.enrollment(device_id),
            self.bundle(device_id),
            self.led_set(device_id),
            *(self.group_led_set(group) for group in groups),
            self.fleet_led_set(),
            self.controller_status(),
        )

    def parse(self, topic: str) -> ParsedTopic:
        """Turn a received topic into its channel and the id or group it names.

        Raises:
            InvalidTopic: the topic is not one of the protocol's under this prefix.
        """
        if set(topic) & set("+#\0"):
            msg = f"topic {topic[:120]!r} contains a wildcard or NUL"
            raise InvalidTopic(msg)
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            msg = f"topic {topic[:120]!r} is not under prefix {self.prefix!r}"
            raise InvalidTopic(msg)
        parsed = _parse_levels(topic.removeprefix(head).split("/"))
        if parsed is None:
            msg = f"topic {topic[:120]!r} is not a pimesh topic"
            raise InvalidTopic(msg)
        return parsed


def _parse_levels(levels: list[str]) -> ParsedTopic | None:
    """Match the levels after the prefix against the topic table."""
    match levels:
        case ["devices", device_id, *rest] if "/".join(rest) in _BY_SUFFIX:
            channel = _BY_SUFFIX["/".join(rest)]
            return ParsedTopic(channel, device_id=_check_id(device_id, what="device id"))
        case ["groups", group, "led", "set"]:
            return ParsedTopic(Channel.GROUP_LED_SET, group=_check_id(group, what="group"))
        case ["fleet", "led", "set"]:
            return ParsedTopic(Channel.FLEET_LED_SET)
        case ["controller", "status"]:
            return ParsedTopic(Channel.CONTROLLER_STATUS)
        case _:
            return None


def check_topic_matches(topic_id: str, msg: DeviceMessage) -> None:
    """Refuse a message whose `device_id` is not the device its topic names (PROTOCOL.md).

    Raises:
        InvalidMessage: the ids differ.
    """
    if msg.device_id != topic_id:
        reason = f"topic says {topic_id!r} but payload says {msg.device_id!r}"
        raise InvalidMessage(reason)


def decode_on(topic: ParsedTopic, payload: bytes) -> Message:
    """Decode a payload received on `topic`, checking its kind and device id against it.

    Raises:
        InvalidMessage: the payload is invalid, of another kind than the channel carries,
            or names another device than the topic.
    """
    message = decode(payload)
    if message.kind != topic.channel.kind:
        reason = f"{topic.channel} carries {topic.channel.kind!r}, not {message.kind!r}"
        raise InvalidMessage(reason)
    if topic.device_id is not None and not isinstance(message, Led | ControllerStatus):
        check_topic_matches(topic.device_id, message)
    return message
