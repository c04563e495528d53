import threading
from datetime import UTC, datetime, timedelta

import pytest

from controller.ratelimit import RateLimiter
from controller.rotation import Rotation, build_schedule
from controller.settings import ControllerSettings
from controller.workqueue import WorkQueue

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def settings(**kw: object) -> ControllerSettings:
    return ControllerSettings(**kw)  # type: ignore[arg-type]


def test_default_schedule_is_a_third_of_the_ttl() -> None:
    schedule = build_schedule(settings(token_ttl=3600))
    assert schedule.max_gap_s == 1200


def test_interval_beyond_half_life_is_refused_naming_the_flag() -> None:
    build_schedule(settings(token_ttl=3600, rotate_every=1800))
    with pytest.raises(
        ValueError, match=r"--rotate-every: runs can be 1801 s apart.*at least every 1800 s"
    ):
        build_schedule(settings(token_ttl=3600, rotate_every=1801))


def test_cron_gap_is_the_longest_over_a_year() -> None:
    ok = build_schedule(settings(token_ttl=3600, rotate_cron="*/20 * * * *"), now=NOW)
    assert ok.max_gap_s == 1200
    # Every 20 minutes but only during working hours: the night gap is what counts.
    with pytest.raises(ValueError, match="--rotate-cron: runs can be"):
        build_schedule(settings(token_ttl=3600, rotate_cron="*/20 8-17 * * *"), now=NOW)


def test_bad_cron_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--rotate-cron: 'every day' is not a cron expression"):
        build_schedule(settings(rotate_cron="every day"))


def test_a_run_makes_older_tokens_due_and_spreads_the_wave() -> None:
    clock = [NOW]
    queue = WorkQueue[str](clock=lambda: 0.0)
    rotation = Rotation(
        build_schedule(settings(token_ttl=3600)),
        queue=queue,
        enrolled=lambda: [f"pi-{i}" for i in range(100)],
        rate_per_s=10,
        now=lambda: clock[0],
        rng=lambda: 0.5,
    )
    assert not rotation.is_due(NOW - timedelta(hours=1)), "nothing is due before a run"
    assert rotation.run_now() == 100
    assert rotation.is_due(NOW - timedelta(seconds=1))
    assert rotation.is_due(None)
    assert not rotation.is_due(NOW + timedelta(seconds=1)), (
        "a token issued after the run is current"
    )
    # 100 devices at 10/s: spread over min(1200/4, 10) s; rng 0.5 puts them all at 5 s.
    assert queue.get(timeout=0) is None
    assert queue.pending() == 100


def test_scheduler_fires_runs_and_stops() -> None:
    queue = WorkQueue[str]()
    rotation = Rotation(
        build_schedule(settings(token_ttl=600, rotate_every=1)),
        queue=queue,
        enrolled=lambda: ["pi-a"],
        rate_per_s=100,
        now=lambda: datetime.now(UTC),
    )
    rotation.start()
    try:
        assert queue.get(timeout=5) == "pi-a"
    finally:
        rotation.stop()
    assert rotation.runs >= 1


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_permits_evenly() -> None:
    fake = FakeTime()
    limiter = RateLimiter(rate_per_s=4, concurrency=2, clock=fake.clock, sleep=fake.sleep)
    for _ in range(5):
        with limiter.permit():
            pass
    assert fake.now == pytest.approx(1.0), "5 permits at 4/s take 1 s after the first"
    assert fake.slept == pytest.approx([0.25, 0.25, 0.25, 0.25])
    assert limiter.granted == 5


def test_rate_limiter_caps_concurrency() -> None:
    limiter = RateLimiter(rate_per_s=1000, concurrency=2)
    inside = [0]
    cond = threading.Condition()
    release = threading.Event()

    def hold() -> None:
        with limiter.permit():
            with cond:
                inside[0] += 1
                cond.notify_all()
            release.wait(5)
            with cond:
                inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(5)]
    for t in threads:
        t.start()
    with cond:
        assert cond.wait_for(lambda: inside[0] == 2, timeout=5)
        # Give a third holder every chance to get in; the cap must keep it out.
        assert not cond.wait_for(lambda: inside[0] > 2, timeout=0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert inside[0] == 0


def test_rate_limiter_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        RateLimiter(rate_per_s=0, concurrency=1)
