"""Real agents (in process) against the test broker: `AgentRig` and its `rig` fixture.

Import `rig_fixture` into a test module to get the fixture `rig`.

Each agent gets its own root, state directory and broker user (its device id), a
simulated strip and the stand-in ztunnel; the rig stops every agent it started when the
test ends.
"""

import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr

from device.agent import Agent
from device.compose import build_agent
from device.leds import LedDriver
from device.settings import AgentSettings
from sandbox.broker import Mosquitto
from shared.settings import MqttSettings

__all__ = ["STANDIN", "AgentRig", "free_port", "rig_fixture", "wait_until"]

STANDIN = f"{sys.executable} -m sandbox.standin_ztunnel"


def wait_until(check: Callable[[], Any], *, timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port free right now (for `--http-port`, where 0 means disabled)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AgentRig:
    """Builds agents (in process) for one test and stops them afterwards."""

    def __init__(self, broker: Mosquitto, prefix: str, tmp: Path) -> None:
        self.broker, self.prefix, self.tmp = broker, prefix, tmp
        self.agents: list[Agent] = []

    def settings(self, device_id: str, **overrides: Any) -> AgentSettings:
        base = self.tmp / device_id
        values: dict[str, Any] = {
            "device_id": device_id,
            "root": base / "root",
            "state_dir": base / "state",
            "address": ["192.168.1.178"],
            "ztunnel_cmd": f"{STANDIN} --record {base / 'ztunnel.json'}",
            "led_backend": "simulated",
            "http_port": 0,
            "port": ["http-pi=8080"],
            "keepalive": 2,
            **overrides,
        }
        (base / "root").mkdir(parents=True, exist_ok=True)
        return AgentSettings(**values)

    def mqtt(self, device_id: str) -> MqttSettings:
        password = self.broker.add_user(device_id)
        info = self.broker.info
        return MqttSettings(
            broker=info.url,
            username=device_id,
            password=SecretStr(password),
            topic_prefix=self.prefix,
        )

    def start(self, device_id: str, *, strip: LedDriver | None = None, **overrides: Any) -> Agent:
        settings = self.settings(device_id, **overrides)
        agent = build_agent(settings, self.mqtt(device_id), strip=strip)
        self.agents.append(agent)
        agent.start()
        return agent

    def record(self, device_id: str) -> dict[str, Any]:
        path = self.tmp / device_id / "ztunnel.json"
        return cast(dict[str, Any], json.loads(path.read_text())) if path.exists() else {}

    def starts(self, device_id: str) -> int:
        path = self.tmp / device_id / "ztunnel.json.starts"
        return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(name="rig")
def rig_fixture(broker: Mosquitto, prefix: str, tmp_path: Path) -> Iterator[AgentRig]:
    made = AgentRig(broker, prefix, tmp_path)
    yield made
    for agent in made.agents:
        agent.stop()
