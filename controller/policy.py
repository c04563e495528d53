"""Keep the fleet namespace's AuthorizationPolicies equal to the policy file.

The file (parsed and rendered by `controller.policyfile`) is the desired state: every
entry is applied as `pimesh-NAME`, and pimesh-managed policies it no longer names are
deleted. An invalid file changes nothing in the cluster; the last error is kept for
status and metrics.

The file is re-read on change by polling `stat()` rather than with inotify: a ConfigMap
mounted as a volume changes by an atomic swap of the `..data` symlink, which an inotify
watch on the file misses but a `stat()` that follows the symlink sees (new inode, size,
mtime). Polling also needs no extra dependency and works on every filesystem.

"""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ControllerError, PermanentError
from controller.kube import AUTHORIZATION_POLICIES, Kube
from controller.policyfile import MANAGED_POLICIES, PolicyEntry, load_policy_file, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What one sync did; `error` is set (and nothing changed) when the file was refused."""

    applied: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was valid and the cluster now matches it."""
        return self.error is None


@dataclass(frozen=True)
class PolicyStatus:
    """A snapshot for status and metrics: counters, the last error, what is applied."""

    syncs: int
    failures: int
    last_error: str | None
    policies: tuple[str, ...]


class PolicySync:
    """Keeps the namespace's pimesh AuthorizationPolicies equal to the policy file.

    `path=None` (no `--policy-file`) means no policies, exactly like a missing file, so
    dropping the flag also removes what an earlier configuration applied.
    """

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        path: Path | None,
        poll_interval_s: float = 2.0,
        resync_s: float = 300.0,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._path = path
        self._poll_interval_s = poll_interval_s
        self._resync_s = resync_s  # re-applies even without a change: repairs drift
        self._lock = threading.Lock()  # one sync at a time, and guards the counters
        self._syncs = 0
        self._failures = 0
        self._last_error: str | None = None
        self._applied: tuple[str, ...] = ()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> PolicyStatus:
        """Counters, the last error (None after a good sync) and the applied policy names."""
        with self._lock:
            return PolicyStatus(self._syncs, self._failures, self._last_error, self._applied)

    def sync(self) -> SyncResult:
        """Read the file and converge the cluster to it; an invalid file changes nothing.

        Raises:
            ApiError: the API refused a call; some policies may be applied already (every
                step is idempotent: the next sync finishes the job).
            ApiUnavailable: the API could not be reached.
        """
        with self._lock:
            try:
                entries = [] if self._path is None else load_policy_file(self._path)
            except PermanentError as exc:
                log.warning("policy file refused, applied policies left as they are: %s", exc)
                self._failed(exc.reason)
                return SyncResult(error=exc.reason)
            try:
                result = self._converge(entries)
            except ControllerError as exc:
                self._failed(exc.reason)
                raise
            self._syncs += 1
            self._last_error = None
            self._applied = result.applied
            return result

    def start(self) -> None:
        """Sync now, then whenever the file changes, every `resync_s`, and after failures."""
        if self._thread is not None:
            msg = "PolicySync already started"
            raise RuntimeError(msg)
        self._thread = threading.Thread(target=self._run, name="policy-sync", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the polling thread (a sync under way finishes first)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self._last_error = reason

    def _converge(self, entries: list[PolicyEntry]) -> SyncResult:
        # Apply first, delete after: a rename never leaves a moment with neither policy.
        manifests = [render(entry, self._namespace) for entry in entries]
        for manifest in manifests:
            self._kube.apply(manifest)
        wanted = {manifest["metadata"]["name"] for manifest in manifests}
        existing, _ = self._kube.list(
            AUTHORIZATION_POLICIES, namespace=self._namespace, label_selector=MANAGED_POLICIES
        )
        deleted = []
        for obj in existing:
            meta = obj.get("metadata", {})
            name = str(meta.get("name", ""))
            if name not in wanted:
                uid = meta.get("uid")
                self._kube.delete(AUTHORIZATION_POLICIES, name, namespace=self._namespace, uid=uid)
                log.info("deleted AuthorizationPolicy %s: no longer in the policy file", name)
                deleted.append(name)
        return SyncResult(applied=tuple(sorted(wanted)), deleted=tuple(deleted))

    def _run(self) -> None:
        seen = _signature(self._path)
        due = time.monotonic()  # the first pass syncs at once
        retry = False
        while not self._stopping.is_set():
            current = _signature(self._path)
            now = time.monotonic()
            if retry or current != seen or now >= due:
                seen, due = current, now + self._resync_s
                retry = not self._tick()
            self._stopping.wait(self._poll_interval_s)

    def _tick(self) -> bool:
        """One sync from the thread; False when it should be retried on the next tick."""
        try:
            self.sync()
        except ControllerError as exc:
            log.warning("policy sync failed, retrying: %s", exc.reason)
            return False
        except Exception:
            # A bug must not end policy enforcement for the controller's lifetime.
            log.exception("policy sync crashed, retrying")
            return False
        return True


_Signature = tuple[int, int, int, int]


def _signature(path: Path | None) -> _Signature | None:
    """What changes when the file does; `stat()` follows the ConfigMap's symlinks."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
