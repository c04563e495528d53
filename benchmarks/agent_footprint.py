"""Agent footprint: memory and idle CPU of one real agent process, enrolled and at rest.

    python -m benchmarks.agent_footprint --idle 30 --out bench-results/agent_footprint.json
    python -m benchmarks.agent_footprint --ci --out bench-results/agent-ci.json   # 5 s idle

Against one real Mosquitto, the API emulator and the controller as a child process
(`benchmarks.stack`), it starts `python -m cli agent run` as a process of its own, with
a simulated strip and the stand-in ztunnel (`sandbox.standin_ztunnel`, a child of the
agent whose own footprint is not counted: the real ztunnel is a Rust binary), twice:

- `agent`: `--http-port 0`, the agent without its LED web page;
- `agent+web`: the LED web page served on a free port, as on a real Pi.

Once both are enrolled (their EdgeDevice has `status.ackedGeneration >= 1`) and have
settled, it samples, from /proc, their RSS (VmRSS and the peak VmHWM) and their CPU
seconds over an idle window of `--idle` seconds, in percent of one core. Baselines, run
at the same time and sampled over the same window: a bare Python process that sleeps,
and a bare paho client (connected, subscribed to three topics, keepalive as the agent's)
doing nothing else. Reported: each figure and the agent's ratios to both baselines.
"""

import argparse
import math
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.boot_storm import Bench, bench_broker
from benchmarks.led_fanout import machine
from benchmarks.report import save
from benchmarks.stack import (
    ROOT,
    Cluster,
    ControllerProcess,
    ProcessSample,
    acked,
    clean_env,
)
from sandbox.run import free_port

SETTLE_S = 3.0
"""After enrollment, before the idle window: the agent's start-up work is over."""
AGENT_KEEPALIVE_S = 30
"""The agent's default MQTT keepalive (`--keepalive`), also given to the bare client."""

BARE_SLEEPER = "import time; time.sleep(3600)"
BARE_PAHO = textwrap.dedent(
    """
    import os
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=os.environ["BENCH_USER"],
                    protocol=MQTTProtocolVersion.MQTTv5)
    c.username_pw_set(os.environ["BENCH_USER"], os.environ["BENCH_PASSWORD"])
    base = os.environ["BENCH_PREFIX"] + "/devices/" + os.environ["BENCH_USER"]
    c.on_connect = lambda c, *_: c.subscribe(
        [(base + "/enrollment", 1), (base + "/bundle", 1), (base + "/led/set", 1)])
    c.connect(os.environ["BENCH_HOST"], int(os.environ["BENCH_PORT"]),
              keepalive=int(os.environ["BENCH_KEEPALIVE"]))
    c.loop_forever()
    """
)


@dataclass(frozen=True)
class Plan:
    """What to run."""

    idle_s: float
    out: Path


@contextmanager
def child(argv: Sequence[str], *, log_file: Path, env: dict[str, str]) -> Iterator[int]:
    """A child process for the duration; yields its pid; SIGTERM (then SIGKILL) after."""
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def agent_argv(bench: Bench, device_id: str, *, prefix: str, web: bool) -> list[str]:
    """`pimesh agent run` for `device_id`, with a simulated strip and the stand-in ztunnel."""
    home = bench.workdir / device_id
    (home / "root").mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "cli",
        "agent",
        "run",
        "--device-id",
        device_id,
        "--root",
        str(home / "root"),
        "--state-dir",
        str(home / "state"),
        "--address",
        "127.0.0.1",
        "--led-backend",
        "simulated",
        "--ztunnel-cmd",
        shlex.join([sys.executable, "-m", "sandbox.standin_ztunnel"]),
        "--http-port",
        str(free_port() if web else 0),
        "--broker",
        bench.broker.info.url,
        "--username",
        device_id,
        "--topic-prefix",
        prefix,
    ]


def measure(bench: Bench, plan: Plan, *, console: Console) -> dict[str, Any]:
    """Start everything, wait for enrollment and the settling, sample the idle window."""
    endpoint = bench.endpoint()
    users = ("bench-agent", "bench-agent-web", "bench-paho")
    passwords = bench.broker.add_users(users)
    cluster_ctx = Cluster(bench.workdir, namespace="bench-footprint")
    with ExitStack() as stack:
        cluster = stack.enter_context(cluster_ctx)
        stack.enter_context(
            ControllerProcess(
                bench.broker.info,
                cluster,
                prefix=endpoint.prefix,
                log_file=bench.workdir / "controller-footprint.log",
            )
        )
        pids: dict[str, int] = {}
        for name, device_id, web in (
            ("agent", "bench-agent", False),
            ("agent+web", "bench-agent-web", True),
        ):
            argv = agent_argv(bench, device_id, prefix=endpoint.prefix, web=web)
            env = clean_env(PIMESH_PASSWORD=passwords[device_id])
            pids[name] = stack.enter_context(
                child(argv, log_file=bench.workdir / f"{device_id}.log", env=env)
            )
        pids["bare python"] = stack.enter_context(
            child(
                [sys.executable, "-c", BARE_SLEEPER],
                log_file=bench.workdir / "sleeper.log",
                env=clean_env(),
            )
        )
        paho_env = clean_env(
            BENCH_HOST=endpoint.host,
            BENCH_PORT=str(endpoint.port),
            BENCH_USER="bench-paho",
            BENCH_PASSWORD=passwords["bench-paho"],
            BENCH_PREFIX=endpoint.prefix,
            BENCH_KEEPALIVE=str(AGENT_KEEPALIVE_S),
        )
        pids["bare paho"] = stack.enter_context(
            child(
                [sys.executable, "-c", BARE_PAHO],
                log_file=bench.workdir / "paho.log",
                env=paho_env,
            )
        )
        console.log("waiting for both agents to enroll")
        done_at, seen = cluster.wait_devices(acked(1), count=2, timeout_s=120)
        if done_at is None:
            raise RuntimeError(f"only {seen} of 2 agents enrolled; see {bench.workdir}")
        time.sleep(SETTLE_S)
        console.log(f"idle window: {plan.idle_s:g} s")
        before = {name: ProcessSample.of(pid) for name, pid in pids.items()}
        time.sleep(plan.idle_s)
        after = {name: ProcessSample.of(pid) for name, pid in pids.items()}
    return {name: _figures(before[name], after[name]) for name in pids}


def _figures(before: ProcessSample, after: ProcessSample) -> dict[str, float]:
    return {
        "rss_mb": round(after.rss_mb, 1),
        "peak_rss_mb": round(after.peak_rss_mb, 1),
        "cpu_percent": round(after.cpu_percent_since(before), 3),
        "cpu_s": round(after.cpu_s - before.cpu_s, 3),
    }


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 2) if base > 0 and math.isfinite(value) else None


def run(plan: Plan, *, console: Console) -> dict[str, Any]:
    """Measures once; returns the report."""
    with bench_broker() as bench:
        processes = measure(bench, plan, console=console)
    ratios = {
        agent: {
            f"rss_vs_{base.replace(' ', '_')}": _ratio(
                processes[agent]["rss_mb"], processes[base]["rss_mb"]
            )
            for base in ("bare python", "bare paho")
        }
        | {
            f"cpu_vs_{base.replace(' ', '_')}": _ratio(
                processes[agent]["cpu_percent"], processes[base]["cpu_percent"]
            )
            for base in ("bare python", "bare paho")
        }
        for agent in ("agent", "agent+web")
    }
    return {
        "benchmark": "agent_footprint",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {"idle_s": plan.idle_s, "settle_s": SETTLE_S},
        "results": [{"processes": processes, "ratios": ratios}],
    }


def table(results: Sequence[dict[str, Any]]) -> Table:
    """The results as a rich table."""
    view = Table(
        title="Agent footprint, enrolled and idle",
        caption="CPU: percent of one core over the idle window; RSS from /proc (VmRSS, VmHWM)",
    )
    for column in ("process", "RSS MB", "peak MB", "idle CPU %"):
        view.add_column(column, justify="right")
    for row in results:
        for name, figures in row["processes"].items():
            view.add_row(
                name,
                f"{figures['rss_mb']:.1f}",
                f"{figures['peak_rss_mb']:.1f}",
                f"{figures['cpu_percent']:.2f}",
            )
    return view


def parse(argv: Sequence[str] | None = None) -> Plan:
    """The command line as a `Plan`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.agent_footprint", description=__doc__
    )
    parser.add_argument("--idle", type=float, default=30.0, help="idle window, seconds")
    parser.add_argument("--out", type=Path, default=Path("bench-results/agent_footprint.json"))
    parser.add_argument("--ci", action="store_true", help="tiny run: 5 s idle window")
    args = parser.parse_args(argv)
    if args.ci:
        return Plan(idle_s=5.0, out=args.out)
    if args.idle <= 0:
        parser.error("--idle must be positive")
    return Plan(idle_s=args.idle, out=args.out)


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
