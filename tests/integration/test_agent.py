"""The real agent meets the real controller: Mosquitto, the API over HTTP, a stand-in ztunnel."""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tests.harness.agents import AgentRig, rig_fixture, wait_until  # noqa: F401 - fixture
from tests.harness.controller import ISTIOD_IP, ControllerFactory, Mesh

pytestmark = pytest.mark.timeout(90)


def edge_device(mesh: Mesh, name: str) -> dict[str, Any]:
    """The EdgeDevice, or {"status": {}} while it does not exist yet."""
    try:
        obj = client.CustomObjectsApi(mesh.api).get_namespaced_custom_object(
            "pimesh.io", "v1alpha1", mesh.namespace, "edgedevices", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return {"status": {}}
        raise
    return {"status": {}, **cast(dict[str, Any], obj)}


def test_agent_enrolls_installs_the_seed_layout_and_runs_ztunnel(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["pi-*"])
    device_id = f"pi-{uuid.uuid4().hex[:8]}"
    agent = rig.start(device_id)
    root = agent.settings.root

    wait_until(
        lambda: edge_device(mesh, device_id)["status"].get("ackedGeneration") == 1, what="ack"
    )
    token = (root / "var/lib/istio/ztunnel/istio-token").read_text()
    assert token.count(".") == 2, "a JWT from the TokenRequest API"
    assert (root / "var/lib/istio/ztunnel/istio-token").stat().st_mode & 0o777 == 0o600
    link = root / "var/run/secrets/tokens/istio-token"
    assert link.is_symlink()
    assert link.read_text() == token
    for path in ("etc/certs/root-cert.pem", "var/run/secrets/istio/root-cert.pem"):
        assert (root / path).read_text() == mesh.root_cert
    cluster_env = (root / "var/lib/istio/ztunnel/cluster.env").read_text()
    assert f"SERVICE_ACCOUNT='{device_id}'" in cluster_env
    assert (
        "discoveryAddress: istiod.istio-system.svc:15012"
        in (root / "etc/istio/config/mesh").read_text()
    )
    hosts = (root / "etc/hosts").read_text()
    assert f"{ISTIOD_IP} istiod.istio-system.svc" in hosts
    assert "# BEGIN pimesh" in hosts

    record = wait_until(lambda: rig.record(device_id), what="ztunnel started")
    env = record["env"]
    assert env["PROXY_WORKLOAD_INFO"] == f"{mesh.namespace}/{device_id}/{device_id}"
    assert env["AUTH_TOKEN"] == str(root / "var/lib/istio/ztunnel/istio-token")
    assert env["PROXY_MODE"] == "dedicated"
    assert record["cwd"] == str(root)
    assert agent.ztunnel.state == "running"

    status = wait_until(
        lambda: (
            edge_device(mesh, device_id)["status"].get("ztunnel") == "running"
            and edge_device(mesh, device_id)["status"]
        ),
        what="online status with ztunnel running",
    )
    assert status["online"] is True
    assert (agent.settings.state_dir / "sign.key").stat().st_mode & 0o777 == 0o600


def test_new_token_replaces_the_file_without_restarting_ztunnel(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["pi-*"])
    device_id = f"pi-{uuid.uuid4().hex[:8]}"
    agent = rig.start(device_id)
    token_file = agent.settings.root / "var/lib/istio/ztunnel/istio-token"
    wait_until(
        lambda: edge_device(mesh, device_id)["status"].get("ackedGeneration") == 1, what="gen 1"
    )
    wait_until(lambda: rig.starts(device_id) == 1, what="ztunnel started once")
    first = token_file.read_text()

    client.CustomObjectsApi(mesh.api).patch_namespaced_custom_object(
        "pimesh.io",
        "v1alpha1",
        mesh.namespace,
        "edgedevices",
        device_id,
        {"metadata": {"annotations": {"pimesh.io/rotate-requested": "2026-11-26T10:00:00Z"}}},
    )
    wait_until(
        lambda: edge_device(mesh, device_id)["status"].get("ackedGeneration") == 2, what="gen 2"
    )
    assert token_file.read_text() != first
    assert rig.starts(device_id) == 1, "a new token alone must not restart ztunnel"
    assert edge_device(mesh, device_id)["status"]["rotationHandled"] == "2026-11-26T10:00:00Z"


def test_restarted_agent_keeps_its_keys_and_is_not_asked_again(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    controller_factory()
    device_id = f"pi-{uuid.uuid4().hex[:8]}"
    agent = rig.start(device_id)
    wait_until(
        lambda: edge_device(mesh, device_id).get("status", {}).get("phase") == "Pending",
        what="pending",
    )
    client.CustomObjectsApi(mesh.api).patch_namespaced_custom_object(
        "pimesh.io",
        "v1alpha1",
        mesh.namespace,
        "edgedevices",
        device_id,
        {"spec": {"approved": True}},
    )
    wait_until(
        lambda: edge_device(mesh, device_id)["status"].get("ackedGeneration") == 1, what="enrolled"
    )
    key_before = agent.keys.sign_public_b64
    agent.stop()
    rig.agents.remove(agent)

    again = rig.start(device_id)
    assert again.keys.sign_public_b64 == key_before
    wait_until(lambda: again.last_enrollment is not None, what="enrollment seen again")
    assert again.last_enrollment is not None
    assert again.last_enrollment.phase == "Enrolled"
    status = edge_device(mesh, device_id)["status"]
    assert status["phase"] == "Enrolled"
    assert status["generation"] == 1, "a restart with intact files needs no new bundle"
    wait_until(lambda: again.ztunnel.state == "running", what="ztunnel back")


def test_abrupt_stop_goes_offline_and_comes_back(
    controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh, tmp_path: Path
) -> None:
    controller_factory(auto_approve=["pi-*"])
    device_id = f"pi-{uuid.uuid4().hex[:8]}"
    settings = rig.settings(device_id)
    mqtt = rig.mqtt(device_id)
    env = {
        **os.environ,
        "PIMESH_PASSWORD": mqtt.password.get_secret_value() if mqtt.password else "",
        "PIMESH_TOPIC_PREFIX": rig.prefix,
    }
    args = [
        sys.executable, "-m", "cli", "agent", "run",
        "--device-id", device_id,
        "--root", str(settings.root), "--state-dir", str(settings.state_dir),
        "--address", "192.168.1.178", "--ztunnel-cmd", "none", "--led-backend", "simulated",
        "--http-port", "0", "--port", "http-pi=8080", "--keepalive", "2",
        "--broker", mqtt.broker, "--username", device_id,
    ]  # fmt: skip

    log = tmp_path / "agent.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT)

    proc = start()
    try:
        wait_until(
            lambda: edge_device(mesh, device_id).get("status", {}).get("online") is True,
            what="online",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_until(
            lambda: edge_device(mesh, device_id)["status"]["online"] is False,
            timeout=15,
            what="offline",
        )
        proc = start()
        wait_until(
            lambda: edge_device(mesh, device_id)["status"]["online"] is True, what="back online"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        wait_until(
            lambda: edge_device(mesh, device_id)["status"]["online"] is False,
            what="clean stop is offline",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
