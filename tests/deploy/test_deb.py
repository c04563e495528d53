"""deploy/pi/build-deb.sh builds an installable pimesh-agent .deb (dpkg-deb, no install)."""

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "pi" / "build-deb.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WHEEL = f"usr/share/pimesh-agent/pimesh-{VERSION}-py3-none-any.whl"

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (Debian's dpkg package)"
)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    # PYTHON: build the wheel with this interpreter's pip, from a copy of the checkout.
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        [str(BUILD), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == out / f"pimesh-agent_{VERSION}_all.deb"
    return path


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_the_control_file_names_the_package(deb: Path) -> None:
    fields = dict(
        line.split(": ", 1)
        for line in dpkg_deb("--info", str(deb), "control").splitlines()
        if ": " in line
    )
    assert fields["Package"] == "pimesh-agent"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == "all"
    assert "python3-venv" in fields["Depends"]
    assert dpkg_deb("--info", str(deb), "conffiles").split() == ["/etc/pimesh/agent.env"]


def test_it_holds_the_unit_the_config_and_the_wheel(deb: Path) -> None:
    listing = {
        line.split()[-1].removeprefix("./"): line.split()[0]
        for line in dpkg_deb("--contents", str(deb)).splitlines()
    }
    assert listing["lib/systemd/system/pimesh-agent.service"] == "-rw-r--r--"
    assert listing["usr/lib/tmpfiles.d/pimesh-agent.conf"] == "-rw-r--r--"
    assert listing["etc/pimesh/agent.env"] == "-rw-------"  # it holds the MQTT password
    assert listing["usr/lib/pimesh-agent/setup"] == "-rwxr-xr-x"
    assert WHEEL in listing
    owners = {line.split()[1] for line in dpkg_deb("--contents", str(deb)).splitlines()}
    assert owners == {"root/root"}


def test_the_files_are_the_checked_in_ones(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    pi = ROOT / "deploy" / "pi"
    pairs = {
        "lib/systemd/system/pimesh-agent.service": "pimesh-agent.service",
        "etc/pimesh/agent.env": "agent.env",
        "usr/lib/pimesh-agent/setup": "setup.sh",
        "usr/share/pimesh-agent/backoff.conf": "pimesh-agent-backoff.conf",
        "usr/lib/tmpfiles.d/pimesh-agent.conf": "pimesh-agent.tmpfiles",
    }
    for packaged, source in pairs.items():
        assert (tmp_path / packaged).read_bytes() == (pi / source).read_bytes(), packaged


def test_the_wheel_provides_the_pimesh_command(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    with zipfile.ZipFile(tmp_path / WHEEL) as wheel:
        names = wheel.namelist()
        entry_points = wheel.read(f"pimesh-{VERSION}.dist-info/entry_points.txt").decode()
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert scripts["console_scripts"]["pimesh"] == "cli.app:main"
    assert {"device/agent.py", "cli/app.py", "shared/messages.py"} <= set(names)
    assert not any(name.startswith("tests/") for name in names)


def test_the_maintainer_scripts_set_up_and_clean_up(deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "DEBIAN"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)
    assert "/usr/lib/pimesh-agent/setup" in (control / "postinst").read_text()
    assert "systemctl --quiet disable pimesh-agent.service" in (control / "prerm").read_text()
    assert "rm -rf /opt/pimesh/venv" in (control / "postrm").read_text()
