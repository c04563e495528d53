"""shared.topics: PROTOCOL.md's topic table, built and parsed, and everything refused."""

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import DEFAULT_TOPIC_PREFIX
from shared.codec import decode_as
from shared.errors import InvalidMessage, InvalidTopic
from shared.fields import DEVICE_ID_PATTERN
from shared.messages import Announce, Led
from shared.topics import (
    CONTROLLER_SHARE_GROUP,
    Channel,
    ParsedTopic,
    Topics,
    check_topic_matches,
    decode_on,
)

FAST = settings(max_examples=200, deadline=None, database=None)
KEY = base64.b64encode(bytes(32)).decode()
NONCE = base64.b64encode(bytes(16)).decode()


def announce_payload(device_id: str) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "kind": "announce",
            "device_id": device_id,
            "ts": "2026-11-26T10:00:00Z",
            "nonce": NONCE,
            "boot_id": "b",
            "hostname": device_id,
            "addresses": ["10.0.0.1"],
            "arch": "aarch64",
            "os": "Linux",
            "agent_version": "0.1.0",
            "app": "led-pi",
            "keys": {"sign": KEY, "kx": KEY},
        }
    ).encode()


LED_PAYLOAD = b'{"v":1,"kind":"led","id":"c1","effect":"solid","color":"#00ff00"}'
CONTROLLER_PAYLOAD = json.dumps(
    {"v": 1, "kind": "controller_status", "state": "offline", "version": "1", "keys": {"sign": KEY}}
).encode()


def test_default_topics_are_the_protocol_table() -> None:
    topics = Topics()
    assert topics.prefix == DEFAULT_TOPIC_PREFIX == "pimesh/v1"
    assert topics.announce("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/announce"
    assert topics.ack("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/ack"
    assert topics.status("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/status"
    assert topics.enrollment("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/enrollment"
    assert topics.bundle("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/bundle"
    assert topics.led_set("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/led/set"
    assert topics.led_state("pi-kitchen") == "pimesh/v1/devices/pi-kitchen/led/state"
    assert topics.group_led_set("kitchen") == "pimesh/v1/groups/kitchen/led/set"
    assert topics.fleet_led_set() == "pimesh/v1/fleet/led/set"
    assert topics.controller_status() == "pimesh/v1/controller/status"


@pytest.mark.parametrize(
    ("channel", "kind", "qos", "retained"),
    [
        (Channel.ANNOUNCE, "announce", 1, False),
        (Channel.ACK, "ack", 1, False),
        (Channel.STATUS, "status", 1, True),
        (Channel.ENROLLMENT, "enrollment", 1, True),
        (Channel.BUNDLE, "bundle", 1, True),
        (Channel.LED_SET, "led", 1, False),
        (Channel.GROUP_LED_SET, "led", 1, False),
        (Channel.FLEET_LED_SET, "led", 1, False),
        (Channel.LED_STATE, "led_state", 0, True),
        (Channel.CONTROLLER_STATUS, "controller_status", 1, True),
    ],
)
def test_channel_properties_follow_the_table(
    channel: Channel, kind: str, qos: int, retained: bool
) -> None:
    assert (channel.kind, channel.qos, channel.retained) == (kind, qos, retained)


def test_every_topic_parses_back(prefix: str) -> None:
    topics = Topics(prefix)
    device_channels = [
        Channel.ANNOUNCE,
        Channel.ACK,
        Channel.STATUS,
        Channel.ENROLLMENT,
        Channel.BUNDLE,
        Channel.LED_SET,
        Channel.LED_STATE,
    ]
    for channel in device_channels:
        topic = topics.device(channel, "pi-1")
        assert topic.startswith(f"{prefix}/devices/pi-1/")
        assert topics.parse(topic) == ParsedTopic(channel, device_id="pi-1")
    assert topics.parse(topics.group_led_set("g1")) == ParsedTopic(
        Channel.GROUP_LED_SET, group="g1"
    )
    assert topics.parse(topics.fleet_led_set()) == ParsedTopic(Channel.FLEET_LED_SET)
    assert topics.parse(topics.controller_status()) == ParsedTopic(Channel.CONTROLLER_STATUS)


def test_subscription_filters(prefix: str) -> None:
    topics = Topics(prefix)
    assert topics.controller_subscriptions(shared=True) == (
        f"$share/{CONTROLLER_SHARE_GROUP}/{prefix}/devices/+/announce",
        f"$share/pimesh-controller/{prefix}/devices/+/ack",
        f"{prefix}/devices/+/status",
    )
    assert topics.controller_subscriptions(shared=False) == (
        f"{prefix}/devices/+/announce",
        f"{prefix}/devices/+/ack",
        f"{prefix}/devices/+/status",
    )
    assert topics.device_filter(Channel.LED_STATE) == f"{prefix}/devices/+/led/state"
    assert topics.agent_subscriptions("pi-1", groups=["kitchen", "floor-1"]) == (
        f"{prefix}/devices/pi-1/enrollment",
        f"{prefix}/devices/pi-1/bundle",
        f"{prefix}/devices/pi-1/led/set",
        f"{prefix}/groups/kitchen/led/set",
        f"{prefix}/groups/floor-1/led/set",
        f"{prefix}/fleet/led/set",
        f"{prefix}/controller/status",
    )


@pytest.mark.parametrize(
    "channel", [Channel.GROUP_LED_SET, Channel.FLEET_LED_SET, Channel.CONTROLLER_STATUS]
)
def test_device_builders_refuse_channels_that_are_not_per_device(channel: Channel) -> None:
    with pytest.raises(InvalidTopic, match="not a per-device channel"):
        Topics().device(channel, "pi-1")
    with pytest.raises(InvalidTopic, match="not a per-device channel"):
        Topics().device_filter(channel)


@pytest.mark.parametrize("bad", ["", "+", "#", "a/b", "Pi", "pi_1", "-pi", "a" * 41, "pi\0"])
def test_builders_refuse_bad_ids(bad: str) -> None:
    with pytest.raises(InvalidTopic, match=r"device id .* is not a DNS-1123 label"):
        Topics().announce(bad)
    with pytest.raises(InvalidTopic, match=r"group .* is not a DNS-1123 label"):
        Topics().group_led_set(bad)
    with pytest.raises(InvalidTopic):
        Topics().agent_subscriptions("pi-1", groups=[bad])


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [
        ("", "empty level"),
        ("/pimesh", "leading or trailing"),
        ("pimesh/", "leading or trailing"),
        ("pimesh//v1", "empty level"),
        ("pimesh/+", "'+', '#'"),
        ("pimesh/#", "'+', '#'"),
        ("pi+mesh", "'+', '#'"),
        ("$SYS/pimesh", "'$'"),
        ("pimesh\0", "NUL"),
        ("p" * 1025, "longer than 1024 bytes"),
    ],
)
def test_bad_prefixes(prefix: str, fragment: str) -> None:
    with pytest.raises(InvalidTopic, match="prefix") as info:
        Topics(prefix)
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    ("suffix", "fragment"),
    [
        ("devices/+/announce", "wildcard"),
        ("devices/#", "wildcard"),
        ("devices/pi-1/announce\0", "NUL"),
        ("devices//announce", "''"),
        ("devices/Pi-1/announce", "'Pi-1' is not a DNS-1123 label"),
        ("devices/" + "a" * 41 + "/ack", "is not a DNS-1123 label"),
        ("devices/pi-1", "not a pimesh topic"),
        ("devices/pi-1/", "not a pimesh topic"),
        ("devices/pi-1/unknown", "not a pimesh topic"),
        ("devices/pi-1/announce/extra", "not a pimesh topic"),
        ("devices/pi-1/led", "not a pimesh topic"),
        ("devices/pi-1/led/get", "not a pimesh topic"),
        ("groups/Kitchen/led/set", "group 'Kitchen'"),
        ("groups/kitchen/led/state", "not a pimesh topic"),
        ("groups/kitchen", "not a pimesh topic"),
        ("fleet/led/set/", "not a pimesh topic"),
        ("fleet/led", "not a pimesh topic"),
        ("controller/status/x", "not a pimesh topic"),
        ("controller", "not a pimesh topic"),
        ("", "not a pimesh topic"),
    ],
)
def test_parse_refuses(prefix: str, suffix: str, fragment: str) -> None:
    with pytest.raises(InvalidTopic) as info:
        Topics(prefix).parse(f"{prefix}/{suffix}")
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/devices/pi-1/announce",
        "pimesh/v1x/devices/pi-1/announce",
        "pimesh/devices/pi-1/announce",
        "pimesh/v1",
        "xpimesh/v1/devices/pi-1/announce",
        "/pimesh/v1/devices/pi-1/announce",
        "$share/pimesh-controller/pimesh/v1/devices/pi-1/announce",
    ],
)
def test_parse_refuses_other_prefixes(topic: str) -> None:
    with pytest.raises(InvalidTopic, match="not under prefix 'pimesh/v1'"):
        Topics().parse(topic)


def test_invalid_topic_is_an_invalid_message() -> None:
    with pytest.raises(InvalidMessage):
        Topics().parse("nope")


def test_check_topic_matches() -> None:
    message = decode_as(announce_payload("pi-1"), Announce)
    check_topic_matches("pi-1", message)
    with pytest.raises(InvalidMessage) as info:
        check_topic_matches("pi-2", message)
    assert info.value.reason == "topic says 'pi-2' but payload says 'pi-1'"


def test_decode_on_checks_kind_and_device(prefix: str) -> None:
    topics = Topics(prefix)
    on_announce = topics.parse(topics.announce("pi-1"))
    assert decode_on(on_announce, announce_payload("pi-1")).kind == "announce"
    with pytest.raises(InvalidMessage, match="topic says 'pi-1' but payload says 'pi-2'"):
        decode_on(on_announce, announce_payload("pi-2"))
    with pytest.raises(InvalidMessage, match="announce carries 'announce', not 'led'"):
        decode_on(on_announce, LED_PAYLOAD)
    with pytest.raises(InvalidMessage, match="floats"):
        decode_on(on_announce, b'{"v":1.0}')


def test_decode_on_led_and_controller_channels(prefix: str) -> None:
    topics = Topics(prefix)
    for topic in (topics.led_set("pi-1"), topics.group_led_set("g"), topics.fleet_led_set()):
        message = decode_on(topics.parse(topic), LED_PAYLOAD)
        assert isinstance(message, Led)
        assert message.color == "#00ff00"
    status = decode_on(topics.parse(topics.controller_status()), CONTROLLER_PAYLOAD)
    assert status.kind == "controller_status"
    with pytest.raises(InvalidMessage, match="led_set carries 'led', not 'controller_status'"):
        decode_on(topics.parse(topics.led_set("pi-1")), CONTROLLER_PAYLOAD)


device_ids = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
prefix_levels = st.text(
    alphabet=st.characters(exclude_characters="/+#$\0", exclude_categories=["Cs"]),
    min_size=1,
    max_size=8,
)


@FAST
@given(st.lists(prefix_levels, min_size=1, max_size=4).map("/".join), device_ids, device_ids)
def test_round_trip_with_random_prefixes_and_ids(prefix: str, device_id: str, group: str) -> None:
    topics = Topics(prefix)
    for channel in (Channel.ANNOUNCE, Channel.LED_SET, Channel.LED_STATE):
        topic = topics.device(channel, device_id)
        assert topics.parse(topic) == ParsedTopic(channel, device_id=device_id)
    assert topics.parse(topics.group_led_set(group)).group == group


@FAST
@given(st.text(max_size=80))
def test_random_topics_parse_or_are_refused(suffix: str) -> None:
    topics = Topics()
    try:
        parsed = topics.parse(f"{topics.prefix}/{suffix}")
    except InvalidTopic as exc:
        assert exc.reason  # noqa: PT017 - a property: any refusal must say why
        return
    assert parsed.channel in Channel
