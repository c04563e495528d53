"""controller.leader against the Kubernetes API emulator over HTTP.

The threaded tests use real time with short leases; the round-by-round tests drive
`try_acquire_or_renew` with a fake monotonic clock so expiry needs no sleeping.
"""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.errors import ApiUnavailable, Conflict
from controller.kube import LEASES, JsonObject, Kube, Resource, load_api_client
from controller.leader import LeaderElector

LEASE = "pimesh-controller"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class HookedKube(Kube):
    """Our own facade with a hook before `replace` (to interleave two writers) and an outage."""

    before_replace: Callable[[], None] | None = None
    down = False

    def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JsonObject:
        if self.down:
            raise ApiUnavailable("API server unreachable (test)")
        return super().get(resource, name, namespace=namespace)

    def replace(
        self, resource: Resource, obj: JsonObject, *, namespace: str | None = None
    ) -> JsonObject:
        hook, self.before_replace = self.before_replace, None
        if hook is not None:
            hook()
        return super().replace(resource, obj, namespace=namespace)


@pytest.fixture
def kubes(kubeconfig: Path) -> Iterator[Callable[[], HookedKube]]:
    made: list[HookedKube] = []

    def make() -> HookedKube:
        kube = HookedKube(load_api_client(kubeconfig))
        made.append(kube)
        return kube

    yield make
    for kube in made:
        kube.close()


def wait_for(condition: Callable[[], bool], *, timeout_s: float, step_s: float = 0.02) -> float:
    """Wait until `condition()` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - started


def lease_spec(kube: Kube, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = kube.get(LEASES, LEASE, namespace=namespace)["spec"]
    return spec


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def started(self) -> None:
        self.events.append("started")

    def stopped(self) -> None:
        self.events.append("stopped")


def elector(
    kube: Kube, namespace: str, identity: str, recorder: Recorder | None = None, **kw: Any
) -> LeaderElector:
    timing = {"lease_duration_s": 1.5, "renew_s": 0.1, "renew_deadline_s": 1.0}
    return LeaderElector(
        kube,
        namespace=namespace,
        identity=identity,
        on_started_leading=recorder.started if recorder else None,
        on_stopped_leading=recorder.stopped if recorder else None,
        **{**timing, **kw},
    )


# threaded, real time ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_two_electors_elect_exactly_one_leader(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    a, b = (elector(kubes(), kube_namespace, name) for name in ("pod-a", "pod-b"))
    a.start()
    b.start()
    try:
        wait_for(lambda: a.is_leader or b.is_leader, timeout_s=5)
        deadline = time.monotonic() + 1.0  # several renew periods: never two leaders
        while time.monotonic() < deadline:
            assert [a.is_leader, b.is_leader].count(True) == 1
            time.sleep(0.01)
        leader = a if a.is_leader else b
        assert lease_spec(kubes(), kube_namespace)["holderIdentity"] == leader.identity
    finally:
        a.stop()
        b.stop()


@pytest.mark.timeout(30)
def test_a_released_lease_is_taken_over_at_once(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = elector(kubes(), kube_namespace, "pod-a", rec_a)
    a.start()
    wait_for(lambda: a.is_leader, timeout_s=5)
    b = elector(kubes(), kube_namespace, "pod-b", rec_b)
    b.start()
    try:
        time.sleep(0.3)
        assert not b.is_leader
        a.stop(release=True)
        assert not a.is_leader
        took = wait_for(lambda: b.is_leader, timeout_s=5)
        assert took < 1.5  # well within the lease duration: no waiting for expiry
        spec = lease_spec(kubes(), kube_namespace)
        assert spec["holderIdentity"] == "pod-b"
        assert spec["leaseTransitions"] == 1
        assert rec_a.events == ["started", "stopped"]
        assert rec_b.events == ["started"]
    finally:
        b.stop()
    assert rec_b.events == ["started", "stopped"]
    assert lease_spec(kubes(), kube_namespace)["holderIdentity"] == ""


@pytest.mark.timeout(30)
def test_a_dead_leaders_lease_is_taken_over_after_it_expires(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    a = elector(kubes(), kube_namespace, "pod-a")
    a.start()
    wait_for(lambda: a.is_leader, timeout_s=5)
    b = elector(kubes(), kube_namespace, "pod-b")
    b.start()
    try:
        time.sleep(0.3)  # b has seen a renew
        a.stop(release=False)  # a crash: the lease stays held
        assert lease_spec(kubes(), kube_namespace)["holderIdentity"] == "pod-a"
        took = wait_for(lambda: b.is_leader, timeout_s=6)
        # b times the lease from the last change it saw (at most a renew period before the
        # crash), so it cannot take over much before a whole lease duration.
        assert took >= 1.5 - 0.1 - 0.1
        assert lease_spec(kubes(), kube_namespace)["holderIdentity"] == "pod-b"
    finally:
        b.stop()


# round by round, fake clock ----------------------------------------------------------------


def test_expiry_is_timed_from_the_last_change_seen(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    clock = FakeClock()
    rec_a = Recorder()
    timing: dict[str, Any] = {"lease_duration_s": 2.0, "renew_deadline_s": 1.5, "clock": clock}
    a = elector(kubes(), kube_namespace, "pod-a", rec_a, **timing)
    b = elector(kubes(), kube_namespace, "pod-b", **timing)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.advance(1.2)
    assert a.try_acquire_or_renew()  # a renews
    clock.advance(0.9)
    # 2.1 s since b first looked, but b only now sees the renew: its timer starts again.
    assert not b.try_acquire_or_renew()
    clock.advance(1.9)
    assert not b.try_acquire_or_renew()
    assert not a.is_leader  # 2.8 s without a renewal: past a's renew deadline
    clock.advance(0.1)
    assert b.try_acquire_or_renew()  # 2.0 s without a change: expired
    assert not a.try_acquire_or_renew()
    assert rec_a.events == ["started", "stopped"]
    spec = lease_spec(kubes(), kube_namespace)
    assert spec["holderIdentity"] == "pod-b"
    assert spec["leaseTransitions"] == 1


def test_two_writers_of_one_expired_record_cannot_both_win(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    clock = FakeClock()
    dead = elector(kubes(), kube_namespace, "pod-dead", clock=clock)
    assert dead.try_acquire_or_renew()
    c_kube = kubes()
    c = elector(c_kube, kube_namespace, "pod-c", clock=clock)
    d = elector(kubes(), kube_namespace, "pod-d", clock=clock)
    assert not c.try_acquire_or_renew()
    assert not d.try_acquire_or_renew()
    clock.advance(2.0)
    # c has read the expired record; d takes it before c writes with the old version.
    results: list[bool] = []
    c_kube.before_replace = lambda: results.append(d.try_acquire_or_renew())
    assert not c.try_acquire_or_renew()
    assert results == [True]
    assert d.is_leader
    assert lease_spec(kubes(), kube_namespace)["holderIdentity"] == "pod-d"


def test_a_leader_cut_off_from_the_api_steps_down_by_its_deadline(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    clock = FakeClock()
    rec = Recorder()
    kube = kubes()
    a = elector(kube, kube_namespace, "pod-a", rec, clock=clock)
    assert a.try_acquire_or_renew()
    kube.down = True
    clock.advance(0.5)
    assert a.try_acquire_or_renew()  # still within the renew deadline
    clock.advance(0.6)
    assert not a.try_acquire_or_renew()
    assert rec.events == ["started", "stopped"]
    kube.down = False
    assert a.try_acquire_or_renew()  # nobody took it meanwhile: it leads again
    assert rec.events == ["started", "stopped", "started"]


def test_a_slow_renewal_counts_from_when_it_was_sent(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    clock = FakeClock()
    kube = kubes()
    a = elector(kube, kube_namespace, "pod-a", clock=clock)
    assert a.try_acquire_or_renew()
    clock.advance(0.5)
    kube.before_replace = lambda: clock.advance(0.8)  # the renewal's reply takes 0.8 s
    assert a.try_acquire_or_renew()
    clock.advance(0.3)
    # 1.1 s since the renewal was sent (0.3 since it returned): past the 1 s deadline.
    assert not a.is_leader


def test_replace_with_a_stale_resource_version_is_a_conflict(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    kube = kubes()
    a = elector(kube, kube_namespace, "pod-a")
    assert a.try_acquire_or_renew()
    stale = kube.get(LEASES, LEASE, namespace=kube_namespace)
    assert a.try_acquire_or_renew()  # changes renewTime, so the resourceVersion moves on
    with pytest.raises(Conflict):
        kube.replace(LEASES, stale, namespace=kube_namespace)
    assert lease_spec(kube, kube_namespace)["leaseDurationSeconds"] == 2  # 1.5 s, an int32


def test_bad_timings_are_refused(kubes: Callable[[], HookedKube], kube_namespace: str) -> None:
    with pytest.raises(ValueError, match="renew_s"):
        elector(kubes(), kube_namespace, "pod-a", renew_s=2.0)
    with pytest.raises(ValueError, match="identity"):
        elector(kubes(), kube_namespace, "")


def test_stop_releases_only_a_lease_it_holds(
    kubes: Callable[[], HookedKube], kube_namespace: str
) -> None:
    clock = FakeClock()
    a = elector(kubes(), kube_namespace, "pod-a", clock=clock)
    b = elector(kubes(), kube_namespace, "pod-b", clock=clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    b.stop()
    assert lease_spec(kubes(), kube_namespace)["holderIdentity"] == "pod-a"
