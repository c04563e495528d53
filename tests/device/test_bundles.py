"""What the agent does with bundles, good and bad (PROTOCOL.md), with real crypto and files."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from device.bundles import BundleInstaller
from device.settings import AgentSettings
from device.ztunnel import ZtunnelSupervisor
from shared.codec import encode
from shared.crypto import DeviceKeys, seal_bundle
from shared.messages import Bundle, BundleContent, HostEntry

DEVICE = "pi-kitchen"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def content(
    generation: int, *, token: str = "header.payload.sig", root_cert: str = "ROOT"
) -> BundleContent:
    return BundleContent(
        generation=generation,
        issued_at=NOW,
        identity=f"spiffe://cluster.local/ns/pi-fleet/sa/{DEVICE}",
        namespace="pi-fleet",
        service_account=DEVICE,
        root_cert=root_cert,
        token=SecretStr(token),
        token_expires_at=NOW + timedelta(hours=1),
        cluster_env="CANONICAL_SERVICE='led-pi'\n",
        mesh_config="defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n",
        hosts=(HostEntry(ip="203.0.113.10", names=("istiod.istio-system.svc",)),),
        ztunnel_env={"PROXY_MODE": "dedicated"},
    )


def bundle_for(
    keys: DeviceKeys,
    body: bytes,
    *,
    generation: int,
    device_id: str = DEVICE,
    seal_id: str | None = None,
) -> Bundle:
    sealed = seal_bundle(
        body, keys.kx_key.public_key(), device_id=seal_id or device_id, generation=generation
    )
    return Bundle(device_id=device_id, ts=NOW, generation=generation, sealed=sealed)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.root.mkdir()
        self.settings = AgentSettings(device_id=DEVICE, root=self.root, state_dir=tmp / "state")
        self.keys = DeviceKeys.load_or_create(self.settings.state_dir)
        self.acks: list[tuple[int, str, str]] = []
        self.ztunnel = ZtunnelSupervisor(None, cwd=self.root)
        self.installer = self.new_installer()

    def new_installer(self) -> BundleInstaller:
        return BundleInstaller(
            self.settings,
            keys=self.keys,
            ztunnel=self.ztunnel,
            ack=lambda g, r, d: self.acks.append((g, r, d)),
            changed=lambda: None,
        )

    def give(self, generation: int, **kw: Any) -> None:
        self.installer.handle(
            bundle_for(self.keys, encode(content(generation, **kw)), generation=generation)
        )

    def files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_good_bundle_is_installed_and_acked(rig: Rig) -> None:
    rig.give(1)
    assert rig.acks == [(1, "applied", "installed")]
    assert (rig.root / "var/lib/istio/ztunnel/istio-token").read_text() == "header.payload.sig"
    assert rig.installer.record is not None
    assert rig.installer.record.generation == 1


def test_equal_generation_is_acked_again_without_reinstalling(rig: Rig) -> None:
    rig.give(1)
    token = rig.root / "var/lib/istio/ztunnel/istio-token"
    inode = token.stat().st_ino
    rig.give(1)
    assert rig.acks[-1] == (1, "applied", "already installed")
    assert token.stat().st_ino == inode


def test_equal_generation_is_reinstalled_when_a_reboot_emptied_var_run(rig: Rig) -> None:
    rig.give(1)
    (rig.root / "var/run/secrets/istio/root-cert.pem").unlink()
    rig.give(1)
    assert rig.acks[-1] == (1, "applied", "installed")
    assert (rig.root / "var/run/secrets/istio/root-cert.pem").read_text() == "ROOT"


def test_older_generation_is_ignored(rig: Rig) -> None:
    rig.give(2, token="new.token.two")
    before = rig.files()
    rig.give(1, token="old.token.one")
    assert rig.acks == [(2, "applied", "installed")]
    assert rig.files() == before


def test_a_restarted_agent_remembers_what_it_installed(rig: Rig) -> None:
    rig.give(3)
    again = rig.new_installer()
    assert again.record is not None
    assert again.record.generation == 3
    assert again.token_expires_at == NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda r: bundle_for(DeviceKeys.generate(), encode(content(2)), generation=2),
            "does not open",
            id="sealed-to-another-key",
        ),
        pytest.param(
            lambda r: bundle_for(r.keys, encode(content(2)), generation=2, seal_id="pi-other"),
            "does not open",
            id="sealed-for-another-id",
        ),
        pytest.param(
            lambda r: bundle_for(r.keys, encode(content(5)), generation=2),
            "differs",
            id="inner-generation-differs",
        ),
        pytest.param(
            lambda r: bundle_for(r.keys, b"\x00garbage", generation=2),
            "not JSON",
            id="garbage-inside",
        ),
        pytest.param(
            lambda r: bundle_for(r.keys, b'{"generation": 2}', generation=2),
            "bundle_content",
            id="incomplete-content",
        ),
    ],
)
def test_bad_bundles_are_acked_failed_and_leave_files_untouched(
    rig: Rig, make: Any, reason: str
) -> None:
    rig.give(1)
    before = rig.files()
    rig.installer.handle(make(rig))
    generation, result, detail = rig.acks[-1]
    assert (generation, result) == (2, "failed")
    assert reason in detail
    assert "header.payload.sig" not in detail
    assert rig.files() == before
    assert rig.installer.record is not None
    assert rig.installer.record.generation == 1


def test_an_unwritable_root_is_a_clear_failure(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.root.rmdir()
    rig.root.write_text("not a directory")
    rig.give(1)
    generation, result, detail = rig.acks[-1]
    assert (generation, result) == (1, "failed")
    assert str(rig.root) in detail
    assert rig.installer.record is None


def test_revoke_removes_the_token_and_hosts_block_but_keeps_keys(rig: Rig) -> None:
    (rig.root / "etc").mkdir()
    (rig.root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    rig.give(1)
    rig.installer.revoke()
    assert not (rig.root / "var/lib/istio/ztunnel/istio-token").exists()
    assert (rig.root / "etc/hosts").read_text() == "127.0.0.1 localhost\n"
    assert (rig.settings.state_dir / "sign.key").exists()
