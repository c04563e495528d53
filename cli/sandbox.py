"""`pimesh sandbox`: the whole system on this machine, shown live, gone without a trace.

    pimesh sandbox [--devices N] [--duration S] [--headless] [--manual-approve]
                   [--http-port-base P] [--workdir DIR] [--keep]
                   [--topic-prefix P] [--mqtt-version 5|3.1.1]

`sandbox.run.Sandbox` starts the parts (Mosquitto as a child process, the Kubernetes API,
the controller and the simulated Pis in process); this module owns the command around
it: flags (each also a `PIMESH_<FLAG>` variable), the work directory, logs, signals and
what the operator sees. The live view (`sandbox.view`) redraws about four times a
second; `--headless` prints one line per change instead and a final table, and exits 1
when a Pi did not end Enrolled with its bundle installed and acknowledged.

Logs go to `<workdir>/sandbox.log` (INFO, text), never to the terminal, where they would
tear the live view. SIGINT and SIGTERM only end the wait: everything is then stopped in
order (Pis and their stand-in ztunnels, controller, API, Mosquitto) and the command
exits 0. The default work directory is a new temporary one, removed at the end unless
`--keep` is given or a headless run failed; a given `--workdir` must be empty or absent
and is never removed.

Exit codes: 0 done; 1 a part would not start (Mosquitto missing: the line names the
Debian package) or a headless run ended with a Pi not enrolled; 2 a refused flag.
"""

import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.live import Live

from cli.options import MqttVersion as MqttVersionOption
from cli.options import TopicPrefix, build_settings, describe, exits, fail
from sandbox.broker import find_mosquitto
from sandbox.pis import PiSnapshot
from sandbox.run import MAX_DEVICES, Sandbox, SandboxInfo
from sandbox.view import ProgressLines, dashboard, fleet_table, instructions
from shared import DEFAULT_TOPIC_PREFIX
from shared.logs import TextFormatter
from shared.settings import MqttVersion

LOG_NAME = "sandbox.log"
REFRESH_PER_S = 4
PIPE_WIDTH = 200  # rich would use 80 columns and squash the table
_POLL_S = 0.1


class SandboxSettings(BaseSettings):
    """The flags of `pimesh sandbox`."""

    model_config = SettingsConfigDict(env_prefix="PIMESH_", extra="ignore", frozen=True)

    devices: int = Field(
        default=3, ge=1, le=MAX_DEVICES, description="Simulated Pis, named pi-1 .. pi-N."
    )
    duration: float | None = Field(
        default=None, gt=0, description="Stop after this many seconds (default: at Ctrl-C)."
    )
    headless: bool = Field(
        default=False, description="Progress lines and a final table instead of the live view."
    )
    manual_approve: bool = Field(
        default=False, description="Leave new Pis Pending until `pimesh approve ID`."
    )
    http_port_base: int = Field(
        default=0,
        ge=0,
        le=65535 - MAX_DEVICES,
        description="Pi i serves HTTP on this + i; 0: free ports.",
    )
    workdir: Path | None = Field(
        default=None, description="An empty or new directory for the sandbox's files."
    )
    keep: bool = Field(default=False, description="Keep the temporary work directory at exit.")
    topic_prefix: str = Field(
        default=DEFAULT_TOPIC_PREFIX, description="Prefix P of every pimesh topic."
    )
    mqtt_version: MqttVersion = Field(default="5", description="MQTT protocol: 5 or 3.1.1.")

    @field_validator("workdir")
    @classmethod
    def _empty_or_absent(cls, value: Path | None) -> Path | None:
        if value is None or not value.exists():
            return value
        if not value.is_dir():
            msg = f"{value} is not a directory"
            raise ValueError(msg)
        if any(value.iterdir()):
            # Pis pin the controller key of the run that made their state: a new
            # controller's bundles would be ignored.
            msg = f"{value} is not empty: give a new or empty directory"
            raise ValueError(msg)
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        levels = value.split("/")
        bad = set("+#$%\0")
        if not value or any(not lv or set(lv) & bad or not lv.isprintable() for lv in levels):
            msg = f"{value!r} must be non-empty topic levels without wildcards, '$', '%' or '//'"
            raise ValueError(msg)
        if any(ch.isspace() for ch in value):
            msg = f"{value!r} must not contain whitespace"
            raise ValueError(msg)
        return value


def _opt(field: str) -> Any:
    return typer.Option(
        "--" + field.replace("_", "-"), help=describe(SandboxSettings, field), show_default=False
    )


def sandbox(
    devices: Annotated[int | None, _opt("devices")] = None,
    duration: Annotated[float | None, _opt("duration")] = None,
    headless: Annotated[bool | None, _opt("headless")] = None,
    manual_approve: Annotated[bool | None, _opt("manual_approve")] = None,
    http_port_base: Annotated[int | None, _opt("http_port_base")] = None,
    workdir: Annotated[Path | None, _opt("workdir")] = None,
    keep: Annotated[bool | None, _opt("keep")] = None,
    topic_prefix: TopicPrefix = None,
    mqtt_version: MqttVersionOption = None,
) -> None:
    """Run everything on this machine: Mosquitto, a Kubernetes API, the controller, N Pis."""
    with exits():
        settings = build_settings(
            SandboxSettings,
            devices=devices,
            duration=duration,
            headless=headless,
            manual_approve=manual_approve,
            http_port_base=http_port_base,
            workdir=workdir,
            keep=keep,
            topic_prefix=topic_prefix,
            mqtt_version=mqtt_version,
        )
        find_mosquitto()  # before anything is made: one line naming the Debian package
        failures = run(settings, console=_console())
    if failures:
        fail("; ".join(failures))


def _console() -> Console:
    """The terminal's console; one wide enough for a whole row when output is a file or pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def register(app: typer.Typer) -> None:
    """Add `sandbox` to the `pimesh` app."""
    app.command()(sandbox)


@dataclass(frozen=True)
class _Outcome:
    """How a run ended: the fleet just before the stop, and who enrolled along the way."""

    final: list[PiSnapshot]
    timed_out: bool
    enrolled: frozenset[str]


def run(settings: SandboxSettings, *, console: Console) -> list[str]:
    """Run the sandbox until the duration ends or a signal comes; return headless failures."""
    workdir, owned = _workdir(settings)
    log_file = workdir / LOG_NAME
    handler = _log_to(log_file)
    stop = threading.Event()
    failures: list[str] = []
    try:
        with _stop_on_signals(stop):
            outcome = _run_sandbox(
                settings, workdir=workdir, console=console, stop=stop, log_file=log_file
            )
        console.print("sandbox stopped: Pis, ztunnels, controller, API and Mosquitto are down")
        if settings.headless:
            console.print(fleet_table(outcome.final))
            # Stopped by a signal, the operator ended the run: nothing to judge.
            failures = _failures(outcome) if outcome.timed_out else []
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        _leave(workdir, owned=owned, keep=settings.keep or bool(failures), console=console)
    return failures


def _run_sandbox(
    settings: SandboxSettings,
    *,
    workdir: Path,
    console: Console,
    stop: threading.Event,
    log_file: Path,
) -> _Outcome:
    """Start, show, wait, snapshot, stop."""
    box = Sandbox(
        workdir,
        devices=settings.devices,
        manual_approve=settings.manual_approve,
        http_port_base=settings.http_port_base,
        topic_prefix=settings.topic_prefix,
        mqtt_version=settings.mqtt_version,
    )
    with box:
        info = box.info
        text = instructions(info, manual_approve=settings.manual_approve, log_file=str(log_file))
        console.print(text, soft_wrap=True)  # long commands stay whole, to copy and paste
        deadline = None if settings.duration is None else time.monotonic() + settings.duration
        enrolled: frozenset[str] = frozenset()
        if settings.headless:
            enrolled = _headless(box, console=console, stop=stop, deadline=deadline)
        else:
            _live(box, info, console=console, stop=stop, deadline=deadline)
        outcome = _Outcome(box.snapshot(), timed_out=not stop.is_set(), enrolled=enrolled)
        console.print("stopping ...", highlight=False)
    return outcome


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _live(
    box: Sandbox,
    info: SandboxInfo,
    *,
    console: Console,
    stop: threading.Event,
    deadline: float | None,
) -> None:
    def render() -> Any:
        return dashboard(info, box.snapshot(), remaining_s=_remaining(deadline))

    with Live(get_renderable=render, console=console, refresh_per_second=REFRESH_PER_S):
        stop.wait(_remaining(deadline))


def _headless(
    box: Sandbox, *, console: Console, stop: threading.Event, deadline: float | None
) -> frozenset[str]:
    """Print progress lines until the deadline or a signal; return the Pis seen enrolled."""

    def emit(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    ending = "at Ctrl-C" if deadline is None else f"in {_remaining(deadline):.0f} s"
    emit(f"sandbox running with {len(box.pis)} Pis; it stops {ending}")
    lines = ProgressLines(emit)
    while True:
        lines.update(box.snapshot())
        remaining = _remaining(deadline)
        if stop.wait(_POLL_S if remaining is None else min(_POLL_S, remaining)):
            return lines.enrolled
        if remaining is not None and remaining <= 0:
            lines.update(box.snapshot())
            return lines.enrolled


def _failures(outcome: _Outcome) -> list[str]:
    """The Pis never seen Enrolled with a bundle installed and acknowledged."""
    return [
        f"{s.device_id} did not enroll (phase {s.phase or 'none'}, "
        f"generation {s.installed} installed, {s.acked} acknowledged)"
        for s in outcome.final
        if s.device_id not in outcome.enrolled
    ]


def _workdir(settings: SandboxSettings) -> tuple[Path, bool]:
    """The work directory and whether this run made it (and so may remove it)."""
    if settings.workdir is None:
        return Path(tempfile.mkdtemp(prefix="pimesh-sandbox-")), True
    settings.workdir.mkdir(parents=True, exist_ok=True)
    return settings.workdir, False


def _leave(workdir: Path, *, owned: bool, keep: bool, console: Console) -> None:
    if owned and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"work directory kept: {workdir}", markup=False, highlight=False)


def _log_to(path: Path) -> logging.Handler:
    """Send every log record to `path` as text (the terminal belongs to the view)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("urllib3", "kubernetes", "aiohttp.access", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (so a start is never cut half-way); restored after."""
    handlers: dict[signal.Signals, Callable[..., Any] | int | None] = {}

    def on_signal(*_: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
