"""LED fan-out latency: a fleet `led` command, from PUBLISH to the frame on every strip.

    python -m benchmarks.led_fanout --sizes 10,50,100 --repeats 20 --out bench-results/x.json
    python -m benchmarks.led_fanout --ci --out bench-results/ci.json   # tiny, for CI

For each fleet size N, against one real Mosquitto (`sandbox.broker`):

- baseline: N plain MQTT subscribers on `P/fleet/led/set` (the same `shared.mqtt` link
  the agent uses, doing nothing with the message) record when each command arrives;
- pimesh: N real `Agent`s (no controller, no ztunnel, no web server) with simulated
  strips record the moment their strip shows the command's colour: decoding, the
  staleness check, the effect player's thread and the frame are all included.

Every command carries a colour of its own, so each sample is unambiguous. Latency is
`perf_counter` at the strip (or subscriber) minus `perf_counter` just before PUBLISH; all
clients live in this one process, so the clocks are the same clock. Reported: p50 and
p99 over every (device, command) sample, the p50 of the time until the whole fleet has
it, and the ratio pimesh / baseline.

paho waits in select(), which cannot watch descriptors above FD_SETSIZE (1024), and each
client holds about three (DESIGN.md): one process holds at most 200 devices here. Larger
fleets need the devices spread over several processes.
"""

import argparse
import json
import math
import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

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
from shared.messages import Led, encode, now_utc
from shared.mqtt import Incoming, MqttLink, Outgoing
from shared.settings import MqttSettings
from shared.topics import Topics

MAX_PER_PROCESS = 200
"""Clients one process can hold under select()'s FD_SETSIZE (DESIGN.md)."""
PIXELS = 10
WAIT_S = 15.0
"""How long a command may take to reach every receiver before it counts as lost."""
READY_S = 60.0

Clock = Callable[[], float]


# --- receivers ------------------------------------------------------------------------


class Arrivals:
    """When each receiver first saw each command (keyed by colour), for one fleet."""

    def __init__(self, receivers: int) -> None:
        self._receivers = receivers
        self._seen: dict[str, dict[int, float]] = {}
        self._changed = threading.Condition()

    def record(self, key: str, receiver: int, at: float) -> None:
        """Notes that `receiver` saw `key` at `at` (only the first time counts)."""
        with self._changed:
            self._seen.setdefault(key, {}).setdefault(receiver, at)
            self._changed.notify_all()

    def wait_all(self, key: str, *, timeout: float) -> list[float]:
        """The arrival times of `key`, once every receiver has it or `timeout` passes."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self._seen.get(key, {})) >= self._receivers, timeout=timeout
            )
            return list(self._seen.get(key, {}).values())


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


# --- the two fleets -------------------------------------------------------------------


@dataclass
class Bench:
    """What every run shares: the broker, a work directory and the clock."""

    broker: Mosquitto
    workdir: Path
    topics: Topics = field(default_factory=Topics)
    clock: Clock = time.perf_counter

    def mqtt(self, username: str, password: str) -> MqttSettings:
        """Settings for one client of the bench broker."""
        return MqttSettings(
            broker=self.broker.info.url,
            username=username,
            password=SecretStr(password),
            topic_prefix=self.topics.prefix,
        )


@contextmanager
def baseline_fleet(bench: Bench, size: int, arrivals: Arrivals) -> Iterator[None]:
    """`size` plain subscribers to the fleet topic, recording arrivals."""
    username = f"base-{secrets.token_hex(4)}"  # one user, many connections
    password = bench.broker.add_user(username)
    links = [
        MqttLink(
            bench.mqtt(username, password),
            client_id=f"base-{i}-{secrets.token_hex(3)}",
            subscriptions=[bench.topics.fleet_led_set()],
            on_message=_on_baseline(i, arrivals, bench.clock),
        )
        for i in range(size)
    ]
    with _running(links):
        yield


def _on_baseline(index: int, arrivals: Arrivals, clock: Clock) -> Callable[[Incoming], None]:
    def on_message(incoming: Incoming) -> None:
        # The colour is the key, as on the strips; json is what any subscriber pays.
        at = clock()
        arrivals.record(str(json.loads(incoming.payload)["color"]), index, at)

    return on_message


@contextmanager
def _running(links: Sequence[MqttLink]) -> Iterator[None]:
    for link in links:
        link.start()
    try:
        _wait_ready([link.wait_ready for link in links])
        yield
    finally:
        for link in links:
            link.stop()


@contextmanager
def pimesh_fleet(bench: Bench, size: int, arrivals: Arrivals) -> Iterator[None]:
    """`size` real agents with timed strips, subscribed to the fleet topic."""
    names = [f"bench-{i}-{secrets.token_hex(3)}" for i in range(size)]
    passwords = bench.broker.add_users(names)
    agents = [
        _agent(bench, name, passwords[name], TimedStrip(i, arrivals, clock=bench.clock))
        for i, name in enumerate(names)
    ]
    for agent in agents:
        agent.start()
    try:
        _wait_ready([agent.link.wait_ready for agent in agents])
        yield
    finally:
        for agent in agents:
            agent.stop()


def _agent(bench: Bench, name: str, password: str, strip: TimedStrip) -> Agent:
    home = bench.workdir / name
    (home / "root").mkdir(parents=True)
    settings = AgentSettings(
        device_id=name,
        root=home / "root",
        state_dir=home / "state",
        address=["127.0.0.1"],
        ztunnel_cmd="none",
        led_backend="simulated",
        led_count=PIXELS,
        http_port=0,
        announce_every=3600,
    )
    return build_agent(settings, bench.mqtt(name, password), strip=strip)


def _wait_ready(waits: Sequence[Callable[[float], bool]]) -> None:
    deadline = time.monotonic() + READY_S
    for wait in waits:
        if not wait(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"a client did not connect within {READY_S} s")


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
        self._link = MqttLink(
            bench.mqtt(info.operator_username, info.operator_password),
            client_id=f"bench-operator-{secrets.token_hex(3)}",
        )
        self._next = 0x010101

    def __enter__(self) -> "Publisher":
        self._link.start()
        _wait_ready([self._link.wait_ready])
        return self

    def __exit__(self, *_: object) -> None:
        self._link.stop()

    def measure(self, arrivals: Arrivals, *, size: int, repeats: int, warmup: int) -> Samples:
        """Sends `warmup` + `repeats` commands, one at a time; samples the last `repeats`."""
        samples = Samples()
        for round_ in range(warmup + repeats):
            color = self._color()
            sent = self._send(color)
            times = arrivals.wait_all(color, timeout=WAIT_S)
            if round_ < warmup:
                continue
            latencies = [at - sent for at in times]
            samples.every += latencies
            samples.lost += size - len(latencies)
            if len(latencies) == size:
                samples.complete.append(max(latencies))
        return samples

    def _color(self) -> str:
        self._next += 0x010203  # steps through colours, never black
        self._next &= 0xFFFFFF
        return Color(self._next >> 16, (self._next >> 8) & 0xFF, self._next & 0xFF).to_hex()

    def _send(self, color: str) -> float:
        command = Led(
            id=f"bench-{secrets.token_hex(6)}",
            ts=now_utc(),
            effect="solid",
            color=color,
            brightness=255,  # full brightness: the strip shows the colour unscaled
        )
        payload = encode(command)
        sent = self._bench.clock()
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


def run_size(bench: Bench, size: int, plan: Plan) -> dict[str, Any]:
    """Both fleets of one size, one after the other (never both: FD_SETSIZE)."""
    figures: dict[str, dict[str, float | int]] = {}
    for name, fleet in (("baseline", baseline_fleet), ("pimesh", pimesh_fleet)):
        arrivals = Arrivals(size)
        with fleet(bench, size, arrivals), Publisher(bench) as publisher:
            samples = publisher.measure(
                arrivals, size=size, repeats=plan.repeats, warmup=plan.warmup
            )
        figures[name] = samples.summary()
    return {"n": size, **figures, "ratio": _ratios(figures["pimesh"], figures["baseline"])}


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
            console.log(f"N={size}: {plan.repeats} commands to each fleet")
            results.append(run_size(bench, size, plan))
    return {
        "benchmark": "led_fanout",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            "sizes": list(plan.sizes),
            "repeats": plan.repeats,
            "warmup": plan.warmup,
            "qos": 1,
            "topic_prefix": DEFAULT_TOPIC_PREFIX,
        },
        "results": results,
    }


def table(results: Sequence[dict[str, Any]]) -> Table:
    """The results as a rich table."""
    view = Table(
        title="LED fleet command, PUBLISH to frame (ms)",
        caption="base: plain subscribers; mesh: agents to their strips; fleet: last device",
    )
    columns = ("N", "base p50", "base p99", "mesh p50", "mesh p99", "fleet p50")
    for column in columns:
        view.add_column(column, justify="right")
    view.add_column("ratio p50", justify="right", style="bold")
    view.add_column("ratio p99", justify="right", style="bold")
    view.add_column("lost", justify="right")
    for row in results:
        base, mesh, ratio = row["baseline"], row["pimesh"], row["ratio"]
        view.add_row(
            str(row["n"]),
            f"{base['p50_ms']:.2f}",
            f"{base['p99_ms']:.2f}",
            f"{mesh['p50_ms']:.2f}",
            f"{mesh['p99_ms']:.2f}",
            f"{mesh['fleet_complete_p50_ms']:.2f}",
            f"{ratio['p50']:.2f}x",
            f"{ratio['p99']:.2f}x",
            f"{base['lost']}/{mesh['lost']}",
        )
    return view


def parse(argv: Sequence[str] | None = None) -> Plan:
    """The command line as a `Plan`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.led_fanout", description=__doc__)
    parser.add_argument("--sizes", default="10,50,100", help="fleet sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="measured commands per size")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured commands first")
    parser.add_argument("--out", type=Path, default=Path("bench-results/led_fanout.json"))
    parser.add_argument("--ci", action="store_true", help="tiny run: N=3, 3 commands")
    args = parser.parse_args(argv)
    if args.ci:
        return Plan(sizes=(3,), repeats=3, warmup=1, out=args.out)
    try:
        sizes = tuple(int(part) for part in args.sizes.split(",") if part.strip())
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of integers")
    if not sizes or any(not 1 <= size <= MAX_PER_PROCESS for size in sizes):
        parser.error(
            f"--sizes: each size must be 1 to {MAX_PER_PROCESS} (one process cannot hold "
            "more paho clients: select() and FD_SETSIZE)"
        )
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    return Plan(sizes=sizes, repeats=args.repeats, warmup=args.warmup, out=args.out)


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
