"""LED commands from a topic to the strip: real Mosquitto, controller and three agents.

The fleet: `a` in group kitchen, `b` in kitchen and hall, `c` in hall, each with a
simulated strip the test watches. Commands are published as the operator user, as
`pimesh led` does. Non-delivery is proven with an ordering sentinel, never a bare
timeout: the operator's later command reaches the non-member, and the strip shows the
sentinel without ever having shown the command it must not get (one publisher's messages
reach a subscriber in order, MQTT 5 section 4.6).
"""

import json
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from device.agent import Agent
from device.leds import Color, SimulatedStrip
from device.leds.driver import Frame, fill
from device.leds.effects import WHEEL_POSITIONS, rainbow_frame
from sandbox.broker import Mosquitto
from shared.codec import decode_as, encode
from shared.fields import Effect
from shared.messages import Led, LedState
from shared.mqtt import Incoming, MqttLink, Outgoing
from shared.settings import MqttSettings
from shared.signing import verify_message
from shared.timestamps import now_utc
from shared.topics import Channel, Topics
from tests.harness.agents import AgentRig, free_port, rig_fixture  # noqa: F401 - fixture
from tests.harness.controller import ControllerFactory

pytestmark = pytest.mark.timeout(90)

PIXELS = 12
GROUPS = {"a": ["kitchen"], "b": ["kitchen", "hall"], "c": ["hall"]}


def solid_frame(hex_color: str) -> Frame:
    return fill(PIXELS, Color.from_hex(hex_color))


class Operator:
    """Publishes LED commands as the operator user and records every `led_state`."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        info = broker.info
        self.topics = Topics(prefix)
        self._changed = threading.Condition()
        self.states: dict[str, list[LedState]] = {}
        self.link = MqttLink(
            MqttSettings(
                broker=info.url,
                username=info.operator_username,
                password=SecretStr(info.operator_password),
                topic_prefix=prefix,
            ),
            client_id=f"operator-{uuid.uuid4().hex[:8]}",
            subscriptions=[self.topics.device_filter(Channel.LED_STATE)],
            on_message=self._on_message,
        )

    def _on_message(self, incoming: Incoming) -> None:
        device_id = self.topics.parse(incoming.topic).device_id
        assert device_id is not None
        state = decode_as(incoming.payload, LedState)
        with self._changed:
            self.states.setdefault(device_id, []).append(state)
            self._changed.notify_all()

    def send(self, topic: str, effect: Effect, **fields: Any) -> Led:
        command = Led(id=f"cmd-{uuid.uuid4().hex[:12]}", ts=now_utc(), effect=effect, **fields)
        self.send_raw(topic, encode(command))
        return command

    def send_raw(self, topic: str, payload: bytes) -> None:
        self.link.publish(Outgoing(topic, payload, qos=1))

    def state(self, device_id: str, check: Callable[[LedState], bool]) -> LedState:
        """The first `led_state` of `device_id` satisfying `check` (waiting for it)."""

        def found() -> LedState | None:
            return next((s for s in self.states.get(device_id, []) if check(s)), None)

        with self._changed:
            if not self._changed.wait_for(found, timeout=20):
                raise AssertionError(f"no such led_state from {device_id}")
            result = found()
        assert result is not None
        return result

    def all_states(self, device_id: str) -> list[LedState]:
        with self._changed:
            return list(self.states.get(device_id, []))


@dataclass
class Pi:
    agent: Agent
    strip: SimulatedStrip

    @property
    def id(self) -> str:
        return self.agent.device_id

    def shows(self, hex_color: str) -> None:
        self.strip.wait_for(lambda frame: frame == solid_frame(hex_color), timeout=20)

    def never_showed(self, hex_color: str) -> bool:
        return solid_frame(hex_color) not in self.strip.history

    def http(self, path: str) -> tuple[int, str, bytes]:
        url = f"http://127.0.0.1:{self.agent.web_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read()

    def api_state(self) -> LedState:
        status, kind, body = self.http("/api/led")
        assert (status, kind) == (200, "application/json")
        state = decode_as(body, LedState)
        verify_message(state, self.agent.keys.sign_public_b64)
        return state


@dataclass
class Fleet:
    pis: dict[str, Pi]
    operator: Operator
    topics: Topics

    def __getitem__(self, name: str) -> Pi:
        return self.pis[name]

    def device_topic(self, name: str) -> str:
        return self.topics.led_set(self.pis[name].id)

    def signed_state(self, name: str, command: Led) -> LedState:
        """The retained `led_state` that `name` published for `command`, signature checked."""
        pi = self.pis[name]
        state = self.operator.state(pi.id, lambda s: s.command_id == command.id)
        verify_message(state, pi.agent.keys.sign_public_b64)
        assert state.device_id == pi.id
        return state


@pytest.fixture
def fleet(
    controller_factory: ControllerFactory, rig: AgentRig, broker: Mosquitto, prefix: str
) -> Iterator[Fleet]:
    controller_factory(auto_approve=["pi-*"])
    operator = Operator(broker, prefix)
    operator.link.start()
    suffix = uuid.uuid4().hex[:6]
    pis: dict[str, Pi] = {}
    for name, groups in GROUPS.items():
        strip = SimulatedStrip(PIXELS)
        agent = rig.start(
            f"pi-{name}-{suffix}",
            strip=strip,
            group=groups,
            http_port=free_port(),
            led_count=PIXELS,
        )
        pis[name] = Pi(agent, strip)
    assert operator.link.wait_ready(10), "operator never connected"
    for pi in pis.values():
        assert pi.agent.link.wait_ready(10), f"{pi.id} never subscribed"
        # Connected, each says where its strip stands: off, before any command.
        assert operator.state(pi.id, lambda s: s.effect == "off").command_id is None
    yield Fleet(pis, operator, operator.topics)
    operator.link.stop()


def test_a_fleet_command_reaches_every_strip_and_each_reports_it_signed(
    fleet: Fleet, broker: Mosquitto, prefix: str
) -> None:
    command = fleet.operator.send(
        fleet.topics.fleet_led_set(), "solid", color="#112233", brightness=255
    )
    for name in GROUPS:
        fleet[name].shows("#112233")
        state = fleet.signed_state(name, command)
        assert (state.effect, state.color, state.brightness) == ("solid", "#112233", 255)
        api = fleet[name].api_state()
        assert (api.effect, api.color, api.brightness, api.command_id) == (
            "solid",
            "#112233",
            255,
            command.id,
        )

    late = Operator(broker, prefix)  # subscribes only now: gets the retained states
    late.link.start()
    try:
        for name in GROUPS:
            state = late.state(fleet[name].id, lambda s: s.command_id == command.id)
            verify_message(state, fleet[name].agent.keys.sign_public_b64)
    finally:
        late.link.stop()


def test_a_group_command_reaches_only_its_members(fleet: Fleet) -> None:
    kitchen = fleet.operator.send(fleet.topics.group_led_set("kitchen"), "solid", color="#00aa00")
    sentinel = fleet.operator.send(fleet.device_topic("c"), "solid", color="#0000cc")
    fleet["a"].shows("#00aa00")
    fleet["b"].shows("#00aa00")
    fleet["c"].shows("#0000cc")
    assert fleet["c"].never_showed("#00aa00"), "c is not in kitchen"
    assert fleet.signed_state("a", kitchen).color == "#00aa00"
    assert fleet.signed_state("b", kitchen).color == "#00aa00"
    assert fleet.signed_state("c", sentinel).color == "#0000cc"
    assert all(s.command_id != kitchen.id for s in fleet.operator.all_states(fleet["c"].id))

    hall = fleet.operator.send(fleet.topics.group_led_set("hall"), "solid", color="#aa00aa")
    fleet.operator.send(fleet.device_topic("a"), "solid", color="#cc0000")
    fleet["b"].shows("#aa00aa")
    fleet["c"].shows("#aa00aa")
    fleet["a"].shows("#cc0000")
    assert fleet["a"].never_showed("#aa00aa"), "a is not in hall"
    assert fleet.signed_state("b", hall).color == "#aa00aa"
    assert fleet.signed_state("c", hall).color == "#aa00aa"


def test_a_device_command_reaches_only_that_device(fleet: Fleet) -> None:
    command = fleet.operator.send(fleet.device_topic("b"), "solid", color="#123456")
    # b must show its command before the sentinel follows: a newer command may replace an
    # effect before its first frame is drawn, which is the player's contract.
    fleet["b"].shows("#123456")
    sentinel = fleet.operator.send(fleet.topics.fleet_led_set(), "solid", color="#654321")
    for name in GROUPS:
        fleet[name].shows("#654321")
    assert fleet["a"].never_showed("#123456")
    assert fleet["c"].never_showed("#123456")
    assert fleet.signed_state("b", command).color == "#123456"
    for name in ("a", "c"):
        assert fleet.signed_state(name, sentinel).color == "#654321"
        assert all(s.command_id != command.id for s in fleet.operator.all_states(fleet[name].id))
    assert fleet["b"].api_state().command_id == sentinel.id


def test_a_stale_command_is_ignored(fleet: Fleet) -> None:
    stale = Led(
        id="stale-1", ts=now_utc() - timedelta(seconds=120), effect="solid", color="#ff0000"
    )
    fleet.operator.send_raw(fleet.device_topic("a"), encode(stale))
    sentinel = fleet.operator.send(fleet.device_topic("a"), "solid", color="#00ff00")
    fleet["a"].shows("#00ff00")
    assert fleet["a"].never_showed("#ff0000")
    fleet.signed_state("a", sentinel)
    assert all(s.command_id != stale.id for s in fleet.operator.all_states(fleet["a"].id))


def test_invalid_commands_are_rejected_and_the_running_effect_goes_on(fleet: Fleet) -> None:
    blink = fleet.operator.send(fleet.device_topic("a"), "blink", color="#ff8800", brightness=255)
    fleet["a"].shows("#ff8800")
    topic = fleet.device_topic("a")
    green = {"v": 1, "kind": "led", "effect": "solid", "color": "#00ff00"}
    for payload in (
        {**green, "id": "float", "brightness": 2.5},
        {**green, "id": "effect", "effect": "sparkle"},
        {**green, "id": "color", "color": "green"},
        {**green, "id": "kind", "kind": "status"},
        {**green, "id": "version", "v": 2},
    ):
        fleet.operator.send_raw(topic, json.dumps(payload).encode())
    fleet.operator.send_raw(topic, b"not json at all")
    fleet.operator.send_raw(fleet.topics.fleet_led_set(), b'{"v": 1, "kind": "led"}')

    # A switch resumes the effect that was running when it arrived: had any invalid
    # command been applied, the pass would resume that one instead of the blink.
    switch = fleet.operator.send(topic, "switch")
    last = rainbow_frame(PIXELS, WHEEL_POSITIONS - 1)
    fleet["a"].strip.wait_for(lambda frame: frame == last, timeout=20)
    fleet["a"].strip.wait_for(lambda frame: frame == solid_frame("#ff8800"), timeout=5)
    resumed = fleet.operator.state(
        fleet["a"].id, lambda s: s.command_id == switch.id and s.effect != "switch"
    )
    assert (resumed.effect, resumed.color) == ("blink", "#ff8800")
    assert fleet["a"].never_showed("#00ff00")
    states = fleet.operator.all_states(fleet["a"].id)
    assert [s.command_id for s in states if s.command_id] == [blink.id, switch.id, switch.id]


def test_switch_over_http_works_like_the_seed(fleet: Fleet) -> None:
    before = fleet.operator.send(fleet.device_topic("a"), "solid", color="#0055ff")
    fleet["a"].shows("#0055ff")
    fleet.signed_state("a", before)
    shown = fleet["a"].strip.shown

    status, kind, body = fleet["a"].http("/switch")
    assert (status, kind) == (200, "text/html")
    assert b"rainbow" in body

    running = fleet.operator.state(fleet["a"].id, lambda s: s.effect == "switch")
    assert running.command_id is not None
    verify_message(running, fleet["a"].agent.keys.sign_public_b64)
    last = rainbow_frame(PIXELS, WHEEL_POSITIONS - 1)
    fleet["a"].strip.wait_for(lambda frame: frame == last, timeout=20)
    fleet["a"].shows("#0055ff")
    played = fleet["a"].strip.history[-(fleet["a"].strip.shown - shown) :]
    assert played[:WHEEL_POSITIONS] == tuple(
        rainbow_frame(PIXELS, j) for j in range(WHEEL_POSITIONS)
    )
    back = fleet.operator.state(
        fleet["a"].id, lambda s: s.command_id == running.command_id and s.effect == "solid"
    )
    assert back.color == "#0055ff"
    api = fleet["a"].api_state()
    assert (api.effect, api.color, api.command_id) == ("solid", "#0055ff", running.command_id)
    assert rainbow_frame(PIXELS, 0) not in fleet["b"].strip.history, "only a was asked"
