"""The benchmarks run: each one's tiny CI mode as a subprocess, its report's shape checked.

No timing is asserted here: CI machines are too noisy for that. The figures live in
benchmarks/README.md.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIGURES = {"p50_ms", "p99_ms", "max_ms", "fleet_complete_p50_ms", "samples", "lost"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_led_fanout_ci_mode_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "led_fanout.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.led_fanout", "--ci", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LED fleet command" in result.stdout, "the table is printed"

    report = json.loads(out.read_text())
    assert report["benchmark"] == "led_fanout"
    assert {"cpu_count", "python", "platform"} <= set(report["machine"])
    assert report["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
    params = report["params"]
    assert params["sizes"] == [3]
    [row] = report["results"]
    assert row["n"] == 3
    for fleet in ("baseline", "pimesh"):
        figures = row[fleet]
        assert set(figures) == FIGURES
        assert figures["samples"] + figures["lost"] == row["n"] * params["repeats"]
        assert figures["samples"] > 0
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert set(row["ratio"]) == {"p50", "p99"}
    assert all(math.isfinite(value) and value > 0 for value in row["ratio"].values())


def test_led_fanout_refuses_a_fleet_one_process_cannot_hold(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.led_fanout", "--sizes", "10,500"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "FD_SETSIZE" in result.stderr
    assert "Traceback" not in result.stderr
