"""The benchmarks run: each one's tiny CI mode as a subprocess, its report's shape checked.

No timing is asserted here: CI machines are too noisy for that. The figures live in
benchmarks/README.md.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.led_fanout import MAX_PER_PROCESS, shares

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
    assert row["procs"] == params["procs"] == 2, "both fleets spread over two workers"
    assert set(row["cpu_us_per_delivery"]) == {"baseline", "pimesh"}
    for fleet in ("baseline", "pimesh"):
        figures = row[fleet]
        assert set(figures) == FIGURES
        assert figures["samples"] + figures["lost"] == row["n"] * params["repeats"]
        assert figures["samples"] > 0
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert set(row["ratio"]) == {"p50", "p99"}
    assert all(math.isfinite(value) and value > 0 for value in row["ratio"].values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "10,5000"], "each size must be 1 to 1000"),
        (["--sizes", "10,0"], "each size must be 1 to 1000"),
        (["--procs", "0"], "--procs must be at least 1"),
    ],
)
def test_led_fanout_refuses_what_it_cannot_run(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.led_fanout", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("size", "procs", "expected"),
    [
        (3, 4, [1, 1, 1]),  # never more workers than clients
        (10, 4, [3, 3, 2, 2]),
        (200, 4, [50, 50, 50, 50]),
        (1000, 4, [200] * 5),  # a worker holds at most MAX_PER_PROCESS
        (401, 1, [134, 134, 133]),
    ],
)
def test_led_fanout_spreads_a_fleet_evenly_over_its_workers(
    size: int, procs: int, expected: list[int]
) -> None:
    got = shares(size, procs)
    assert [len(share) for share in got] == expected
    assert [i for share in got for i in share] == list(range(size)), "each client once"
    assert max(len(share) for share in got) <= MAX_PER_PROCESS


def _no_constants(name: str) -> None:
    raise AssertionError(f"results.json holds {name}: strict JSON has no NaN or Infinity")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_benchmark_runs_in_ci_mode_and_writes_one_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--ci", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "The issue's targets" in result.stdout, "the verdict table is printed"

    report = json.loads((out / "results.json").read_text(), parse_constant=_no_constants)
    assert report["configuration"] == "ci"
    assert {"cpu_model", "cpu_count", "python"} <= set(report["machine"])
    benchmarks = report["benchmarks"]
    assert set(benchmarks) == {"led_fanout", "boot_storm", "rotation_wave", "agent_footprint"}
    assert not [name for name, got in benchmarks.items() if "error" in got]
    for target in report["targets"]:
        assert set(target) == {"target", "measured", "met"}
        assert target["met"] in (True, False, None)

    [storm] = benchmarks["boot_storm"]["results"]
    assert storm["n"] == 20
    mesh = storm["pimesh"]
    assert mesh["complete"]
    assert mesh["acked"] == 20
    assert mesh["device_errors"] == 0
    assert mesh["latency_ms"]["count"] == 20
    assert mesh["latency_ms"]["p50"] <= mesh["latency_ms"]["p99"] <= mesh["latency_ms"]["max"]
    assert mesh["api_requests"] > 0
    assert sum(mesh["api_requests_by_kind"].values()) == mesh["api_requests"]
    assert mesh["api_requests_by_kind"]["POST serviceaccounts/token"] == 20
    assert mesh["controller"]["peak_rss_mb"] >= mesh["controller"]["rss_mb"] > 0
    assert storm["transport_floor"]["replies"] == 20
    assert storm["api_floor"]["calls"] > 0
    assert storm["api_floor"]["errors"] == 0
    assert set(storm["ratio"]) == {"transport", "api"}
    assert all(value > 0 for value in storm["ratio"].values())

    [wave] = benchmarks["rotation_wave"]["results"]
    assert wave["complete"]
    assert wave["acked"] == 20
    assert wave["tokens"] == 20, "one new token per device"
    assert sum(wave["histogram_per_s"].values()) == wave["tokens"]
    issue = wave["issue_s"]
    assert issue["p0"] <= issue["p50"] <= issue["p100"]

    [footprint] = benchmarks["agent_footprint"]["results"]
    processes = footprint["processes"]
    assert set(processes) == {"agent", "agent+web", "bare python", "bare paho"}
    assert all(figures["rss_mb"] > 0 for figures in processes.values())
    assert all(figures["cpu_percent"] >= 0 for figures in processes.values())

    [fanout] = benchmarks["led_fanout"]["results"]
    assert fanout["n"] == 3

    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "scaling.png").is_file() == has_matplotlib
    if not has_matplotlib:
        assert "matplotlib is not installed" in result.stdout


def test_benchmarks_refuse_an_unknown_name(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "boot_storm,nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "nope" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results.json").exists()
