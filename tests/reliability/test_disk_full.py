"""A real agent whose root file system fills up: old files stay, the failure is reported.

The agent's `--root` is a 1 MiB tmpfs (mounting needs root; without it the test is
skipped, and the install-level disk-full case is still covered without root by
tests/device/test_install.py::test_write_failure_while_staging_leaves_every_old_file,
through RLIMIT_FSIZE). A crash of the agent in the middle of an install is covered by
tests/device/test_install.py::test_sigkill_at_any_moment_leaves_old_or_new_never_partial.
"""

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sandbox.tlsgen import CertificateAuthority
from tests.harness.agents import AgentRig, rig_fixture, wait_until
from tests.harness.controller import ControllerFactory, Mesh
from tests.harness.devices import get_device

pytestmark = pytest.mark.timeout(90)
rig = rig_fixture
FILLER = "filler.bin"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (install-level disk-full test covers this)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write to `path` until the file system is full."""
    chunk = b"\0" * 4096
    with path.open("wb", buffering=0) as sink:
        while True:
            try:
                sink.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != FILLER
    }


def condition(mesh: Mesh, name: str, kind: str) -> dict[str, Any]:
    try:
        status = get_device(mesh, name).get("status", {})
    except client.ApiException:
        return {}
    for cond in status.get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return {}


def test_disk_full_keeps_old_files_and_acks_failed(
    small_fs: Path, controller_factory: ControllerFactory, rig: AgentRig, mesh: Mesh
) -> None:
    controller_factory(auto_approve=["pi-*"])
    name = f"pi-{uuid.uuid4().hex[:8]}"
    agent = rig.start(name, root=small_fs)
    wait_until(
        lambda: condition(mesh, name, "BundleApplied").get("status") == "True",
        what="generation 1 applied",
    )
    before = snapshot(small_fs)
    assert "var/lib/istio/ztunnel/istio-token" in before

    fill(small_fs / FILLER)
    new_root = CertificateAuthority(common_name="istio rolled root").cert_pem.decode()
    mesh.set_root_cert(new_root)
    failed = wait_until(
        lambda: (c := condition(mesh, name, "BundleApplied")).get("status") == "False" and c,
        what="the failed install reported",
    )
    assert failed["reason"] == "Failed"
    assert "No space left on device" in failed["message"]
    assert snapshot(small_fs) == before, "a failed install changed the old files"
    assert [p.name for p in small_fs.rglob("*.pimesh-*.tmp")] == [], "temp files left behind"
    assert agent.bundles.record is not None
    assert agent.bundles.record.generation == 1

    (small_fs / FILLER).unlink()
    mesh.set_root_cert(CertificateAuthority(common_name="istio root three").cert_pem.decode())
    wait_until(
        lambda: condition(mesh, name, "BundleApplied").get("status") == "True",
        what="the next bundle applied once there is room",
    )
    assert agent.bundles.record is not None
    assert agent.bundles.record.generation >= 3
