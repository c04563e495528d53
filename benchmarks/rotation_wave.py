"""Rotation wave: new tokens for a whole enrolled fleet at once; how fast, and how even?

    python -m benchmarks.rotation_wave --size 1000 --rate 50 --out bench-results/rotation.json
    python -m benchmarks.rotation_wave --ci --out bench-results/rotation-ci.json   # N=20

N light devices (`benchmarks.lightdevice`) are enrolled first, as in the boot storm
(`benchmarks.boot_storm.storm`) but spread at 20 announces a second so that the storm's
own limits stay out of the way. Then `pimesh rotate --all` sets the rotate-request
annotation on every EdgeDevice, and the controller answers each with a TokenRequest and a
new bundle (generation 2), which the device opens and acks. Measured: the wall time
from the command's start until every EdgeDevice has `status.ackedGeneration >= 2`
(and, from the devices' side, until the last generation 2 arrived), how long the
command itself took, the TokenRequest rate achieved (from the emulator, timed to the
microsecond by `benchmarks.stack.Cluster`), and how the renewals spread over the wave
(percentiles of the issue times from the command's start, and a histogram per second).

The pace (`--rate`, `--concurrency`) reaches the controller as `--rotation-rate` and
`--rotation-concurrency` when `pimesh controller run --help` lists them, else as
`PIMESH_ROTATION_RATE` / `PIMESH_ROTATION_CONCURRENCY` when its settings have those
fields; the achieved rate is compared with it (no such settings: reported unpaced).
"""

import argparse
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.boot_storm import Bench, Storm, bench_broker, storm, wait_acked
from benchmarks.led_fanout import machine, percentile
from benchmarks.report import save
from benchmarks.stack import ROOT, clean_env, controller_flags, request_kinds
from controller.settings import ControllerSettings

DEFAULT_RATE = 50.0
DEFAULT_CONCURRENCY = 4
ENROLL_RATE = 20.0
"""Devices announcing per second while the fleet is enrolled, before the wave."""
RATE_FLAG = "--rotation-rate"


@dataclass(frozen=True)
class Plan:
    """What to run."""

    size: int
    rate: float
    concurrency: int
    timeout_s: float
    out: Path


@dataclass(frozen=True)
class Pacing:
    """How the rotation rate reaches the controller: its flags, else its environment."""

    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def via(self) -> str | None:
        """Flag, env or None (this controller has no pacing settings at all)."""
        return "flag" if self.flags else "env" if self.env else None


def pacing(plan: Plan) -> Pacing:
    """The pacing settings for this build of the controller.

    `--rotation-rate` and `--rotation-concurrency` when `pimesh controller run --help`
    lists them; else, when `ControllerSettings` has the fields, `PIMESH_ROTATION_RATE`
    and `PIMESH_ROTATION_CONCURRENCY` (settings read the environment too); else nothing.
    Whether the controller honours them shows in the measured rate.
    """
    if RATE_FLAG in controller_flags():
        flags = (RATE_FLAG, str(plan.rate), "--rotation-concurrency", str(plan.concurrency))
        return Pacing(flags=flags)
    if {"rotation_rate", "rotation_concurrency"} <= set(ControllerSettings.model_fields):
        env = {
            "PIMESH_ROTATION_RATE": str(plan.rate),
            "PIMESH_ROTATION_CONCURRENCY": str(plan.concurrency),
        }
        return Pacing(env=env)
    return Pacing()


def rotate_all(run: Storm) -> tuple[float, str]:
    """`pimesh rotate --all` against the fleet's namespace; (seconds it took, its output)."""
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "rotate",
            "--all",
            "--kubeconfig",
            str(run.cluster.kubeconfig),
            "--namespace",
            run.cluster.namespace,
        ],
        cwd=ROOT,
        env=clean_env(COLUMNS="120"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pimesh rotate --all failed: {result.stderr or result.stdout}")
    return time.monotonic() - started, result.stdout


def wave(bench: Bench, plan: Plan, *, pace: Pacing) -> dict[str, Any]:
    """Enroll the fleet, rotate it all, measure the wave."""
    # Enrolled gradually (ENROLL_RATE a second): the wave is measured here, not a storm.
    spread = max(1.0, plan.size / ENROLL_RATE)
    with storm(
        bench,
        plan.size,
        timeout_s=plan.timeout_s,
        spread_s=spread,
        controller_extra=pace.flags,
        controller_env=pace.env,
    ) as run:
        if run.acked == 0:
            raise RuntimeError(f"no device of {plan.size} enrolled in time")
        enrolled = run.acked  # a device whose first ack was lost still rotates
        cluster = run.cluster
        mark, tokens_before = cluster.mark(), len(cluster.token_times)
        before = run.controller.sample()
        started = time.monotonic()
        cli_s, _ = rotate_all(run)
        done_at, seen = wait_acked(cluster, run.fleet, 2, count=plan.size, timeout_s=plan.timeout_s)
        after = run.controller.sample()
        requests = cluster.requests(since=mark)
        issued = [t - started for t in cluster.token_times[tokens_before:]]
        records, _ = run.fleet.report()
    arrivals = [r.bundles[2] - started for r in records if 2 in r.bundles]
    wall = done_at - started if done_at is not None else math.nan
    return {
        "n": plan.size,
        "complete": done_at is not None,
        "acked": seen,
        "wall_s": round(wall, 3),
        "cli_s": round(cli_s, 3),
        "device_side_wall_s": round(max(arrivals, default=math.nan), 3),
        "tokens": len(issued),
        "token_rate_per_s": _rate(issued),
        "issue_s": _spread(issued),
        "bundle_arrival_s": _spread(arrivals),
        "histogram_per_s": _histogram(issued),
        "api_requests": len(requests),
        "api_requests_per_device": round(len(requests) / plan.size, 2),
        "api_requests_by_kind": request_kinds(requests),
        "controller": {
            "cpu_s": round(after.cpu_s - before.cpu_s, 2),
            "peak_rss_mb": round(after.peak_rss_mb, 1),
        },
        "enrolled_before": enrolled,
        "enrollment_spread_s": spread,
    }


def _rate(times: Sequence[float]) -> float:
    """Tokens per second between the first and the last one."""
    if len(times) < 2:
        return math.nan
    span = max(times) - min(times)
    return round((len(times) - 1) / span, 1) if span > 0 else math.inf


def _spread(times: Sequence[float]) -> dict[str, float]:
    return {
        f"p{pct}": round(percentile(times, pct), 3) if times else math.nan
        for pct in (0, 10, 50, 90, 99, 100)
    }


def _histogram(times: Sequence[float]) -> dict[str, int]:
    counts = Counter(int(t) for t in times)
    return {str(second): counts.get(second, 0) for second in range(max(counts, default=-1) + 1)}


def run(plan: Plan, *, console: Console) -> dict[str, Any]:
    """Enroll, rotate, measure; returns the report."""
    pace = pacing(plan)
    how = f"paced at {plan.rate}/s by {pace.via}" if pace.via else "unpaced: no pacing settings"
    console.log(f"N={plan.size}: enroll, then rotate --all ({how})")
    with bench_broker() as bench:
        result = wave(bench, plan, pace=pace)
    configured = plan.rate if pace.via else None
    result["configured_rate_per_s"] = configured
    result["rate_ratio"] = (
        round(result["token_rate_per_s"] / configured, 2) if configured else math.nan
    )
    return {
        "benchmark": "rotation_wave",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            "size": plan.size,
            "pacing_via": pace.via,
            "rotation_rate": configured,
            "rotation_concurrency": plan.concurrency if pace.via else None,
            "trigger": "pimesh rotate --all",
        },
        "results": [result],
    }


def table(results: Sequence[dict[str, Any]]) -> Table:
    """The results as a rich table."""
    view = Table(
        title="Rotation wave: pimesh rotate --all until every device acked its new bundle",
        caption="issue times: seconds after the command started, p10/p50/p90",
    )
    for column in ("N", "wave s", "cli s", "tokens/s", "configured", "issue p10/50/90 s"):
        view.add_column(column, justify="right")
    for row in results:
        issue = row["issue_s"]
        configured = row["configured_rate_per_s"]
        view.add_row(
            str(row["n"]) + ("" if row["complete"] else f" ({row['acked']} done)"),
            f"{row['wall_s']:.2f}",
            f"{row['cli_s']:.2f}",
            f"{row['token_rate_per_s']:.1f}",
            f"{configured:.0f}/s" if configured else "unpaced",
            f"{issue['p10']:.1f}/{issue['p50']:.1f}/{issue['p90']:.1f}",
        )
    return view


def parse(argv: Sequence[str] | None = None) -> Plan:
    """The command line as a `Plan`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rotation_wave", description=__doc__)
    parser.add_argument("--size", type=int, default=1000, help="enrolled devices")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="--rotation-rate")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="--rotation-concurrency"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="s per phase")
    parser.add_argument("--out", type=Path, default=Path("bench-results/rotation_wave.json"))
    parser.add_argument("--ci", action="store_true", help="tiny run: N=20")
    args = parser.parse_args(argv)
    if args.ci:
        return Plan(
            size=20, rate=args.rate, concurrency=args.concurrency, timeout_s=120, out=args.out
        )
    if args.size < 1 or args.rate <= 0 or args.concurrency < 1:
        parser.error("--size and --concurrency must be at least 1 and --rate positive")
    return Plan(
        size=args.size,
        rate=args.rate,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark, prints the table and writes the JSON report."""
    plan = parse(argv)
    console = Console()
    report = run(plan, console=console)
    console.print(table(report["results"]))
    save(report, plan.out, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
