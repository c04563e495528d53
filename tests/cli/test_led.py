"""`pimesh led`: one command on the right topic of the real Mosquitto, and its failures."""

import json
import queue
import socket
import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sandbox.broker import Mosquitto
from shared.codec import decode
from shared.messages import Led
from shared.timestamps import now_utc
from tests.cli.conftest import Pimesh

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 5.0


class Listener:
    """The controller's view of the broker: everything under the test's prefix."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        info = broker.info
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-listener-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(info.controller_username, info.controller_password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        self._topic = f"{prefix}/#"
        self.client.connect(info.host, info.port)
        self.client.loop_start()
        assert self._subscribed.wait(TIMEOUT_S), "listener not subscribed"

    def _on_connect(
        self,
        client: mqtt.Client,
        _u: object,
        _f: mqtt.ConnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        assert not rc.is_failure
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _m: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        assert not any(rc.is_failure for rc in rcs)
        self._subscribed.set()

    def next(self) -> mqtt.MQTTMessage:
        return self.received.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(broker: Mosquitto, prefix: str) -> Iterator[Listener]:
    peer = Listener(broker, prefix)
    yield peer
    peer.close()


@pytest.fixture
def operator(broker: Mosquitto, prefix: str) -> list[str]:
    info = broker.info
    return [
        "--broker",
        info.url,
        "--username",
        info.operator_username,
        "--password",
        info.operator_password,
        "--topic-prefix",
        prefix,
    ]


@pytest.mark.parametrize(
    ("target", "suffix"),
    [
        ("pi-kitchen", "devices/pi-kitchen/led/set"),
        ("device:all", "devices/all/led/set"),
        ("group:kitchen", "groups/kitchen/led/set"),
        ("all", "fleet/led/set"),
    ],
)
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_publishes_one_command_to_the_target_topic(
    pimesh: Pimesh,
    listener: Listener,
    operator: list[str],
    prefix: str,
    target: str,
    suffix: str,
    version: str,
) -> None:
    start = now_utc().replace(microsecond=0)

    result = pimesh(
        "led",
        target,
        "blink",
        "--color",
        "#ff8800",
        "--brightness",
        "128",
        "--duration-ms",
        "5000",
        "--mqtt-version",
        version,
        *operator,
    )

    assert result.exit_code == 0, result.output
    msg = listener.next()
    assert msg.topic == f"{prefix}/{suffix}"
    assert msg.qos == 1
    assert not msg.retain
    command = decode(bytes(msg.payload))
    assert isinstance(command, Led)
    assert result.stdout == f"{command.id}\n"
    uuid.UUID(command.id)
    assert command.ts is not None
    assert start <= command.ts <= now_utc()
    assert (command.effect, command.color, command.brightness, command.duration_ms) == (
        "blink",
        "#ff8800",
        128,
        5000,
    )
    assert listener.received.empty()  # exactly one


def test_optional_fields_are_left_out_when_not_given(
    pimesh: Pimesh, listener: Listener, operator: list[str], prefix: str
) -> None:
    result = pimesh("led", "all", "rainbow", *operator)

    assert result.exit_code == 0, result.output
    msg = listener.next()
    assert msg.topic == f"{prefix}/fleet/led/set"
    assert set(json.loads(msg.payload)) == {"v", "kind", "id", "ts", "effect"}
    assert json.loads(msg.payload)["kind"] == "led"


def test_options_from_environment(
    pimesh: Pimesh, listener: Listener, broker: Mosquitto, prefix: str
) -> None:
    info = broker.info
    env = {
        "PIMESH_BROKER": info.url,
        "PIMESH_USERNAME": info.operator_username,
        "PIMESH_PASSWORD": info.operator_password,
        "PIMESH_TOPIC_PREFIX": prefix,
        "PIMESH_COLOR": "#00ff00",
        "PIMESH_BRIGHTNESS": "7",
    }

    result = pimesh("led", "group:porch", "solid", env=env)

    assert result.exit_code == 0, result.output
    command = decode(bytes(listener.next().payload))
    assert isinstance(command, Led)
    assert (command.effect, command.color, command.brightness) == ("solid", "#00ff00", 7)


EFFECT_LIST = "off, solid, blink, rainbow, rainbow_cycle, chase, switch"
BAD_VALUES = {
    "color": (["--color", "orange"], "--color: 'orange' is not a color like #ff8800"),
    "brightness": (
        ["--brightness", "256"],
        "--brightness: Input should be less than or equal to 255",
    ),
    "duration": (
        ["--duration-ms", "-1"],
        "--duration-ms: Input should be greater than or equal to 0",
    ),
    "broker": (["--broker", "http://x"], "--broker: 'http://x' is not an mqtt:// or mqtts:// URL"),
    "version": (["--mqtt-version", "4"], "--mqtt-version: Input should be '5' or '3.1.1'"),
}
BAD_ARGUMENTS = {
    "effect": (["all", "sparkle"], f"EFFECT 'sparkle' is not one of {EFFECT_LIST}"),
    "empty group": (["group:", "blink"], "TARGET 'group:' is not a device id, group:NAME or all"),
    "wildcard": (["pi/+", "blink"], "TARGET 'pi/+' is not a device id, group:NAME or all"),
}
CASES = {
    **{name: (["all", "blink", *flags], text) for name, (flags, text) in BAD_VALUES.items()},
    **BAD_ARGUMENTS,
}


@pytest.mark.parametrize(("args", "message"), list(CASES.values()), ids=list(CASES))
def test_bad_values_exit_2_naming_them(pimesh: Pimesh, args: list[str], message: str) -> None:
    result = pimesh("led", *args)

    assert result.exit_code == 2
    assert result.stderr.startswith(f"pimesh: {message}")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_bad_color_from_environment_names_flag_and_variable(pimesh: Pimesh) -> None:
    result = pimesh("led", "all", "solid", env={"PIMESH_COLOR": "#12"})

    assert result.exit_code == 2
    assert (
        result.stderr == "pimesh: --color (from PIMESH_COLOR): '#12' is not a color like #ff8800\n"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_broker_exits_1(pimesh: Pimesh) -> None:
    url = f"mqtt://127.0.0.1:{closed_port()}"

    result = pimesh("led", "all", "off", "--broker", url, "--timeout", "2")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"pimesh: cannot reach the broker at {url}: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_silent_broker_times_out(pimesh: Pimesh) -> None:
    # A listener that accepts the TCP connection and never answers CONNECT.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"mqtt://127.0.0.1:{server.getsockname()[1]}"

        result = pimesh("led", "all", "off", "--broker", url, "--timeout", "0.5")

    assert result.exit_code == 1
    assert result.stderr == f"pimesh: no CONNACK from the broker at {url} within 0.5 s\n"


def test_wrong_password_is_refused(pimesh: Pimesh, broker: Mosquitto, prefix: str) -> None:
    info = broker.info
    result = pimesh(
        "led", "all", "off", "--broker", info.url, "--username", info.operator_username,
        "--password", "wrong", "--topic-prefix", prefix,
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.stderr.startswith(f"pimesh: the broker at {info.url} refused the connection: ")


def test_topic_the_acl_refuses_is_a_failure_with_mqtt5(
    pimesh: Pimesh, broker: Mosquitto, listener: Listener, prefix: str
) -> None:
    # A device account may not command the fleet: Mosquitto's PUBACK says 0x87.
    name = f"pi-{uuid.uuid4().hex[:8]}"
    password = broker.add_user(name)
    info = broker.info

    result = pimesh(
        "led", "all", "off", "--broker", info.url, "--username", name, "--password", password,
        "--topic-prefix", prefix,
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.stderr == (
        f"pimesh: the broker refused the message on {prefix}/fleet/led/set: Not authorized\n"
    )
    with pytest.raises(queue.Empty):
        listener.received.get(timeout=0.3)
