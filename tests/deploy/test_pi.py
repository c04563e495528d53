"""The Pi side of deploy/: the agent's unit, its example configuration and install scripts."""

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from device import install
from device.settings import AgentSettings
from shared.settings import MqttSettings

ROOT = Path(__file__).resolve().parents[2]
PI = ROOT / "deploy" / "pi"
UNIT = PI / "pimesh-agent.service"
EXEC = "/opt/pimesh/venv/bin/pimesh"
LINE = re.compile(r"^#?(PIMESH_[A-Z_]+)=(.*)$")


def env_lines() -> list[tuple[str, str, bool]]:
    """(name, value, active) of every PIMESH_ line of agent.env, commented or not."""
    found = []
    for line in (PI / "agent.env").read_text().splitlines():
        match = LINE.match(line)
        if match:
            found.append((match[1], match[2], not line.startswith("#")))
    return found


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_agent_env_documents_every_agent_setting() -> None:
    names = [name for name, _, _ in env_lines()]
    fields = {
        f"PIMESH_{f.upper()}" for f in [*AgentSettings.model_fields, *MqttSettings.model_fields]
    }
    assert len(names) == len(set(names)), "a variable appears twice"
    assert set(names) == fields


def test_agent_env_examples_are_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every example, commented or not, set at once (files aside: they exist only on a Pi).
    for name, value, _ in env_lines():
        if value and not name.endswith("_FILE"):
            monkeypatch.setenv(name, value)
    settings, mqtt = AgentSettings(), MqttSettings()
    assert mqtt.address.tls
    assert mqtt.username == settings.device_id  # the broker's ACL is keyed on it
    assert settings.ports == [("http-pi", 8080)]


def test_agent_env_defaults_match_the_code() -> None:
    commented = {name: value for name, value, active in env_lines() if not active and value}
    defaults = {**AgentSettings.model_fields, **MqttSettings.model_fields}
    for name, field in defaults.items():
        key = f"PIMESH_{name.upper()}"
        if key in commented and field.default not in (None, [], ...) and not field.default_factory:
            assert commented[key] == str(field.default), key


def test_the_unit_runs_the_agent_as_root_and_keeps_restarting() -> None:
    service = unit()["Service"]
    assert service["ExecStart"] == f"{EXEC} agent run"
    assert service["EnvironmentFile"] == "/etc/pimesh/agent.env"
    assert service["Restart"] == "always"
    assert "User" not in service  # it writes /etc/hosts and drops ztunnel to istio-proxy
    assert unit()["Unit"]["After"].split()[0] == "network-online.target"
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"
    assert service["ProtectSystem"] == "strict"


def _writable(path: Path, service: configparser.SectionProxy) -> bool:
    allowed = [Path(p.lstrip("-")) for p in service["ReadWritePaths"].split()]
    allowed.append(Path("/var/lib") / service["StateDirectory"])
    return any(path == a or a in path.parents for a in allowed)


def test_the_unit_lets_the_agent_write_everything_it_installs() -> None:
    service = unit()["Service"]
    targets = [
        *install.ROOT_CERT_FILES,
        install.MESH_CONFIG_FILE,
        install.CLUSTER_ENV_FILE,
        install.HOSTS_FILE,
        install.TOKEN_FILE,
        install.TOKEN_LINK,
    ]
    for rel in targets:
        # /var/run is a link to /run on Debian: the unit names the real path.
        path = Path("/") / str(rel).replace("var/run/", "run/", 1)
        assert _writable(path, service), path
        assert _writable(path.parent, service), f"{path}: temp files go next to it"
    settings_default = AgentSettings.model_fields["state_dir"].default
    assert _writable(Path(settings_default) / "keys", service)
    assert not _writable(Path("/usr/bin/python3"), service)
    tmpfiles = (PI / "pimesh-agent.tmpfiles").read_text()
    assert "d /run/secrets 0755 root root -" in tmpfiles.splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at a stand-in executable.
    stand_in = tmp_path / "pimesh"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    copy = tmp_path / "pimesh-agent.service"
    copy.write_text(UNIT.read_text().replace(EXEC, str(stand_in)))
    version = _systemd_version()
    if version >= 254:  # RestartSteps= and RestartMaxDelaySec= are new in systemd 254
        (tmp_path / "pimesh-agent.service.d").mkdir()
        shutil.copy(
            PI / "pimesh-agent-backoff.conf", tmp_path / "pimesh-agent.service.d" / "a.conf"
        )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys and typos only warn


def _systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, check=False)
    match = re.match(r"systemd (\d+)", out.stdout)
    return int(match[1]) if match else 0


def test_the_backoff_drop_in_holds_only_the_newer_keys() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((PI / "pimesh-agent-backoff.conf").read_text())
    assert dict(parser["Service"]) == {"RestartSteps": "10", "RestartMaxDelaySec": "60"}


@pytest.mark.parametrize("script", ["install.sh", "setup.sh", "build-deb.sh"])
def test_scripts_are_executable_posix_shell(script: str) -> None:
    path = PI / script
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_setup_makes_istio_proxy_as_the_seed_does() -> None:
    text = (PI / "setup.sh").read_text()
    assert "groupadd --system istio-proxy" in text
    assert "useradd --system --gid istio-proxy --home-dir /var/lib/istio" in text
    assert "/opt/pimesh/venv" in text
