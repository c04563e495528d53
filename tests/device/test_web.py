"""The agent's LED web server: Flask's test client on a simulated strip, then a real port."""

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from device.agent import Agent
from device.compose import build_agent
from device.errors import DeviceError
from device.leds import Color, Effect, EffectPlayer, LedState, SimulatedStrip
from device.leds.driver import Frame, fill
from device.leds.effects import WHEEL_POSITIONS, apply_brightness, rainbow_frame
from device.settings import AgentSettings
from device.web import NO_STRIP, LedMetrics, WebServer, create_app
from sandbox.broker import Mosquitto
from shared.codec import decode_as, encode
from shared.crypto import DeviceKeys
from shared.errors import BadSignature
from shared.messages import Led
from shared.messages import LedState as LedStateMessage
from shared.settings import MqttSettings
from shared.signing import sign_message, verify_message
from shared.timestamps import now_utc
from tests.harness.agents import free_port, wait_until

pytestmark = pytest.mark.timeout(60)

PIXELS = 8
DEVICE = "pi-web"
HEALTH: dict[str, object] = {"device_id": DEVICE, "mqtt": {"connected": True}, "ztunnel": "absent"}


def quick_sleeper(event: threading.Event, timeout: float | None) -> bool:
    """Holds 1/20 of each step: a 5 s switch pass plays in about 0.3 s."""
    return event.wait(None if timeout is None else timeout / 20)


@pytest.fixture
def strip() -> SimulatedStrip:
    return SimulatedStrip(PIXELS)


@pytest.fixture
def changes() -> list[LedState]:
    return []


@pytest.fixture
def player(strip: SimulatedStrip, changes: list[LedState]) -> Iterator[EffectPlayer]:
    with EffectPlayer(strip, sleeper=quick_sleeper, on_change=changes.append) as made:
        yield made


@pytest.fixture
def app(player: EffectPlayer) -> Flask:
    return create_app(player=player, device_id=DEVICE, health=lambda: HEALTH)


@pytest.fixture
def web(app: Flask) -> FlaskClient:
    return app.test_client()


def command(effect: str = "solid", **fields: Any) -> dict[str, Any]:
    return {"v": 1, "kind": "led", "id": f"c-{uuid.uuid4().hex[:12]}", "effect": effect, **fields}


def post(web: FlaskClient, body: dict[str, Any] | bytes) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return web.post("/api/led", data=data, content_type="application/json")


def lit(color: Color, brightness: int = 255) -> Frame:
    return apply_brightness(fill(PIXELS, color), brightness)


def led_state(web: FlaskClient) -> LedStateMessage:
    response = web.get("/api/led")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return decode_as(response.get_data(), LedStateMessage)


# --- the page --------------------------------------------------------------------------


def test_page_shows_the_device_and_offers_every_effect_without_external_assets(
    web: FlaskClient,
) -> None:
    response = web.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert DEVICE in html
    for effect in Effect:
        assert f'<option value="{effect.value}">' in html
    assert "api/led" in html, "the page polls and posts to the API"
    assert "setInterval(poll, 1000)" in html
    assert "src=" not in html
    assert "href=" not in html
    assert "http://" not in html
    assert "https://" not in html


# --- GET /api/led ------------------------------------------------------------------------


def test_state_before_any_command_is_off_and_unsigned(web: FlaskClient) -> None:
    state = led_state(web)
    assert state.device_id == DEVICE
    assert state.effect == "off"
    assert state.command_id is None
    assert state.sig is None
    raw = web.get("/api/led").get_json()
    assert "command_id" not in raw, "no nulls on the wire"
    assert web.get("/api/led").headers["Cache-Control"] == "no-store"


def test_a_signer_signs_the_state(player: EffectPlayer, tmp_path: Path) -> None:
    keys = DeviceKeys.load_or_create(tmp_path / "keys")
    app = create_app(
        player=player,
        device_id=DEVICE,
        health=lambda: HEALTH,
        sign=lambda message: sign_message(message, keys.sign_key),
    )
    state = led_state(app.test_client())
    verify_message(state, keys.sign_public_b64)
    other = DeviceKeys.load_or_create(tmp_path / "other")
    with pytest.raises(BadSignature):
        verify_message(state, other.sign_public_b64)


# --- POST /api/led -----------------------------------------------------------------------


def test_a_posted_command_reaches_the_strip_and_the_state(
    web: FlaskClient, strip: SimulatedStrip
) -> None:
    body = command("solid", color="#102030", brightness=128)
    response = post(web, body)
    assert response.status_code == 202
    assert response.get_json() == {"accepted": body["id"]}
    strip.wait_for(lambda frame: frame == lit(Color(0x10, 0x20, 0x30), 128), timeout=5)
    state = led_state(web)
    assert (state.effect, state.color, state.brightness, state.command_id) == (
        "solid",
        "#102030",
        128,
        body["id"],
    )


def test_missing_colour_and_brightness_keep_the_current_ones(
    web: FlaskClient, strip: SimulatedStrip
) -> None:
    assert post(web, command("solid", color="#00ff00", brightness=10)).status_code == 202
    assert post(web, command("chase")).status_code == 202
    state = led_state(web)
    assert (state.effect, state.color, state.brightness) == ("chase", "#00ff00", 10)
    green = apply_brightness((Color(0, 255, 0),), 10)[0]
    strip.wait_for(lambda frame: frame[0] == green and frame[1] != green, timeout=5)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not an object"),
        (command("sparkle"), "led.effect"),
        (command("solid", brightness=2.5), "floats are not allowed"),
        (command("solid", brightness="128"), "led.brightness"),
        (command("solid", brightness=256), "led.brightness"),
        (command("solid", color="red"), "led.color"),
        (command("solid", color="#12345g"), "led.color"),
        (command("solid", duration_ms=600_001), "led.duration_ms"),
        ({"v": 1, "kind": "led", "effect": "solid"}, "led.id"),
        ({**command("solid"), "v": 2}, "version"),
        ({**command("solid"), "kind": "ack"}, "ack."),
        (command("solid", ts="yesterday"), "led.ts"),
    ],
)
def test_an_invalid_command_is_refused_with_its_reason_and_changes_nothing(
    web: FlaskClient, body: dict[str, Any] | bytes, reason: str
) -> None:
    first = command("solid", color="#0000ff")
    assert post(web, first).status_code == 202
    response = post(web, body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert reason in error
    state = led_state(web)
    assert (state.effect, state.color, state.command_id) == ("solid", "#0000ff", first["id"])


def test_a_stale_command_is_refused_and_ignored(web: FlaskClient) -> None:
    stale = command("solid", color="#ff0000", ts=encode_ts(-120))
    response = post(web, stale)
    assert response.status_code == 400
    assert "60 s" in response.get_json()["error"]
    assert led_state(web).effect == "off"
    fresh = command("solid", color="#ff0000", ts=encode_ts(-5))
    assert post(web, fresh).status_code == 202
    assert led_state(web).command_id == fresh["id"]


def encode_ts(offset_s: int) -> str:
    moment = now_utc() + timedelta(seconds=offset_s)
    wire = json.loads(encode(Led(id="x", effect="off", ts=moment)))
    return str(wire["ts"])


def test_a_payload_over_the_protocol_limit_is_refused_as_json(web: FlaskClient) -> None:
    response = post(web, b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413
    assert "error" in response.get_json()


def test_unknown_routes_and_methods_answer_json_errors(web: FlaskClient) -> None:
    missing = web.get("/nope")
    assert missing.status_code == 404
    assert "error" in missing.get_json()
    assert web.put("/api/led", data=b"{}").status_code == 405


# --- GET /switch ---------------------------------------------------------------------------


def test_switch_runs_one_rainbow_pass_then_resumes_the_previous_effect(
    web: FlaskClient, strip: SimulatedStrip, changes: list[LedState]
) -> None:
    before = command("solid", color="#336699")
    assert post(web, before).status_code == 202
    solid = lit(Color(0x33, 0x66, 0x99))
    strip.wait_for(lambda frame: frame == solid, timeout=5)
    shown_before = strip.shown

    response = web.get("/switch")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "rainbow" in response.get_data(as_text=True)
    assert "solid" in response.get_data(as_text=True), "names what it goes back to"

    last = rainbow_frame(PIXELS, WHEEL_POSITIONS - 1)
    strip.wait_for(lambda frame: frame == last, timeout=10)
    strip.wait_for(lambda frame: frame == solid, timeout=5)
    played = strip.history[-(strip.shown - shown_before) :]
    assert played[:WHEEL_POSITIONS] == tuple(
        rainbow_frame(PIXELS, j) for j in range(WHEEL_POSITIONS)
    ), "256 frames: the wheel once, in order"
    assert played[WHEEL_POSITIONS] == solid

    effects = [(state.effect, state.color.to_hex()) for state in changes]
    assert effects[-2:] == [(Effect.SWITCH, "#336699"), (Effect.SOLID, "#336699")]
    switch_id = changes[-2].command_id
    assert switch_id is not None
    assert switch_id.startswith("switch-")
    state = wait_until(lambda: led_state(web).effect == "solid" and led_state(web), what="resumed")
    assert state.command_id == switch_id


def test_switch_goes_through_the_command_path(player: EffectPlayer) -> None:
    seen: list[Led] = []

    def sink(led: Led) -> LedState | None:
        seen.append(led)
        return player.state()

    web = create_app(player=player, device_id=DEVICE, health=lambda: HEALTH, on_command=sink)
    client = web.test_client()
    assert client.get("/switch").status_code == 200
    assert post(client, command("blink")).status_code == 202
    assert [led.effect for led in seen] == ["switch", "blink"]
    assert seen[0].ts is not None, "a fresh command, never mistaken for a stale one"


def test_an_ignored_switch_is_not_reported_as_done(player: EffectPlayer) -> None:
    web = create_app(
        player=player, device_id=DEVICE, health=lambda: HEALTH, on_command=lambda _: None
    )
    response = web.test_client().get("/switch")
    assert response.status_code == 400
    assert "60 s" in response.get_json()["error"]


# --- no strip, health, metrics --------------------------------------------------------------


def test_without_a_strip_led_endpoints_answer_503() -> None:
    client = create_app(player=None, device_id=DEVICE, health=lambda: HEALTH).test_client()
    for response in (client.get("/api/led"), post(client, command()), client.get("/switch")):
        assert response.status_code == 503
        assert response.get_json() == {"error": NO_STRIP}
    assert client.get("/").status_code == 200
    assert client.get("/healthz").status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'pimesh_led_commands_rejected_total{reason="no_strip",source="http"} 2.0' in metrics


def test_healthz_reports_the_agent_state(web: FlaskClient) -> None:
    response = web.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == HEALTH


def test_metrics_count_commands_and_show_the_strip(
    player: EffectPlayer, strip: SimulatedStrip
) -> None:
    metrics = LedMetrics(player)
    client = create_app(
        player=player, device_id=DEVICE, health=lambda: HEALTH, metrics=metrics
    ).test_client()
    assert post(client, command("solid", brightness=128)).status_code == 202
    assert post(client, command("sparkle")).status_code == 400
    assert post(client, command(ts=encode_ts(-120))).status_code == 400
    metrics.count(player.state(), source="mqtt")  # what the agent does for MQTT commands

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'pimesh_led_commands_total{source="http"} 1.0' in text
    assert 'pimesh_led_commands_total{source="mqtt"} 1.0' in text
    assert 'pimesh_led_commands_rejected_total{reason="invalid",source="http"} 1.0' in text
    assert 'pimesh_led_commands_rejected_total{reason="stale",source="http"} 1.0' in text
    assert "pimesh_led_brightness 128.0" in text
    assert 'pimesh_led_effect{effect="solid"} 1.0' in text
    assert 'pimesh_led_effect{effect="off"} 0.0' in text
    assert "pimesh_led_strip_failed 0.0" in text


# --- a real port -----------------------------------------------------------------------------


def http(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")  # noqa: S310
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


@pytest.fixture
def agent(broker: Mosquitto, prefix: str, tmp_path: Path) -> Iterator[Agent]:
    device_id = f"pi-{uuid.uuid4().hex[:8]}"
    settings = AgentSettings(
        device_id=device_id,
        root=tmp_path / "root",
        state_dir=tmp_path / "state",
        address=["192.168.1.178"],
        ztunnel_cmd="none",
        led_backend="simulated",
        led_count=PIXELS,
        http_port=free_port(),
    )
    mqtt = MqttSettings(
        broker=broker.info.url,
        username=device_id,
        password=SecretStr(broker.add_user(device_id)),
        topic_prefix=prefix,
    )
    made = build_agent(settings, mqtt)
    made.start()
    yield made
    made.stop()


def test_the_agent_serves_the_api_on_its_http_port(agent: Agent) -> None:
    assert agent.web_port == agent.settings.http_port
    base = f"http://127.0.0.1:{agent.web_port}"

    health = wait_until(
        lambda: (h := json.loads(http(f"{base}/healthz")[2]))["mqtt"]["ready"] and h,
        what="healthz says the broker link is ready",
    )
    assert health["device_id"] == agent.device_id
    assert health["ztunnel"] == "absent"
    assert health["generation"] == 0
    assert health["leds"] == "ok"

    body = command("solid", color="#abcdef", brightness=255)
    status, kind, answer = http(f"{base}/api/led", json.dumps(body).encode())
    assert (status, kind, json.loads(answer)) == (202, "application/json", {"accepted": body["id"]})
    status, _, raw = http(f"{base}/api/led")
    assert status == 200
    state = decode_as(raw, LedStateMessage)
    assert (state.color, state.command_id) == ("#abcdef", body["id"])
    verify_message(state, agent.keys.sign_public_b64)

    status, kind, page = http(f"{base}/switch")
    assert (status, kind) == (200, "text/html")
    assert b"rainbow" in page
    status, kind, _ = http(f"{base}/api/led", b"{}")
    assert (status, kind) == (400, "application/json")


def test_a_port_in_use_is_refused_naming_the_flag(player: EffectPlayer) -> None:
    app = create_app(player=player, device_id=DEVICE, health=lambda: HEALTH)
    first = WebServer(app, port=0, host="127.0.0.1")
    first.start()
    try:
        assert first.port is not None
        second = WebServer(app, port=first.port, host="127.0.0.1")
        with pytest.raises(DeviceError, match="--http-port"):
            second.start()
        assert second.port is None
        second.stop()  # never started: nothing to do
    finally:
        first.stop()
