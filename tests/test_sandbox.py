"""`pimesh sandbox` as an operator runs it: a real process, a second terminal, nothing left behind.

The end-to-end test starts `python -m cli sandbox --headless` (Mosquitto, the API, the
controller and three simulated Pis), waits for its progress lines to say every Pi is
enrolled, then plays the second terminal: it reads `env.sh` and sends an LED command with
`python -m cli led`. The sandbox must report that command on every Pi, exit 0 at the end
of its duration and leave none of the processes it started (Mosquitto, the stand-in
ztunnels) behind. The view's pure parts are tested on snapshots made by hand.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from rich.console import Console

from device.leds import Color
from sandbox.pis import PiSnapshot
from sandbox.run import SandboxInfo
from sandbox.view import ProgressLines, dashboard, fleet_table, strip_cells

REPO = Path(__file__).resolve().parents[1]
DEVICES = ("pi-1", "pi-2", "pi-3")
BLACK, RED, GREEN = Color(0, 0, 0), Color(255, 0, 0), Color(0, 255, 0)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any PIMESH_* variable (a developer's shell may set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIMESH_")}
    return {**env, **extra}


def pimesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


class Lines:
    """Reads a text stream line by line on a thread, so a test can wait for a line."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, wanted: Callable[[list[str]], bool], *, timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: wanted(self.lines), timeout=timeout):
                shown = "\n".join(self.lines[-40:])
                raise AssertionError(f"timed out waiting for {what}; output so far:\n{shown}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


def has_all(*needles: str) -> Callable[[list[str]], bool]:
    return lambda lines: all(n in lines for n in needles)


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time), None if the pid is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return None if fields[0] == "Z" else fields[19]


def descendants(pid: int) -> dict[int, tuple[str, str]]:
    """Every live descendant of `pid`: its pid -> (start time, command name)."""
    found: dict[int, tuple[str, str]] = {}
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            for kid in kids:
                started = start_time(kid)
                if started is not None and kid not in found:
                    comm = Path(f"/proc/{kid}/comm").read_text().strip()
                    found[kid] = (started, comm)
                    pending.append(kid)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """The PIMESH_* variables `env.sh` exports (PATH is left to this environment)."""
    exported: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and words[1].startswith("PIMESH_"):
            name, _, value = words[1].partition("=")
            exported[name] = value
    return exported


@pytest.fixture
def sandbox_proc(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    workdir = tmp_path / "sandbox"
    args = ("sandbox", "--devices", "3", "--headless", "--duration", "20")
    proc = subprocess.Popen(
        pimesh(*args, "--workdir", str(workdir)),
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, workdir
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(60)
def test_sandbox_runs_the_fleet_obeys_a_second_terminal_and_leaves_nothing_behind(
    sandbox_proc: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, workdir = sandbox_proc
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = Lines(proc.stdout), Lines(proc.stderr)

    out.wait_for(
        has_all(*(f"{d} Enrolled generation 1" for d in DEVICES)), timeout=20, what="enrolment"
    )
    out.wait_for(has_all(*(f"{d} ztunnel running" for d in DEVICES)), timeout=10, what="ztunnel")
    children = descendants(proc.pid)
    names = sorted(comm for _, comm in children.values())
    assert "mosquitto" in names
    assert len(children) >= 1 + len(DEVICES), names  # the broker and a ztunnel per Pi

    env_file = workdir / "env.sh"
    assert f"  source {env_file}" in out.lines
    exported = read_env_file(env_file)
    assert exported["PIMESH_USERNAME"] == "_pimesh-operator"
    assert exported["PIMESH_NAMESPACE"] == "pi-fleet"
    assert exported["PIMESH_TOPIC_PREFIX"] == "pimesh/v1"
    assert Path(exported["PIMESH_KUBECONFIG"]).is_file()
    assert exported["PIMESH_PASSWORD"] not in "\n".join(out.lines)  # shown only via its file

    second = subprocess.run(
        pimesh("led", "all", "solid", "--color", "#00ff00"),
        cwd=REPO,
        env=clean_env(**exported),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    command_id = second.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", command_id)
    out.wait_for(
        has_all(*(f"{d} led solid #00ff00 command {command_id}" for d in DEVICES)),
        timeout=10,
        what="the LED command on every Pi",
    )

    assert proc.wait(timeout=30) == 0, err.text()
    text = out.text()
    final_table = text.split("sandbox stopped:", 1)[1]
    rows = [line for line in final_table.splitlines() if command_id in line]
    assert len(rows) == len(DEVICES)
    assert all("Enrolled" in row and "solid" in row for row in rows)
    assert err.text() == ""
    still_running = {
        pid: comm for pid, (started, comm) in children.items() if start_time(pid) == started
    }
    assert still_running == {}
    assert workdir.is_dir()  # a given --workdir is the operator's: never removed


def test_missing_mosquitto_is_one_line_naming_the_debian_package(tmp_path: Path) -> None:
    workdir = tmp_path / "never-made"
    result = subprocess.run(
        pimesh("sandbox", "--headless", "--duration", "1", "--workdir", str(workdir)),
        cwd=REPO,
        env=clean_env(
            PATH=str(Path(sys.executable).parent), PIMESH_MOSQUITTO=str(tmp_path / "nonexistent")
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pimesh: mosquitto not found")
    assert "Debian package 'mosquitto'" in lines[0]
    assert "apt-get install mosquitto" in lines[0]
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("--devices", "0"), "--devices"), (("--duration", "-1"), "--duration")],
)
def test_a_refused_flag_is_named_with_exit_code_2(
    tmp_path: Path, args: tuple[str, ...], flag: str
) -> None:
    result = subprocess.run(
        pimesh("sandbox", *args, "--workdir", str(tmp_path / "w")),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"pimesh: {flag}: ")


def test_a_workdir_with_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "left-over").write_text("state of an earlier run")
    result = subprocess.run(
        pimesh("sandbox", "--workdir", str(tmp_path)),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("pimesh: --workdir: ")
    assert "not empty" in result.stderr


def test_a_pi_that_cannot_start_stops_the_sandbox_with_one_line(tmp_path: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:  # noqa: S104 - as the Pis bind
        port = taken.getsockname()[1]
        result = subprocess.run(
            pimesh("sandbox", "--devices", "1", "--http-port-base", str(port - 1), "--headless"),
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pimesh: pi-1 did not start (--http-port-base): ")
    assert f"port {port}" in lines[0]


# The view, on snapshots made by hand ------------------------------------------------------


def snap(device_id: str = "pi-1", /, **changes: object) -> PiSnapshot:
    values: dict[str, object] = {
        "device_id": device_id,
        "group": "g1",
        "phase": None,
        "online": None,
        "generation": 0,
        "acked": 0,
        "installed": 0,
        "ztunnel": "stopped",
        "effect": "off",
        "color": Color(255, 255, 255),
        "command_id": None,
        "pixels": (BLACK,) * 100,
        "web_port": 8081,
        **changes,
    }
    return PiSnapshot(**values)  # type: ignore[arg-type]


def test_progress_lines_say_each_change_once() -> None:
    said: list[str] = []
    lines = ProgressLines(said.append)
    enrolled = {"phase": "Enrolled", "online": True, "generation": 1, "acked": 1}
    lines.update([snap()])
    lines.update([snap(phase="Pending", online=True)])
    lines.update([snap(**enrolled)])
    lines.update([snap(**enrolled, installed=1, ztunnel="running")])
    lines.update([snap(**enrolled, installed=1, ztunnel="running")])
    led = {"effect": "solid", "color": GREEN, "command_id": "c-1"}
    lines.update([snap(**enrolled, installed=1, ztunnel="running", **led)])
    assert said == [
        "pi-1 Pending generation 0",
        "pi-1 online",
        "pi-1 Enrolled generation 0",
        "pi-1 Enrolled generation 1",
        "pi-1 ztunnel running",
        "pi-1 led solid #00ff00 command c-1",
    ]
    assert lines.enrolled == {"pi-1"}


def test_a_pi_enrolled_once_still_counts_after_it_is_revoked() -> None:
    lines = ProgressLines(lambda _: None)
    lines.update([snap(phase="Enrolled", acked=1, installed=1), snap("pi-2", phase="Pending")])
    lines.update([snap(phase="Revoked", acked=1, installed=1), snap("pi-2", phase="Pending")])
    assert lines.enrolled == {"pi-1"}


def test_the_strip_is_sampled_to_twenty_coloured_cells() -> None:
    pixels = (RED,) * 50 + (GREEN,) * 50
    cells = strip_cells(pixels)
    assert cells.plain == "█" * 20
    styles = [str(span.style) for span in cells.spans]
    assert styles == ["rgb(255,0,0)"] * 10 + ["rgb(0,255,0)"] * 10
    assert strip_cells((BLACK,) * 100).plain == "·" * 20


def test_the_fleet_table_shows_phase_generation_and_the_whole_command_id() -> None:
    command_id = "0b8a4f0e-5d1c-4c3e-9a57-2f3f8e9b1c2d"
    row = snap(phase="Enrolled", online=True, generation=2, acked=1, installed=2)
    row2 = snap("pi-2", effect="solid", color=RED, command_id=command_id, web_port=None)
    console = Console(record=True, width=200)
    console.print(fleet_table([row, row2]))
    text = console.export_text()
    assert re.search(r"pi-1 .*Enrolled .*yes .*2/1 ", text)
    assert re.search(rf"pi-2 .*waiting .*solid #ff0000 .*{command_id}.* - ", text)


def test_the_dashboard_says_where_things_run_and_when_it_stops(tmp_path: Path) -> None:
    info = SandboxInfo(
        workdir=tmp_path,
        broker_url="mqtt://127.0.0.1:1883",
        api_url="http://127.0.0.1:6443",
        topic_prefix="pimesh/v1",
        mqtt_version="5",
        namespace="pi-fleet",
        kubeconfig=tmp_path / "kubeconfig",
        env_file=tmp_path / "env.sh",
        password_file=tmp_path / "operator-password",
        operator_username="_pimesh-operator",
        metrics_port=9090,
        device_ids=("pi-1",),
    )
    console = Console(record=True, width=200)
    console.print(dashboard(info, [snap(phase="Pending")], remaining_s=12.4))
    text = console.export_text()
    assert "broker mqtt://127.0.0.1:1883" in text
    assert f"kubeconfig {tmp_path / 'kubeconfig'}" in text
    assert "stops in 12 s" in text
    assert re.search(r"pi-1 .*Pending", text)
