"""Run every benchmark, write one JSON report and a scaling plot, compare with the targets.

    python -m benchmarks --out bench-results          # the full configuration
    python -m benchmarks --ci --out bench-results     # tiny sizes, for CI (about 1 minute)
    python -m benchmarks --only boot_storm,agent_footprint --out bench-results

Writes `OUT/results.json` (every benchmark's report under `benchmarks`, plus `targets`:
the issue's targets with the measured figure and whether it was met) and
`OUT/scaling.png` (enrollment time and LED fan-out latency against N; skipped, with a
message, when matplotlib is not installed). A benchmark that fails is recorded with its
error, the others still run, and the exit status is then 1.
"""

import argparse
import importlib
import json
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import agent_footprint, boot_storm, led_fanout, rotation_wave
from benchmarks.led_fanout import machine

NAMES = ("led_fanout", "boot_storm", "rotation_wave", "agent_footprint")
FULL = {
    "led_fanout": ["--sizes", "10,50,100,200", "--repeats", "20"],
    "boot_storm": ["--sizes", "100,300,1000"],
    "rotation_wave": ["--size", "1000", "--rate", "50"],
    "agent_footprint": ["--idle", "30"],
}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark module's entry points."""

    parse: Callable[[Sequence[str]], Any]
    run: Callable[..., dict[str, Any]]
    table: Callable[[Sequence[dict[str, Any]]], Table]


MODULES = {
    "led_fanout": Benchmark(led_fanout.parse, led_fanout.run, led_fanout.table),
    "boot_storm": Benchmark(boot_storm.parse, boot_storm.run, boot_storm.table),
    "rotation_wave": Benchmark(rotation_wave.parse, rotation_wave.run, rotation_wave.table),
    "agent_footprint": Benchmark(agent_footprint.parse, agent_footprint.run, agent_footprint.table),
}


# --- targets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One target of the issue and where the measurement stands."""

    target: str
    measured: str
    met: bool | None
    """None: not measured (at the target's size)."""


def verdicts(reports: dict[str, dict[str, Any]]) -> list[Verdict]:
    """The issue's targets against this run's figures."""
    return [*_storm_verdicts(reports.get("boot_storm")), *_led_verdicts(reports.get("led_fanout"))]


def _largest(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report or not report.get("results"):
        return None
    return max(report["results"], key=lambda row: row["n"])  # type: ignore[no-any-return]


def _storm_verdicts(report: dict[str, Any] | None) -> list[Verdict]:
    row = _largest(report)
    if row is None:
        return [Verdict("1,000 devices enrolled and acked in <= 60 s", "not run", None)]
    mesh, n = row["pimesh"], row["n"]
    at = f"N={n}: "
    at_size = n >= 1000
    wall = mesh["wall_s"] if mesh["complete"] else math.inf
    return [
        Verdict(
            "1,000 devices enrolled and acked in <= 60 s",
            at + (f"{wall:.1f} s" if mesh["complete"] else f"{mesh['acked']}/{n} in time"),
            (wall <= 60) if at_size else None,
        ),
        Verdict(
            "<= 6 Kubernetes API requests per device",
            at + f"{mesh['api_requests_per_device']:.1f}",
            mesh["api_requests_per_device"] <= 6,
        ),
    ]


def _led_verdicts(report: dict[str, Any] | None) -> list[Verdict]:
    row = _largest(report)
    if row is None:
        return [Verdict("LED fan-out p99 within 2x of raw broker", "not run", None)]
    return [
        Verdict(
            "LED fan-out p99 within 2x of raw broker",
            f"N={row['n']}: {row['ratio']['p99']:.1f}x",
            row["ratio"]["p99"] <= 2,
        )
    ]


def agent_verdicts(report: dict[str, Any] | None) -> list[Verdict]:
    """The agent's targets (RSS and idle CPU) for both agent variants measured."""
    if not report or not report.get("results"):
        return [Verdict("one agent < 60 MB RSS and < 1% idle CPU", "not run", None)]
    processes = report["results"][0]["processes"]
    out = []
    for name in ("agent", "agent+web"):
        figures = processes[name]
        out.append(
            Verdict(f"{name}: < 60 MB RSS", f"{figures['rss_mb']:.1f} MB", figures["rss_mb"] < 60)
        )
        out.append(
            Verdict(
                f"{name}: < 1% idle CPU",
                f"{figures['cpu_percent']:.2f} %",
                figures["cpu_percent"] < 1,
            )
        )
    return out


def verdict_table(found: Sequence[Verdict]) -> Table:
    """The targets as a rich table."""
    view = Table(title="The issue's targets on this machine")
    view.add_column("target")
    view.add_column("measured", justify="right")
    view.add_column("", justify="center")
    for verdict in found:
        mark = {True: "[green]met", False: "[red]missed", None: "[yellow]n/a"}[verdict.met]
        view.add_row(verdict.target, verdict.measured, mark)
    return view


# --- the plot -------------------------------------------------------------------------------------


def plot(reports: dict[str, dict[str, Any]], path: Path, *, console: Console) -> bool:
    """Enrollment time and LED fan-out latency against N; False when matplotlib is missing."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        console.print(
            "[yellow]scaling.png skipped: matplotlib is not installed "
            "(.venv/bin/pip install matplotlib)"
        )
        return False
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, (storm_axes, led_axes) = pyplot.subplots(1, 2, figsize=(12, 4.8))
    _plot_storm(storm_axes, reports.get("boot_storm"))
    _plot_led(led_axes, reports.get("led_fanout"))
    figure.suptitle(f"pimesh scaling on {_cpu_label()}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True


def _plot_storm(axes: Any, report: dict[str, Any] | None) -> None:
    rows = sorted((report or {}).get("results", []), key=lambda row: row["n"])
    sizes = [row["n"] for row in rows]
    series = (
        ("pimesh (all acked)", "pimesh", "o-"),
        ("MQTT floor (echo)", "transport_floor", "s--"),
        ("API floor (replay)", "api_floor", "^--"),
    )
    for label, key, style in series:
        axes.plot(sizes, [_finite(row[key]["wall_s"]) for row in rows], style, label=label)
    axes.axhline(60, color="grey", linestyle=":", label="target: 60 s at N=1000")
    axes.set(title="Boot storm: announce within 1 s until enrolled", xlabel="devices (N)")
    axes.set_ylabel("seconds")
    axes.legend()
    axes.grid(alpha=0.3)


def _plot_led(axes: Any, report: dict[str, Any] | None) -> None:
    rows = sorted((report or {}).get("results", []), key=lambda row: row["n"])
    sizes = [row["n"] for row in rows]
    for fleet, style in (("pimesh", "-"), ("baseline", "--")):
        for pct, marker in (("p50_ms", "o"), ("p99_ms", "^")):
            values = [row[fleet][pct] for row in rows]
            axes.plot(sizes, values, marker + style, label=f"{fleet} {pct.split('_')[0]}")
    axes.set(title="LED fleet command: PUBLISH to frame", xlabel="devices (N)")
    axes.set_ylabel("milliseconds")
    axes.legend()
    axes.grid(alpha=0.3)


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def _cpu_label() -> str:
    info = machine()
    return f"{info.get('cpu_model', '?')}, {info['cpu_count']} cores, Python {info['python']}"


# --- running --------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """`value` with every non-finite float as None: strict JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def run_one(name: str, args: Sequence[str], *, console: Console) -> dict[str, Any]:
    """One benchmark, its table printed; its report, or its error."""
    module = MODULES[name]
    plan = module.parse(list(args))
    console.rule(name)
    try:
        report = module.run(plan, console=console)
    except Exception as exc:
        console.print(f"[red]{name} failed: {exc}")
        error = f"{type(exc).__name__}: {exc}"
        return {"benchmark": name, "error": error, "trace": traceback.format_exc()}
    console.print(module.table(report["results"]))
    return report


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="a directory")
    parser.add_argument("--ci", action="store_true", help="every benchmark's tiny CI mode")
    parser.add_argument("--only", default=",".join(NAMES), help="benchmarks, comma-separated")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in NAMES]
    if unknown or not wanted:
        parser.error(f"--only: {', '.join(unknown) or 'nothing'}: choose from {', '.join(NAMES)}")
    args.only = wanted
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmarks asked for, writes results.json and scaling.png, prints tables."""
    args = parse(argv)
    console = Console()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    for name in args.only:
        flags = ["--ci"] if args.ci else FULL[name]
        reports[name] = run_one(name, flags, console=console)
    ok = {name: report for name, report in reports.items() if "error" not in report}
    found = verdicts(ok) + agent_verdicts(ok.get("agent_footprint"))
    console.print(verdict_table(found))
    result = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "configuration": "ci" if args.ci else "full",
        "machine": machine(),
        "targets": [vars(verdict) for verdict in found],
        "benchmarks": reports,
    }
    (out / "results.json").write_text(json.dumps(plain(result), indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out / 'results.json'}")
    if plot(ok, out / "scaling.png", console=console):
        console.print(f"wrote {out / 'scaling.png'}")
    return 0 if len(ok) == len(reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
