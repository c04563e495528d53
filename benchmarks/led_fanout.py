"""LED fan-out latency: a fleet `led` command, from PUBLISH to the frame on every strip.

    python -m benchmarks.led_fanout --sizes 10,50,100,200 --repeats 20 --out bench-results/x.json
    python -m benchmarks.led_fanout --ci --out bench-results/ci.json   # tiny, for CI

For each fleet size N, against one real Mosquitto (`sandbox.broker`):

- baseline: N plain MQTT subscribers on `P/fleet/led/set` (the same `shared.mqtt` link
  the agent uses, parsing the command's JSON and nothing else) record when each command
  arrives;
- pimesh: N real `Agent`s (no controller, no ztunnel, no web server) with simulated
  strips record the moment their strip shows the command's colour: decoding, the
  staleness check, the effect player's thread and the frame are all included.

Both fleets are spread the same way over `--procs` worker processes (multiprocessing,
spawn; more when a share would exceed `MAX_PER_PROCESS`), each holding its share of
the N clients and talking to this process over a pipe. One process per real device is
out of reach on a small machine; a few processes at least stop the whole fleet queueing
behind one GIL, which a real fleet (one Pi, one agent) never does. Both fleets still
share the machine's cores, so the CPU each device spends per command counts N times
over; the report gives it per delivery (`cpu_us_per_delivery`).

Every command carries a colour of its own, so each sample is unambiguous. Latency is
`time.monotonic_ns()` in the receiving worker minus `time.monotonic_ns()` here just
before PUBLISH: on Linux both read CLOCK_MONOTONIC, one clock for every process on the
machine, so times from different processes compare directly. Reported: p50 and p99 over
every (device, command) sample, the p50 of the time until the whole fleet has it, and
the ratio pimesh / baseline.

paho waits in select(), which cannot watch descriptors above FD_SETSIZE (1024), and each
client holds about three (DESIGN.md): a worker holds at most 200 clients, and a fleet of
up to 1000 takes as many workers as that needs.
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import secrets
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from benchmarks.report import save
from device.agent import Agent
from device.compose import build_agent
from device.leds import Color, Frame, SimulatedStrip
from device.settings import AgentSettings
from sandbox.broker import Mosquitto
from shared import DEFAULT_TOPIC_PREFIX
from shared.codec import encode
from shared.messages import Led
from shared.mqtt import Incoming, MqttLink, Outgoing
from shared.settings import MqttSettings
from shared.timestamps import now_utc
from shared.topics import Topics

MAX_PER_PROCESS = 200
"""Clients one worker process can hold under select()'s FD_SETSIZE (DESIGN.md)."""
MAX_SIZE = 1000
"""The largest fleet the benchmark runs (five full workers)."""
DEFAULT_PROCS = 4
PIXELS = 10
WAIT_S = 15.0
"""How long a command may take to reach every receiver before it counts as lost."""
READY_S = 60.0
"""How long a worker's clients may take to connect and subscribe."""
STOP_S = 30.0

Kind = Literal["baseline", "pimesh"]
Clock = Callable[[], int]
"""Nanoseconds on CLOCK_MONOTONIC (`time.monotonic_ns`)."""


# --- receivers (in the workers) -------------------------------------------------------


class Arrivals:
    """When each receiver of one worker first saw each command (keyed by colour)."""

    def __init__(self, receivers: int) -> None:
        self._receivers = receivers
        self._seen: dict[str, dict[int, int]] = {}
        self._changed = threading.Condition()

    def record(self, key: str, receiver: int, at: int) -> None:
        """Notes that `receiver` saw `key` at `at` ns (only the first time counts)."""
        with self._changed:
            seen = self._seen.setdefault(key, {})
            seen.setdefault(receiver, at)
            # Wake the waiter once, not once per receiver: it would compete for the GIL
            # with the receivers still at work.
            if len(seen) == self._receivers:
                self._changed.notify_all()

    def wait_all(self, key: str, *, timeout: float) -> list[int]:
        """The arrival times of `key`, once every receiver has it or `timeout` passes."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self._seen.get(key, {})) >= self._receivers, timeout=timeout
            )
            return list(self._seen.pop(key, {}).values())


class TimedStrip(SimulatedStrip):
    """A simulated strip that notes when a frame of a new colour first appears."""

    def __init__(self, index: int, arrivals: Arrivals, *, clock: Clock) -> None:
        super().__init__(PIXELS, history=4)
        self._index = index
        self._arrivals = arrivals
        self._clock = clock

    def show(self, frame: Frame) -> None:
        """Shows the frame, then records its colour's arrival (the benchmark's probe)."""
        super().show(frame)
        self._arrivals.record(frame[0].to_hex(), self._index, self._clock())


@dataclass(frozen=True)
class Client:
    """One receiver a worker runs: its MQTT client id and broker user."""

    client_id: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process runs: its share of one fleet."""

    kind: Kind
    broker_url: str
    topic_prefix: str
    workdir: Path
    clients: tuple[Client, ...]

    def mqtt(self, client: Client) -> MqttSettings:
        """Settings for one of this worker's clients."""
        return MqttSettings(
            broker=self.broker_url,
            username=client.username,
            password=SecretStr(client.password),
            topic_prefix=self.topic_prefix,
        )


def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """Entry point of a worker process: start the clients, then answer the parent.

    The parent sends `("collect", colour)` before each command and gets back the
    arrival times (ns) of that colour at this worker's receivers; `("stop", None)` ends
    it with `("stopped", cpu_s)`, the CPU seconds spent since `ready`.
    """
    try:
        with _receivers(plan) as arrivals:
            cpu_ready = _cpu_s()
            conn.send(("ready", None))
            while True:
                command, argument = conn.recv()
                if command == "stop":
                    break
                conn.send(("arrivals", arrivals.wait_all(argument, timeout=WAIT_S)))
            cpu = _cpu_s() - cpu_ready
        conn.send(("stopped", cpu))
    except Exception:
        conn.send(("failed", traceback.format_exc()))
        raise


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def _receivers(plan: WorkerPlan) -> Iterator[Arrivals]:
    """The worker's clients, started and ready, recording into one `Arrivals`."""
    arrivals = Arrivals(len(plan.clients))
    clock: Clock = time.monotonic_ns
    with ExitStack() as stack:
        if plan.kind == "baseline":
            links = [_subscriber(plan, c, i, arrivals, clock) for i, c in enumerate(plan.clients)]
            for link in links:
                link.start()
                stack.callback(link.stop)
            waits = [link.wait_ready for link in links]
        else:
            agents = [
                _agent(plan, c, TimedStrip(i, arrivals, clock=clock))
                for i, c in enumerate(plan.clients)
            ]
            for agent in agents:
                agent.start()
                stack.callback(agent.stop)
            waits = [agent.link.wait_ready for agent in agents]
        _wait_ready(waits)
        yield arrivals


def _subscriber(
    plan: WorkerPlan, client: Client, index: int, arrivals: Arrivals, clock: Clock
) -> MqttLink:
    """A plain subscriber to the fleet topic that records each command's colour."""

    def on_message(incoming: Incoming) -> None:
        # The colour is the key, as on the strips; json is what any subscriber pays.
        at = clock()
        arrivals.record(str(json.loads(incoming.payload)["color"]), index, at)

    return MqttLink(
        plan.mqtt(client),
        client_id=client.client_id,
        subscriptions=[Topics(plan.topic_prefix).fleet_led_set()],
        on_message=on_message,
    )


def _agent(plan: WorkerPlan, client: Client, strip: TimedStrip) -> Agent:
    """A real agent (no ztunnel, no web server) driving `strip`."""
    home = plan.workdir / client.username
    (home / "root").mkdir(parents=True)
    settings = AgentSettings(
        device_id=client.username,
        root=home / "root",
        state_dir=home / "state",
        address=["127.0.0.1"],
        ztunnel_cmd="none",
        led_backend="simulated",
        led_count=PIXELS,
        http_port=0,
        announce_every=3600,
    )
    return build_agent(settings, plan.mqtt(client), strip=strip)


def _wait_ready(waits: Sequence[Callable[[float], bool]]) -> None:
    deadline = time.monotonic() + READY_S
    for wait in waits:
        if not wait(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"a client did not connect within {READY_S} s")


# --- the fleets (in this process) -----------------------------------------------------


class WorkerError(RuntimeError):
    """A worker process failed, or did not answer in time."""


@dataclass
class Bench:
    """What every run shares: the broker, a work directory and the topics."""

    broker: Mosquitto
    workdir: Path
    topics: Topics = field(default_factory=Topics)


def shares(size: int, procs: int) -> list[range]:
    """`size` clients split as evenly as possible over the workers one fleet takes.

    That is `procs` workers, or more when a share would exceed `MAX_PER_PROCESS`, and
    never more workers than clients.
    """
    workers = min(size, max(procs, math.ceil(size / MAX_PER_PROCESS)))
    base, extra = divmod(size, workers)
    out: list[range] = []
    start = 0
    for worker in range(workers):
        end = start + base + (1 if worker < extra else 0)
        out.append(range(start, end))
        start = end
    return out


def fleet_clients(bench: Bench, kind: Kind, size: int) -> list[Client]:
    """Broker users for one fleet: one shared user for the baseline, one per agent."""
    tag = secrets.token_hex(3)
    if kind == "baseline":
        username = f"base-{tag}"  # one user, many connections
        password = bench.broker.add_user(username)
        return [Client(f"base-{i}-{tag}", username, password) for i in range(size)]
    names = [f"bench-{i}-{tag}" for i in range(size)]
    passwords = bench.broker.add_users(names)
    return [Client(name, name, passwords[name]) for name in names]


class Fleet:
    """One fleet's worker processes; a context manager that returns once all are ready."""

    def __init__(self, bench: Bench, kind: Kind, *, size: int, procs: int) -> None:
        clients = fleet_clients(bench, kind, size)
        self.size = size
        self._plans = [
            WorkerPlan(
                kind=kind,
                broker_url=bench.broker.info.url,
                topic_prefix=bench.topics.prefix,
                workdir=bench.workdir,
                clients=tuple(clients[share.start : share.stop]),
            )
            for share in shares(size, procs)
        ]
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Connection]] = []
        self.cpu_s = 0.0
        """CPU seconds the workers spent between `ready` and `stop` (set on exit)."""

    @property
    def procs(self) -> int:
        """How many worker processes the fleet takes."""
        return len(self._plans)

    def __enter__(self) -> "Fleet":
        try:
            for plan in self._plans:
                parent, child = self._context.Pipe()
                process = self._context.Process(
                    target=worker_main, args=(plan, child), name=f"led-{plan.kind}", daemon=True
                )
                process.start()
                child.close()
                self._workers.append((process, parent))
            for _, conn in self._workers:
                _expect(conn, "ready", timeout_s=READY_S + 30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def expect(self, color: str) -> None:
        """Tell every worker to collect `color`'s arrivals (sent before the command)."""
        for _, conn in self._workers:
            conn.send(("collect", color))

    def arrivals(self) -> list[int]:
        """The arrival times (ns) of the colour last expected, from every worker."""
        times: list[int] = []
        for _, conn in self._workers:
            times += _expect(conn, "arrivals", timeout_s=WAIT_S + 30)
        return times

    def close(self) -> None:
        """Stop every worker (its clients disconnect), killing stragglers."""
        for process, conn in self._workers:
            if process.is_alive():
                with contextlib.suppress(OSError):  # it is already gone
                    conn.send(("stop", None))
        for process, conn in self._workers:
            with contextlib.suppress(WorkerError, EOFError, OSError):
                self.cpu_s += float(_expect(conn, "stopped", timeout_s=STOP_S))
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._workers.clear()


def _expect(conn: Connection, kind: str, *, timeout_s: float) -> Any:
    if not conn.poll(timeout_s):
        raise WorkerError(f"a worker sent no {kind!r} within {timeout_s} s")
    got, payload = conn.recv()
    if got == "failed":
        raise WorkerError(f"a worker failed:\n{payload}")
    if got != kind:
        raise WorkerError(f"a worker sent {got!r} instead of {kind!r}")
    return payload


# --- measuring ------------------------------------------------------------------------


@dataclass
class Samples:
    """Latencies (seconds) of one fleet over every command."""

    every: list[float] = field(default_factory=list)
    complete: list[float] = field(default_factory=list)
    lost: int = 0

    def summary(self) -> dict[str, float | int]:
        """p50/p99 of every sample and the p50 of whole-fleet completion, in ms."""
        return {
            "p50_ms": _ms(percentile(self.every, 50)),
            "p99_ms": _ms(percentile(self.every, 99)),
            "max_ms": _ms(max(self.every, default=math.nan)),
            "fleet_complete_p50_ms": _ms(percentile(self.complete, 50)),
            "samples": len(self.every),
            "lost": self.lost,
        }


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Publisher:
    """Publishes fleet commands as the operator, each with a colour of its own."""

    def __init__(self, bench: Bench) -> None:
        info = bench.broker.info
        self._bench = bench
        settings = MqttSettings(
            broker=info.url,
            username=info.operator_username,
            password=SecretStr(info.operator_password),
            topic_prefix=bench.topics.prefix,
        )
        self._link = MqttLink(settings, client_id=f"bench-operator-{secrets.token_hex(3)}")
        self._next = 0x010101

    def __enter__(self) -> "Publisher":
        self._link.start()
        _wait_ready([self._link.wait_ready])
        return self

    def __exit__(self, *_: object) -> None:
        self._link.stop()

    def measure(self, fleet: Fleet, *, repeats: int, warmup: int) -> Samples:
        """Sends `warmup` + `repeats` commands, one at a time; samples the last `repeats`."""
        samples = Samples()
        for round_ in range(warmup + repeats):
            color = self._color()
            fleet.expect(color)
            sent = self._send(color)
            times = fleet.arrivals()
            if round_ < warmup:
                continue
            latencies = [(at - sent) / 1e9 for at in times]
            samples.every += latencies
            samples.lost += fleet.size - len(latencies)
            if len(latencies) == fleet.size:
                samples.complete.append(max(latencies))
        return samples

    def _color(self) -> str:
        self._next += 0x010203  # steps through colours, never black
        self._next &= 0xFFFFFF
        return Color(self._next >> 16, (self._next >> 8) & 0xFF, self._next & 0xFF).to_hex()

    def _send(self, color: str) -> int:
        command = Led(
            id=f"bench-{secrets.token_hex(6)}",
            ts=now_utc(),
            effect="solid",
            color=color,
            brightness=255,  # full brightness: the strip shows the colour unscaled
        )
        payload = encode(command)
        sent = time.monotonic_ns()
        self._link.publish(Outgoing(self._bench.topics.fleet_led_set(), payload, qos=1))
        return sent


# --- running and reporting ------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to run."""

    sizes: tuple[int, ...]
    repeats: int
    warmup: int
    out: Path
    procs: int = DEFAULT_PROCS


def run_size(bench: Bench, size: int, plan: Plan) -> dict[str, Any]:
    """Both fleets of one size, one after the other, spread over the same workers."""
    figures: dict[str, dict[str, float | int]] = {}
    cpu: dict[str, float] = {}
    procs = 0
    kinds: tuple[Kind, ...] = ("baseline", "pimesh")
    for kind in kinds:
        fleet = Fleet(bench, kind, size=size, procs=plan.procs)
        with fleet, Publisher(bench) as publisher:
            samples = publisher.measure(fleet, repeats=plan.repeats, warmup=plan.warmup)
        procs = fleet.procs
        figures[kind] = samples.summary()
        deliveries = size * (plan.repeats + plan.warmup)
        cpu[kind] = round(fleet.cpu_s / deliveries * 1e6, 1)
    return {
        "n": size,
        "procs": procs,
        **figures,
        "ratio": _ratios(figures["pimesh"], figures["baseline"]),
        "cpu_us_per_delivery": cpu,
    }


def _ratios(pimesh: dict[str, float | int], baseline: dict[str, float | int]) -> dict[str, float]:
    def ratio(key: str) -> float:
        below = float(baseline[key])
        return round(float(pimesh[key]) / below, 2) if below > 0 else math.nan

    return {"p50": ratio("p50_ms"), "p99": ratio("p99_ms")}


def machine() -> dict[str, object]:
    """Where the figures came from."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "paho_mqtt": version("paho-mqtt"),
    }


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run(plan: Plan, *, console: Console) -> dict[str, Any]:
    """Runs every size against one fresh broker; returns the report."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pimesh-bench-") as tmp, Mosquitto() as broker:
        bench = Bench(broker, Path(tmp))
        for size in plan.sizes:
            workers = len(shares(size, plan.procs))
            console.log(f"N={size}: {plan.repeats} commands to each fleet, {workers} workers")
            results.append(run_size(bench, size, plan))
    return {
        "benchmark": "led_fanout",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            "sizes": list(plan.sizes),
            "repeats": plan.repeats,
            "warmup": plan.warmup,
            "procs": plan.procs,
            "qos": 1,
            "topic_prefix": DEFAULT_TOPIC_PREFIX,
        },
        "results": results,
    }


def table(results: Sequence[dict[str, Any]]) -> Table:
    """The results as a rich table (the worker processes per N are in the report)."""
    view = Table(
        title="LED fleet command, PUBLISH to frame (ms)",
        caption=(
            "base: plain subscribers, mesh: agents to their strips (p50/p99); fleet: p50 "
            "until the last device; x: mesh/base; cpu: µs per device and command "
            "(base/mesh)"
        ),
    )
    for column in ("N", "base", "mesh", "fleet", "x p50", "x p99", "cpu", "lost"):
        view.add_column(column, justify="right", no_wrap=True)
    for row in results:
        base, mesh, ratio = row["baseline"], row["pimesh"], row["ratio"]
        cpu = row.get("cpu_us_per_delivery", {})
        view.add_row(
            str(row["n"]),
            f"{base['p50_ms']:.2f}/{base['p99_ms']:.1f}",
            f"{mesh['p50_ms']:.2f}/{mesh['p99_ms']:.1f}",
            f"{mesh['fleet_complete_p50_ms']:.1f}",
            f"{ratio['p50']:.2f}",
            f"{ratio['p99']:.2f}",
            f"{cpu.get('baseline', math.nan):.0f}/{cpu.get('pimesh', math.nan):.0f}",
            f"{base['lost']}/{mesh['lost']}",
        )
    return view


def parse(argv: Sequence[str] | None = None) -> Plan:
    """The command line as a `Plan`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.led_fanout", description=__doc__)
    parser.add_argument("--sizes", default="10,50,100", help="fleet sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="measured commands per size")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured commands first")
    parser.add_argument(
        "--procs",
        type=int,
        default=DEFAULT_PROCS,
        help=f"worker processes per fleet (more when a share exceeds {MAX_PER_PROCESS})",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/led_fanout.json"))
    parser.add_argument("--ci", action="store_true", help="tiny run: N=3 over 2 workers")
    args = parser.parse_args(argv)
    if args.ci:
        return Plan(sizes=(3,), repeats=3, warmup=1, out=args.out, procs=2)
    try:
        sizes = tuple(int(part) for part in args.sizes.split(",") if part.strip())
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of integers")
    if not sizes or any(not 1 <= size <= MAX_SIZE for size in sizes):
        parser.error(f"--sizes: each size must be 1 to {MAX_SIZE}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if args.procs < 1:
        parser.error("--procs must be at least 1")
    return Plan(
        sizes=sizes, repeats=args.repeats, warmup=args.warmup, out=args.out, procs=args.procs
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
