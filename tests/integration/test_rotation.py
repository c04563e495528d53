"""Fleet-wide token rotation and root-certificate rollover, with real agents.

Times are shortened with flags (a rotation every 2 s; the API's minimum TTL of 600 s),
never by sleeping for minutes.
"""

import json
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from device.agent import Agent
from sandbox.tlsgen import CertificateAuthority
from shared.timestamps import parse_ts
from tests.harness.agents import AgentRig, rig_fixture, wait_until
from tests.harness.controller import ControllerFactory, Mesh

pytestmark = pytest.mark.timeout(120)
rig = rig_fixture


def edge_device(mesh: Mesh, name: str) -> dict[str, Any]:
    try:
        obj = client.CustomObjectsApi(mesh.api).get_namespaced_custom_object(
            "pimesh.io", "v1alpha1", mesh.namespace, "edgedevices", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return {"status": {}}
        raise
    return {"status": {}, **cast(dict[str, Any], obj)}


def acked(mesh: Mesh, name: str) -> int:
    return int(edge_device(mesh, name)["status"].get("ackedGeneration", 0))


def acked_at_least(mesh: Mesh, name: str, generation: int) -> bool:
    return acked(mesh, name) >= generation


ROOT_CERT_COPIES = ("etc/certs/root-cert.pem", "var/run/secrets/istio/root-cert.pem")


def has_cert(agent: Agent, pem: str) -> bool:
    """Both of the seed's copies hold `pem` (the install renames them one after the other)."""
    paths: list[Path] = [agent.settings.root / copy for copy in ROOT_CERT_COPIES]
    return all(path.exists() and path.read_text() == pem for path in paths)


def installed_token(agent: Agent) -> str:
    return (agent.settings.root / "var/lib/istio/ztunnel/istio-token").read_text()


def installed_expiry(agent: Agent) -> datetime:
    record = json.loads((agent.settings.state_dir / "installed.json").read_text())
    return parse_ts(record["token_expires_at"])


def start_fleet(rig: AgentRig, count: int) -> list[Agent]:
    return [rig.start(f"pi-{uuid.uuid4().hex[:6]}-{i}") for i in range(count)]


def test_every_device_gets_and_acks_new_tokens_on_a_short_schedule(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["pi-*"], token_ttl=600, rotate_every=2)
    agents = start_fleet(rig, 3)
    seen: dict[str, set[str]] = {a.device_id: set() for a in agents}

    def rotated_twice() -> bool:
        for agent in agents:
            if agent.bundles.record is not None:
                seen[agent.device_id].add(installed_token(agent))
                assert installed_expiry(agent) > datetime.now(UTC), "installed token expired"
        return all(len(tokens) >= 3 for tokens in seen.values())

    wait_until(rotated_twice, timeout=60, what="three distinct tokens per device")
    for agent in agents:
        wait_until(
            partial(acked_at_least, mesh, agent.device_id, 3), what=f"{agent.device_id} acked"
        )
        status = edge_device(mesh, agent.device_id)["status"]
        assert parse_ts(status["tokenExpiresAt"]) > datetime.now(UTC)


def test_a_device_offline_across_runs_is_current_soon_after_returning(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    ctl = controller_factory(auto_approve=["pi-*"], token_ttl=600, rotate_every=2)
    agent = rig.start(f"pi-{uuid.uuid4().hex[:8]}")
    wait_until(lambda: acked(mesh, agent.device_id) >= 1, what="enrolled")
    agent.stop()
    rig.agents.remove(agent)
    offline_gen = acked(mesh, agent.device_id)
    runs = ctl.rotation.runs
    wait_until(lambda: ctl.rotation.runs >= runs + 2, what="two runs")

    back = rig.start(agent.device_id)
    wait_until(lambda: acked(mesh, back.device_id) > offline_gen, timeout=15, what="current again")
    status = edge_device(mesh, back.device_id)["status"]
    assert back.bundles.record is not None
    assert back.bundles.record.generation >= status["ackedGeneration"]


def test_a_root_certificate_rollover_reaches_every_device(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["pi-*"])
    agents = start_fleet(rig, 2)
    for agent in agents:
        wait_until(partial(acked_at_least, mesh, agent.device_id, 1), what="enrolled")

    new_root = CertificateAuthority(common_name="istio rolled root").cert_pem.decode()
    mesh.set_root_cert(new_root)

    for agent in agents:
        wait_until(partial(has_cert, agent, new_root), what=f"{agent.device_id} has the new root")


def test_two_controllers_rotate_once_per_run(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    first = controller_factory(auto_approve=["pi-*"], token_ttl=600, rotate_every=3)
    second = controller_factory(auto_approve=["pi-*"], token_ttl=600, rotate_every=3)
    agent = rig.start(f"pi-{uuid.uuid4().hex[:8]}")
    wait_until(lambda: acked(mesh, agent.device_id) >= 1, what="enrolled")
    leaders = wait_until(
        lambda: [c for c in (first, second) if c.is_leader()] or None, what="a leader"
    )
    assert len(leaders) == 1, "exactly one replica leads"
    follower = second if leaders[0] is first else first
    wait_until(lambda: leaders[0].rotation.runs >= 2, what="runs")
    assert follower.rotation.runs == 0, "only the leader rotates"
