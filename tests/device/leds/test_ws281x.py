import subprocess
import sys
from pathlib import Path

import pytest

from device.leds.driver import LedHardwareError
from device.leds.ws281x import Ws281xStrip, is_raspberry_pi

ROOT = Path(__file__).resolve().parents[3]


def model_file(tmp_path: Path, text: bytes) -> Path:
    path = tmp_path / "model"
    path.write_bytes(text)
    return path


def test_recognises_a_pi_from_the_device_tree_model(tmp_path: Path) -> None:
    pi = model_file(tmp_path, b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert is_raspberry_pi([tmp_path / "absent", pi])


def test_other_boards_and_missing_files_are_not_a_pi(tmp_path: Path) -> None:
    assert not is_raspberry_pi([model_file(tmp_path, b"Radxa ROCK Pi 4B\x00")])
    assert not is_raspberry_pi([tmp_path / "absent"])


def test_refuses_to_build_a_strip_off_a_pi(tmp_path: Path) -> None:
    other = model_file(tmp_path, b"Some Other Board\x00")
    with pytest.raises(LedHardwareError, match="not a Raspberry Pi"):
        Ws281xStrip(model_paths=[other])


def test_refuses_on_this_machine_unless_it_is_a_pi() -> None:
    if is_raspberry_pi():
        pytest.skip("running on a Raspberry Pi")
    with pytest.raises(LedHardwareError, match="not a Raspberry Pi"):
        Ws281xStrip()


def test_a_pi_without_the_library_is_a_hardware_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pi = model_file(tmp_path, b"Raspberry Pi 5 Model B\x00")
    # A None entry makes `import rpi_ws281x` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "rpi_ws281x", None)
    with pytest.raises(LedHardwareError, match="rpi_ws281x is not importable"):
        Ws281xStrip(model_paths=[pi])


def test_importing_the_package_does_not_import_rpi_ws281x() -> None:
    code = (
        "import sys, device.leds, device.leds.ws281x; "
        "print('rpi_ws281x' in sys.modules or '_rpi_ws281x' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
