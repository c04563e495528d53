"""The system under test of the scaling benchmarks, and what /proc says about its processes.

- `Cluster`: the Kubernetes API emulator (`sandbox.kubeapi`) in this process, with the
  EdgeDevice CRD and what Istio would have put in a cluster (`sandbox.cluster.seed_cluster`).
  The benchmark's own reads are tagged with a query parameter (`POLL_TAG`) so that they
  can be told apart from the controller's in the emulator's request log.
- `ControllerProcess`: `python -m cli controller run` as a child process, the way it runs
  in a cluster, so that its CPU seconds and peak RSS are its own (`/proc/PID/stat` and
  `/proc/PID/status`); ready once its `/readyz` answers 200.
- `ProcessSample`: CPU seconds and memory of any process (or of one thread of this one).
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml

from controller.kube import Kube, load_api_client
from sandbox.broker import BrokerInfo
from sandbox.cluster import EDGE_DEVICE_CRD, seed_cluster
from sandbox.kubeapi import KubeApiServer, RequestRecord
from sandbox.run import free_port

ROOT = Path(__file__).resolve().parents[1]
POLL_TAG = "pimeshBenchPoll"
"""Query parameter on the benchmark's own API reads (the emulator ignores it)."""
EDGE_DEVICES_PATH = "/apis/pimesh.io/v1alpha1/namespaces/{ns}/edgedevices"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT_S = 60.0


# --- /proc ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds (user + system) and memory of a process at one moment."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float
    """VmHWM: the largest RSS the process ever had."""
    at: float
    """`time.monotonic()` when sampled."""

    @classmethod
    def of(cls, pid: int) -> Self:
        """Read `/proc/PID/stat` and `/proc/PID/status`."""
        return cls(
            cpu_s=_stat_cpu_s(Path(f"/proc/{pid}/stat")),
            rss_mb=_status_kb(pid, "VmRSS") / 1024,
            peak_rss_mb=_status_kb(pid, "VmHWM") / 1024,
            at=time.monotonic(),
        )

    def cpu_percent_since(self, earlier: "ProcessSample") -> float:
        """Average CPU use between two samples, in percent of one core."""
        elapsed = self.at - earlier.at
        return 100 * (self.cpu_s - earlier.cpu_s) / elapsed if elapsed > 0 else float("nan")


def _stat_cpu_s(path: Path) -> float:
    # The command name (field 2) may hold spaces; every field after its ")" is plain.
    fields = path.read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds one thread of this process has used so far."""
    native = thread.native_id
    if native is None:
        return 0.0
    return _stat_cpu_s(Path(f"/proc/self/task/{native}/stat"))


@contextmanager
def profiled(pid: int, path: Path | None, *, rate_hz: int = 50) -> Iterator[None]:
    """Sample `pid` with py-spy (every thread, collapsed stacks) into `path`; None: off.

    The file is what `py-spy record --format raw` writes: one line per distinct stack
    with its sample count, for flame graphs or `sort -k2`.
    """
    if path is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--output",
            str(path),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the API ----------------------------------------------------------------------------------


def _emulator_thread() -> threading.Thread | None:
    """The emulator's event-loop thread (`sandbox.kubeapi.server` names it `kubeapi`)."""
    found = [t for t in threading.enumerate() if t.name == "kubeapi"]
    return found[-1] if found else None


class Cluster:
    """A fresh API emulator with the CRD and Istio's objects in `namespace`; a context manager."""

    def __init__(self, workdir: Path, *, namespace: str) -> None:
        self.namespace = namespace
        self.api = KubeApiServer()
        self._workdir = workdir
        self.kubeconfig = workdir / f"kubeconfig-{namespace}"
        self.thread: threading.Thread | None = None
        self.token_times: list[float] = []
        """`time.monotonic()` of every TokenRequest answered (`issued_tokens` keeps seconds)."""
        self._polls: list[float] = []

    def __enter__(self) -> Self:
        self.api.start()
        self.thread = _emulator_thread()
        self._time_tokens()
        try:
            self.api.install_crd(yaml.safe_load(EDGE_DEVICE_CRD.read_text()))
            self.api.write_kubeconfig(self.kubeconfig, namespace=self.namespace)
            kube = Kube(load_api_client(self.kubeconfig))
            try:
                seed_cluster(kube, namespace=self.namespace)
            finally:
                kube.close()
        except BaseException:
            self.api.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.api.stop()

    def _time_tokens(self) -> None:
        """Instrument the emulator's token issuer: note when each TokenRequest is answered.

        `issued_tokens` keeps whole seconds (as a JWT's `iat` does); a rotation's pace
        needs finer times. The issuer is the emulator's public `tokens` attribute; its
        method is wrapped on this one instance only.
        """
        issuer = self.api.tokens
        answer = issuer.token_request

        def timed(request: dict[str, Any], *, service_account: dict[str, Any]) -> dict[str, Any]:
            result = answer(request, service_account=service_account)
            self.token_times.append(time.monotonic())
            return result

        issuer.token_request = timed  # type: ignore[method-assign]

    def emulator_cpu_s(self) -> float:
        """CPU seconds of the emulator's thread so far."""
        return thread_cpu_s(self.thread) if self.thread is not None else float("nan")

    def edge_devices(self) -> list[dict[str, Any]]:
        """Every EdgeDevice, read over HTTP with the poll tag (not counted as pimesh's)."""
        url = f"{self.api.url}{EDGE_DEVICES_PATH.format(ns=self.namespace)}?{POLL_TAG}=1"
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 - loopback http
            body = json.loads(answer.read())
        self._polls.append(time.monotonic() - started)
        return list(body.get("items", []))

    def wait_devices(
        self,
        done: Callable[[dict[str, Any]], bool],
        *,
        count: int,
        timeout_s: float,
        interval_s: float = 0.5,
    ) -> tuple[float | None, int]:
        """Poll until `count` EdgeDevices satisfy `done`: (when seen or None, how many)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = sum(1 for obj in self.edge_devices() if done(obj))
            now = time.monotonic()
            if seen >= count:
                return now, seen
            if now >= deadline:
                return None, seen
            time.sleep(max(0.0, min(interval_s, deadline - now)))

    def poll_stats(self) -> dict[str, float | int]:
        """How many polls were made and what one cost (ms), since the last call."""
        polls, self._polls = self._polls, []
        mean = sum(polls) / len(polls) if polls else 0.0
        return {"count": len(polls), "mean_ms": round(mean * 1000, 2)}

    def requests(self, *, since: int = 0, until: int | None = None) -> list[RequestRecord]:
        """The pimesh requests in the log between two `mark()`s (the polls left out)."""
        return [r for r in self.api.requests[since:until] if POLL_TAG not in r.query]

    def mark(self) -> int:
        """An index into the request log, for `requests(since=...)`."""
        return len(self.api.requests)


def acked(generation: int) -> Callable[[dict[str, Any]], bool]:
    """EdgeDevice predicate: Enrolled and `status.ackedGeneration` >= `generation`."""

    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return status.get("phase") == "Enrolled" and (status.get("ackedGeneration") or 0) >= (
            generation
        )

    return check


def request_kinds(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Requests by verb and resource (`PATCH edgedevices/status`, `LIST ...`), most first."""
    counts: Counter[str] = Counter()
    for record in records:
        parts = [p for p in record.path.split("/") if p]
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            rest = parts[parts.index("namespaces") + 2 :]
        else:
            rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
        resource = rest[0] if rest else record.path
        sub = f"/{rest[2]}" if len(rest) > 2 else ""
        verb = record.method
        if record.query.get("watch") in ("true", "1"):
            verb = "WATCH"
        elif verb == "GET" and len(rest) == 1:
            verb = "LIST"
        counts[f"{verb} {resource}{sub}"] += 1
    return dict(counts.most_common())


# --- the controller ------------------------------------------------------------------------------


def controller_flags() -> str:
    """What `pimesh controller run --help` says (to detect flags this build has)."""
    result = subprocess.run(
        [sys.executable, "-m", "cli", "controller", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean_env(), "COLUMNS": "200"},
    )
    return result.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any `PIMESH_*` variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIMESH_")}
    return {**env, **extra}


class ControllerProcess:
    """`python -m cli controller run` against `broker` and `cluster`; a context manager.

    `extra` flags are appended; `env` adds `PIMESH_*` settings the CLI has no flag for.
    """

    def __init__(
        self,
        broker: BrokerInfo,
        cluster: Cluster,
        *,
        prefix: str,
        log_file: Path,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port("127.0.0.1")
        self.argv = [
            sys.executable,
            "-m",
            "cli",
            "controller",
            "run",
            "--namespace",
            cluster.namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--auto-approve",
            "*",
            "--broker",
            broker.url,
            "--username",
            broker.controller_username,
            "--topic-prefix",
            prefix,
            "--metrics-port",
            str(self.metrics_port),
            *extra,
        ]
        # The password goes by environment, never on a command line others can read.
        self._env = clean_env(**(env or {}), PIMESH_PASSWORD=broker.controller_password)
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The controller's process id."""
        if self._process is None:
            raise RuntimeError("the controller is not running")
        return self._process.pid

    @property
    def command(self) -> str:
        """The command line (for the report)."""
        return shlex.join(self.argv[1:])

    def __enter__(self) -> Self:
        with self._log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def sample(self) -> ProcessSample:
        """CPU and memory now."""
        return ProcessSample.of(self.pid)

    def metrics(self) -> dict[str, float]:
        """The pimesh_* samples of `/metrics`, by their full name with labels."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("pimesh_") and " " in line and "_created" not in line:
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def stop(self) -> None:
        """SIGTERM (it says offline and stops its workers), SIGKILL after 20 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait_ready(self) -> None:
        assert self._process is not None  # noqa: S101 - set by __enter__
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the controller exited ({self._process.returncode}); see {self._log_file}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening or not ready yet
            time.sleep(0.1)
        raise RuntimeError(f"the controller was not ready within {_READY_TIMEOUT_S} s")
