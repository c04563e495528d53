import threading

import pytest

from controller.workqueue import ShutDown, WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[WorkQueue[str], FakeClock]:
    clock = FakeClock()
    return WorkQueue[str](clock=clock, base_delay_s=1.0, max_delay_s=8.0), clock


def test_duplicate_adds_are_held_once() -> None:
    q, _ = make()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None


def test_key_is_never_handed_out_twice_at_once() -> None:
    q, _ = make()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # added while being handled
    q.add("a")
    assert q.get(timeout=0) is None, "must wait until the worker is done"
    q.done("a")
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None, "added twice during handling, comes back once"


def test_done_without_new_add_does_not_requeue() -> None:
    q, _ = make()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.pending() == 0


def test_add_after_waits_for_the_clock() -> None:
    q, clock = make()
    q.add_after("a", 5)
    assert q.get(timeout=0) is None
    clock.now += 4.9
    assert q.get(timeout=0) is None
    clock.now += 0.2
    assert q.get(timeout=0) == "a"


def test_earlier_deadline_wins_and_add_supersedes() -> None:
    q, clock = make()
    q.add_after("a", 10)
    q.add_after("a", 2)
    q.add_after("a", 7)
    clock.now += 2
    assert q.get(timeout=0) == "a"
    q.done("a")
    clock.now += 10
    assert q.get(timeout=0) is None, "the superseded deadlines must not fire again"
    q.add_after("b", 3)
    q.add("b")
    assert q.get(timeout=0) == "b"
    q.done("b")
    clock.now += 3
    assert q.get(timeout=0) is None


def test_backoff_doubles_caps_and_resets() -> None:
    q, _ = make()
    delays = [q.add_rate_limited("a") for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert q.failures("a") == 6
    q.forget("a")
    assert q.failures("a") == 0
    assert q.add_rate_limited("a") == 1.0


def test_backoff_is_per_key() -> None:
    q, _ = make()
    q.add_rate_limited("a")
    q.add_rate_limited("a")
    assert q.add_rate_limited("b") == 1.0


def test_blocked_get_wakes_on_add_and_on_clock_move() -> None:
    q, clock = make()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    t.start()
    q.add("x")
    t.join(timeout=5)
    assert got == ["x"]

    q.add_after("y", 60)
    t = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    t.start()
    clock.now += 60
    q.wake()
    t.join(timeout=5)
    assert got == ["x", "y"]


def test_shutdown_releases_blocked_workers() -> None:
    q, _ = make()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            q.get()
        except ShutDown as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    q.shutdown()
    for t in threads:
        t.join(timeout=5)
    assert len(errors) == 3
    q.add("late")
    with pytest.raises(ShutDown):
        q.get(timeout=0)


def test_concurrent_workers_never_overlap_on_a_key() -> None:
    q = WorkQueue[int]()
    active: set[int] = set()
    overlaps: list[int] = []
    handled: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                key = q.get(timeout=1)
            except ShutDown:
                return
            if key is None:
                return
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
            with lock:
                active.discard(key)
                handled.append(key)
            q.done(key)

    for i in range(200):
        q.add(i % 10)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        q.add(i % 10)
    for t in threads:
        t.join(timeout=10)
    assert overlaps == []
    assert set(handled) == set(range(10))
    assert q.pending() == 0


def test_hold_is_not_cut_short_by_adds() -> None:
    q, clock = make()
    q.hold("a", 30)
    q.add("a")  # e.g. a watch event about the same device
    assert q.get(timeout=0) is None
    clock.now += 29
    q.add("a")
    assert q.get(timeout=0) is None
    clock.now += 2
    assert q.get(timeout=0) == "a"
    q.done("a")
    q.add("a")
    assert q.get(timeout=0) == "a", "the hold ends with its deadline"


def test_hold_set_while_handling_survives_an_add_during_handling() -> None:
    q, clock = make()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # a watch event while the worker runs
    q.hold("a", 5)  # the worker got a 429 with Retry-After: 5
    q.done("a")
    assert q.get(timeout=0) is None
    clock.now += 5
    assert q.get(timeout=0) == "a"
