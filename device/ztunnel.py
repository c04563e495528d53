"""Run ztunnel as a child of the agent, restart it when it exits, report its state.

PROTOCOL.md ("bundle") fixes what this module does: ztunnel runs with its working
directory at ROOT (`--root`), so its default relative paths (`./var/run/secrets/...`,
`./etc/istio/config/mesh`) resolve to the installed bundle, with the bundle's
`ztunnel_env` plus `AUTH_TOKEN`; it is restarted when that environment, the root
certificate or the mesh config change, never for a new token alone (ztunnel re-reads the
token file on every CA and xDS request); if it exits it is restarted with backoff and
reported `failed` after five exits in five minutes; `stopped` means the agent stopped it
(no bundle yet, or revoked); `absent` means there is nothing to run (`--ztunnel-cmd none`,
or a command that cannot be executed).

The seed ran it as `sudo -u istio-proxy VAR=... ztunnel`, so the child gets what sudo's
`env_reset` leaves plus the given variables, never the agent's whole environment:
`PATH`, `LANG` and `LC_ALL` from the agent, and `HOME`, `USER`, `LOGNAME` of the user it
runs as (the agent's `HOME` when it does not drop privileges). Where the agent is root
and `istio-proxy` exists, the child runs as that user with its own groups (initgroups,
as sudo does: root's supplementary groups must not leak). It runs in its own session,
so a Ctrl-C on the agent's terminal reaches the agent, which then stops it in order.

One monitor thread waits on the child (a blocking `wait`, no polling) and on a
condition for restarts; callers start and stop children under the same lock. Logs name
environment keys only: values may be secrets.
"""

import logging
import os
import pwd
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device.errors import ZtunnelError
from shared.fields import ZtunnelState

log = logging.getLogger(__name__)

PARENT_ENV_KEYS = ("PATH", "LANG", "LC_ALL")
"""What the child inherits from the agent's environment (sudo's `env_reset` keeps these)."""


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th restart in a row: `first_s`, doubling, at most `max_s`."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0

    def __call__(self, attempt: int) -> float:
        """Seconds to wait before restart number `attempt` (1-based) of a crash series."""
        return float(min(self.max_s, self.first_s * self.factor ** max(0, attempt - 1)))


@dataclass(frozen=True)
class RunAs:
    """The account a child is started as (see `resolve_user`)."""

    uid: int
    gid: int
    groups: list[int]
    home: str
    name: str


def resolve_user(name: str | None) -> RunAs | None:
    """The account `name` when it exists and we are root, else None (run as ourselves)."""
    if name is None or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = os.getgrouplist(name, entry.pw_gid)
    return RunAs(entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, name)


def child_environment(env: Mapping[str, str], run_as: RunAs | None) -> dict[str, str]:
    """The minimal base environment, with `env` laid over it (see the module docstring)."""
    base = {key: os.environ[key] for key in PARENT_ENV_KEYS if key in os.environ}
    base.setdefault("PATH", os.defpath)
    if run_as is not None:
        base |= {"HOME": run_as.home, "USER": run_as.name, "LOGNAME": run_as.name}
    elif "HOME" in os.environ:
        base["HOME"] = os.environ["HOME"]
    return base | dict(env)


@dataclass(eq=False)
class _Child:
    """One started process; `stopping` marks an exit the supervisor asked for."""

    proc: "subprocess.Popen[bytes]"
    stopping: bool = field(default=False)


class ZtunnelSupervisor:
    """Keeps one ztunnel running with the environment last applied.

    `state` is `running` from a start until a stop, including the backoff pause after a
    crash (the agent still wants it up); `failed` once `max_exits` exits fell within
    `window_s`, after which nothing restarts it until `apply()` or `restart()`.

    Args:
        command: the argv to run; None disables ztunnel (state `absent`).
        cwd: the directory ztunnel runs in (`--root`).
        user: drop to this account when it exists and the agent is root.
        on_state: called with the new state on every change, under the supervisor's
            lock: it must be quick and may read `state`, but must not wait on another
            thread that uses this supervisor.
        clock: monotonic seconds, for the failure window and restart deadlines.
        backoff: delay before the n-th restart of a crash series.
        max_exits: exits within `window_s` that make the state `failed`.
        window_s: the failure window.
        stop_timeout_s: how long a stop waits after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        command: Sequence[str] | None,
        *,
        cwd: Path,
        user: str | None = "istio-proxy",
        on_state: Callable[[ZtunnelState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[int], float] = Backoff(),
        max_exits: int = 5,
        window_s: float = 300.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self._command = list(command) if command is not None else None
        self._cwd = cwd
        self._user = user
        self._on_state = on_state
        self._clock = clock
        self._backoff = backoff
        self._max_exits = max_exits
        self._window_s = window_s
        self._stop_timeout_s = stop_timeout_s
        self._cond = threading.Condition(threading.RLock())
        self._state: ZtunnelState = "absent" if command is None else "stopped"
        self._env: dict[str, str] | None = None  # the env applied; None once stopped
        self._child: _Child | None = None
        self._restart_at: float | None = None
        self._exits: list[float] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ztunnel-supervisor", daemon=True)
        self._thread.start()

    @property
    def state(self) -> ZtunnelState:
        """`running`, `stopped`, `failed` or `absent` (PROTOCOL.md, `status`)."""
        with self._cond:
            return self._state

    @property
    def pid(self) -> int | None:
        """The running child's process id, if there is one."""
        with self._cond:
            return self._child.proc.pid if self._child is not None else None

    def apply(self, env: Mapping[str, str]) -> None:
        """Run ztunnel with `env`: start it, restart it if `env` changed, else leave it be.

        A `failed`, `stopped` or `absent` ztunnel is started even when `env` is the one
        applied before: an apply is the agent saying it wants ztunnel up.

        Raises:
            ZtunnelError: the supervisor is closed.
        """
        with self._cond:
            self._check_open("apply an environment")
            if self._command is None:
                return
            wanted = dict(env)
            if wanted == self._env and self._state == "running":
                return
            log.info("ztunnel environment applied", extra={"env_keys": sorted(wanted)})
            self._env = wanted
            self._start_fresh()

    def restart(self) -> None:
        """Restart now with the environment last applied (root cert or mesh config changed).

        Does nothing before the first `apply()` or after `stop()`. Clears a `failed` state.

        Raises:
            ZtunnelError: the supervisor is closed.
        """
        with self._cond:
            self._check_open("restart")
            if self._command is None or self._env is None:
                return
            self._start_fresh()

    def stop(self) -> None:
        """Stop ztunnel (SIGTERM, then SIGKILL after the timeout); state `stopped`."""
        with self._cond:
            self._env = None
            self._restart_at = None
            self._terminate()
            if self._command is not None:
                self._set_state("stopped")

    def close(self) -> None:
        """Stop ztunnel, reap it, and end the monitor thread. Idempotent."""
        with self._cond:
            self.stop()
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ZtunnelError(f"cannot {what}: the ztunnel supervisor is closed")

    def _start_fresh(self) -> None:
        """Replace any child with a new one; an explicit start forgets past crashes."""
        self._exits.clear()
        self._restart_at = None
        self._terminate()
        self._spawn()

    def _spawn(self) -> None:
        command, env = self._command, self._env
        if command is None or env is None:
            return
        run_as = resolve_user(self._user)
        try:
            proc = subprocess.Popen(
                command,
                cwd=self._cwd,
                env=child_environment(env, run_as),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=run_as.groups if run_as else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            # FileNotFoundError, PermissionError, ENOEXEC (a binary for another CPU), a
            # cwd that cannot be entered: nothing to supervise until the next apply.
            log.error("ztunnel cannot be started", extra=self._why(exc))
            self._set_state("absent")
            return
        self._child = _Child(proc)
        log.info("ztunnel started", extra={"pid": proc.pid, "run_as": run_as and run_as.name})
        self._set_state("running")
        self._cond.notify_all()

    def _why(self, exc: BaseException) -> dict[str, object]:
        return {"command": self._command, "cwd": str(self._cwd), "reason": str(exc)}

    def _terminate(self) -> None:
        """Stop the current child, if any, and reap it; the monitor ignores its exit."""
        child, self._child = self._child, None
        if child is None:
            return
        child.stopping = True
        proc = child.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("ztunnel ignored SIGTERM; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        log.info("ztunnel stopped", extra={"pid": proc.pid, "code": proc.returncode})

    def _set_state(self, state: ZtunnelState) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state is None:
            return
        try:
            self._on_state(state)
        except Exception:
            log.exception("ztunnel state callback failed", extra={"state": state})

    def _run(self) -> None:
        """The monitor thread: no exception ends it, only `close()`."""
        while True:
            try:
                if not self._monitor_once():
                    return
            except Exception:
                log.exception("ztunnel monitor error")
                with self._cond:
                    self._cond.wait(1.0)  # do not spin if the error repeats

    def _monitor_once(self) -> bool:
        """Wait for one event (an exit, a due restart, a new child); False once closed."""
        with self._cond:
            while not self._closed and self._child is None and self._restart_at is None:
                self._cond.wait()
            if self._closed:
                return False
            child = self._child
            if child is None:
                if self._restart_at is not None:  # always, after the loop above
                    self._restart_when_due(self._restart_at)
                return True
        code = child.proc.wait()  # outside the lock: callers may stop it meanwhile
        with self._cond:
            if child is self._child and not child.stopping:
                self._child = None
                self._on_exit(code)
        return True

    def _restart_when_due(self, restart_at: float) -> None:
        delay = restart_at - self._clock()
        if delay > 0:
            self._cond.wait(delay)
            return
        self._restart_at = None
        self._spawn()

    def _on_exit(self, code: int) -> None:
        now = self._clock()
        self._exits = [t for t in self._exits if now - t < self._window_s] + [now]
        count = len(self._exits)
        if count >= self._max_exits:
            log.error("ztunnel failed", extra={"code": code, "exits": count})
            self._set_state("failed")
            return
        delay = self._backoff(count)
        log.warning("ztunnel exited", extra={"code": code, "exits": count, "delay_s": delay})
        self._restart_at = now + delay
