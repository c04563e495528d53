"""Boot storm: N devices announce within one second; how long until every one is enrolled?

    python -m benchmarks.boot_storm --sizes 100,300,1000 --out bench-results/boot_storm.json
    python -m benchmarks.boot_storm --ci --out bench-results/boot_storm-ci.json   # N=20

For each fleet size N, against one real Mosquitto (`sandbox.broker`), three runs:

- transport floor: N light devices (`benchmarks.lightdevice`, echo mode) each publish
  one signed announce, spread evenly over the same second, and a responder process
  echoes each back on the device's bundle topic: when has every device its reply?
- pimesh: a fresh API emulator (`benchmarks.stack.Cluster`), the controller as a child
  process with `--auto-approve '*'` and its default `--workers`, and N light devices
  that publish their status and announce, spread over one second, then open, check and
  ack their bundle. Once every device says it has acked, the benchmark lists the
  EdgeDevices every 0.1 s until all are `Enrolled` with `status.ackedGeneration >= 1`
  (not before: at N=1000 a list costs the emulator's one thread as much as the
  controller's own lists do). Measured: that wall time (from the
  first possible announce), each device's announce -> bundle latency, the Kubernetes
  API requests the controller made meanwhile (the emulator's log, the benchmark's own
  tagged polls left out), the controller's CPU seconds and peak RSS (/proc), and the
  CPU seconds of the emulator's thread (to tell whether the emulator was the bottleneck).
- API floor: the very requests pimesh made (same verbs and paths, in the same order,
  watches left out) replayed against the same emulator with the official kubernetes
  client from as many threads as the controller has workers; its wall time. PATCHes
  are replayed as small merge patches and creates go to a side namespace, so the lists
  in the fleet's namespace keep the fleet's size.

Reported per N: pimesh's wall time and its ratios to both floors, latency p50/p99,
requests per device (and by kind), controller CPU and peak RSS.
"""

import argparse
import math
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.led_fanout import machine, percentile
from benchmarks.lightdevice import (
    ANNOUNCE_EVERY_S,
    MAX_PER_WORKER,
    DeviceSpec,
    Endpoint,
    Fleet,
    Responder,
    device_specs,
    iter_latencies,
    raise_fd_limit,
)
from benchmarks.report import save
from benchmarks.stack import (
    Cluster,
    ControllerProcess,
    ProcessSample,
    acked,
    profiled,
    request_kinds,
    thread_cpu_s,
)
from controller.kube import load_api_client
from controller.settings import ControllerSettings
from sandbox.broker import Mosquitto
from sandbox.kubeapi import RequestRecord

DEFAULT_TIMEOUT_S = 900.0
"""How long one size may take to enroll before it is reported incomplete."""
SPREAD_S = 1.0
STALL_S = 20.0
"""Once every device has acked: how long the API may show no progress before giving up."""


@dataclass
class Bench:
    """The broker and the device users every run shares."""

    broker: Mosquitto
    workdir: Path
    passwords: dict[str, str] = field(default_factory=dict)

    def users(self, size: int) -> list[str]:
        """Ids of `size` devices, each a broker user (added once, in one reload)."""
        ids = [f"d-{index:05d}" for index in range(size)]
        missing = [device_id for device_id in ids if device_id not in self.passwords]
        if missing:
            self.passwords.update(self.broker.add_users(missing))
        return ids

    def specs(self, size: int, *, spread_s: float = SPREAD_S) -> list[DeviceSpec]:
        """`size` devices announcing evenly over `spread_s`."""
        return device_specs(self.users(size), self.passwords, spread_s=spread_s)

    def endpoint(self) -> Endpoint:
        """The broker under a fresh topic prefix (so no retained message of a run leaks)."""
        info = self.broker.info
        return Endpoint(info.host, info.port, f"bench/{secrets.token_hex(4)}")


@contextmanager
def bench_broker() -> Iterator[Bench]:
    """A broker whose ACL serves every two-level prefix, and a work directory."""
    raise_fd_limit()
    with (
        tempfile.TemporaryDirectory(prefix="pimesh-bench-") as tmp,
        Mosquitto(prefix="+/+") as broker,
    ):
        yield Bench(broker, Path(tmp))


# --- the transport floor --------------------------------------------------------------------


def transport_floor(
    bench: Bench, specs: Sequence[DeviceSpec], *, timeout_s: float
) -> dict[str, Any]:
    """N devices, one announce each, echoed back: when has every device its reply?"""
    endpoint = bench.endpoint()
    info = bench.broker.info
    with (
        Responder(endpoint, username=info.controller_username, password=info.controller_password),
        Fleet(endpoint, specs, mode="echo") as fleet,
    ):
        t0 = time.monotonic() + 0.5
        fleet.go(t0)
        _wait_count(fleet, 0, timeout_s=timeout_s, interval_s=0.1)
        records, _ = fleet.report()
    replies = [r.reply_at - t0 for r in records if r.reply_at is not None]
    rtts = [
        r.reply_at - r.announced_at
        for r in records
        if r.reply_at is not None and r.announced_at is not None
    ]
    return {
        "wall_s": _s(max(replies, default=math.nan)),
        "replies": len(replies),
        "rtt_ms": _ms_summary(rtts),
    }


def _wait_count(fleet: Fleet, generation: int, *, timeout_s: float, interval_s: float) -> None:
    """Until every device acked `generation` (0: has its echo), or the timeout."""
    deadline = time.monotonic() + timeout_s
    while fleet.count(generation) < fleet.size and time.monotonic() < deadline:
        time.sleep(interval_s)


# --- pimesh ---------------------------------------------------------------------------------


@dataclass
class Storm:
    """A fleet enrolled by a running controller, and what the enrollment took."""

    cluster: Cluster
    controller: ControllerProcess
    fleet: Fleet
    size: int
    t0: float
    done_at: float | None
    acked: int
    requests: list[RequestRecord]
    controller_before: ProcessSample
    controller_after: ProcessSample
    emulator_cpu_s: float
    main_cpu_s: float

    @property
    def wall_s(self) -> float:
        """From the first possible announce until every device was seen acked (NaN: never)."""
        return self.done_at - self.t0 if self.done_at is not None else math.nan


@contextmanager
def storm(
    bench: Bench,
    size: int,
    *,
    timeout_s: float,
    spread_s: float = SPREAD_S,
    announce_every_s: float = ANNOUNCE_EVERY_S,
    controller_extra: Sequence[str] = (),
    controller_env: dict[str, str] | None = None,
    profile: Path | None = None,
) -> Iterator[Storm]:
    """Enroll `size` devices announcing over `spread_s`; yields with everything running."""
    endpoint = bench.endpoint()
    namespace = f"bench-{size}-{secrets.token_hex(3)}"
    log_file = bench.workdir / f"controller-{namespace}.log"
    specs = bench.specs(size, spread_s=spread_s)
    with (
        Cluster(bench.workdir, namespace=namespace) as cluster,
        ControllerProcess(
            bench.broker.info,
            cluster,
            prefix=endpoint.prefix,
            log_file=log_file,
            extra=controller_extra,
            env=controller_env,
        ) as controller,
        Fleet(endpoint, specs, mode="enroll", announce_every_s=announce_every_s) as fleet,
    ):
        mark, before = cluster.mark(), controller.sample()
        emulator0, main0 = cluster.emulator_cpu_s(), thread_cpu_s(threading.main_thread())
        with (
            profiled(controller.pid, profile / f"controller-{size}.txt" if profile else None),
            profiled(os.getpid(), profile / f"benchmark-{size}.txt" if profile else None),
        ):
            t0 = time.monotonic() + 0.5
            fleet.go(t0)
            done_at, seen = wait_acked(cluster, fleet, 1, count=size, timeout_s=timeout_s)
        until = cluster.mark()
        yield Storm(
            cluster=cluster,
            controller=controller,
            fleet=fleet,
            size=size,
            t0=t0,
            done_at=done_at,
            acked=seen,
            requests=cluster.requests(since=mark, until=until),
            controller_before=before,
            controller_after=controller.sample(),
            emulator_cpu_s=cluster.emulator_cpu_s() - emulator0,
            main_cpu_s=thread_cpu_s(threading.main_thread()) - main0,
        )


def wait_acked(
    cluster: Cluster, fleet: Fleet, generation: int, *, count: int, timeout_s: float
) -> tuple[float | None, int]:
    """Wait until `count` EdgeDevices record an ack of `generation`: (when seen, how many).

    Listing the EdgeDevices costs the emulator as much as a controller's list (at
    N=1000, a good fraction of a second of its one thread), so the API is only polled
    once every device says it has acked; until then the devices are asked, over pipes.
    An ack the controller never got is never sent again, so once the devices are done,
    `STALL_S` without progress in the API ends the wait (None: incomplete).
    """
    deadline = time.monotonic() + timeout_s
    _wait_count(fleet, generation, timeout_s=timeout_s, interval_s=0.25)
    best, progress_at = -1, time.monotonic()
    while True:
        remaining = min(deadline, progress_at + STALL_S) - time.monotonic()
        done_at, seen = cluster.wait_devices(
            acked(generation), count=count, timeout_s=max(0.0, remaining), interval_s=0.1
        )
        if done_at is not None or remaining <= 0:
            return done_at, seen
        if seen > best:
            best, progress_at = seen, time.monotonic()


def pimesh_figures(run: Storm) -> dict[str, Any]:
    """What the storm took, as the report's `pimesh` entry."""
    records, workers_cpu = run.fleet.report()
    acks = [r.acks[1] - run.t0 for r in records if 1 in r.acks]
    # A device whose bundle came only after its second announce lost its first one (or
    # it was not answered in time): what a Pi would wait --announce-every for.
    reannounced = sum(
        1 for r in records if len(r.announces) > 1 and r.bundles.get(1, 0) > r.announces[1]
    )
    wall = run.wall_s
    before, after = run.controller_before, run.controller_after
    return {
        "complete": run.done_at is not None,
        "acked": run.acked,
        "wall_s": _s(wall),
        "device_side_wall_s": _s(max(acks, default=math.nan)),
        "devices_acked": len(acks),
        "acked_by_s": {f"p{pct}": _s(percentile(acks, pct)) for pct in (10, 50, 90, 100)},
        "acks_lost": len(acks) - run.acked,
        "enrolled_after_reannounce": reannounced,
        "latency_ms": _ms_summary(list(iter_latencies(records, 1))),
        "api_requests": len(run.requests),
        "api_requests_per_device": round(len(run.requests) / run.size, 2),
        "api_requests_by_kind": request_kinds(run.requests),
        "controller": {
            "cpu_s": round(after.cpu_s - before.cpu_s, 2),
            "cpu_total_s": round(after.cpu_s, 2),
            "rss_mb": round(after.rss_mb, 1),
            "peak_rss_mb": round(after.peak_rss_mb, 1),
            "workers": ControllerSettings.model_fields["workers"].default,
            "reconciles": _reconciles(run.controller.metrics()),
        },
        "emulator": {
            "cpu_s": round(run.emulator_cpu_s, 2),
            "busy": round(run.emulator_cpu_s / wall, 2) if wall > 0 else math.nan,
        },
        "benchmark_main_thread_cpu_s": round(run.main_cpu_s, 2),
        "device_workers": {"processes": len(run.fleet.pids), "cpu_s": round(workers_cpu, 2)},
        "polls": run.cluster.poll_stats(),
        "device_errors": sum(len(r.errors) for r in records),
    }


def _reconciles(metrics: dict[str, float]) -> dict[str, float]:
    prefix = "pimesh_reconciles_total{result="
    return {
        name.removeprefix(prefix).strip('"}'): value
        for name, value in metrics.items()
        if name.startswith(prefix)
    }


# --- the API floor ------------------------------------------------------------------------------

_CREATES = {
    "edgedevices": ("pimesh.io/v1alpha1", "EdgeDevice"),
    "events": ("v1", "Event"),
}


def api_floor(
    cluster: Cluster, requests: Sequence[RequestRecord], *, concurrency: int
) -> dict[str, Any]:
    """Replay `requests` (watches left out) with the official client; the wall time."""
    calls = [r for r in requests if r.query.get("watch") not in ("true", "1")]
    side = f"{cluster.namespace}-floor"
    api = load_api_client(cluster.kubeconfig)
    try:
        _call(
            api,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": side}},
        )
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            statuses = list(
                pool.map(lambda ic: _replay(api, ic[1], index=ic[0], side=side), enumerate(calls))
            )
        wall = time.monotonic() - started
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return {
        "wall_s": _s(wall),
        "calls": len(calls),
        "concurrency": concurrency,
        # Only where pimesh's own call succeeded (a 404 it expected is no error).
        "errors": sum(
            1 for status, call in zip(statuses, calls, strict=True) if status >= 400 > call.status
        ),
    }


def _replay(api: Any, record: RequestRecord, *, index: int, side: str) -> int:
    """One request of the log again: same verb and path, a body of the same kind."""
    method, path, query = record.method, record.path, dict(record.query)
    if method == "PATCH":
        body: Any = {"metadata": {"annotations": {"bench.pimesh.io/floor": str(index)}}}
        return _call(
            api, method, path, body, query=query, content_type="application/merge-patch+json"
        )
    if method == "POST" and path.endswith("/token"):
        spec = {"audiences": ["istio-ca"], "expirationSeconds": 3600}
        return _call(
            api,
            method,
            path,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
    plural = path.rstrip("/").rsplit("/", 1)[-1]
    if method == "POST" and plural in _CREATES:
        api_version, kind = _CREATES[plural]
        namespace = path.split("/namespaces/", 1)[1].split("/", 1)[0]
        side_path = path.replace(f"/namespaces/{namespace}/", f"/namespaces/{side}/")
        body = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": f"floor-{index}", "namespace": side},
        }
        if kind == "Event":
            body |= {
                "involvedObject": {"kind": "EdgeDevice", "name": f"floor-{index}"},
                "reason": "Floor",
                "message": "api floor",
                "type": "Normal",
            }
        return _call(api, method, side_path, body)
    if method in ("PUT", "DELETE", "POST"):
        method = "GET"  # never undo what the run made; reading it costs the same order
    return _call(api, method, path, None, query=query)


def _call(
    api: Any,
    method: str,
    path: str,
    body: Any,
    *,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> int:
    headers = {"Accept": "application/json", "Content-Type": content_type}
    serialized = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    try:
        answer = api.call_api(*serialized, _request_timeout=(10.0, 60.0))
    except Exception:  # a failed call counts as an error, whatever it was
        return 599
    response = answer.response
    try:
        _ = response.data
    finally:
        response.release_conn()
    return int(response.status)


# --- running and reporting ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to run."""

    sizes: tuple[int, ...]
    timeout_s: float
    out: Path
    announce_every_s: float = ANNOUNCE_EVERY_S
    profile: Path | None = None
    """A directory for py-spy profiles of the controller and this process, or None."""


def run_size(bench: Bench, size: int, plan: Plan, *, console: Console) -> dict[str, Any]:
    """The transport floor, pimesh and the API floor for one fleet size."""
    console.log(f"N={size}: transport floor")
    transport = transport_floor(bench, bench.specs(size), timeout_s=60 + size * 0.1)
    console.log(f"N={size}: pimesh")
    with storm(
        bench,
        size,
        timeout_s=plan.timeout_s,
        announce_every_s=plan.announce_every_s,
        profile=plan.profile,
    ) as run:
        pimesh = pimesh_figures(run)
        run.controller.stop()  # the replay must not wake it
        console.log(f"N={size}: API floor ({len(run.requests)} requests)")
        workers = ControllerSettings.model_fields["workers"].default
        api = api_floor(run.cluster, run.requests, concurrency=int(workers))
    return {
        "n": size,
        "pimesh": pimesh,
        "transport_floor": transport,
        "api_floor": api,
        "ratio": {
            "transport": _ratio(pimesh["wall_s"], transport["wall_s"]),
            "api": _ratio(pimesh["wall_s"], api["wall_s"]),
        },
    }


def run(plan: Plan, *, console: Console) -> dict[str, Any]:
    """Every size, one after the other, against one broker; returns the report."""
    results = []
    with bench_broker() as bench:
        for size in plan.sizes:
            results.append(run_size(bench, size, plan, console=console))
    return {
        "benchmark": "boot_storm",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            "sizes": list(plan.sizes),
            "spread_s": SPREAD_S,
            "timeout_s": plan.timeout_s,
            "devices_per_worker_process": MAX_PER_WORKER,
            "controller_workers": ControllerSettings.model_fields["workers"].default,
            "poll_interval_s": 0.1,
            "announce_every_s": plan.announce_every_s,
        },
        "results": results,
    }


def table(results: Sequence[dict[str, Any]]) -> Table:
    """The results as a rich table."""
    view = Table(
        title="Boot storm: N devices announce within 1 s, until all are enrolled and acked",
        caption="x floor: pimesh's wall time over the MQTT echo / the same API calls replayed",
    )
    for column in ("N", "pimesh s", "x MQTT", "x API", "p50/p99 ms", "req/dev", "CPU s", "RSS MB"):
        view.add_column(column, justify="right")
    for row in results:
        mesh, ratio = row["pimesh"], row["ratio"]
        view.add_row(
            str(row["n"]) + ("" if mesh["complete"] else f" ({mesh['acked']} done)"),
            f"{mesh['wall_s']:.2f}",
            f"{ratio['transport']:.1f}x",
            f"{ratio['api']:.1f}x",
            f"{mesh['latency_ms']['p50']:.0f}/{mesh['latency_ms']['p99']:.0f}",
            f"{mesh['api_requests_per_device']:.1f}",
            f"{mesh['controller']['cpu_s']:.1f}",
            f"{mesh['controller']['peak_rss_mb']:.0f}",
        )
    return view


def _s(seconds: float) -> float:
    return round(seconds, 3)


def _ms_summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 1),
        "p99": round(percentile(values, 99) * 1000, 1),
        "max": round(max(values, default=math.nan) * 1000, 1),
        "count": len(values),
    }


def _ratio(value: float, floor: float) -> float:
    return round(value / floor, 2) if floor > 0 and math.isfinite(value) else math.nan


def parse(argv: Sequence[str] | None = None) -> Plan:
    """The command line as a `Plan`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.boot_storm", description=__doc__)
    parser.add_argument("--sizes", default="100,300,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="s per size")
    parser.add_argument("--out", type=Path, default=Path("bench-results/boot_storm.json"))
    parser.add_argument(
        "--announce-every",
        type=float,
        default=ANNOUNCE_EVERY_S,
        help="devices re-announce this often, as agents do (default: the agent's 300 s)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="write py-spy profiles to this directory"
    )
    parser.add_argument("--ci", action="store_true", help="tiny run: N=20")
    args = parser.parse_args(argv)
    if args.profile is not None:
        if (
            shutil.which("py-spy") is None
            and not (Path(sys.executable).parent / "py-spy").is_file()
        ):
            parser.error("--profile: py-spy is not installed (.venv/bin/pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.ci:
        return Plan(sizes=(20,), timeout_s=120.0, out=args.out, profile=args.profile)
    try:
        sizes = tuple(int(part) for part in args.sizes.split(",") if part.strip())
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of integers")
    if not sizes or any(size < 1 for size in sizes):
        parser.error("--sizes: each size must be at least 1")
    if args.announce_every <= 0:
        parser.error("--announce-every must be positive")
    return Plan(
        sizes=sizes,
        timeout_s=args.timeout,
        out=args.out,
        announce_every_s=args.announce_every,
        profile=args.profile,
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
