"""The controller is SIGKILLed in the middle of a rotation run, then started again.

The controller runs as `python -m cli controller run` in a child process (as in
tests/integration/test_controller_faults.py, which covers a kill mid-enrollment), with
`--token-ttl 600 --rotate-every 3`; the devices are real agents on a private broker.
A delayed TokenRequest pins the kill inside a run.
"""

import json
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from device.agent import Agent
from sandbox.broker import Mosquitto
from sandbox.kubeapi import KubeApiServer
from shared.timestamps import parse_ts
from tests.harness.agents import AgentRig, wait_until
from tests.harness.broker import BrokerFactory
from tests.harness.controller import ISTIOD_IP, Mesh
from tests.harness.devices import get_device
from tests.integration.test_controller_faults import ControllerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stack(
    broker_factory: BrokerFactory, mesh: Mesh, kubeconfig: Path, prefix: str, tmp_path: Path
) -> Iterator[tuple[ControllerProcess, AgentRig]]:
    private: Mosquitto = broker_factory()
    info = private.info
    args = [
        sys.executable, "-m", "cli", "controller", "run",
        "--namespace", mesh.namespace, "--kubeconfig", str(kubeconfig),
        "--istiod-ip", ISTIOD_IP, "--auto-approve", "pi-*", "--metrics-port", "0",
        "--token-ttl", "600", "--rotate-every", "3",
        "--broker", info.url, "--username", info.controller_username,
        "--topic-prefix", prefix,
    ]  # fmt: skip
    env = {**os.environ, "PIMESH_PASSWORD": info.controller_password}
    ctl = ControllerProcess(args, env, tmp_path / "controller.log")
    rig = AgentRig(private, prefix, tmp_path / "agents")
    yield ctl, rig
    for agent in rig.agents:
        agent.stop()
    ctl.stop()


def status_of(mesh: Mesh, name: str) -> dict[str, Any]:
    return dict(get_device(mesh, name).get("status", {}))


def acked(mesh: Mesh, name: str) -> int:
    try:
        return int(status_of(mesh, name).get("ackedGeneration", 0))
    except client.ApiException as exc:  # 404 until the first announce
        if exc.status != 404:
            raise
        return 0


def installed_expiry(agent: Agent) -> datetime:
    record = json.loads((agent.settings.state_dir / "installed.json").read_text())
    return parse_ts(record["token_expires_at"])


def test_sigkill_during_a_rotation_run_leaves_every_device_current(
    stack: tuple[ControllerProcess, AgentRig], mesh: Mesh, kube_api: KubeApiServer
) -> None:
    ctl, rig = stack
    ctl.start()
    agents = [rig.start(f"pi-{uuid.uuid4().hex[:6]}-{i}") for i in range(3)]
    for agent in agents:
        wait_until(lambda a=agent: acked(mesh, a.device_id) >= 1, timeout=30, what="enrolled")  # type: ignore[misc]

    token_path = f"/namespaces/{mesh.namespace}/serviceaccounts/[^/]+/token$"
    slow = kube_api.inject(method="POST", path_regex=token_path, status=None, delay_s=3)
    wait_until(lambda: slow.hits == 1, timeout=20, what="a rotation's TokenRequest in flight")
    at_kill = {a.device_id: acked(mesh, a.device_id) for a in agents}
    ctl.kill()

    ctl.start()
    for agent in agents:
        wait_until(
            lambda a=agent: acked(mesh, a.device_id) > at_kill[a.device_id],  # type: ignore[misc]
            timeout=40,
            what=f"{agent.device_id} acked a generation after the kill",
        )
    now = datetime.now(UTC)
    issued = {t.token for t in kube_api.issued_tokens if t.namespace == mesh.namespace}
    for agent in agents:
        status = status_of(mesh, agent.device_id)
        assert parse_ts(status["tokenExpiresAt"]) > now
        assert installed_expiry(agent) > now, "the installed token is not expired"
        token = (agent.settings.root / "var/lib/istio/ztunnel/istio-token").read_text()
        assert token in issued
        assert status["phase"] == "Enrolled"
