"""Fleet-wide token rotation on a schedule, so no enrolled device ever holds an expired token.

ztunnel re-reads its token on every CA and xDS request and has no fallback once it has
expired; expired VM tokens are Istio's most-reported VM failure (istio/istio #33203,
#49202, #26225, #33146). So a token is renewed at or before its half-life:

- the schedule (`--rotate-every`, default a third of `--token-ttl`, or `--rotate-cron`)
  is refused at start when two consecutive runs can be more than half a TTL apart;
- a run marks every device whose token was issued before the run as due and enqueues it,
  spread over a short window so a fleet never renews in one burst; TokenRequests are
  paced by `controller.ratelimit` (`--rotation-rate`, `--rotation-concurrency`);
- a device that was offline still gets its new bundle (retained) and, should it come
  back past half-life anyway, the reconciler renews it the moment its status says online.

Only the leader runs the schedule (`start()`/`stop()` follow leadership). APScheduler's
background scheduler fires the runs; everything else is plain state the reconciler asks.
"""

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from controller.device import DeviceStatus
from controller.settings import ControllerSettings
from controller.workqueue import Enqueue

log = logging.getLogger(__name__)

CRON_HORIZON = timedelta(days=366)
CRON_MAX_FIRES = 5_000  # a week of every-two-minutes: enough to see daily and weekly gaps


@dataclass(frozen=True)
class Schedule:
    """When rotation runs fire, and the longest gap between two of them."""

    trigger: BaseTrigger
    max_gap_s: float
    description: str


def build_schedule(settings: ControllerSettings, *, now: datetime | None = None) -> Schedule:
    """The rotation schedule, refused when it can leave a token unrenewed past half-life.

    Raises:
        ValueError: the reason names the flag to change.
    """
    ttl = settings.token_ttl
    if settings.rotate_cron is not None:
        try:
            trigger: BaseTrigger = CronTrigger.from_crontab(settings.rotate_cron, timezone=UTC)
        except ValueError as exc:
            msg = f"--rotate-cron: {settings.rotate_cron!r} is not a cron expression ({exc})"
            raise ValueError(msg) from exc
        gap = _max_cron_gap_s(trigger, now or datetime.now(UTC))
        flag, description = "--rotate-cron", f"cron {settings.rotate_cron!r}"
    else:
        every = settings.rotate_every or ttl // 3
        trigger, gap = IntervalTrigger(seconds=every, timezone=UTC), float(every)
        flag, description = "--rotate-every", f"every {every} s"
    if gap > ttl / 2:
        msg = (
            f"{flag}: runs can be {int(gap)} s apart, more than half of --token-ttl "
            f"({ttl} s), so tokens would outlive their half-life; rotate at least every "
            f"{ttl // 2} s or raise --token-ttl"
        )
        raise ValueError(msg)
    return Schedule(trigger=trigger, max_gap_s=gap, description=description)


def _max_cron_gap_s(trigger: BaseTrigger, start: datetime) -> float:
    """The longest gap between consecutive fire times over the next year."""
    previous = trigger.get_next_fire_time(None, start)
    if previous is None:
        return float("inf")
    gap, fires = 0.0, 0
    while previous < start + CRON_HORIZON and fires < CRON_MAX_FIRES:
        following = trigger.get_next_fire_time(previous, previous + timedelta(microseconds=1))
        if following is None:
            return float("inf")
        gap = max(gap, (following - previous).total_seconds())
        previous, fires = following, fires + 1
    return gap


def token_at_risk(status: DeviceStatus, *, now: datetime, ttl_s: int) -> bool:
    """The token the device holds (its last acked one) expires within a quarter TTL."""
    held = status.acked_token_expires_at
    return (
        status.acked_generation > 0
        and held is not None
        and held - now < timedelta(seconds=ttl_s / 4)
    )


def fleet_expiry(
    statuses: list[DeviceStatus], *, now: datetime, ttl_s: int
) -> tuple[float | None, int]:
    """Seconds until the soonest held token expires (None: no tokens), and devices at risk."""
    held = [s.acked_token_expires_at for s in statuses if s.acked_token_expires_at is not None]
    soonest = min(held, default=None)
    at_risk = sum(token_at_risk(s, now=now, ttl_s=ttl_s) for s in statuses)
    return (None if soonest is None else (soonest - now).total_seconds()), at_risk


class Rotation:
    """Runs rotations on the schedule and answers which devices are due."""

    def __init__(
        self,
        schedule: Schedule,
        *,
        queue: Enqueue[str],
        enrolled: Callable[[], list[str]],
        rate_per_s: float,
        now: Callable[[], datetime],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._schedule = schedule
        self._queue = queue
        self._enrolled = enrolled
        self._rate_per_s = rate_per_s
        self._now = now
        self._rng = rng
        self._lock = threading.Lock()
        self._run_started: datetime | None = None
        self._scheduler: BackgroundScheduler | None = None
        self.runs = 0

    def is_due(self, token_issued_at: datetime | None) -> bool:
        """True when the device's token predates the latest rotation run."""
        with self._lock:
            started = self._run_started
        return started is not None and (token_issued_at is None or token_issued_at < started)

    def run_now(self) -> int:
        """Start a rotation run: every enrolled device becomes due; returns how many."""
        with self._lock:
            self._run_started = self._now()
            self.runs += 1
        devices = self._enrolled()
        # Spread the wave: the rate limiter paces the API, the jitter spreads the work so
        # the queue and the broker do not see the whole fleet in one instant either.
        spread_s = min(self._schedule.max_gap_s / 4, len(devices) / self._rate_per_s)
        for device_id in devices:
            self._queue.add_after(device_id, self._rng() * spread_s)
        log.info("rotation run", extra={"devices": len(devices), "spread_s": round(spread_s, 1)})
        return len(devices)

    def start(self) -> None:
        """Fire runs on the schedule (call when this replica becomes leader)."""
        with self._lock:
            if self._scheduler is not None:
                return
            scheduler = BackgroundScheduler(timezone=UTC)
            scheduler.add_job(
                self._fire, self._schedule.trigger, id="rotation", max_instances=1, coalesce=True
            )
            scheduler.start()
            self._scheduler = scheduler
        log.info("rotation scheduled", extra={"schedule": self._schedule.description})

    def stop(self) -> None:
        """Stop firing runs (leadership lost, or shutting down)."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)

    def _fire(self) -> None:
        try:
            self.run_now()
        except Exception:
            log.exception("rotation run failed; the next run or the half-life rule catches up")
