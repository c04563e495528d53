"""The ztunnel supervisor against the real stand-in process (sandbox.standin_ztunnel)."""

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device.errors import DeviceError, ZtunnelError
from device.ztunnel import Backoff, ZtunnelSupervisor, child_environment, resolve_user
from sandbox.standin_ztunnel import EXIT_AFTER_ENV, RECORD_ENV
from shared.fields import ZtunnelState

pytestmark = pytest.mark.timeout(60)

STANDIN = [sys.executable, "-m", "sandbox.standin_ztunnel"]
FAST = Backoff(first_s=0.01, max_s=0.05)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def state_of(supervisor: ZtunnelSupervisor) -> ZtunnelState:
    """Read through a call, so mypy does not narrow the property between assertions."""
    return supervisor.state


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # a zombie still answers: only a reaped child is gone
    except ProcessLookupError:
        return False
    return True


class Recorder:
    """The stand-in's record and starts log, plus the states the supervisor reported."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "record.json"
        self.states: list[ZtunnelState] = []
        self._lock = threading.Lock()

    def on_state(self, state: ZtunnelState) -> None:
        with self._lock:
            self.states.append(state)

    def starts(self) -> int:
        starts = self.path.with_name(self.path.name + ".starts")
        return len(starts.read_text().splitlines()) if starts.exists() else 0

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def env(self, **extra: str) -> dict[str, str]:
        return {RECORD_ENV: str(self.path), "PROXY_MODE": "dedicated", **extra}


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A ROOT laid out the way device.install leaves it (token behind a symlink)."""
    root = tmp_path / "root"
    token = root / "var/lib/istio/ztunnel/istio-token"
    for path, text in {
        token: "header.payload.signature",
        root / "etc/istio/config/mesh": "defaultConfig: {}\n",
        root / "var/run/secrets/istio/root-cert.pem": "-----BEGIN CERTIFICATE-----\n",
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    link = root / "var/run/secrets/tokens/istio-token"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path("../../../lib/istio/ztunnel/istio-token"))
    return root


@pytest.fixture
def make(root: Path, recorder: Recorder) -> Iterator[Callable[..., ZtunnelSupervisor]]:
    made: list[ZtunnelSupervisor] = []

    def make(command: list[str] | None = STANDIN, **kwargs: Any) -> ZtunnelSupervisor:
        kwargs = {"cwd": root, "user": None, "backoff": FAST, "on_state": recorder.on_state} | (
            kwargs
        )
        supervisor = ZtunnelSupervisor(command, **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.close()


def started(supervisor: ZtunnelSupervisor, recorder: Recorder, count: int) -> int:
    """Wait for the `count`-th start to be recorded; the running pid."""
    wait_for(lambda: recorder.starts() >= count and supervisor.pid is not None)
    wait_for(lambda: recorder.path.exists() and recorder.record()["pid"] == supervisor.pid)
    pid = supervisor.pid
    assert pid is not None
    return pid


def test_apply_starts_ztunnel_in_root_with_the_env(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder, root: Path
) -> None:
    supervisor = make()
    assert state_of(supervisor) == "stopped"
    token = root / "var/lib/istio/ztunnel/istio-token"
    supervisor.apply(recorder.env(AUTH_TOKEN=str(token), CA_ADDRESS="istiod:15012"))
    pid = started(supervisor, recorder, 1)

    record = recorder.record()
    assert state_of(supervisor) == "running"
    assert recorder.states == ["running"]
    assert record["pid"] == pid
    assert record["argv"] == STANDIN
    assert Path(record["cwd"]) == root.resolve()
    assert record["uid"] == os.getuid()
    env = record["env"]
    assert env["PROXY_MODE"] == "dedicated"
    assert env["CA_ADDRESS"] == "istiod:15012"
    assert env["AUTH_TOKEN"] == str(token)
    assert env["PATH"] == os.environ.get("PATH", os.defpath)
    # A minimal environment: nothing of the test runner's beyond PATH/LANG/LC_ALL/HOME.
    allowed = {"PATH", "LANG", "LC_ALL", "HOME", RECORD_ENV, "PROXY_MODE", "CA_ADDRESS"}
    assert set(env) - {"AUTH_TOKEN"} <= allowed
    files = record["files"]
    digest = hashlib.sha256(b"header.payload.signature").hexdigest()
    assert files["token"] == {"path": str(token), "exists": True, "sha256": digest}
    assert files["mesh_config"]["sha256"] == hashlib.sha256(b"defaultConfig: {}\n").hexdigest()
    assert files["root_cert"]["exists"] is True
    assert "header.payload.signature" not in recorder.path.read_text()


def test_standin_reads_the_seeds_token_path_without_auth_token(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    supervisor = make()
    supervisor.apply(recorder.env())
    started(supervisor, recorder, 1)
    token = recorder.record()["files"]["token"]
    assert token["path"] == "var/run/secrets/tokens/istio-token"
    assert token["exists"] is True  # through the symlink


def test_same_env_does_not_restart_a_different_env_does(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    supervisor = make()
    supervisor.apply(recorder.env(CLUSTER_ID="a"))
    first = started(supervisor, recorder, 1)
    supervisor.apply(recorder.env(CLUSTER_ID="a"))
    assert supervisor.pid == first
    assert recorder.starts() == 1

    supervisor.apply(recorder.env(CLUSTER_ID="b"))
    second = started(supervisor, recorder, 2)
    assert second != first
    assert not alive(first)
    assert recorder.record()["env"]["CLUSTER_ID"] == "b"
    assert recorder.starts() == 2
    assert recorder.states == ["running"]  # a planned restart is no state change


def test_restart_and_stop(make: Callable[..., ZtunnelSupervisor], recorder: Recorder) -> None:
    supervisor = make()
    supervisor.restart()  # nothing applied yet: nothing to restart
    assert supervisor.pid is None
    assert state_of(supervisor) == "stopped"

    supervisor.apply(recorder.env())
    first = started(supervisor, recorder, 1)
    supervisor.restart()
    second = started(supervisor, recorder, 2)
    assert second != first
    assert not alive(first)

    supervisor.stop()
    assert state_of(supervisor) == "stopped"
    assert supervisor.pid is None
    assert not alive(second)
    assert recorder.states == ["running", "stopped"]
    supervisor.restart()  # stop forgets the env: a revoked device stays stopped
    assert state_of(supervisor) == "stopped"
    assert recorder.starts() == 2


def test_stop_kills_a_child_that_ignores_sigterm(
    make: Callable[..., ZtunnelSupervisor], tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; touch {ready}; while :; do sleep 0.05; done"
    supervisor = make(["/bin/sh", "-c", script], stop_timeout_s=0.2)
    supervisor.apply({})
    wait_for(ready.exists)
    pid = supervisor.pid
    assert pid is not None
    supervisor.stop()
    assert not alive(pid)
    assert state_of(supervisor) == "stopped"


def test_crashes_restart_with_backoff_then_fail(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    attempts: list[int] = []

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.01

    supervisor = make(backoff=backoff)
    env = recorder.env(**{EXIT_AFTER_ENV: "0.02"})
    supervisor.apply(env)
    wait_for(lambda: state_of(supervisor) == "failed")
    assert recorder.starts() == 5
    assert attempts == [1, 2, 3, 4]
    assert recorder.states == ["running", "failed"]
    assert supervisor.pid is None
    time.sleep(0.2)  # well past the backoff: a failed ztunnel is not restarted
    assert recorder.starts() == 5

    supervisor.apply(env)  # the same env: an apply still clears `failed`
    wait_for(lambda: recorder.starts() >= 6)
    assert recorder.states[:3] == ["running", "failed", "running"]


def test_exits_outside_the_window_never_fail(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    supervisor = make(window_s=1e-9)
    supervisor.apply(recorder.env(**{EXIT_AFTER_ENV: "0.01"}))
    wait_for(lambda: recorder.starts() >= 7)
    assert state_of(supervisor) == "running"


def test_restart_clears_failed(make: Callable[..., ZtunnelSupervisor], recorder: Recorder) -> None:
    supervisor = make(max_exits=1)
    supervisor.apply(recorder.env(**{EXIT_AFTER_ENV: "0"}))
    wait_for(lambda: state_of(supervisor) == "failed")
    supervisor.restart()
    wait_for(lambda: recorder.starts() >= 2)


def test_the_failure_window_uses_the_injected_clock(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 100.0  # every reading is 100 s after the last: exits are far apart
        return now[0]

    supervisor = make(clock=clock, backoff=lambda _: 0.0, max_exits=3, window_s=150.0)
    supervisor.apply(recorder.env(**{EXIT_AFTER_ENV: "0"}))
    wait_for(lambda: recorder.starts() >= 6)
    assert state_of(supervisor) == "running"


@pytest.mark.parametrize("kind", ["missing", "not-executable"])
def test_a_command_that_cannot_run_is_absent(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder, tmp_path: Path, kind: str
) -> None:
    command = tmp_path / "ztunnel"
    if kind == "not-executable":
        command.write_text("#!/bin/sh\n")
        command.chmod(0o644)
    supervisor = make([str(command)])
    supervisor.apply(recorder.env())
    assert state_of(supervisor) == "absent"
    assert supervisor.pid is None
    assert recorder.states == ["absent"]
    supervisor.stop()
    assert state_of(supervisor) == "stopped"


def test_disabled_is_absent_and_inert(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    supervisor = make(None)
    assert state_of(supervisor) == "absent"
    supervisor.apply(recorder.env())
    supervisor.restart()
    supervisor.stop()
    assert state_of(supervisor) == "absent"
    assert recorder.states == []
    assert recorder.starts() == 0


def test_close_reaps_the_child_and_the_thread(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    before = {t.ident for t in threading.enumerate()}
    supervisor = make()
    supervisor.apply(recorder.env())
    pid = started(supervisor, recorder, 1)
    supervisor.close()
    supervisor.close()
    assert not alive(pid)
    assert {t.ident for t in threading.enumerate()} <= before
    with pytest.raises(ZtunnelError) as caught:
        supervisor.apply(recorder.env())
    assert isinstance(caught.value, DeviceError)
    assert recorder.starts() == 1


def test_close_during_backoff_ends_quietly(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    supervisor = make(backoff=lambda _: 60.0)
    supervisor.apply(recorder.env(**{EXIT_AFTER_ENV: "0"}))
    wait_for(lambda: recorder.starts() == 1 and supervisor.pid is None)
    supervisor.close()  # would hang for 60 s if the backoff wait ignored close
    assert recorder.starts() == 1


def test_a_failing_state_callback_does_not_stop_supervision(
    make: Callable[..., ZtunnelSupervisor], recorder: Recorder
) -> None:
    def broken(state: ZtunnelState) -> None:
        raise RuntimeError(state)

    supervisor = make(on_state=broken, max_exits=2)
    supervisor.apply(recorder.env(**{EXIT_AFTER_ENV: "0"}))
    wait_for(lambda: state_of(supervisor) == "failed")  # the callback raised on the way
    supervisor.apply(recorder.env())
    started(supervisor, recorder, 3)
    assert state_of(supervisor) == "running"


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff()(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_child_environment_keeps_only_the_base() -> None:
    env = child_environment({"PATH": "/opt/bin", "RUST_LOG": "info"}, None)
    assert env["PATH"] == "/opt/bin"  # the caller's env wins
    assert env["RUST_LOG"] == "info"
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "RUST_LOG"}


def test_resolve_user_skips_unknown_users() -> None:
    assert resolve_user(None) is None
    assert resolve_user("no-such-user-pimesh") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_runs_as_the_given_user_with_its_groups(
    make: Callable[..., ZtunnelSupervisor],
) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user")
    # The venv's interpreter may be unreadable to `nobody`: a shell reports instead.
    work = Path(tempfile.mkdtemp(prefix="pimesh-ztunnel-"))
    try:
        work.chmod(0o777)
        out = work / "out"
        script = f'{{ id -u; id -G; echo "$HOME"; }} > {out}.tmp; mv {out}.tmp {out}; exec sleep 30'
        supervisor = make(["/bin/sh", "-c", script], cwd=work, user="nobody")
        supervisor.apply({})
        wait_for(out.exists)
        uid, groups, home = out.read_text().splitlines()
        assert int(uid) == nobody.pw_uid
        assert "0" not in groups.split()  # root's groups do not leak
        assert home == nobody.pw_dir
        pid = supervisor.pid
        assert pid is not None
        supervisor.close()
        assert not alive(pid)
    finally:
        shutil.rmtree(work)


def test_standin_exits_zero_on_sigterm(recorder: Recorder, tmp_path: Path) -> None:
    proc = subprocess.Popen([*STANDIN, "--record", str(recorder.path)], cwd=tmp_path)
    try:
        wait_for(recorder.path.exists)
        assert recorder.record()["pid"] == proc.pid
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
