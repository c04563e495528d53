"""The code-quality gates run as part of the test command: ruff, mypy --strict, import-linter."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

CHECKS = {
    "ruff-lint": [str(BIN / "ruff"), "check", "."],
    "ruff-format": [str(BIN / "ruff"), "format", "--check", "."],
    "mypy": [
        str(BIN / "mypy"),
        "shared",
        "controller",
        "device",
        "sandbox",
        "cli",
        "benchmarks",
        "tests",
    ],
    "import-linter": [str(BIN / "lint-imports")],
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_passes(name: str) -> None:
    result = subprocess.run(
        CHECKS[name], cwd=ROOT, capture_output=True, text=True, timeout=590, check=False
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
